"""The command line as a user runs it: real subprocesses, exit codes and messages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBCOMMANDS = ["run", "demo", "emulator", "device-info", "token", "headers", "status", "check", "reset"]


def cli(*args, input=None, env=None):
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, input=input,
                          timeout=60, env=env)


def test_help_lists_every_subcommand():
    r = cli("--help")
    assert r.returncode == 0
    for name in SUBCOMMANDS + ["console-hash"]:
        assert name in r.stdout


@pytest.mark.parametrize("name", [s for s in SUBCOMMANDS if s != "emulator"])
def test_each_subcommand_has_help(name):
    r = cli(name, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: pass-agent " + name in r.stdout


def test_no_command_is_a_usage_error():
    r = cli()
    assert r.returncode == 2


def test_unknown_command_is_a_usage_error():
    r = cli("frobnicate")
    assert r.returncode == 2
    assert "invalid choice" in r.stderr


def test_check_reports_each_problem_and_exits_2(write_config):
    path = write_config('[adobe]\nsoftware_statement = "missing.jwt"\ntimeout = "ten"\n[socket]\nbogus = 1\n')
    r = cli("check", "--config", path)
    assert r.returncode == 2
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("fail")]
    assert len(lines) == 3
    assert any("[adobe] timeout: found 'ten'" in ln for ln in lines)
    assert any("[socket] unknown key 'bogus'" in ln for ln in lines)
    assert any("missing.jwt does not exist" in ln for ln in lines)
    assert "Traceback" not in r.stdout + r.stderr


def test_check_missing_config_file(tmp_path):
    r = cli("check", "--config", str(tmp_path / "none.toml"))
    assert r.returncode == 2
    assert "file not found" in r.stdout


def test_run_with_invalid_config_exits_2_without_traceback(write_config):
    path = write_config("[log]\nlevel = \"loud\"\n")
    r = cli("run", "--config", path)
    assert r.returncode == 2
    assert "[log] level: found 'loud'" in r.stderr
    assert "Traceback" not in r.stderr


def test_client_commands_fail_cleanly_without_an_agent(tmp_path):
    sock = str(tmp_path / "nothing.sock")
    for name in ("token", "headers", "status"):
        r = cli(name, "--socket", sock)
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        assert sock in r.stdout + r.stderr
        assert "Traceback" not in r.stderr


def test_emulator_and_console_hash_receive_their_own_arguments():
    r = cli("emulator", "--help")
    assert r.returncode == 0 and "--statement-out" in r.stdout
    r = cli("console-hash", "--stdin", input="s3cret-pass\n")
    assert r.returncode == 0
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith(("scrypt$", "pbkdf2_sha256$")) and "s3cret-pass" not in r.stdout
    from agent.consolehash import verify

    assert verify("s3cret-pass", line) and not verify("other", line)


def _check_config(tmp_path, statement_file, **extra):
    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "boards", "raspberrypi")
    lines = ['[adobe]', 'software_statement = "%s"' % statement_file, '[device]', 'board = "raspberrypi"',
             'root = "%s"' % fixture, '[storage]', 'dir = "%s"' % extra.get("store", tmp_path / "store"),
             '[socket]', 'path = "%s"' % (tmp_path / "run" / "agent.sock")]
    p = tmp_path / "agent.toml"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_check_all_pass_exits_0(tmp_path, statement_file):
    r = cli("check", "--config", _check_config(tmp_path, statement_file))
    assert r.returncode == 0, r.stdout
    names = [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("ok")]
    assert names == ["config", "statement", "board", "device-info", "storage", "keys", "socket", "clock"]
    assert "Raspberry Pi" in r.stdout and "all checks passed" in r.stdout
    assert "key provider device" in r.stdout and "hardware-backed: no" in r.stdout


def test_check_environment_failure_exits_1_with_a_fix(tmp_path, statement_file):
    blocker = tmp_path / "flash"
    blocker.write_text("not a directory")
    (tmp_path / "bad.jwt").write_text("this is not a JWT")
    path = _check_config(tmp_path, str(tmp_path / "bad.jwt"), store=blocker / "store")
    r = cli("check", "--config", path)
    assert r.returncode == 1, r.stdout
    fails = [ln for ln in r.stdout.splitlines() if ln.startswith("fail")]
    assert any("statement" in ln and "not a JWT" in ln for ln in fails)
    assert any("storage" in ln and "is not a directory" in ln for ln in fails)
    assert r.stdout.count("fix:") == 2 and "2 check(s) failed" in r.stdout


# -- check and run agree; missing dependencies and old Pythons get one line ------------------------

def test_bad_password_hash_fails_check_and_run_before_the_store_socket_or_network(tmp_path, statement_file):
    path = _check_config(tmp_path, statement_file)
    with open(path, "a") as f:
        f.write('[console]\npassword_hash = "scrypt$16384$8$1$c2FsdA$aGFzaA"\n')
    r = cli("check", "--config", path)
    assert r.returncode == 2, r.stdout
    assert "[console] password_hash" in r.stdout
    r = cli("run", "--config", path)
    assert r.returncode == 2, r.stderr
    assert "[console] password_hash" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "run").exists()


def _hide(tmp_path, *modules: str) -> dict:
    """An environment whose Python cannot import `modules` (as on a box image that lacks them)."""
    shim = tmp_path / "hide"
    for m in modules:
        (shim / m).mkdir(parents=True)
        (shim / m / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named '%s'\", name=%r)\n" % (m, m))
    return dict(os.environ, PYTHONPATH=str(shim))


@pytest.mark.parametrize("command", ["run", "check", "reset"])
def test_missing_cryptography_is_one_line_and_exit_2(tmp_path, statement_file, command):
    path = _check_config(tmp_path, statement_file)
    r = cli(command, "--config", path, env=_hide(tmp_path, "cryptography"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    out = (r.stdout + r.stderr).strip().splitlines()
    assert len(out) == 1 and "cryptography" in out[0] and "Traceback" not in r.stderr, out
    assert not (tmp_path / "store").exists()


def _python(version: str) -> str:
    exe = "/root/.pyenv/versions/%s/bin/python" % version
    if not os.access(exe, os.X_OK):
        pytest.skip("no Python %s at %s on this machine" % (version, exe))
    return exe


@pytest.mark.parametrize("module", ["agent", "agent.cli"])
@pytest.mark.parametrize("args", [["check"], ["run"], ["status"], ["--version"]])
def test_python_38_prints_one_line_and_exits_2(tmp_path, statement_file, module, args):
    py = _python("3.8.18")
    path = _check_config(tmp_path, statement_file)
    argv = args + (["--config", path] if args[0] in ("check", "run") else [])
    r = subprocess.run([py, "-m", module] + argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(out) == 1, out
    assert "Python 3.9" in out[0] and "3.8.18" in out[0]


@pytest.mark.parametrize("command", ["check", "run"])
def test_python_310_without_tomli_names_it_in_one_line(tmp_path, statement_file, command):
    """`run` looks for tomli without importing it (stage 1 imports no re or datetime); both say it."""
    py = _python("3.10.13")
    if subprocess.run([py, "-c", "import tomli"], capture_output=True).returncode == 0:
        pytest.skip("tomli is installed for %s" % py)
    r = subprocess.run([py, "-m", "agent", command, "--config", _check_config(tmp_path, statement_file)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(out) == 1, out
    assert "tomli" in out[0] and "Traceback" not in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="checking as another user needs root")
def test_check_as_user_tests_permissions_as_the_service_user(tmp_path, statement_file):
    import pwd
    import tempfile

    nobody = pwd.getpwuid(65534).pw_name
    pub = tempfile.mkdtemp(prefix="pa-check-", dir="/tmp")
    try:
        os.chmod(pub, 0o755)
        store = os.path.join(pub, "store")
        os.mkdir(store, 0o700)  # root's: the service user cannot write there
        stmt = os.path.join(pub, "statement.jwt")
        with open(statement_file) as src, open(stmt, "w") as dst:
            dst.write(src.read())
        os.chmod(stmt, 0o600)
        path = _check_config(tmp_path, stmt, store=store)
        r = cli("check", "--config", path)
        assert r.returncode == 0, r.stdout  # root can do everything
        r = cli("check", "--config", path, "--as-user", nobody)
        assert r.returncode == 1, r.stdout
        fails = [ln for ln in r.stdout.splitlines() if ln.startswith("fail")]
        assert any(ln.split()[1] == "statement" and "Permission denied" in ln for ln in fails), fails
        assert any(ln.split()[1] == "storage" and store in ln and "not writable by uid 65534" in ln
                   for ln in fails), fails
        assert "as user %s (uid 65534" % nobody in r.stdout
        os.chown(store, 65534, 65534)
        os.chown(stmt, 65534, 65534)
        r = cli("check", "--config", path, "--as-user", nobody)
        assert [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("fail")] == ["socket"], r.stdout
    finally:
        import shutil

        shutil.rmtree(pub, ignore_errors=True)


# -- status and reset output -----------------------------------------------------------------------

def _fake_agent(tmp_path, status: dict):
    """A one-shot socket answering agent.status with `status` (a real socket, a thread)."""
    import json
    import socket
    import threading

    path = str(tmp_path / "fake.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        with conn:
            buf = b""
            while not buf.endswith(b"\n"):
                buf += conn.recv(4096)
            req = json.loads(buf)
            conn.sendall(json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": status}).encode() + b"\n")
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return path, t


BACKING_OFF = {
    "state": "backing_off", "state_text": "backing off after an upstream error", "version": "0.1.0", "uptime": 42.5,
    "registered_at": None, "client_id_hint": None, "token": None,
    "last_error": {"code": "network", "kind": "retry", "message": "cannot reach sp.auth.adobe.com"},
    "upstream": {"register": {"ok": 1, "fail": 2}, "token": {"ok": 0}},
    "store": {"saves": 0, "writes": 0, "problem": None, "read_only": False, "generation": 0},
    "statement_sha256": "0123456789abcdef", "base_url": "https://sp.auth.adobe.com/o",
}


def test_status_prints_readable_lines_and_exit_3_without_a_valid_token(tmp_path):
    path, t = _fake_agent(tmp_path, BACKING_OFF)
    r = cli("status", "--socket", path)
    t.join()
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "{" not in r.stdout and "None" not in r.stdout and "'" not in r.stdout, r.stdout
    assert "no valid token" in r.stdout and "register 1 ok, 2 failed" in r.stdout
    assert "network" in r.stdout and "cannot reach" in r.stdout


def test_status_exit_0_with_a_valid_token_and_a_read_only_store_is_shown(tmp_path):
    import time as _time

    st = dict(BACKING_OFF, state="token_valid", state_text="holding a valid token", last_error=None,
              client_id_hint="a70e4b24", registered_at=_time.time() - 100,
              token={"expires_at": _time.time() + 3600, "refresh_at": _time.time() + 2800, "expires_in": 3600},
              store=dict(BACKING_OFF["store"], problem="read_only", read_only=True))
    path, t = _fake_agent(tmp_path, st)
    r = cli("status", "--socket", path)
    t.join()
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "read-only" in r.stdout and "None" not in r.stdout and "{" not in r.stdout


def test_reset_accepts_only_yes_and_says_everything_once(tmp_path):
    from agent.store import Store

    store = tmp_path / "store"
    s = Store(str(store), "dev-x")
    s.open()
    s.load()
    s.save({"client": {"client_id": "abcdef123", "client_secret": "sek"}})
    s.close()
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[storage]\ndir = "%s"\nruntime_dir = "%s"\n' % (store, tmp_path / "run"))
    for answer in ("y\n", "Y\n", "yes please\n", "\n"):
        r = cli("reset", "--config", str(cfg), input=answer)
        assert r.returncode == 1 and "cancelled" in r.stdout, (answer, r.stdout)
        assert (store / "slot-a.bin").exists()
    r = cli("reset", "--config", str(cfg), input="yes\n")
    assert r.returncode == 0, r.stdout + r.stderr
    text = r.stdout + r.stderr
    assert text.count(str(store)) == 2, text  # the question, then the one confirmation
    assert r.stderr == "" and "sek" not in text
    assert not (store / "slot-a.bin").exists()


def test_check_reports_a_read_only_store(tmp_path, statement_file):
    from tests.test_store_safety import read_only_refusal

    why = read_only_refusal()
    if why:
        pytest.skip(why)
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    path = _check_config(tmp_path, statement_file, store=store)
    sh = 'set -e; mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; shift; exec "$@"'
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", sh, "sh", str(store),
                        sys.executable, "-m", "agent", "check", "--config", path],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.split()[:2] == ["fail", "storage"])
    assert "read-only file system" in lines[i] and str(store) in lines[i]
    assert "remount" in lines[i + 1] and "fix:" in lines[i + 1]
