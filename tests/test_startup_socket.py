"""The player socket and the device id across the two-stage start (agent/startup.py, agent/daemon.py).

One implementation binds the socket (agent/listensock.py) for stage 1 and for agent/server.py: the
file is born at its real path with no looser mode than configured, so its address (getsockname, a
peer's getpeername, the log line) is the path itself. The log line says where the socket came from:
bound by the agent or inherited from systemd. Stage 2 refuses to serve when it finds another device
id than the one stage 1 derived the store key from (`device_id_changed`). Real daemons, real sockets,
real files; the only hook is an audit hook in the daemon's own process.
"""

from __future__ import annotations

import os
import socket
import sys

from agent import listensock
from agent.client import Client
from agent.loop import Loop
from agent.server import Server

try:
    from tests.atready import at_ready
    from tests.fakes import FakeService
except ImportError:  # tests/ on sys.path instead of the repo root
    from atready import at_ready
    from fakes import FakeService


def test_a_socket_the_server_binds_has_its_real_path_as_address(tmp_path) -> None:
    # Bound under a temporary name and renamed, the socket kept the temporary name as its address.
    path = str(tmp_path / "agent.sock")
    loop = Loop()
    srv = Server(FakeService(), loop, path, mode=0o600)
    srv.start()
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        c.connect(path)
        assert c.getpeername() == path
        assert srv._sock.getsockname() == path
        assert sorted(os.listdir(str(tmp_path))) == ["agent.sock"]  # no temporary file beside it
        assert os.stat(path).st_mode & 0o7777 == 0o600
    finally:
        c.close()
        srv.close()
        loop.close()
    assert not os.path.exists(path)


def test_the_socket_file_is_born_with_no_looser_mode_than_configured(tmp_path, monkeypatch) -> None:
    # The mode the file has between bind() and the chmod that sets the exact mode, with the loosest umask.
    path = str(tmp_path / "agent.sock")
    born = []
    real_chmod = os.chmod

    def chmod(p, mode, *a, **kw):
        if p == path:
            born.append(os.lstat(p).st_mode & 0o7777)
        return real_chmod(p, mode, *a, **kw)

    monkeypatch.setattr(listensock.os, "chmod", chmod)
    old = os.umask(0)
    try:
        fd, ident = listensock.bind(path, 0o600)
        assert os.umask(0) == 0  # the process umask was not touched (other threads create files meanwhile)
    finally:
        os.umask(old)
    try:
        assert born and born[0] & ~0o600 == 0, oct(born[0] if born else -1)
        assert os.lstat(path).st_mode & 0o7777 == 0o600
        st = os.lstat(path)
        assert ident == (st.st_dev, st.st_ino)
    finally:
        os.close(fd)
        listensock.unlink_if_ours(path, ident)
    assert not os.path.exists(path)


def test_the_log_says_the_socket_was_bound_by_the_agent_not_inherited(make_agent, emu) -> None:
    agent = make_agent(emu)
    agent.start()
    agent.token(wait=15)
    with Client(agent.socket_path, timeout=20) as c:
        assert c._sock.getpeername() == agent.socket_path
    assert agent.stop() == 0
    log = agent.log()
    assert "serving JSON-RPC on %s (bound before READY=1, mode 600)" % agent.socket_path in log
    assert "socket activation" not in log
    assert not os.path.exists(agent.socket_path)  # the agent's own file is removed at stop


# What systemd does between fork and exec: the listening socket becomes fd 3, LISTEN_PID names the
# process (exec keeps the pid), LISTEN_FDS counts the fds.
_ACTIVATE = r"""
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_the_log_says_a_socket_from_systemd_is_inherited_with_its_own_mode(make_agent, emu, tmp_path) -> None:
    path = str(tmp_path / "activated.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    os.chmod(path, 0o620)  # systemd's SocketMode=, not the configuration's socket.mode
    lsock.listen(16)
    agent = make_agent(emu)  # socket.path names another file: systemd's socket is the one served
    agent.socket_path = path
    agent.argv_prefix = [sys.executable, "-c", _ACTIVATE, str(lsock.fileno())]
    agent.popen_kw = {"pass_fds": (lsock.fileno(),)}
    try:
        agent.start()
        agent.token(wait=15)
        assert agent.stop() == 0
    finally:
        lsock.close()
    log = agent.log()
    assert "serving JSON-RPC on %s (socket activation, mode 620)" % path in log
    assert "serving on %s (board" % path in log  # the daemon's summary line names the socket served
    assert agent.cfg.socket.path not in log
    assert "before READY=1" not in log
    assert os.path.exists(path)  # systemd's file: left alone


# At READY=1 (stage 1 has derived the device id and the store key from /etc/machine-id under the
# device root), the machine-id is replaced: stage 2 reads the box again and finds another id.
_NEW_MACHINE_ID = """
with open(arg, "w") as f:
    f.write("fedcba9876543210fedcba9876543210\\n")
"""


def test_a_device_id_that_changes_between_the_stages_stops_the_start(make_agent, emu, tmp_path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    machine_id = root / "etc" / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    agent = make_agent(emu, device__root=str(root))
    agent.argv_prefix = at_ready(_NEW_MACHINE_ID, str(machine_id))
    agent.start()  # READY=1 from stage 1
    assert agent.proc.wait(20) == 1  # FATAL: exit 1, not the operator's 2
    agent.stop()
    log = agent.log()
    assert "cannot start: the device identifier changed while the agent started (machine-id:" in log
    assert "[identity] sources" in log  # the hint
    assert any("STOPPING=1" in m for m in agent.notifications)
    assert not os.path.exists(agent.socket_path)  # stage 1's socket file is removed
    assert "serving JSON-RPC" not in log
