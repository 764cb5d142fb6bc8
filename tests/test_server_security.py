"""Who may connect (SO_PEERCRED under real other uids/gids), stale sockets, and socket activation.

Peers of other uids are real processes: the test forks, drops to uid/gid 65534 (and test groups)
with setgroups/setgid/setuid, and talks to the server from there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile

import pytest

from agent import rpc
from agent.check import fork_as
from agent.server import Server, ServerError, listen_fds_from_env

try:
    from tests.fakes import TOKEN, FakeService, LineReader, ServerHarness, connect, request
except ImportError:  # tests/ on sys.path instead of the repo root
    from fakes import TOKEN, FakeService, LineReader, ServerHarness, connect, request

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")


@pytest.fixture
def pubdir():
    """A socket directory other users can traverse (pytest's tmp_path is private to root)."""
    d = tempfile.mkdtemp(prefix="pa-sec-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_user(path: str, uid: int, gid: int, groups: tuple = ()) -> dict:
    """Connect as another user in a forked child (agent.check.fork_as); return {"status": "ok", "line":
    first answer line, "eof": closed after an error} or {"status": "error", "errno": errno}."""
    def peer() -> dict:  # in the child: no pytest, no logging, just syscalls
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(path)
            s.sendall(request("token.get"))
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            eof = s.recv(1) == b"" if b'"error"' in buf else False
            return {"status": "ok", "line": buf.decode(), "eof": eof}
        except OSError as e:
            return {"status": "error", "errno": e.errno}

    res = fork_as(uid, gid, lambda: list(groups), peer)
    assert res is not None, "child as uid %d failed" % uid
    return res


@needs_root
def test_uid_not_allowed_is_denied_and_disconnected(pubdir: str) -> None:
    path = os.path.join(pubdir, "agent.sock")
    with ServerHarness(path, mode=0o666) as h:
        res = as_user(path, NOBODY, NOBODY)
        assert res["status"] == "ok", res
        msg = json.loads(res["line"])
        assert msg["id"] is None and msg["error"]["code"] == rpc.DENIED
        assert "uid 65534" in msg["error"]["message"] and msg["error"]["data"]["kind"] == "operator"
        assert TOKEN not in res["line"]
        assert res["eof"] is True
        st = h.stats()
        assert st["denied"] == 1 and st["accepted"] == 0 and st["connections"] == 0


@needs_root
@pytest.mark.parametrize(
    "acl,gid,groups",
    [
        ({"allow_uids": (NOBODY,)}, NOBODY, ()),
        ({"allow_gids": (12345,)}, 12345, ()),          # primary group
        ({"allow_gids": (12346,)}, NOBODY, (12346,)),   # supplementary group, via /proc/<pid>/status
    ],
    ids=["allowed-uid", "allowed-primary-gid", "allowed-supplementary-gid"],
)
def test_allowed_uid_and_gids(pubdir: str, acl: dict, gid: int, groups: tuple) -> None:
    path = os.path.join(pubdir, "agent.sock")
    with ServerHarness(path, mode=0o666, **acl):
        res = as_user(path, NOBODY, gid, groups)
        assert res["status"] == "ok", res
        assert json.loads(res["line"])["result"]["access_token"] == TOKEN


@needs_root
def test_other_group_is_denied(pubdir: str) -> None:
    path = os.path.join(pubdir, "agent.sock")
    with ServerHarness(path, mode=0o666, allow_gids=(12345,)):
        res = as_user(path, NOBODY, NOBODY, (12399,))
        assert json.loads(res["line"])["error"]["code"] == rpc.DENIED


@needs_root
def test_socket_mode_keeps_others_out_before_peercred(pubdir: str) -> None:
    path = os.path.join(pubdir, "agent.sock")
    with ServerHarness(path, mode=0o660, allow_uids=(NOBODY,)) as h:  # allowed, but no file permission
        res = as_user(path, NOBODY, NOBODY)
        assert res == {"status": "error", "errno": 13}  # EACCES from connect()
        assert h.stats()["accepted"] == 0


def test_stale_socket_is_replaced(tmp_path) -> None:
    path = str(tmp_path / "agent.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: what a crash leaves behind
    with ServerHarness(path):
        s = connect(path)
        s.sendall(request("agent.health"))
        assert LineReader(s).json()["result"]["live"] is True
        s.close()


def test_live_socket_is_not_stolen(tmp_path) -> None:
    path = str(tmp_path / "agent.sock")
    with ServerHarness(path):
        svc = FakeService()
        h2 = ServerHarness(path, svc)
        with pytest.raises(ServerError, match="already listening on " + str(tmp_path)) as ei:
            h2.server.start()
        assert ei.value.kind == "operator" and "systemctl stop" in str(ei.value)
        h2.loop.close()
        s = connect(path)  # the first server still owns it
        s.sendall(request("agent.health"))
        assert LineReader(s).json()["result"]["live"] is True
        s.close()


def test_regular_file_is_never_removed(tmp_path) -> None:
    path = tmp_path / "agent.sock"
    path.write_text("precious")
    h = ServerHarness(str(path))
    with pytest.raises(ServerError, match="not a socket"):
        h.server.start()
    h.loop.close()
    assert path.read_text() == "precious"


def test_too_long_path_is_refused(tmp_path) -> None:
    path = str(tmp_path / ("x" * 120) / "agent.sock")
    h = ServerHarness(path)
    with pytest.raises(ServerError, match="shorter than 108 bytes"):
        h.server.start()
    h.loop.close()


def test_listen_fds_from_env(monkeypatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert listen_fds_from_env() == []
    assert "LISTEN_PID" not in os.environ and "LISTEN_FDS" not in os.environ  # unset for children
    monkeypatch.setenv("LISTEN_PID", "garbage")
    assert listen_fds_from_env() == []


def test_adopting_a_non_unix_fd_is_refused(tmp_path) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    try:
        from agent.loop import Loop

        lp = Loop()
        srv = Server(FakeService(), lp, str(tmp_path / "x.sock"), listen_fd=tcp.fileno())
        with pytest.raises(ServerError, match="not an AF_UNIX SOCK_STREAM"):
            srv.start()
        lp.close()
    finally:
        tcp.close()


_ACTIVATED_CHILD = r"""
import os, sys
sys.path[:0] = [sys.argv[2], os.path.join(sys.argv[2], "tests")]
# What systemd does between fork and exec: the socket becomes fd 3, LISTEN_PID names us.
os.dup2(int(sys.argv[1]), 3)
os.close(int(sys.argv[1]))
os.environ["LISTEN_PID"] = str(os.getpid())
from agent.loop import Loop
from agent.server import Server, listen_fds_from_env
from fakes import FakeService
fds = listen_fds_from_env()
assert fds == [3], fds
assert "LISTEN_FDS" not in os.environ
loop = Loop()
srv = Server(FakeService(), loop, "/nonexistent/ignored.sock", listen_fd=fds[0])
srv.start()
loop.add_reader(0, loop.stop)  # stdin closed by the test: stop
print("READY", srv.path, flush=True)
loop.run()
srv.close()
print("STOPPED", flush=True)
"""


def test_socket_activation_with_an_inherited_fd(tmp_path) -> None:
    path = str(tmp_path / "activated.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(16)
    # Connect before the agent even runs: the kernel queues it, as with systemd activation.
    early = connect(path)
    early.sendall(request("token.get", None, 77))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, LISTEN_FDS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", _ACTIVATED_CHILD, str(lsock.fileno()), repo],
        pass_fds=(lsock.fileno(),), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
    )
    try:
        assert proc.stdout.readline().split() == ["READY", path]
        res = LineReader(early).json()
        assert res["id"] == 77 and res["result"]["access_token"] == TOKEN
        proc.stdin.close()
        assert proc.stdout.readline().strip() == "STOPPED"
        assert proc.wait(10) == 0
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # systemd's socket file is left alone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        early.close()
        lsock.close()
