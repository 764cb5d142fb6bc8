"""Harness: the config loader (agent/config.py).

The bytes are written to a temporary file and loaded; when they also parse as a JSON object, that
object goes through `validate` too (arbitrary types in every table). The result must be a config
dict or a ConfigError. Must never: write outside its temporary directory.
"""

from __future__ import annotations

import json
import os
import tempfile

from agent import config
from agent.errors import ConfigError

_DIR = tempfile.mkdtemp(prefix="fuzz-config-")
_PATH = os.path.join(_DIR, "agent.toml")


def test_one_input(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        cfg = config.load(_PATH, check_files=False)
        assert isinstance(cfg, config.Config) and list(cfg.to_dict()) == list(config.SCHEMA)
    except ConfigError as e:
        assert e.problems
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return
    if isinstance(obj, dict):
        try:
            config.validate(obj, _PATH, check_files=False)
        except ConfigError:
            pass


KNOWN: list = []  # the bugs it found are fixed; see docs/TESTING.md

DICT = [b"[adobe]", b"[device]", b"[storage]", b"[socket]", b"[console]", b"[refresh]", b"[log]", b"base_url",
        b"timeout", b"software_statement", b"ca_file", b"overrides", b"mode", b"allow_uids", b"at", b"jitter",
        b"level", b"token_cache", b" = ", b'"', b"'''", b'"""', b"[[", b"]]", b"{", b"}", b"inf", b"nan", b"0o",
        b"0x", b"true", b"1979-05-27T07:32:00Z", b"https://[", b"http://127.0.0.1/o", b"\\u", b"\n"]
