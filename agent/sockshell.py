"""Accept-side pieces shared by the daemon's three socket servers.

Job: what agent/server.py (the JSON-RPC Unix socket), agent/gateway/server.py (the REST gateway's Unix
socket) and agent/web/server.py (the loopback WebSocket endpoint) do alike before and around a
connection: the bounded accept batch (with a pause when the process is out of file descriptors),
the peer caps (max connections, max per uid) and their per-uid count, the one idle-sweep timer
armed while connections exist, and the goodbye of the two Unix-socket servers (a last message, then
a lingering close). Each server keeps its own policy: what an accept error means, how a busy peer
is answered, which connection counts as idle.

Must never: read or write a live connection's bytes (each server's hot path stays its own, with no
extra call; a goodbye only writes the last bytes of a socket its server is done with and discards
what still comes), block, or hold a connection or timer after its server closed it.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Callable, Mapping, MutableMapping, Optional

from agent import clock as _clock
from agent.loop import Loop

ACCEPT_BATCH = 64   # accepts per readable event: established connections run between bursts
ACCEPT_PAUSE = 0.5  # seconds without accepting after the process ran out of file descriptors
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
LINGER_TIME = 2.0   # after a last message, discard the peer's input this long before closing
LINGER_BYTES = 1024 * 1024
MAX_LINGER = 64     # sockets lingering at once; beyond, closed at once (fds matter more then)


def accept_batch(lsock: socket.socket, on_sock: Callable[[socket.socket], None],
                 on_error: Callable[[OSError], bool]) -> None:
    """Accept up to ACCEPT_BATCH pending connections and hand each to on_sock.

    Stops when none is pending. An accept error goes to on_error: True accepts on, False stops
    (it may also raise)."""
    for _ in range(ACCEPT_BATCH):
        try:
            sock, _addr = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if on_error(e):
                continue
            return
        on_sock(sock)


class AcceptPause:
    """A listener out of file descriptors (EMFILE and kin at accept()) stops accepting for
    ACCEPT_PAUSE s instead of spinning on a listening socket that stays readable while no fd is free,
    and says once per pause what to change. One per server; cancel() when the server closes."""

    def __init__(self, loop: Loop, on_accept: Callable[[], None], log: Any, section: str) -> None:
        self.loop, self.on_accept, self.log = loop, on_accept, log
        self.section = section  # where max_connections is set: "socket.", "[gateway] ", "[web] "
        self._timer: Any = None

    def pause(self, e: OSError, lsock: socket.socket, where: str) -> bool:
        """True when `e` means out of fds: accepts on lsock paused (the caller stops its batch);
        False: any other error, the caller's to judge."""
        if e.errno not in OUT_OF_FDS:
            return False
        self.log.error("cannot accept on %s: %s; pausing accepts for %g s (raise LimitNOFILE= or lower "
                       "%smax_connections)", where, e.strerror, ACCEPT_PAUSE, self.section)
        self.loop.remove_reader(lsock.fileno())
        self._timer = self.loop.call_later(ACCEPT_PAUSE, lambda: self._resume(lsock))
        return True

    def _resume(self, lsock: socket.socket) -> None:
        self._timer = None
        if lsock.fileno() >= 0:  # -1 once the server closed (or detached) it
            self.loop.add_reader(lsock.fileno(), self.on_accept)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def busy_reason(who: str, section: str, nconns: int, max_connections: int,
                per_uid: Optional[Mapping[int, int]] = None, uid: int = -1, max_per_uid: int = 0,
                noun: str = "connections") -> Optional[str]:
    """Why a new peer is over the caps (None when it is not): `who` serves `nconns` already, or uid
    holds `max_per_uid`; `section` prefixes the setting names in the message ("socket.", "[web] ")."""
    if nconns >= max_connections:
        return "%s already serves %d %s (%smax_connections)" % (who, nconns, noun, section)
    if per_uid is not None and per_uid.get(uid, 0) >= max_per_uid:
        return "uid %d already holds %d connections (%smax_per_uid)" % (uid, max_per_uid, section)
    return None


def count_peer(per_uid: MutableMapping[int, int], uid: int) -> None:
    per_uid[uid] = per_uid.get(uid, 0) + 1


def release_peer(per_uid: MutableMapping[int, int], uid: int) -> None:
    """One connection of uid fewer; a uid with none left is forgotten (the map stays bounded)."""
    n = per_uid.get(uid, 1) - 1
    if n:
        per_uid[uid] = n
    else:
        per_uid.pop(uid, None)


def sweep_period(timeout: float) -> float:
    """How often the idle sweep runs: a quarter of the shortest timeout, within 50 ms .. 30 s."""
    return min(max(timeout / 4.0, 0.05), 30.0)


class IdleSweep:
    """One timer for all of a server's connections, armed while it has any.

    `check(now)` closes whatever the server counts as idle; the sweep re-arms itself only while
    `conns` is not empty, so an idle server has no timer."""

    __slots__ = ("_loop", "_every", "_conns", "_check", "_timer")

    def __init__(self, loop: Loop, every: float, conns: Mapping[Any, Any], check: Callable[[float], None]) -> None:
        self._loop = loop
        self._every = every
        self._conns = conns
        self._check = check
        self._timer: Any = None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(self._every, self._fire)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        if not self._conns:
            return
        self._check(_clock.now())
        self.arm()


class Goodbyes:
    """Sockets a server is done with, closed without losing their last message.

    Closing a socket that still holds unread input makes the kernel reset the connection (TCP), or
    fails the peer's next write with EPIPE before it reads our answer (Unix sockets: Python's
    http.client then raises BrokenPipeError, not the 413 or 403 we sent). So send() writes the last
    bytes, shuts our side down, discards what the peer still sends until it closes (at most
    LINGER_TIME s / LINGER_BYTES), then closes. At most MAX_LINGER at once: under a flood of refused
    peers, fds matter more than their last message."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self._lingering: dict[int, Callable[[], None]] = {}  # fd -> finish()

    def __len__(self) -> int:
        return len(self._lingering)

    def send(self, sock: socket.socket, data: bytes = b"") -> None:
        try:
            if data:
                sock.send(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if len(self._lingering) >= MAX_LINGER:
            sock.close()
            return
        fd = sock.fileno()
        got = [0]

        def finish() -> None:
            if self._lingering.pop(fd, None) is not None:
                self.loop.remove_reader(fd)
                timer.cancel()
                sock.close()

        def drain() -> None:
            try:
                chunk = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            got[0] += len(chunk)
            if not chunk or got[0] > LINGER_BYTES:
                finish()

        timer = self.loop.call_later(LINGER_TIME, finish)
        self._lingering[fd] = finish
        self.loop.add_reader(fd, drain)

    def close(self) -> None:
        """The server closes: every lingering socket now."""
        for finish in list(self._lingering.values()):
            finish()
