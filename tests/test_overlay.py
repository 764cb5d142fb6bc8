"""The image overlays: built for every board, unpacked into a temporary root, run from there.

The overlays are built once per module. Each is unpacked like an image build would, its layout and
metadata checked, and the agent inside (/usr/bin/pass-agent, the launcher script, running the modules
installed in /usr/lib/pass-agent/) run as a real process: `--version`, `device-info` on the board's
fixture tree (compared byte for byte with the agent run from the source tree), and `run` against a
real emulator over HTTPS, serving a token on its Unix socket.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
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
from agent.emulator import Emulator
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
    # The installed agent must stand alone: no source tree on the path, no board dir pointing into the repo.
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


@pytest.fixture(scope="module")
def app() -> bytes:
    """A zipapp for overlay_files() (the overlay installs its modules)."""
    return build_overlay.build_zipapp(EPOCH)[0]


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
def test_overlay_config_names_its_board_allows_the_player_group_and_is_otherwise_the_default(built, board):
    path = os.path.join(built["roots"][board], "etc/pass-agent/agent.toml")
    with open(path, "rb") as f:
        data = tomllib.load(f)
    # The shipped config lets the player group of sysusers.d/pass-agent.conf connect (issue 15 item 15).
    assert data["socket"]["allow_groups"] == ["pass-client"]
    # This machine has no pass-client group (sysusers creates it on the box): validate the rest.
    data["socket"]["allow_groups"] = []
    cfg = configmod.validate(data, path, check_files=False)
    assert cfg.device.board == board
    expected = configmod.defaults().replace(device={"board": board})
    for table in configmod.SCHEMA:
        assert getattr(cfg, table) == getattr(expected, table), table
    assert cfg.console.port == ""  # the console is off unless the overlay was built with --console


def _dropins(root: str) -> str:
    """Every drop-in of pass-agent.service in an unpacked root, concatenated."""
    d = os.path.join(root, "usr/lib/systemd/system/pass-agent.service.d")
    return "".join(_text(os.path.join(d, n)) for n in sorted(os.listdir(d))) if os.path.isdir(d) else ""


def test_board_dropin_only_where_the_board_needs_it(built):
    from agent import boards

    for board in BOARDS:
        profile = boards.load_profile(os.path.join(ROOT, "board", board, "board.toml"))
        dropin = os.path.join(built["roots"][board], "usr/lib/systemd/system/pass-agent.service.d/10-board.conf")
        tmpfiles = os.path.join(built["roots"][board], "usr/lib/tmpfiles.d/pass-agent-board.conf")
        text = _text(dropin) if os.path.exists(dropin) else ""
        storage = profile.get("storage_dir")
        if storage and storage != configmod.STORAGE_DEFAULT_DIR:
            assert "ReadWritePaths=%s" % storage in text
            # RDK keeps /opt on its own partition: the agent must not start before it is mounted.
            assert "[Unit]\nRequiresMountsFor=%s\n" % storage in text
            assert "d %s 0700 pass-agent pass-agent" % storage in _text(tmpfiles)
        else:
            assert "ReadWritePaths" not in text and not os.path.exists(tmpfiles)


@pytest.mark.parametrize("board", BOARDS)
def test_console_device_is_opened_only_when_a_console_port_is_configured(built, app, board):
    from agent import boards

    root = built["roots"][board]
    # Shipped as built by default: [console] port is empty, so the hardening stays whole.
    text = _dropins(root)
    for weakened in ("PrivateDevices", "DeviceAllow", "DevicePolicy", "SupplementaryGroups"):
        assert weakened not in text, (board, weakened)
    assert not os.path.exists(os.path.join(root, "usr/lib/sysusers.d/pass-agent-board.conf")) or \
        "dialout" not in _text(os.path.join(root, "usr/lib/sysusers.d/pass-agent-board.conf"))
    # Built with --console: the config names the board's tty, and the drop-in opens exactly that device.
    tty = boards.load_profile(os.path.join(ROOT, "board", board, "board.toml")).get("console_port")
    if not tty:
        with pytest.raises(build_overlay.BuildError, match="console"):
            build_overlay.overlay_files(board, app, [], console=True)
        return
    files = build_overlay.overlay_files(board, app, [], console=True)
    cfg = tomllib.loads(files["etc/pass-agent/agent.toml"][0].decode())
    assert cfg["console"]["port"] == tty
    console = files["usr/lib/systemd/system/pass-agent.service.d/20-console.conf"][0].decode()
    assert "PrivateDevices=no" in console and "DevicePolicy=closed" in console
    assert "DeviceAllow=%s rw" % tty in console
    assert "m pass-agent dialout" in files["usr/lib/sysusers.d/pass-agent-console.conf"][0].decode()


def _service(root: str) -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str
    p.read_string(_text(os.path.join(root, "usr/lib/systemd/system/pass-agent.service")))
    return p


def test_shipped_unit_disables_cores_stops_restarting_on_bad_config_and_waits_for_its_storage(built):
    for root in built["roots"].values():
        svc = _service(root)
        # Core dumps would hold the client secret, the token and the statement in plain text.
        assert svc["Service"]["LimitCORE"] == "0"
        # Exit 2 is a configuration or dependency error: restarting every 2 s cannot fix it.
        assert svc["Service"]["RestartPreventExitStatus"] == "2"
        assert configmod.STORAGE_DEFAULT_DIR in svc["Unit"]["RequiresMountsFor"].split()


def test_zipapp_contents(built):
    """The zipapp (pass-agent-<version>.pyz): the agent for the box, from which every overlay installs
    its modules."""
    path = os.path.join(built["out"], "pass-agent-%s.pyz" % __version__)
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        infos = zf.infolist()
    assert names == sorted(names) and "__main__.py" in names
    repo_agent = sorted("agent/" + n for n in os.listdir(os.path.join(ROOT, "agent")) if n.endswith(".py"))
    assert "agent/demo.py" in repo_agent and os.path.isdir(os.path.join(ROOT, "agent", "emulator"))
    # Every agent module but the demo; the emulator (agent/emulator/) and the demo on it stay off the box.
    assert [n for n in names if n.startswith("agent/") and n.count("/") == 1 and n.endswith(".py")] == \
        [n for n in repo_agent if n != "agent/demo.py"]
    assert not [n for n in names if n.startswith("agent/emulator/")]
    assert "serial/serialposix.py" in names and "serial/urlhandler/protocol_loop.py" in names
    assert "serial/serialwin32.py" not in names
    assert not [n for n in names if n.endswith((".pyc", ".so")) or n.startswith(("tools/", "tests/"))]
    assert not [n for n in names if n.startswith("cryptography/")]  # compiled: the image provides it
    assert {i.date_time for i in infos} == {time.gmtime(EPOCH)[:6]}
    # Every overlay installs the same modules: the zipapp's, as files under /usr/lib/pass-agent/.
    modules = sorted(n for n in names if "/" in n and not n.startswith("third-party/"))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for root in built["roots"].values():
            lib = os.path.join(root, "usr/lib/pass-agent")
            installed = sorted(os.path.relpath(os.path.join(d, f), lib).replace(os.sep, "/")
                               for d, _, fs in os.walk(lib) for f in fs)
            assert installed == modules
            for name in modules:
                with open(os.path.join(lib, name), "rb") as f:
                    assert f.read() == zf.read(name), name


@pytest.mark.parametrize("board", BOARDS)
def test_overlay_runs_the_agent_through_a_small_plain_launcher(built, board):
    with open(os.path.join(built["roots"][board], "usr/bin/pass-agent"), "rb") as f:
        launcher = f.read()
    assert launcher == build_overlay.LAUNCHER.encode() and len(launcher) < 4096
    # The box's Python, isolated: -I keeps /usr/bin off sys.path (and PYTHON* variables out).
    assert launcher.startswith(b"#!/usr/bin/python3 -I\n")
    compile(launcher, "pass-agent", "exec")  # a Python script, not an archive
    assert not zipfile.is_zipfile(io.BytesIO(launcher))


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
def test_installed_agent_runs_from_the_unpacked_root(built, board):
    app = os.path.join(built["roots"][board], "usr/bin/pass-agent")
    r = _run([app, "--version"])  # through the shebang, as systemd runs it
    assert r.returncode == 0 and r.stdout.strip() == "pass-agent " + __version__, r.stderr
    # The agent, pyserial and tomli come from /usr/lib/pass-agent, not from the source tree or
    # site-packages: the launcher run with a stand-in for the CLI that prints where they came from.
    lib = os.path.join(built["roots"][board], "usr/lib/pass-agent")
    probe = ("import runpy, sys\nsys.modules['agent.cli'] = type(sys)('agent.cli')\n"
             "def main():\n    import agent, serial, tomli\n"
             "    print(agent.__file__, serial.__file__, tomli.__file__)\n    return 0\n"
             "sys.modules['agent.cli'].main = main\nsys.argv = [sys.argv[1]]\nrunpy.run_path(sys.argv[0])\n")
    r = _run([sys.executable, "-I", "-c", probe, app])
    assert r.returncode == 0, r.stderr
    files = r.stdout.split()
    assert len(files) == 3 and all(f.startswith(lib + os.sep) for f in files), r.stdout


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
    # The installed agent finds exactly the board profiles installed beside it.
    other = next(b for b in BOARDS if b != board)
    r = _run([sys.executable, app, "device-info", "--board", other] + root_args)
    assert r.returncode == 2 and "known boards: %s" % board in r.stderr


# ---------------------------------------------------------------------------- the launcher (issue 20)
def _imported(stderr: str) -> set:
    """Module names in `python -X importtime` output."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line and "[us]" not in line}


@pytest.mark.parametrize("board", BOARDS[:1])
def test_installed_launcher_runs_the_agent_without_runpy(built, board):
    """A zipapp is run through runpy (with importlib.util, contextlib, ...: ~3 ms of every start, issue
    20); the installed /usr/bin/pass-agent is a plain script that Python runs directly."""
    app = os.path.join(built["roots"][board], "usr/bin/pass-agent")
    r = _run([sys.executable, "-I", "-X", "importtime", app, "--version"])
    assert r.returncode == 0 and r.stdout.strip() == "pass-agent " + __version__, r.stderr
    imported = _imported(r.stderr)
    assert "agent.cli" in imported  # the agent really ran, and importtime saw its imports
    assert "runpy" not in imported


@pytest.mark.parametrize("board", BOARDS[:1])
def test_installed_launcher_works_through_a_symlink_and_from_any_cwd(built, board, tmp_path):
    """/usr/local/bin/pass-agent -> /usr/bin/pass-agent, run by a relative path from elsewhere: the
    launcher finds the agent and the board profiles from where it really is."""
    fixture = os.path.join(FIXTURES, board)
    if not os.path.isdir(fixture):
        pytest.skip("no fixture tree for %s" % board)
    links = tmp_path / "local" / "bin"
    links.mkdir(parents=True)
    os.symlink(os.path.join(built["roots"][board], "usr/bin/pass-agent"), str(links / "pass-agent"))
    for args, cwd in (([os.path.join("bin", "pass-agent")], str(tmp_path / "local")),
                      ([sys.executable, "-I", os.path.join("local", "bin", "pass-agent")], str(tmp_path))):
        r = subprocess.run(args + ["device-info", "--board", board, "--decode", "--root", fixture], capture_output=True,
                           text=True, env=_env(), cwd=cwd, timeout=60)
        assert r.returncode == 0 and '"primaryHardwareType"' in r.stdout, (args, r.stderr)


@pytest.mark.parametrize("board", BOARDS[:1])
def test_no_file_beside_the_launcher_shadows_a_module(built, board, tmp_path):
    """A module file in /usr/bin must not replace the standard library's for the agent: -I (the
    shebang) keeps the script's directory off sys.path, and run without -I the launcher drops it."""
    root = str(tmp_path / "root")
    shutil.copytree(built["roots"][board], root, symlinks=True)
    with open(os.path.join(root, "usr/bin/argparse.py"), "w") as f:
        f.write("raise SystemExit('shadowed by usr/bin/argparse.py')\n")
    app = os.path.join(root, "usr/bin/pass-agent")
    for args in ([app], [sys.executable, app], [sys.executable, "-I", app]):
        r = _run(args + ["--version"])
        assert r.returncode == 0 and r.stdout.strip() == "pass-agent " + __version__, (args, r.stderr)


@pytest.mark.parametrize("board", BOARDS[:1])
def test_a_helper_spawned_from_the_installed_agent_finds_it(built, board, tmp_path):
    """The helper process (agent/helperproc.py) is spawned as `python3 -I -S -c ...` with the parent's
    sys.path: from the installed agent (<root>/usr/lib/pass-agent on sys.path, as the launcher puts it)
    it must find the agent there, do the AES-GCM and keep cryptography out of the parent."""
    lib = os.path.join(built["roots"][board], "usr/lib/pass-agent")
    code = ("import os, sys\nsys.path.insert(0, %r)\nfrom agent import helperproc, sealing\n"
            "assert sealing.__file__.startswith(%r + os.sep), sealing.__file__\n"
            "h = helperproc.Helper()\nk, n = os.urandom(32), os.urandom(12)\n"
            "assert h.decrypt(k, n, h.encrypt(k, n, b'x', b''), b'') == b'x'\n"
            "print(h.probe()['dumpable'], 'cryptography' in sys.modules)\nh.close()\n" % (lib, lib))
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                       env=_env(), timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["0", "False"], (r.stdout, r.stderr)


# ---------------------------------------------------------------------------- run against the emulator
@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    e = Emulator(state_dir=str(tmp_path_factory.mktemp("emulator")), tls=True)
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
def test_installed_agent_run_serves_a_token_from_the_overlay_config(built, emu, tmp_path, board):
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
    data["socket"].update(path=sock_path, mode=0o600, allow_groups=[])  # no pass-client group here
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


def test_compiled_zipapp_carries_reproducible_bytecode_and_runs(tmp_path, monkeypatch):
    import importlib.util

    a, _ = build_overlay.build_zipapp(EPOCH, compile_pyc=True)
    b, notes = build_overlay.build_zipapp(EPOCH, compile_pyc=True)
    assert a == b and any("bytecode for Python" in n for n in notes)
    with zipfile.ZipFile(io.BytesIO(a)) as zf:
        pyc = zf.read("agent/daemon.pyc")  # beside daemon.py, where zipimport looks
        assert "serial/serialposix.pyc" in zf.namelist()
        # bytecode stored, not deflated: inflating it cost each start ~6 ms (issue 20); sources deflated
        assert zf.getinfo("agent/daemon.pyc").compress_type == zipfile.ZIP_STORED
        assert zf.getinfo("agent/daemon.py").compress_type == zipfile.ZIP_DEFLATED
    # PEP 552 unchecked-hash pyc: this interpreter's magic, flags 0b01, no mtime.
    assert pyc[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(pyc[4:8], "little") == 1
    app = tmp_path / "pass-agent"
    app.write_bytes(a)
    app.chmod(0o755)
    r = _run([str(app), "--version"])
    assert r.returncode == 0 and r.stdout.strip() == "pass-agent " + __version__, r.stderr
    # The overlay installs that bytecode where the import system looks beside each module, and the
    # installed agent loads it from there (python -v names the file each module's code came from).
    files = build_overlay.overlay_files("generic-linux", a, notes)
    tag = sys.implementation.cache_tag
    assert files["usr/lib/pass-agent/agent/__pycache__/daemon.%s.pyc" % tag][0] == pyc
    root = tmp_path / "root"
    for path, (data, mode) in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
        (root / path).chmod(mode)
    r = _run([sys.executable, "-I", "-v", str(root / "usr/bin/pass-agent"), "--version"])
    assert r.returncode == 0 and r.stdout.strip() == "pass-agent " + __version__, r.stderr
    assert "# code object from '%s'" % (root / ("usr/lib/pass-agent/agent/__pycache__/cli.%s.pyc" % tag)) in r.stderr
    assert not [line for line in r.stderr.splitlines() if line.startswith("# wrote")]  # nothing written
    # Bytecode of another Python in the zipapp: the build says so rather than ship it under this tag.
    monkeypatch.setattr(importlib.util, "MAGIC_NUMBER", b"\x00\x00\r\n")
    with pytest.raises(build_overlay.BuildError, match="another Python version"):
        build_overlay.overlay_files("generic-linux", a, notes)


# ---------------------------------------------------------------------------- licences and vendoring
LICENCES = {"usr/share/doc/pass-agent/LICENSE": "Apache License",
            "usr/share/doc/pass-agent/third-party/pyserial/LICENSE.txt": "Chris Liechti",
            "usr/share/doc/pass-agent/third-party/tomli/LICENSE": "Taneli Hukkinen"}


def _zip_names(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return zf.namelist()


def test_overlay_ships_our_licence_and_those_of_what_it_vendors(built):
    for board, root in built["roots"].items():
        for path, mark in LICENCES.items():
            assert mark in _text(os.path.join(root, path)), (board, path)
        assert "END OF TERMS AND CONDITIONS" in _text(os.path.join(root, "usr/share/doc/pass-agent/LICENSE"))
        assert "Redistribution and use in source and binary forms" in \
            _text(os.path.join(root, "usr/share/doc/pass-agent/third-party/pyserial/LICENSE.txt"))
        info = _text(os.path.join(root, "usr/share/doc/pass-agent/BUILD-INFO"))
        assert "pyserial 3.5 (BSD-3-Clause)" in info and "tomli 2.0.1 (MIT)" in info
    # The zipapp is also handed out alone: it carries the same texts.
    with open(os.path.join(built["out"], "pass-agent-%s.pyz" % __version__), "rb") as f:
        names = _zip_names(f.read())
    assert {"LICENSE", "third-party/pyserial/LICENSE.txt", "third-party/tomli/LICENSE"} <= set(names)


def test_zipapp_does_not_depend_on_what_the_build_host_has_installed(monkeypatch):
    first, notes = build_overlay.build_zipapp(EPOCH)

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    # A build machine without pyserial and tomli (or with other versions) builds the same bytes.
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    again, notes_again = build_overlay.build_zipapp(EPOCH)
    assert again == first and notes_again == notes
    names = _zip_names(first)
    assert "tomli/_parser.py" in names and "serial/serialposix.py" in names  # tomli always: Python 3.9/3.10
    assert any(n.startswith("pyserial 3.5") for n in notes) and any(n.startswith("tomli 2.0.1") for n in notes)


def test_a_vendored_wheel_that_differs_from_its_pin_fails_the_build(tmp_path, monkeypatch):
    vendor = tmp_path / "vendor"
    shutil.copytree(build_overlay.VENDOR_DIR, str(vendor))
    wheel = next(p for p in vendor.iterdir() if p.name.startswith("tomli-"))
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    monkeypatch.setattr(build_overlay, "VENDOR_DIR", str(vendor))
    with pytest.raises(build_overlay.BuildError, match="sha256") as e:
        build_overlay.build_zipapp(EPOCH)
    assert wheel.name in str(e.value)


@pytest.mark.parametrize("board", BOARDS[:1])
def test_zipapp_help_lists_only_the_commands_it_has(built, board):
    app = os.path.join(built["roots"][board], "usr/bin/pass-agent")
    r = _run([app, "--help"])
    assert r.returncode == 0, r.stderr
    listed = re.findall(r"^    ([a-z][a-z-]+)\s", r.stdout, re.M)
    assert "run" in listed and "token" in listed and "check" in listed
    # demo and emulator are not in the box build: neither listed nor suggested.
    assert "demo" not in listed and "emulator" not in listed and "demo" not in r.stdout
    # Asked for anyway, the emulator is refused in one line that says where it is (not a traceback).
    r = _run([app, "emulator", "--help"])
    assert r.returncode == 1 and "not part of this build" in r.stderr and "Traceback" not in r.stderr, r.stderr
    for cmd in listed:  # every command it lists is really there
        r = _run([app, cmd, "--help"], input="")
        assert r.returncode == 0 and "not available" not in r.stderr, (cmd, r.stderr)
    # The source tree, which has the emulator, still offers both.
    src = subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert re.search(r"^    demo\s", src.stdout, re.M) and re.search(r"^    emulator\s", src.stdout, re.M)


# ---------------------------------------------------------------------------- systemd-analyze
ANALYZE = shutil.which("systemd-analyze")


def _unit_dir(tmp_path, files: dict, exe: str) -> str:
    """The overlay's unit files in a folder of their own, ExecStart pointing at a real executable."""
    units = tmp_path / "units"
    prefix = "usr/lib/systemd/system/"
    for path, (data, _mode) in files.items():
        if path.startswith(prefix):
            target = units / path[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data.replace(b"/usr/bin/pass-agent", exe.encode()))
    return str(units)


def _exposure(units: str) -> float:
    env = dict(os.environ, SYSTEMD_UNIT_PATH=units + ":")
    r = subprocess.run([ANALYZE, "security", "--offline=yes", "--man=no", "--no-pager",
                        os.path.join(units, "pass-agent.service")], capture_output=True, text=True, env=env, timeout=60)
    m = re.search(r"Overall exposure level for pass-agent.service: ([0-9.]+)", r.stdout + r.stderr)
    if m is None:
        pytest.skip("this systemd-analyze has no offline security review: %s" % r.stderr.strip()[:200])
    return float(m.group(1))


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_console_variant_verifies_and_only_it_opens_devices(built, app, tmp_path):
    board = "broadcom-rdk"  # a console tty and a storage place of its own: every drop-in
    exe = os.path.join(built["roots"][board], "usr/bin/pass-agent")
    plain = _unit_dir(tmp_path / "plain", build_overlay.overlay_files(board, app, []), exe)
    console = _unit_dir(tmp_path / "console", build_overlay.overlay_files(board, app, [], console=True), exe)
    env = dict(os.environ, SYSTEMD_UNIT_PATH=console + ":")
    r = subprocess.run([ANALYZE, "verify", "--man=no", os.path.join(console, "pass-agent.service"),
                        os.path.join(console, "pass-agent.socket")], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    default, opened = _exposure(plain), _exposure(console)
    print("systemd-analyze security exposure (%s): default %.1f, with --console %.1f" % (board, default, opened))
    assert default < opened <= 2.5


# ---------------------------------------------------------------------------- Yocto and Buildroot
YOCTO = os.path.join(ROOT, "board", "yocto", "pass-agent_0.1.bb")
BUILDROOT = os.path.join(ROOT, "board", "buildroot", "pass-agent")


@pytest.mark.parametrize("usrmerge", [False, True])
def test_yocto_do_install_puts_units_into_the_systemd_unitdir(built, tmp_path, usrmerge):
    body = re.search(r"^do_install\(\) \{\n(.*?)^\}", _text(YOCTO), re.S | re.M).group(1)
    unitdir = "/usr/lib/systemd/system" if usrmerge else "/lib/systemd/system"
    dest = tmp_path / "image"
    dest.mkdir()
    env = dict(os.environ, S=built["roots"]["broadcom-rdk"], D=str(dest), systemd_system_unitdir=unitdir,
               bindir="/usr/bin", sysconfdir="/etc", datadir="/usr/share", docdir="/usr/share/doc",
               nonarch_libdir="/usr/lib")
    shim = "" if os.geteuid() == 0 else "chown() { :; }\n"  # bitbake runs do_install under pseudo (fakeroot)
    r = subprocess.run(["bash", "-euc", shim + body], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    installed = sorted(os.path.relpath(os.path.join(d, f), str(dest)) for d, _, fs in os.walk(str(dest)) for f in fs)
    units = unitdir.lstrip("/")
    assert {units + "/pass-agent.service", units + "/pass-agent.socket",
            units + "/pass-agent.service.d/10-board.conf"} <= set(installed)
    # Nowhere else: without usrmerge, units left in /usr/lib/systemd/system are never loaded.
    assert [p for p in installed if "/systemd/system/" in p and not p.startswith(units + "/")] == []
    assert "usr/bin/pass-agent" in installed and "etc/pass-agent/agent.toml" in installed
    assert "usr/lib/pass-agent/agent/cli.py" in installed and "usr/lib/pass-agent/serial/serialposix.py" in installed
    assert set(LICENCES) <= set(installed)
    # Every installed file is in the package: FILES:${PN} (or the units, which systemd.bbclass adds).
    # bitbake fails an image whose recipe installs files no package ships (installed-vs-shipped).
    files = re.search(r'^FILES:\$\{PN\} \+= " \\\n(.*?)^"', _text(YOCTO), re.S | re.M).group(1)
    shipped = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], f).lstrip("/")
               for f in files.replace("\\", " ").split()]
    for path in installed:
        assert path.startswith(units + "/") or any(path == f or path.startswith(f + "/") for f in shipped), path


def test_yocto_recipe_declares_every_licence_with_its_checksum(built):
    text = _text(YOCTO)
    assert re.search(r'^LICENSE = "Apache-2.0 & BSD-3-Clause & MIT"$', text, re.M)
    entries = re.findall(r"file://([^;\s]+);md5=([0-9a-f]{32})", text)
    assert sorted(p for p, _ in entries) == sorted(LICENCES)
    for board, root in built["roots"].items():  # ${S} is the unpacked overlay
        for path, md5 in entries:
            with open(os.path.join(root, path), "rb") as f:
                assert hashlib.md5(f.read()).hexdigest() == md5, (board, path)
    assert "python3-tomli" not in text.split("RDEPENDS")[-1]  # vendored now


def _hash_lines(text: str) -> list[tuple[str, str]]:
    return [(h, f) for t, h, f in (line.split() for line in text.splitlines() if line.strip()
                                   and not line.startswith("#")) if t == "sha256"]


def test_buildroot_package_declares_licences_and_hashes_them(built):
    mk = _text(os.path.join(BUILDROOT, "pass-agent.mk")).replace("\\\n", " ")  # join continued lines
    assert re.search(r"^PASS_AGENT_LICENSE = Apache-2.0, BSD-3-Clause \(pyserial\), MIT \(tomli\)$", mk, re.M)
    files = re.search(r"^PASS_AGENT_LICENSE_FILES = (.*)$", mk, re.M).group(1).split()
    assert sorted(files) == sorted(LICENCES)
    committed = _hash_lines(_text(os.path.join(BUILDROOT, "pass-agent.hash")))
    assert sorted(f for _, f in committed) == sorted(LICENCES)
    for h, f in committed:
        with open(os.path.join(built["roots"]["generic-linux"], f), "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == h, f
    # The build writes the hash file Buildroot needs: the same licence lines plus every tarball it built.
    generated = _hash_lines(_text(os.path.join(built["out"], "pass-agent.hash")))
    assert [x for x in generated if x in committed] == committed
    tarballs = {f: h for h, f in generated if f.endswith(".tar.gz")}
    assert sorted(tarballs) == sorted(os.path.basename(p) for p in built["tarballs"].values())
    for path in built["tarballs"].values():
        with open(path, "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == tarballs[os.path.basename(path)]
