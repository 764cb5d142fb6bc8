"""A listening Unix socket file: taken from systemd, or created with its mode; removed only if ours.

Job: the one implementation of what stage 1 (agent/startup.py), the JSON-RPC server (agent/server.py)
and the gateway (agent/gateway/server.py, through Server._bind) do to get a listening socket:
- `listen_fds`: systemd socket activation (sd_listen_fds rules: the fds only when LISTEN_PID is this
  process; close-on-exec; the variables removed for children);
- `bind`: a new socket file at `path` with `mode`. The parent directory is created (0755) when missing,
  a world-writable one without the sticky bit is warned about; a stale socket nobody listens on is
  replaced, a live one or any other file never.
- `unlink_if_ours`: remove the file at close, only when it is still the one we created (a successor
  may already have replaced it).

Why bind at the path itself, born with its mode: the socket's address is then its path (getsockname,
a peer's getpeername, the "serving on" log line; an fd handed from stage 1 to stage 2 names its
path), and the file never exists with looser permissions than `mode`, not even briefly. The mode is
given to the unbound socket's inode with fchmod: Linux creates the file with that inode's mode minus
the umask (unix_bind), so the process umask is not changed (process-wide: another thread creating a
file meanwhile would get it), then chmod sets the exact mode. The earlier way, bind under a temporary
name, chmod, rename into place, left the temporary name as the socket's address and, after a crash
in between, a temporary file behind.

Must never: import socket, typing, logging or anything stage 1 does not already import (this module
is on the path to READY=1: tests/test_startup_imports.py); change the process umask; remove a file
that is not a socket, a socket another process listens on, or a socket file it did not create.
"""

from __future__ import annotations

import _socket  # not `socket`: it imports enum, selectors and collections (~5 ms) before READY=1
import os
import stat

from agent.errors import OPERATOR, AgentError

BACKLOG = max(_socket.SOMAXCONN, 4096)  # the kernel caps it at net.core.somaxconn
UNIX_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path), with its terminating NUL

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class SocketError(AgentError):
    """The socket cannot be set up (path in use, not a socket, too long, directory not writable)."""

    code = "socket_error"
    kind = OPERATOR


def listen_fds(unset: bool = True) -> list[int]:
    """File descriptors passed by systemd socket activation (sd_listen_fds semantics).

    Returns [] unless LISTEN_PID names this process. The fds start at 3 and are marked
    close-on-exec; with `unset` the variables are removed so children do not inherit them.
    """
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        n = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    finally:
        if unset:
            for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(k, None)
    if pid != os.getpid() or n <= 0:
        return []
    fds = list(range(3, 3 + n))
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds


def bind(path: str, mode: int, backlog: int = BACKLOG, log: Any = None) -> tuple[int, tuple[int, int]]:
    """Bind and listen on a new Unix socket file `path` with `mode`; returns (fd, (st_dev, st_ino)),
    the fd close-on-exec and blocking, the pair what unlink_if_ours needs. `log` (a logger, or None)
    gets the warning about an unsafe directory and the note about a replaced stale socket.
    Raises SocketError with the message and hint of the agent socket (callers reword them)."""
    n = len(os.fsencode(path))
    if n >= UNIX_PATH_MAX:
        raise SocketError("socket path %s is %d bytes long; Unix socket paths must be shorter than %d bytes"
                          % (path, n, UNIX_PATH_MAX),
                          hint="set socket.path to a shorter path such as /run/pass-agent/agent.sock")
    _make_parent(os.path.dirname(os.path.abspath(path)), log)
    _remove_stale(path, log)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        os.fchmod(sock.fileno(), mode)  # the file is born with `mode` minus the umask: never looser
        sock.bind(path)
        try:
            os.chmod(path, mode)  # the exact mode (the umask may have taken bits away)
            sock.listen(backlog)
            st = os.lstat(path)
        except OSError:
            _unlink(path)  # the file is ours and useless: a retry must not find a "stale" socket of ours
            raise
    except OSError as e:
        sock.close()
        raise SocketError("cannot create the agent socket %s: %s" % (path, e.strerror),
                          hint="check that the directory is writable by the agent's user and on a local filesystem")
    return sock.detach(), (st.st_dev, st.st_ino)


def unlink_if_ours(path: str, ident: tuple[int, int]) -> None:
    """Remove the socket file at `path` if it is still the one bind() created (`ident` is what bind
    returned): a successor may have replaced it meanwhile, and its file is not ours to remove."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == tuple(ident):
            os.unlink(path)
    except OSError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _make_parent(parent: str, log: Any) -> None:
    if not os.path.isdir(parent):
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
            os.chmod(parent, 0o755)  # makedirs' mode is filtered by the umask
        except OSError as e:
            raise SocketError("cannot create the socket directory %s: %s" % (parent, e.strerror),
                              hint="create it or set socket.path (systemd: RuntimeDirectory=pass-agent)")
        return
    st = os.stat(parent)
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX and log is not None:
        log.warning("socket directory %s is world-writable without the sticky bit: any local user could replace "
                    "the agent socket; use a directory such as /run/pass-agent (mode 0755)", parent)


def _remove_stale(path: str, log: Any) -> None:
    """Make way at `path`: nothing there, or a socket nobody listens on (removed). Raises SocketError
    for any other file and for a socket a process listens on."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketError("%s exists and is not a socket; refusing to remove it" % path,
                          hint="remove the file or set socket.path to another location")
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: a leftover from a crash
    except OSError as e:
        raise SocketError("cannot check whether another process listens on %s: %s" % (path, e.strerror),
                          hint="remove the stale socket by hand if no pass-agent is running")
    else:
        raise SocketError("another process is already listening on %s" % path,
                          hint="stop the other pass-agent (systemctl stop pass-agent) or set socket.path elsewhere")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    if log is not None:
        log.info("removed stale socket %s (nothing was listening on it)", path)
