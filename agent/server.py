"""The player's API: JSON-RPC 2.0 over a local Unix socket (I/O shell around agent/rpc.py).

Job: own the listening socket (created by agent/listensock.py, or adopted: from systemd socket
activation, or bound by stage 1 of the start, agent/startup.py), authorise each
peer by SO_PEERCRED, read newline-framed requests without blocking, answer them in order
(pipelining), park `wait` requests until the Service announces a token, and push
`token.changed` notifications to subscribers. Everything runs in the agent's event loop
(agent/loop.py); the Service is only ever asked quick, non-blocking questions.

Must never: block the loop, let one client stall another (bounded input and output buffers,
backpressure, idle and slow-reader timeouts, connection caps), let one connection make the
agent hold unbounded memory (answers queued behind a parked wait count towards the output
limits; parked waits are capped per connection and overall; a connection holds at most one
subscription), keep anything of a connection after it is gone, remove a socket file that a live
process listens on, serve a peer the ACL does not allow, or log a token or request params.

Timers: the loop deletes a cancelled timer only when it reaches the front of its heap, so a
timer per connection or per wait, cancelled when the peer leaves, would keep that peer's memory
until the timer's deadline. The server therefore cancels nothing per connection: one sweep
timer checks idleness for all connections, and parked waits' deadlines live in the server's own
heap (`_Deadlines`), served by a few loop timers that are never cancelled.

Applications (issue 16): with per-application access lists (`apps`), a peer is accepted when it
may use at least one application (`acl_apps`, a pure function over SO_PEERCRED and the lists);
its connection carries those names, every request line is handled for them (agent/rpc.py
`resolve_app`), and it holds at most one subscription per application. Without `apps` (a
single-application configuration) the socket's lists decide as before.

Lifecycle: `start()` and `close()` run in the loop thread (or before the loop runs / after it
stopped); `set_acl()` too (the daemon calls it from its SIGHUP handler via the loop). `stats()`
may be read from any thread.
"""

from __future__ import annotations

import collections
import errno
import functools
import grp
import heapq
import logging
import os
import pwd
import socket
import struct
from typing import TYPE_CHECKING, Callable, Mapping

from agent import clock as _clock
from agent import listensock, rpc, sockshell
from agent.errors import OPERATOR, RETRY
from agent.loop import Loop

if TYPE_CHECKING:  # an annotation only: the Protocol class is not built at start-up
    from agent.facade import ServiceFacade

RECV_SIZE = 65536
# Output limits count every answer the agent holds for a connection: those waiting for the kernel
# (`out`) and those queued behind a parked wait (`queue`).
OUT_HIGH = 64 * 1024        # stop reading a connection whose unsent answers exceed this...
OUT_LOW = 16 * 1024         # ...until they drain below this
OUT_MAX = 1024 * 1024       # hard cap (notifications to a reader that never reads): close
MAX_WAITS_PER_CONN = 32     # parked waits one connection may hold; more answer LIMIT at once
MAX_WAITS = 1024            # parked waits the agent holds for all connections together
WAIT_GRAIN = 0.1            # a parked wait expires at most this late (see _Deadlines)
BACKLOG = listensock.BACKLOG  # the kernel caps it at net.core.somaxconn
_MAX_DATA = rpc.MAX_LINE + 1  # one request line with its newline
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_monotonic = _clock.now  # the loop's clock (CLOCK_BOOTTIME): idle time counts suspend too


# The socket cannot be set up (path in use, not a socket, bad inherited fd, too long): one class with
# what agent/listensock.py raises, so `except ServerError` catches a failed bind too.
ServerError = listensock.SocketError


listen_fds_from_env = listensock.listen_fds  # systemd socket activation (docs/PROTOCOL.md names it here)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected, from SO_PEERCRED."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


def acl_allows(uid: int, gid: int, groups: frozenset, allow_uids: frozenset, allow_gids: frozenset,
               own_uid: int) -> bool:
    """The socket's access decision (docs/SECURITY.md), a pure function of the peer's credentials and
    the configuration: root, the agent's own uid and socket.allow_uids always; anyone else only with a
    primary or supplementary group in socket.allow_gids (an empty allow_gids allows no group)."""
    if uid == 0 or uid == own_uid or uid in allow_uids:
        return True
    return bool(allow_gids) and (gid in allow_gids or not allow_gids.isdisjoint(groups))


def acl_apps(uid: int, gid: int, groups: frozenset, acls: Mapping[str, tuple[frozenset, frozenset]],
             own_uid: int) -> tuple[str, ...]:
    """The applications a peer may use (docs/SECURITY.md), in the configuration's order: those whose
    [[app]] allow_uids/allow_gids admit it by `acl_allows` (root and the agent's own uid: every one).
    An empty result means the socket refuses the peer."""
    return tuple(name for name, (uids, gids) in acls.items() if acl_allows(uid, gid, groups, uids, gids, own_uid))


def acl_apps_need_groups(gid: int, acls: Mapping[str, tuple[frozenset, frozenset]]) -> bool:
    """Whether deciding acl_apps needs the peer's supplementary groups (acl_needs_groups for any list)."""
    return any(acl_needs_groups(gid, gids) for _, gids in acls.values())


def acl_needs_groups(gid: int, allow_gids: frozenset) -> bool:
    """Whether deciding needs the peer's supplementary groups: only when some group is allowed and
    the primary one is not (reading them costs a /proc read per connection)."""
    return bool(allow_gids) and gid not in allow_gids


def acl_recheck(uid: int, gid: int, groups: frozenset, allow_uids: frozenset, allow_gids: frozenset,
                own_uid: int, read_groups: Callable[[], frozenset]) -> tuple[bool, frozenset]:
    """After new allow-lists (SIGHUP): (still allowed, the peer's groups). The groups known from
    accept may be empty because the old lists did not need them, so a peer is denied only after its
    groups were read again: a reload that allows one of its supplementary groups keeps it."""
    if acl_allows(uid, gid, groups, allow_uids, allow_gids, own_uid):
        return True, groups
    groups = read_groups()
    return acl_allows(uid, gid, groups, allow_uids, allow_gids, own_uid), groups


def peer_groups(pid: int, uid: int) -> frozenset[int]:
    """Supplementary groups of the peer: /proc/<pid>/status, else the group database."""
    try:
        with open("/proc/%d/status" % pid, "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    try:
        name = pwd.getpwuid(uid).pw_name
        return frozenset(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)
    except (KeyError, OSError):
        return frozenset()


class _Conn:
    __slots__ = (
        "sock", "fd", "pid", "uid", "gid", "groups", "apps", "inbuf", "out", "queue", "qbytes", "waits", "subs",
        "last", "eof", "closing", "paused", "writing", "closed",
    )

    def __init__(self, sock: socket.socket, pid: int, uid: int, gid: int, groups: frozenset,
                 apps: tuple | None = None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.pid, self.uid, self.gid, self.groups = pid, uid, gid, groups
        self.apps = apps                # the applications it may use (None: the socket's lists, one application)
        self.inbuf = b""                # unparsed input (at most one partial line + held-back lines)
        self.out = bytearray()          # encoded answers not yet accepted by the kernel
        self.queue: collections.deque = collections.deque()  # answers behind a parked wait (order)
        self.qbytes = 0                 # bytes of the answers in `queue` (answered waits included)
        self.waits: list = []           # parked _Wait objects
        self.subs: set = set()          # subscribed applications (None: the service's only one); one each
        self.last = _monotonic()        # last read or write progress, for the idle timeout
        self.eof = False                # the peer shut down its write side
        self.closing = False            # close once `out` is flushed
        self.paused = False             # reading paused for backpressure
        self.writing = False            # a writer callback is registered
        self.closed = False


class _Wait:
    __slots__ = ("conn", "act", "answer", "done", "cost")

    def __init__(self, conn: _Conn, act: rpc.Action) -> None:
        self.conn = conn
        self.act = act
        self.answer: bytes | None = None
        self.done = False               # answered, expired or dropped: its deadline no longer matters
        # Counted in conn.qbytes while parked: a request id can be a string of up to 64 KiB.
        self.cost = 64 + (len(act.id) if type(act.id) is str else 0)


class _Deadlines:
    """Parked waits' deadlines, served by a few loop timers that are never cancelled.

    Each wait is an entry in this heap (rebuilt without the finished ones once they are the
    majority). A loop timer is armed only when none of the armed ones falls within `grain` of the
    earliest deadline, so armed timers are more than `grain` apart: at most MAX_WAIT / grain + 1
    of them exist, whatever the peers do, and a wait is answered at most `grain` after its time.
    """

    def __init__(self, loop: Loop, on_due: Callable[[_Wait], None], grain: float) -> None:
        self._loop = loop
        self._on_due = on_due
        self._grain = grain
        self._heap: list = []          # (deadline, seq, wait)
        self._armed: list = []         # heap of the times loop timers are set for
        self._seq = 0
        self._dead = 0                 # entries whose wait finished before its deadline

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, delay: float, w: _Wait) -> None:
        when = self._loop.time() + delay
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, w))
        self._arm(when)

    def finished_early(self) -> None:
        """One wait finished before its deadline (answered, or its peer left)."""
        self._dead += 1
        if self._dead > 64 and self._dead * 2 > len(self._heap):
            self._heap = [e for e in self._heap if not e[2].done]
            heapq.heapify(self._heap)
            self._dead = 0

    def _arm(self, when: float) -> None:
        if self._armed and self._armed[0] <= when + self._grain:
            return  # an armed timer fires in time; after it fires, the next earliest is armed
        heapq.heappush(self._armed, when)
        self._loop.call_later(max(0.0, when - self._loop.time()), self._fire)

    def _fire(self) -> None:
        heapq.heappop(self._armed)  # loop timers fire in time order: this was the earliest
        now = self._loop.time()
        while self._heap and self._heap[0][0] <= now:
            w = heapq.heappop(self._heap)[2]
            if w.done:
                self._dead = max(0, self._dead - 1)
            else:
                self._on_due(w)  # may drop connections, which may rebuild self._heap
        if self._heap:
            self._arm(self._heap[0][0])


class Server:
    """Serves the Service over a Unix socket in `loop`. See docs/PROTOCOL.md for the contract."""

    def __init__(
        self,
        service: ServiceFacade,
        loop: Loop,
        path: str,
        *,
        mode: int = 0o660,
        allow_uids: tuple = (),
        allow_gids: tuple = (),
        apps: Mapping[str, tuple[frozenset, frozenset]] | None = None,
        max_connections: int = 512,
        max_per_uid: int = 64,
        max_waits: int = MAX_WAITS,
        max_waits_per_conn: int = MAX_WAITS_PER_CONN,
        idle_timeout: float = 300.0,
        backlog: int = BACKLOG,
        listen_fd: int | None = None,
        listen_fd_bound: bool = False,
        log: logging.Logger | None = None,
    ) -> None:
        self.service = service
        self.loop = loop
        self.path = path
        self.mode = mode
        self.max_connections = max_connections
        self.max_per_uid = max_per_uid
        self.max_waits = max_waits
        self.max_waits_per_conn = max_waits_per_conn
        self.idle_timeout = idle_timeout
        self.backlog = backlog
        self.listen_fd = listen_fd
        # True: this process bound listen_fd itself before READY=1 (agent/startup.py, which removes the
        # file at exit); False: systemd's socket activation passed it.
        self.listen_fd_bound = listen_fd_bound
        self.log = log or logging.getLogger("pass-agent.server")
        self.dispatcher = rpc.Dispatcher(service)
        self._allow_uids = frozenset(allow_uids)
        self._allow_gids = frozenset(allow_gids)
        # Per-application lists (config.app_acls), or None: the socket's lists above decide alone.
        self._acls: dict | None = None if apps is None else dict(apps)
        self._own_uid = os.getuid()
        self._sock: socket.socket | None = None
        self._ino: tuple | None = None    # (dev, ino) of the socket file we created
        self._conns: dict[int, _Conn] = {}
        self._per_uid: dict[int, int] = {}
        self._subscribers: set = set()
        self._accept_pause = sockshell.AcceptPause(loop, self._on_accept, self.log, "socket.")
        # The one idle-check timer, armed while connections exist.
        self._sweep = sockshell.IdleSweep(loop, sockshell.sweep_period(idle_timeout), self._conns, self._close_idle)
        self._waits = _Deadlines(loop, self._expire, WAIT_GRAIN)
        self._nwaits = 0                  # parked waits of all connections
        self._denied_log: dict[int, int] = {}
        self._goodbyes = sockshell.Goodbyes(loop)  # sockets closing gracefully after a last line
        self._c = {
            "accepted": 0, "denied": 0, "rejected_busy": 0, "closed_idle": 0, "closed_too_large": 0,
            "closed_slow": 0, "closed_by_peer": 0, "notifications": 0, "waits_answered": 0, "waits_expired": 0,
            "waits_refused": 0,
        }

    # -- setup and teardown -----------------------------------------------------------------

    def start(self) -> None:
        """Bind (or adopt the inherited fd), listen, and start accepting. Raises ServerError."""
        if self._sock is not None:
            return
        if self.listen_fd is not None:
            sock = self._adopt(self.listen_fd)
        else:
            sock = self._bind()
        sock.setblocking(False)
        self._sock = sock
        self.loop.add_reader(sock.fileno(), self._on_accept)
        self.service.subscribe(self._on_service_event)
        if self.listen_fd is None:
            origin = "bound"
        else:
            origin = "bound before READY=1" if self.listen_fd_bound else "socket activation"
        self.log.info("serving JSON-RPC on %s (%s, mode %s)", self.path, origin, self._file_mode())

    def _file_mode(self) -> str:
        """The socket file's mode as it is (systemd's SocketMode= for an inherited socket, not socket.mode)."""
        try:
            return "%o" % (os.stat(self.path).st_mode & 0o7777)
        except OSError as e:
            return "unknown: %s" % e.strerror

    def _adopt(self, fd: int) -> socket.socket:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise ServerError(
                "inherited listen fd %d is not a usable socket (%s)" % (fd, e.strerror),
                hint="check the .socket unit: ListenStream= must name a Unix socket path",
            )
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise ServerError(
                "inherited listen fd %d is not an AF_UNIX SOCK_STREAM socket" % fd,
                hint="the .socket unit must use ListenStream=/path/to/agent.sock",
            )
        try:
            name = sock.getsockname()
            if name:
                self.path = name if isinstance(name, str) else name.decode("utf-8", "replace")
        except OSError:
            pass
        try:
            # listen() again on a listening socket only raises its backlog: a .socket unit on an
            # old systemd (Backlog= defaults to 128 there) must not make connect floods fail.
            sock.listen(self.backlog)
        except OSError:
            pass
        return sock

    def _bind(self) -> socket.socket:
        """A new socket file at self.path (agent/listensock.py bind; the gateway borrows this method)."""
        fd, self._ino = listensock.bind(self.path, self.mode, self.backlog, self.log)
        return socket.socket(fileno=fd)

    def close(self) -> None:
        """Stop listening, drop every connection, remove the socket file if we created it."""
        if self._sock is None:
            return
        self.service.unsubscribe(self._on_service_event)
        self.loop.remove_reader(self._sock.fileno())
        self._accept_pause.cancel()
        self._sweep.cancel()
        if self.listen_fd is not None:
            self._sock.detach()  # systemd owns the fd and the file
        else:
            self._sock.close()
            listensock.unlink_if_ours(self.path, self._ino)  # only our own: a successor may have replaced it
        self._sock = None
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._goodbyes.close()

    # -- access control ---------------------------------------------------------------------

    def set_acl(self, allow_uids: tuple = (), allow_gids: tuple = (),
                apps: Mapping[str, tuple[frozenset, frozenset]] | None = None) -> None:
        """Replace the allow-lists (SIGHUP) and disconnect peers that are no longer allowed; a peer
        that lost some applications keeps the others (and loses those subscriptions)."""
        self._allow_uids = frozenset(allow_uids)
        self._allow_gids = frozenset(allow_gids)
        self._acls = None if apps is None else dict(apps)
        for conn in list(self._conns.values()):
            if self._acls is None:
                ok, conn.groups = acl_recheck(conn.uid, conn.gid, conn.groups, self._allow_uids, self._allow_gids,
                                              self._own_uid, lambda c=conn: peer_groups(c.pid, c.uid))
                conn.apps = None
            else:
                if acl_apps_need_groups(conn.gid, self._acls):
                    conn.groups = peer_groups(conn.pid, conn.uid)
                conn.apps = acl_apps(conn.uid, conn.gid, conn.groups, self._acls, self._own_uid)
                ok = bool(conn.apps)
                conn.subs = {a for a in conn.subs if a in conn.apps}
                if not conn.subs:
                    self._subscribers.discard(conn)
            if not ok:
                self._deny(conn, counted=True)

    def _allowed(self, uid: int, gid: int, groups: frozenset) -> bool:
        return acl_allows(uid, gid, groups, self._allow_uids, self._allow_gids, self._own_uid)

    # -- accepting --------------------------------------------------------------------------

    def _on_accept(self) -> None:
        lsock = self._sock
        if lsock is None:
            return
        sockshell.accept_batch(lsock, self._new_conn, self._accept_error)

    def _accept_error(self, e: OSError) -> bool:
        """Out of fds: pause accepts (False); a peer gone before accept(): accept on (True); else raise."""
        lsock = self._sock
        if lsock is not None and self._accept_pause.pause(e, lsock, self.path):
            return False
        if e.errno in (errno.ECONNABORTED, errno.EPROTO):
            return True
        raise e

    def _new_conn(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError:
            sock.close()
            return
        acls = self._acls
        if acls is None:
            groups = peer_groups(pid, uid) if acl_needs_groups(gid, self._allow_gids) else frozenset()
            conn = _Conn(sock, pid, uid, gid, groups)
            allowed = self._allowed(uid, gid, groups)
        else:
            groups = peer_groups(pid, uid) if acl_apps_need_groups(gid, acls) else frozenset()
            apps = acl_apps(uid, gid, groups, acls, self._own_uid)
            conn = _Conn(sock, pid, uid, gid, groups, apps)
            allowed = bool(apps)
        if not allowed:
            self._deny(conn, counted=False)
            return
        busy = sockshell.busy_reason("the agent", "socket.", len(self._conns), self.max_connections,
                                     self._per_uid, uid, self.max_per_uid)
        if busy is not None:
            self._c["rejected_busy"] += 1
            self._goodbyes.send(sock, rpc.error_line(
                None, rpc.BUSY, busy + "; reuse one persistent connection and retry in a second",
                rpc.error_data("busy", RETRY, 1.0),
            ))
            return
        self._c["accepted"] += 1
        self._conns[conn.fd] = conn
        sockshell.count_peer(self._per_uid, uid)
        self.loop.add_reader(conn.fd, functools.partial(self._on_readable, conn))
        self._arm_sweep()

    def _deny(self, conn: _Conn, counted: bool) -> None:
        self._c["denied"] += 1
        n = self._denied_log.get(conn.uid, 0) + 1
        self._denied_log[conn.uid] = n
        if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th... attempt: a hostile loop cannot flood the log
            self.log.warning(
                "denied connection on %s from pid %d uid %d gid %d (attempt %d); allow it with socket.allow_uids "
                "or socket.allow_gids", self.path, conn.pid, conn.uid, conn.gid, n,
            )
        where = ("socket.allow_uids or a group in socket.allow_gids" if self._acls is None else
                 "the allow_uids of an [[app]] table or one of its groups to allow_gids/allow_groups")
        line = rpc.error_line(
            None, rpc.DENIED,
            "uid %d is not allowed to use the pass-agent socket; ask the integrator to add it to %s" % (conn.uid, where),
            rpc.error_data("denied", OPERATOR),
        )
        if counted:  # an established connection: its queued answers, the error, then close
            line = bytes(conn.out) + line
            self._drop(conn, linger=False)
        self._goodbyes.send(conn.sock, line)

    # -- reading ----------------------------------------------------------------------------

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._c["closed_by_peer"] += 1
            self._drop(conn)
            return
        if not data:
            self._on_eof(conn)
            return
        conn.last = _monotonic()
        if data.find(b"\n") == len(data) - 1 and not conn.inbuf and not conn.out and not conn.queue:
            # Hot path (issue 20): exactly one complete request (its only newline is its last byte) and
            # nothing pending: answer straight to the kernel. The same limits as _process: line length,
            # and what the kernel does not take goes through conn.out and _flush.
            if len(data) > _MAX_DATA:
                self._too_large(conn)
                return
            ans = self.dispatcher.handle_line(data[:-1], conn.uid, conn.apps)
            if type(ans) is bytes:
                try:  # _send inlined (one Python frame less per request); the same outcomes
                    n = conn.sock.send(ans)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:
                    self._c["closed_by_peer"] += 1
                    self._drop(conn)
                    return
                if n < len(ans):
                    conn.out += ans[n:]
                    self._flush(conn)
            elif ans is not None:
                self._action(conn, ans)
                if conn.out and not conn.writing and not conn.closed:
                    self._flush(conn)
            return
        conn.inbuf = conn.inbuf + data if conn.inbuf else data
        self._process(conn)
        if conn.out and not conn.writing and not conn.closed:
            self._flush(conn)

    def _process(self, conn: _Conn) -> None:
        """Answer every complete line in conn.inbuf (until backpressure or closing)."""
        data = conn.inbuf
        start = 0
        handle = self.dispatcher.handle_line
        uid, apps = conn.uid, conn.apps
        out = conn.out
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if nl - start > rpc.MAX_LINE:
                self._too_large(conn)
                return
            ans = handle(data[start:nl], uid, apps)
            start = nl + 1
            if ans is not None:
                if type(ans) is bytes:
                    if conn.queue:
                        conn.queue.append(ans)
                        conn.qbytes += len(ans)
                    else:
                        out += ans
                else:
                    self._action(conn, ans)
                    if conn.closed:
                        return
            if len(out) + conn.qbytes > OUT_HIGH:  # answers behind a parked wait count too
                self._pause(conn)
                break
        rest = data[start:] if start else data
        if len(rest) > rpc.MAX_LINE and not conn.paused:
            self._too_large(conn)
            return
        conn.inbuf = rest

    def _action(self, conn: _Conn, act: rpc.Action) -> None:
        if act.kind in ("park", "api"):
            refused = None
            if len(conn.waits) >= self.max_waits_per_conn:
                refused = ("this connection already holds %d parked waits (the per-connection limit); read their "
                           "answers before parking more, or ask without wait" % len(conn.waits))
            elif self._nwaits >= self.max_waits:
                refused = ("the agent already holds %d parked waits for all clients (its limit); retry in a second"
                           % self._nwaits)
            if refused is not None:
                self._c["waits_refused"] += 1
                self._emit(conn, rpc.error_line(act.id, rpc.LIMIT, "%s: %s" % (act.method, refused),
                                                rpc.error_data("too_many_waits", RETRY, 1.0)), flush=False)
                return
            w = _Wait(conn, act)
            conn.waits.append(w)
            conn.queue.append(w)
            conn.qbytes += w.cost
            self._nwaits += 1
            if act.kind == "api":  # api.call (the gateway, issue 17): answered when Adobe has answered, in order
                self.dispatcher.api_call(act.id, act.params, act.app, conn.uid,
                                         lambda line, w=w: None if w.done else self._answer(w, line))
                return
            self._waits.add(act.wait, w)
            return
        if act.kind == "subscribe":
            conn.subs.add(act.app)
            self._subscribers.add(conn)
        else:
            conn.subs.discard(act.app)
            if not conn.subs:
                self._subscribers.discard(conn)
        if act.reply:
            result: dict = {"subscribed": act.app in conn.subs}
            if act.app is not None and len(self.dispatcher.apps) > 1:
                result["app"] = act.app
            self._emit(conn, self.dispatcher.result_line(act.id, result), flush=False)

    def _too_large(self, conn: _Conn) -> None:
        self._c["closed_too_large"] += 1
        conn.inbuf = b""
        self._emit(conn, rpc.error_line(
            None, rpc.TOO_LARGE,
            "request line longer than %d bytes; the connection is closed; send one JSON object per line, "
            "terminated by a newline" % rpc.MAX_LINE,
            rpc.error_data("too_large", "fatal"),
        ), flush=False)
        self._close_after_flush(conn)

    def _on_eof(self, conn: _Conn) -> None:
        # The peer shut down its write side: answer what it already sent, then close.
        conn.eof = True
        if not conn.paused:
            self.loop.remove_reader(conn.fd)
        if conn.inbuf.strip() and not conn.paused:
            conn.inbuf += b"\n"  # a last request without its newline still gets an answer
            self._process(conn)
        if not conn.paused:
            self._close_after_flush(conn)

    def _pause(self, conn: _Conn) -> None:
        if not conn.paused:
            conn.paused = True
            if not conn.eof:
                self.loop.remove_reader(conn.fd)

    def _resume(self, conn: _Conn) -> None:
        conn.paused = False
        self._process(conn)
        if conn.closed:
            return
        if not conn.paused:  # paused again: the held-back input filled the output again
            if conn.eof:
                self._on_eof(conn)
            else:
                self.loop.add_reader(conn.fd, functools.partial(self._on_readable, conn))
        if conn.out and not conn.writing and not conn.closed:
            self._flush(conn)  # also when paused again: those answers must still go out

    # -- writing ----------------------------------------------------------------------------

    def _emit(self, conn: _Conn, line: bytes, flush: bool = True) -> None:
        if conn.closed:
            return
        if conn.queue:
            conn.queue.append(line)
            conn.qbytes += len(line)
        else:
            conn.out += line
        if len(conn.out) + conn.qbytes > OUT_MAX:
            self._c["closed_slow"] += 1
            self.log.warning("closing connection of pid %d uid %d: it does not read its answers", conn.pid, conn.uid)
            self._drop(conn)
            return
        if flush and not conn.writing and conn.out:
            self._flush(conn)

    def _send(self, conn: _Conn, data: bytes | bytearray) -> int | None:
        """One send() to the peer: the bytes the kernel took (0 when its buffer is full), or None when
        the peer is gone (the connection is dropped). _flush sends conn.out through it; the hot path in
        _on_readable has a copy inlined (keep the two alike)."""
        try:
            return conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            self._c["closed_by_peer"] += 1
            self._drop(conn)
            return None

    def _flush(self, conn: _Conn) -> None:
        out = conn.out
        n = self._send(conn, out)
        if n is None:
            return
        if n:
            del out[:n]
            conn.last = _monotonic()
        if out:
            if not conn.writing:
                conn.writing = True
                self.loop.add_writer(conn.fd, lambda: self._flush(conn))
            return
        if conn.writing:
            conn.writing = False
            self.loop.remove_writer(conn.fd)
        if conn.closing and not conn.queue:
            self._drop(conn, linger=None if conn.eof else True)
        elif conn.paused and not conn.closing and conn.qbytes < OUT_LOW:
            self._resume(conn)  # otherwise the answers behind a wait resume it when it is answered

    def _close_after_flush(self, conn: _Conn) -> None:
        conn.closing = True
        if not conn.eof:
            self.loop.remove_reader(conn.fd)
            conn.paused = True  # no more reading
        if not conn.out and not conn.queue:
            self._drop(conn, linger=None if conn.eof else True)
        elif not conn.writing:
            self._flush(conn)

    def _release_queue(self, conn: _Conn) -> None:
        """Move answers that are no longer behind an unanswered wait into the output buffer."""
        q = conn.queue
        while q:
            head = q[0]
            data = head if type(head) is bytes else head.answer
            if data is None:
                break
            q.popleft()
            conn.out += data
            conn.qbytes -= len(data)
        if conn.closing and not q and not conn.out:
            self._drop(conn, linger=None if conn.eof else True)
            return
        if conn.out and not conn.writing:
            self._flush(conn)

    # -- waits and notifications --------------------------------------------------------------

    def _on_service_event(self, event: dict) -> None:
        # Called in the lifecycle thread: hop to the loop.
        if event.get("method") == "token.changed":
            self.loop.call_soon_threadsafe(lambda: self._token_changed(event))

    def _token_changed(self, event: dict) -> None:
        app = (event.get("params") or {}).get("app")
        if self._subscribers:
            line = rpc.token_changed(event)
            for conn in list(self._subscribers):
                # None: subscribed without a name to the service's only application (it has no other)
                if app is None or app in conn.subs or None in conn.subs:
                    self._c["notifications"] += 1
                    self._emit(conn, line)
        for conn in [c for c in self._conns.values() if c.waits]:
            for w in list(conn.waits):
                if w.act.kind != "park":
                    continue  # an api.call in flight: the gateway answers it
                if w.act.app is not None and app is not None and w.act.app != app:
                    continue  # another application's token: this wait cannot be answered by it
                ans = self.dispatcher.resume(w.act, final=False)
                if ans is not None:
                    self._c["waits_answered"] += 1
                    self._answer(w, ans)
                    self._waits.finished_early()
                    if conn.closed:
                        break

    def _expire(self, w: _Wait) -> None:
        # Called by _Deadlines for a wait that is not done (done waits are skipped there).
        self._c["waits_expired"] += 1
        self._answer(w, self.dispatcher.resume(w.act, final=True) or b"")

    def _answer(self, w: _Wait, ans: bytes) -> None:
        w.done = True
        w.answer = ans
        conn = w.conn
        conn.waits.remove(w)
        conn.qbytes += len(ans) - w.cost
        self._nwaits -= 1
        self._release_queue(conn)

    # -- timeouts and teardown ------------------------------------------------------------------

    def _arm_sweep(self) -> None:
        if self.idle_timeout > 0:
            self._sweep.arm()

    def _close_idle(self, now: float) -> None:
        """The sweep (sockshell.IdleSweep): close connections idle for idle_timeout (at most one sweep
        period late). Not re-armed once no connection is left: an idle agent has no timer."""
        for conn in list(self._conns.values()):
            if conn.closed or now - conn.last < self.idle_timeout:
                continue
            if (conn.subs or conn.waits) and not conn.out:
                continue  # a quiet subscriber or a parked wait is not idle, unless its answers sit unread
            self._c["closed_slow" if conn.out else "closed_idle"] += 1
            self._drop(conn)

    def _drop(self, conn: _Conn, linger: bool | None = None) -> None:
        """Forget a connection. linger=None closes the socket; False leaves it to the caller;
        True closes it gracefully (sockshell.Goodbyes); a peer that shut down its side needs no lingering."""
        if conn.closed:
            return
        conn.closed = True
        self.loop.remove_reader(conn.fd)
        if conn.writing:
            self.loop.remove_writer(conn.fd)
        for w in conn.waits:
            w.done = True
            self._waits.finished_early()
        self._nwaits -= len(conn.waits)
        # Free everything now: nothing else may keep this connection's buffers alive.
        conn.waits = []
        conn.queue.clear()
        conn.qbytes = 0
        conn.out = bytearray()
        conn.inbuf = b""
        self._subscribers.discard(conn)
        if self._conns.pop(conn.fd, None) is not None:
            sockshell.release_peer(self._per_uid, conn.uid)
        if linger:
            self._goodbyes.send(conn.sock)
        elif linger is None:
            conn.sock.close()

    # -- introspection ------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters for agent.status and the console (plain data, safe from any thread)."""
        conns = list(self._conns.values())
        d = dict(self._c)
        d.update(
            path=self.path,
            listening=self._sock is not None,
            connections=len(conns),
            per_uid={str(k): v for k, v in dict(self._per_uid).items()},
            subscribers=len(self._subscribers),
            waiting=self._nwaits,
            queued_bytes=sum(c.qbytes for c in conns),
            out_bytes=sum(len(c.out) for c in conns),
            max_waits=self.max_waits,
            requests=self.dispatcher.requests,
            errors=self.dispatcher.errors,
            max_connections=self.max_connections,
            max_per_uid=self.max_per_uid,
        )
        return d
