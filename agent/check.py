"""`pass-agent check`: validates the configuration, then the environment it needs, one line per check.

Exit codes: 2 when the configuration itself is invalid, 1 when only an environment check fails,
0 when everything passes. Must never: change anything on the box, or print a secret.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Callable, TextIO

from agent import config as configmod
from agent.errors import AgentError, ConfigError

# 2024-01-01: a wall clock before this is certainly wrong (no RTC, NTP not synced yet).
PLAUSIBLE_EPOCH = 1704067200


def _b64url_json(part: str) -> dict:
    data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def check_statement(path: str) -> str:
    with open(path, "rb") as f:
        text = f.read(65536).decode("utf-8", "replace").strip()
    parts = text.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT: expected 3 dot-separated parts, found %d" % len(parts))
    header, payload = _b64url_json(parts[0]), _b64url_json(parts[1])
    if header.get("alg") != "RS256":
        raise ValueError("JWT alg is %r, Adobe software statements use RS256" % header.get("alg"))
    if not payload.get("sub"):
        raise ValueError("JWT payload has no 'sub' (registered application id)")
    return "RS256 JWT for registered application %s, issuer %s" % (str(payload.get("sub"))[:40], payload.get("iss"))


def _dir_usable(path: str, what: str) -> str:
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise NotADirectoryError("%s %s: %s exists and is not a directory" % (what, path, probe))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError("%s %s: %s is not writable by uid %d" % (what, path, probe, os.getuid()))
    return "%s %s is usable%s" % (what, path, "" if probe == path else " (will be created)")


def run_checks(cfg: dict) -> list[tuple[str, bool, str, str]]:
    """(name, ok, detail, fix hint) for every environment check."""
    from agent import boards
    from agent.service import storage_dir

    results: list[tuple[str, bool, str, str]] = []

    def check(name: str, fn: Callable[[], str], hint: str) -> None:
        try:
            results.append((name, True, fn(), ""))
        except (AgentError, OSError, ValueError, UnicodeError) as e:
            results.append((name, False, str(e), getattr(e, "fix", None) or hint))

    a = cfg["adobe"]
    check("statement", lambda: check_statement(a["software_statement"]),
          "download the software statement from the Adobe Pass TVE Dashboard to [adobe] software_statement")
    profile: dict = {}

    def board() -> str:
        profile.update(boards.load_profile(cfg["device"]["board"]))
        return "board profile %r loaded" % cfg["device"]["board"]

    check("board", board, "set [device] board to one of: " + ", ".join(boards.list_boards()))

    def identity() -> str:
        ident = boards.identify_for(cfg["device"])
        boards.check_required(ident)  # a required field left Unknown: Adobe sees an unknown platform
        f = ident["fields"]
        w = ident.get("warnings") or []
        return "X-Device-Info: %s %s, %s %s, %s%s" % (f.get("manufacturer", "?"), f.get("model"), f.get("osName"),
                                                     f.get("osVersion"), f.get("connectionType"),
                                                     (" (%d warnings: %s)" % (len(w), "; ".join(w))) if w else "")

    check("device-info", identity, "fix [device] root/board or add [device.overrides]")
    check("storage", lambda: _dir_usable(storage_dir(cfg, profile), "storage dir"),
          "create the directory or set [storage] dir to a persistent, writable path")
    check("socket", lambda: _dir_usable(os.path.dirname(cfg["socket"]["path"]), "socket dir"),
          "set [socket] path to a writable runtime directory such as /run/pass-agent/agent.sock")

    def clock() -> str:
        now = time.time()
        if now < PLAUSIBLE_EPOCH:
            raise ValueError("the wall clock says %s, which is before 2024" % time.strftime("%Y-%m-%d", time.gmtime(now)))
        return "wall clock %s UTC" % time.strftime("%Y-%m-%d %H:%M", time.gmtime(now))

    check("clock", clock, "enable NTP (systemd-timesyncd) and order the agent After=time-sync.target")
    if a["ca_file"]:
        def ca() -> str:
            import ssl

            ssl.create_default_context(cafile=a["ca_file"])
            return "CA file %s loads" % a["ca_file"]

        check("ca_file", ca, "set [adobe] ca_file to a PEM bundle, or remove it to use the system CAs")
    return results


def check_command(config_path: str | None, out: TextIO) -> int:
    path = configmod.resolve_path(config_path)
    try:
        cfg = configmod.load(path)
    except ConfigError as e:
        for p in e.problems:
            out.write("fail  config       %s: %s\n" % (path, p))
        out.write("the configuration is invalid: fix the lines above (README.md, Configuration)\n")
        return 2
    out.write("ok    config       %s\n" % path)
    failed = 0
    for name, ok, detail, hint in run_checks(cfg):
        out.write("%-5s %-12s %s\n" % ("ok" if ok else "fail", name, detail))
        if not ok:
            failed += 1
            out.write("      %-12s fix: %s\n" % ("", hint))
    out.write("all checks passed\n" if not failed else "%d check(s) failed\n" % failed)
    return 1 if failed else 0
