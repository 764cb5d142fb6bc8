"""The image overlays: built for every board, unpacked into a temporary root, run from there.

The overlays are built once per module. Each is unpacked like an image build would, its layout and
metadata checked, and the zipapp inside run as a real process: `--version`, `device-info` on the
board's fixture tree (compared byte for byte with the agent run from the source tree), and `run`
against a real emulator over HTTPS, serving a token on its Unix socket.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest

from agent import __version__
from agent import config as configmod
from agent.client import Client
from tools import build_overlay

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOARDS = build_overlay.list_boards(os.path.join(ROOT, "board"))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "boards")
EPOCH = 1700000000


def _env() -> dict:
    # The zipapp must stand alone: no source tree on the path, no board dir pointing into the repo.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PASS_AGENT_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    out = str(tmp_path_factory.mktemp("overlays"))
    printed: list[str] = []
    tarballs = build_overlay.build(BOARDS, out, epoch=EPOCH, echo=printed.append)
    roots = {}
    for board, path in tarballs.items():
        root = str(tmp_path_factory.mktemp("root-" + board))
        with tarfile.open(path) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(root)
        roots[board] = root
    return {"out": out, "tarballs": tarballs, "roots": roots, "printed": printed}


def _members(path: str) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def _text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=_env(), cwd="/", timeout=60, **kw)


def test_every_board_has_an_overlay_and_sizes_are_printed(built):
    assert len(BOARDS) >= 4 and "generic-linux" in BOARDS
    assert sorted(built["tarballs"]) == BOARDS
    for board, path in built["tarballs"].items():
        assert os.path.basename(path) == "pass-agent-%s-%s.tar.gz" % (__version__, board)
    printed = "\n".join(built["printed"])
    assert "pass-agent-%s.pyz" % __version__ in printed and "bytes" in printed
    assert printed.count("overlay ") == len(BOARDS)


@pytest.mark.parametrize("board", BOARDS)
def test_overlay_layout_and_metadata(built, board):
    members = {m.name: m for m in _members(built["tarballs"][board])}
    for must in ("./usr/bin/pass-agent", "./usr/lib/systemd/system/pass-agent.service",
                 "./usr/lib/systemd/system/pass-agent.socket", "./usr/lib/sysusers.d/pass-agent.conf",
                 "./usr/lib/tmpfiles.d/pass-agent.conf", "./etc/pass-agent/agent.toml",
                 "./usr/share/pass-agent/board/%s/board.toml" % board, "./usr/share/doc/pass-agent/README.md",
                 "./usr/share/doc/pass-agent/BUILD-INFO", "./usr/share/doc/pass-agent/IMAGE.md"):
        assert must in members, must
    names = list(members)
    assert names == sorted(names)
    for m in members.values():
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "root", "root", EPOCH), m.name
        assert m.isdir() or m.isfile(), m.name  # no links, devices or fifos
        expected = 0o755 if m.isdir() or m.name == "./usr/bin/pass-agent" else 0o644
        assert m.mode == expected, (m.name, oct(m.mode))
    # Only this board's profile, byte-identical to the repository's.
    assert [n for n in names if n.startswith("./usr/share/pass-agent/board/") and n.endswith("board.toml")] == \
        ["./usr/share/pass-agent/board/%s/board.toml" % board]
    root = built["roots"][board]
    with open(os.path.join(ROOT, "board", board, "board.toml"), "rb") as a, \
            open(os.path.join(root, "usr/share/pass-agent/board", board, "board.toml"), "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("board", BOARDS)
def test_overlay_config_names_its_board_and_is_otherwise_the_default(built, board):
    path = os.path.join(built["roots"][board], "etc/pass-agent/agent.toml")
    with open(path, "rb") as f:
        cfg = configmod.validate(tomllib.load(f), path, check_files=False)
    assert cfg["device"]["board"] == board
    expected = configmod.defaults()
    expected["device"]["board"] = board
    for table in configmod.SCHEMA:
        assert cfg[table] == expected[table], table


def test_board_dropin_only_where_the_board_needs_it(built):
    for board in BOARDS:
        from agent import boards

        profile = boards.load_profile(os.path.join(ROOT, "board", board, "board.toml"))
        dropin = os.path.join(built["roots"][board], "usr/lib/systemd/system/pass-agent.service.d/10-board.conf")
        tmpfiles = os.path.join(built["roots"][board], "usr/lib/tmpfiles.d/pass-agent-board.conf")
        text = _text(dropin) if os.path.exists(dropin) else ""
        storage = profile.get("storage_dir")
        if storage and storage != configmod.STORAGE_DEFAULT_DIR:
            assert "ReadWritePaths=%s" % storage in text
            assert "d %s 0700 pass-agent pass-agent" % storage in _text(tmpfiles)
        else:
            assert "ReadWritePaths" not in text and not os.path.exists(tmpfiles)
        if profile.get("console_port"):
            assert "DeviceAllow=%s rw" % profile["console_port"] in text and "PrivateDevices=no" in text
        else:
            assert "DeviceAllow" not in text


def test_zipapp_contents(built):
    path = os.path.join(built["out"], "pass-agent-%s.pyz" % __version__)
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        infos = zf.infolist()
    assert names == sorted(names) and "__main__.py" in names
    repo_agent = sorted("agent/" + n for n in os.listdir(os.path.join(ROOT, "agent")) if n.endswith(".py"))
    assert [n for n in names if n.startswith("agent/") and n.count("/") == 1 and n.endswith(".py")] == repo_agent
    assert "serial/serialposix.py" in names and "serial/urlhandler/protocol_loop.py" in names
    assert "serial/serialwin32.py" not in names
    assert not [n for n in names if n.endswith((".pyc", ".so")) or n.startswith(("tools/", "tests/"))]
    assert not [n for n in names if n.startswith("cryptography/")]  # compiled: the image provides it
    assert {i.date_time for i in infos} == {time.gmtime(EPOCH)[:6]}
    # The same zipapp is what every overlay installs.
    for root in built["roots"].values():
        with open(os.path.join(root, "usr/bin/pass-agent"), "rb") as f:
            assert f.read() == data


def test_two_builds_are_byte_identical_and_follow_source_date_epoch(built, tmp_path, monkeypatch):
    again = build_overlay.build(BOARDS, str(tmp_path / "a"), epoch=EPOCH, echo=lambda *_: None)
    for board in BOARDS:
        with open(built["tarballs"][board], "rb") as a, open(again[board], "rb") as b:
            data = a.read()
            assert data == b.read(), board
        # gzip header: no file name (FLG 0) and MTIME = the epoch, not the build time.
        assert data[3] == 0 and int.from_bytes(data[4:8], "little") == EPOCH
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    other = build_overlay.build(BOARDS[:1], str(tmp_path / "b"), echo=lambda *_: None)
    assert {m.mtime for m in _members(other[BOARDS[0]])} == {1600000000}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(build_overlay.BuildError, match="SOURCE_DATE_EPOCH"):
        build_overlay.build(BOARDS[:1], str(tmp_path / "c"), echo=lambda *_: None)


def test_cli_rejects_an_unknown_board(tmp_path, capsys):
    assert build_overlay.main(["--board", "no-such-board", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no-such-board" in err and "generic-linux" in err
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("board", BOARDS)
def test_zipapp_runs_from_the_unpacked_root(built, board):
    app = os.path.join(built["roots"][board], "usr/bin/pass-agent")
    r = _run([app, "--version"])  # through the shebang, as systemd runs it
    assert r.returncode == 0 and r.stdout.strip() == "pass-agent " + __version__, r.stderr
    # The agent and pyserial come from the zipapp, not from the source tree or site-packages.
    r = _run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import agent, serial; "
              "print(agent.__file__); print(serial.__file__)", app])
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(app + os.sep) for line in r.stdout.split()), r.stdout


@pytest.mark.parametrize("board", BOARDS)
def test_zipapp_device_info_matches_the_source_tree(built, board):
    app = os.path.join(built["roots"][board], "usr/bin/pass-agent")
    fixture = os.path.join(FIXTURES, board)
    root_args = ["--root", fixture] if os.path.isdir(fixture) else []
    if not root_args:
        pytest.skip("no fixture tree for %s" % board)
    r = _run([sys.executable, app, "device-info", "--board", board, "--decode"] + root_args)
    assert r.returncode == 0, r.stderr
    decoded = json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1])
    assert decoded["primaryHardwareType"] == "SetTopBox" and decoded["osName"] == "Linux"
    src = subprocess.run([sys.executable, "-m", "agent", "device-info", "--board", board, "--decode"] + root_args,
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert src.returncode == 0 and r.stdout == src.stdout
    # The zipapp finds exactly the board profiles installed beside it.
    other = next(b for b in BOARDS if b != board)
    r = _run([sys.executable, app, "device-info", "--board", other] + root_args)
    assert r.returncode == 2 and "known boards: %s" % board in r.stderr


# ---------------------------------------------------------------------------- run against the emulator
@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    emulator = pytest.importorskip("tools.emulator")
    e = emulator.Emulator(state_dir=str(tmp_path_factory.mktemp("emulator")), tls=True)
    e.start()
    yield e
    e.stop()


def _wait_ready(notify: socket.socket, proc: subprocess.Popen, log: str, timeout: float = 30.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("agent exited with %s before READY=1:\n%s" % (proc.returncode, _text(log)))
        notify.settimeout(0.5)
        try:
            msg = notify.recv(65536).decode()
        except socket.timeout:
            continue
        got.append(msg)
        if "READY=1" in msg:
            return got
    raise AssertionError("no READY=1 within %.0f s; got %r\n%s" % (timeout, got, _text(log)))


@pytest.mark.parametrize("board", BOARDS)
def test_zipapp_run_serves_a_token_from_the_overlay_config(built, emu, tmp_path, board):
    root = built["roots"][board]
    fixture = os.path.join(FIXTURES, board)
    if not os.path.isdir(fixture):
        pytest.skip("no fixture tree for %s" % board)
    # The overlay's own config, with the box's paths moved into the test's temporary directory.
    with open(os.path.join(root, "etc/pass-agent/agent.toml"), "rb") as f:
        data = tomllib.load(f)
    statement = str(tmp_path / "statement.jwt")
    emu.write_statement(statement)
    sock_path = str(tmp_path / "agent.sock")
    data["adobe"].update(base_url=emu.base_url, software_statement=statement, ca_file=emu.ca_file)
    data["device"]["root"] = fixture
    data["storage"].update(dir=str(tmp_path / "store"), runtime_dir=str(tmp_path / "run"))
    data["socket"].update(path=sock_path, mode=0o600)
    config = tmp_path / "agent.toml"
    config.write_text(configmod.to_toml(configmod.validate(data, check_files=True)))
    assert 'board = "%s"' % board in config.read_text()

    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    log = str(tmp_path / "agent.log")
    env = dict(_env(), NOTIFY_SOCKET=notify_path)
    with open(log, "wb") as logf:
        proc = subprocess.Popen([os.path.join(root, "usr/bin/pass-agent"), "run", "--config", str(config)],
                                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd="/")
    try:
        _wait_ready(notify, proc, log)
        with Client(sock_path, timeout=20) as c:
            tok = c.token(wait=20)
            status = c.status()
        assert tok["token_type"] == "bearer" and tok["expires_in"] > 0 and tok["access_token"]
        assert status["version"] == __version__ and status["state_text"] == "holding a valid token"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    output = _text(log)
    # Secrets never reach the journal: the token, the statement, the client secrets the emulator issued.
    secrets = {tok["access_token"], _text(statement).strip()}
    secrets |= {c["secret"] for c in emu._service.clients.values()}  # test-only peek at the emulator
    assert len(secrets) >= 3 and not [s[:4] for s in secrets if s in output]
    assert "serving on %s" % sock_path in output


def test_compiled_zipapp_carries_reproducible_bytecode_and_runs(tmp_path):
    import importlib.util

    a, _ = build_overlay.build_zipapp(EPOCH, compile_pyc=True)
    b, notes = build_overlay.build_zipapp(EPOCH, compile_pyc=True)
    assert a == b and any("bytecode for Python" in n for n in notes)
    with zipfile.ZipFile(io.BytesIO(a)) as zf:
        pyc = zf.read("agent/daemon.pyc")  # beside daemon.py, where zipimport looks
        assert "serial/serialposix.pyc" in zf.namelist()
    # PEP 552 unchecked-hash pyc: this interpreter's magic, flags 0b01, no mtime.
    assert pyc[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(pyc[4:8], "little") == 1
    app = tmp_path / "pass-agent"
    app.write_bytes(a)
    app.chmod(0o755)
    r = _run([str(app), "--version"])
    assert r.returncode == 0 and r.stdout.strip() == "pass-agent " + __version__, r.stderr
