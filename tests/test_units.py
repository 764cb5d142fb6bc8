"""The systemd units, sysusers/tmpfiles files and the default configuration shipped in board/.

Parses the unit files and checks the directives the agent's contract needs, checks that units,
tmpfiles and the default config agree on paths and modes, and runs `systemd-analyze verify` (and the
offline security review) on every board's unit set when systemd-analyze is installed.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys

import pytest

from agent import config as configmod
from tools import build_overlay

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEMD = os.path.join(ROOT, "board", "systemd")
DEFAULT_CONFIG = os.path.join(ROOT, "board", "default-config", "agent.toml")
ANALYZE = shutil.which("systemd-analyze")


def _unit(name: str) -> configparser.ConfigParser:
    # strict=False: systemd allows a key more than once (SystemCallFilter=); the last one wins here.
    p = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    p.optionxform = str  # systemd keys are case-sensitive
    with open(os.path.join(SYSTEMD, name), encoding="utf-8") as f:
        p.read_file(f)
    return p


def _all_values(name: str, key: str) -> list[str]:
    """Every value of a repeated key, in order (configparser keeps only the last)."""
    with open(os.path.join(SYSTEMD, name), encoding="utf-8") as f:
        return [line.split("=", 1)[1].strip() for line in f if line.startswith(key + "=")]


def _lines(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def default_cfg() -> configmod.Config:
    with open(DEFAULT_CONFIG, "rb") as f:
        return configmod.validate(tomllib.load(f), DEFAULT_CONFIG, check_files=False)


def test_service_has_the_required_directives():
    svc = _unit("pass-agent.service")
    s = svc["Service"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert s["ExecStart"] == "/usr/bin/pass-agent run --config %s" % configmod.DEFAULT_PATH
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["WatchdogSec"] == "30" and s["Restart"] == "on-failure"
    assert s["User"] == "pass-agent" and s["Group"] == "pass-agent"
    assert s.get("DynamicUser", "no") == "no"
    assert s["StateDirectory"] == "pass-agent" and s["StateDirectoryMode"] == "0700"
    assert s["RuntimeDirectory"] == "pass-agent" and s["RuntimeDirectoryPreserve"] == "yes"
    unit = svc["Unit"]
    assert set(unit["After"].split()) >= {"network-online.target", "time-sync.target"}
    assert "network-online.target" in unit["Wants"].split()
    assert svc["Install"]["WantedBy"] == "multi-user.target"


def test_service_is_hardened():
    s = _unit("pass-agent.service")["Service"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "LockPersonality",
                "RestrictRealtime", "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
                "RestrictSUIDSGID", "RestrictNamespaces"):
        assert s[key] == "yes", key
    assert s["ProtectSystem"] == "strict"
    assert s["CapabilityBoundingSet"] == ""
    assert set(s["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert _all_values("pass-agent.service", "SystemCallFilter")[0] == "@system-service"
    assert re.fullmatch(r"\d+[KMG]", s["MemoryMax"])
    # ProtectSystem=strict: the two directories the agent writes must be writable, nothing else.
    assert set(s["ReadWritePaths"].split()) == {configmod.STORAGE_DEFAULT_DIR, "/run/pass-agent"}


def test_socket_unit_matches_the_default_config(default_cfg):
    sock = _unit("pass-agent.socket")["Socket"]
    assert sock["ListenStream"] == default_cfg.socket.path == "/run/pass-agent/agent.sock"
    assert int(sock["SocketMode"], 8) == default_cfg.socket.mode == 0o660
    assert sock["SocketUser"] == "pass-agent" and sock["SocketGroup"] == "pass-client"
    assert sock["Service"] == "pass-agent.service"
    assert _unit("pass-agent.socket")["Install"]["WantedBy"] == "sockets.target"


def test_directories_agree_between_units_tmpfiles_and_config(default_cfg):
    s = _unit("pass-agent.service")["Service"]
    runtime = "/run/" + s["RuntimeDirectory"]
    state = "/var/lib/" + s["StateDirectory"]
    assert runtime == default_cfg.storage.runtime_dir == os.path.dirname(default_cfg.socket.path)
    assert state == configmod.STORAGE_DEFAULT_DIR
    tmp = {line[1]: line for line in _lines(os.path.join(SYSTEMD, "tmpfiles.d", "pass-agent.conf"))}
    # tmpfiles creates the runtime dir with the service's owner and mode before the socket binds in it,
    # so RuntimeDirectory= finds it correctly owned and does not chown the socket file.
    assert tmp[runtime][:5] == ["d", runtime, s["RuntimeDirectoryMode"], s["User"], s["Group"]]
    assert tmp[state][:5] == ["d", state, s["StateDirectoryMode"], s["User"], s["Group"]]
    assert _unit("pass-agent.socket")["Socket"]["DirectoryMode"] == s["RuntimeDirectoryMode"]


def test_sysusers_defines_every_account_the_units_name():
    users = _lines(os.path.join(SYSTEMD, "sysusers.d", "pass-agent.conf"))
    groups = {line[1] for line in users if line[0] == "g"}
    accounts = {line[1] for line in users if line[0] == "u"}
    s = _unit("pass-agent.service")["Service"]
    sock = _unit("pass-agent.socket")["Socket"]
    assert s["User"] in accounts and s["Group"] in groups and sock["SocketGroup"] in groups


def test_default_config_lists_every_key_with_its_default(default_cfg):
    with open(DEFAULT_CONFIG, "rb") as f:
        data = tomllib.load(f)
    for table, keys in configmod.SCHEMA.items():
        for key in keys:
            assert key in data.get(table, {}), "[%s] %s missing from the default config" % (table, key)
    expected = configmod.defaults()
    for table in configmod.SCHEMA:
        assert getattr(default_cfg, table) == getattr(expected, table), table


def test_default_config_comments_every_key():
    with open(DEFAULT_CONFIG, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    keys = 0
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_][a-z0-9_]* = ", line) or re.match(r"^\[device\.overrides\]$", line):
            keys += 1
            assert lines[i - 1].startswith("# "), "no comment above line %d: %s" % (i + 1, line)
    assert keys == sum(len(k) for k in configmod.SCHEMA.values())


def test_default_config_is_rejected_when_broken(tmp_path):
    # The test above can fail: a typo in a key is reported with the file and the key.
    with open(DEFAULT_CONFIG, encoding="utf-8") as f:
        text = f.read().replace("token_cache =", "token_cach =")
    bad = tmp_path / "agent.toml"
    bad.write_text(text)
    with pytest.raises(configmod.ConfigError) as e:
        configmod.load(str(bad), check_files=False)
    assert "token_cach" in str(e.value) and str(bad) in str(e.value)


# ------------------------------------------------------------------------------- systemd-analyze
def _unit_dir(tmp_path, board: str) -> tuple[str, str]:
    """The board's unit files as the overlay ships them, with ExecStart pointing at a real zipapp."""
    app, notes = build_overlay.build_zipapp(0)
    files = build_overlay.overlay_files(board, app, notes)
    root = tmp_path / board
    units = root / "units"
    exe = root / "pass-agent"
    root.mkdir(parents=True, exist_ok=True)
    exe.write_bytes(app)
    exe.chmod(0o755)
    prefix = "usr/lib/systemd/system/"
    for path, (data, _mode) in files.items():
        if path.startswith(prefix):
            target = units / path[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            # verify checks that ExecStart= is executable: point it at the built zipapp.
            target.write_bytes(data.replace(b"/usr/bin/pass-agent", str(exe).encode()))
    return str(units), str(exe)


def _verify(units: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SYSTEMD_UNIT_PATH=units + ":")  # trailing ':' keeps the system's targets
    return subprocess.run([ANALYZE, "verify", "--man=no", os.path.join(units, "pass-agent.service"),
                           os.path.join(units, "pass-agent.socket")],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("board", build_overlay.list_boards(os.path.join(ROOT, "board")))
def test_systemd_analyze_verify_accepts_each_boards_units(tmp_path, board):
    units, _ = _unit_dir(tmp_path, board)
    r = _verify(units)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_catches_a_bad_directive(tmp_path):
    units, _ = _unit_dir(tmp_path, "generic-linux")
    path = os.path.join(units, "pass-agent.service")
    with open(path, "a", encoding="utf-8") as f:
        f.write("ProtectSystm=strict\n")
    r = _verify(units)
    assert "ProtectSystm" in r.stderr


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_offline_security_review_rates_the_service_ok(tmp_path):
    units, _ = _unit_dir(tmp_path, "broadcom-rdk")  # has the console drop-in: the weakest variant
    env = dict(os.environ, SYSTEMD_UNIT_PATH=units + ":")
    r = subprocess.run([ANALYZE, "security", "--offline=yes", "--man=no", "--no-pager",
                        os.path.join(units, "pass-agent.service")],
                       capture_output=True, text=True, env=env, timeout=60)
    m = re.search(r"Overall exposure level for pass-agent.service: ([0-9.]+)", r.stdout + r.stderr)
    if m is None:
        pytest.skip("this systemd-analyze has no offline security review: %s" % r.stderr.strip()[:200])
    print("systemd-analyze security exposure (broadcom-rdk):", m.group(1))
    assert float(m.group(1)) <= 2.5, r.stdout
