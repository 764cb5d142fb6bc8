"""`token`, `headers` and `status` find the socket in the configuration: an invalid configuration
is said and exits 2, instead of quietly trying the default socket (issue 21). Only a missing
configuration at the default path (a box or laptop where nobody wrote one) falls back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agent import cli
from agent import config as configmod
from agent.errors import ConfigError


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.mark.parametrize("name", ["token", "headers", "status"])
def test_invalid_config_is_reported_and_exits_2(write_config, name):
    path = write_config('[socket]\npath = 42\n')
    r = run_cli(name, "--config", path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "invalid configuration" in r.stderr and "[socket] path: found 42" in r.stderr, r.stderr
    assert cli.DEFAULT_SOCKET not in r.stdout + r.stderr  # it did not try another socket
    assert "Traceback" not in r.stderr


def test_invalid_config_named_by_the_environment_exits_2(write_config):
    path = write_config('[sockets]\npath = "/tmp/x.sock"\n')
    env = dict(os.environ, PASS_AGENT_CONFIG=path)
    r = run_cli("token", env=env)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "unknown table ['sockets']" in r.stderr, r.stderr


def test_a_config_file_named_explicitly_must_exist(tmp_path):
    r = run_cli("status", "--config", str(tmp_path / "none.toml"))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "none.toml" in r.stderr and "file not found" in r.stderr


def test_a_valid_config_names_the_socket(write_config, tmp_path):
    sock = str(tmp_path / "agent.sock")
    r = run_cli("status", "--config", write_config('[socket]\npath = "%s"\n' % sock))
    assert r.returncode == 1 and sock in r.stdout + r.stderr  # no agent there: the configured path is tried


def test_no_config_at_the_default_path_falls_back_to_the_default_socket(tmp_path, monkeypatch):
    monkeypatch.delenv(configmod.ENV_VAR, raising=False)
    monkeypatch.setattr(configmod, "DEFAULT_PATH", str(tmp_path / "absent.toml"))
    args = cli.build_parser().parse_args(["status"])
    assert cli._socket_path(args) == cli.DEFAULT_SOCKET
    (tmp_path / "absent.toml").write_text("[socket]\nmode = \"rw\"\n")
    with pytest.raises(ConfigError):
        cli._socket_path(args)
    args = cli.build_parser().parse_args(["status", "--socket", "/x/y.sock"])
    assert cli._socket_path(args) == "/x/y.sock"  # --socket needs no configuration at all
