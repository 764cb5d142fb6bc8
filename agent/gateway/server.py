"""The gateway's player shell: HTTP/1.1 with h11 on a second Unix socket, in the daemon's event loop.

Job: bind `[gateway] path` (mode `[gateway] mode`, the same way agent/server.py binds the JSON-RPC
socket: a temporary name, chmod, rename; a stale socket removed only when nobody listens), accept
peers by SO_PEERCRED under the JSON-RPC socket's rules (`agent.server.acl_apps` over
`config.app_acls`: the [[app]] tables' lists, or [socket]'s for a single application), parse each
request with h11, pick the application (`X-Pass-App: NAME`, needed only by a peer allowed several;
decided by `rpc.resolve_app`, so a forbidden and an unknown name get the same 403), check it
(agent/gateway/core.py `check_request`) and hand it to `runner.Gateway`, then write the reply:
whole with Content-Length, or streamed with chunked coding when the runner streams it. Keep-alive:
the next request on a connection is read only after the reply to the previous one went out (h11's
one-request-at-a-time cycle), so a connection holds at most one request in flight.

Limits: `max_header_bytes` (h11's bound on an incomplete head: 431), `max_body_bytes` (413, also
for a declared Content-Length, before reading it), `idle_timeout` (one sweep timer for all
connections; a connection waiting for Adobe is not idle), `max_connections` and `max_per_uid` (503
and close), output above OUT_MAX for a peer that does not read (closed).

Must never: block the loop, serve a peer the ACL refuses, log a token, a header value or a body, keep
a connection's memory after it is gone, or remove a socket file another process listens on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from typing import Any, Mapping

import h11

from agent import clock as _clock
from agent import rpc, sockshell
from agent import server as rpcserver
from agent.gateway import core, runner
from agent.loop import Loop

RECV_SIZE = 65536
OUT_MAX = 4 * 1024 * 1024   # unsent bytes held for one peer before it counts as not reading
_now = _clock.now


class _Conn(runner.Sink):
    __slots__ = ("srv", "sock", "fd", "pid", "uid", "gid", "apps", "http", "out", "last", "busy", "closed",
                 "body", "req", "writing", "reading", "chunked", "too_big", "closing", "req_method", "linger")

    def __init__(self, srv: GatewayServer, sock: socket.socket, pid: int, uid: int, gid: int, apps: tuple,
                 max_head: int) -> None:
        self.srv = srv
        self.sock = sock
        self.fd = sock.fileno()
        self.pid, self.uid, self.gid, self.apps = pid, uid, gid, apps
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self.out = bytearray()
        self.last = _now()
        self.busy = False          # a request is with the gateway: not idle, not reading
        self.closed = False
        self.body: list = []
        self.req: Any = None       # the h11.Request being read
        self.writing = False
        self.reading = True
        self.chunked = False
        self.too_big = 0
        self.closing = False       # close once `out` is flushed
        self.req_method = "GET"
        self.linger = False        # an error answer went out: close through sockshell.Goodbyes

    # -- the runner's sink (loop thread) -----------------------------------------------------------
    def start(self, reply: core.Reply, streamed: bool = False) -> None:
        if self.closed:
            return
        headers = [(k, v) for k, v in reply.headers if k.lower() not in ("content-length", "transfer-encoding")]
        if streamed:
            self.chunked = True
        else:
            headers.append(("Content-Length", str(len(reply.body))))
        self.srv.c["replies"] += 1
        self.srv.c["status_%d" % reply.status] = self.srv.c.get("status_%d" % reply.status, 0) + 1
        try:
            self._send(h11.Response(status_code=reply.status, headers=headers))
            if not streamed:
                if reply.body and self.req_method != "HEAD":
                    self._send(h11.Data(data=reply.body))
                self._send(h11.EndOfMessage())
                self._next()
        except h11.LocalProtocolError:
            self.srv._drop(self)

    def data(self, chunk: bytes) -> None:
        if not self.closed:
            self._send(h11.Data(data=chunk))

    def end(self, ok: bool = True) -> None:
        if self.closed:
            return
        if not ok:  # the peer must not take a truncated answer for a whole one
            self.srv._drop(self)
            return
        self._send(h11.EndOfMessage())
        self._next()

    # -- writing -----------------------------------------------------------------------------------
    def _send(self, event: Any) -> None:
        data = self.http.send(event)
        if data:
            self.out += data
            self.srv._flush(self)

    def _next(self) -> None:
        """The reply went out (into `out`): the next request may be read, or the connection closes."""
        self.busy = False
        self.chunked = False
        self.last = _now()
        if self.http.our_state is h11.MUST_CLOSE or self.http.their_state is h11.MUST_CLOSE or not self.apps:
            self.srv._close_after_flush(self)  # not self.apps: a reload took every application from this peer
            return
        try:
            self.http.start_next_cycle()
        except h11.LocalProtocolError:
            self.srv._close_after_flush(self)
            return
        self.srv._resume(self)


class GatewayServer:
    """Serves the REST API v2 gateway on a Unix socket in `loop` (docs/GATEWAY.md)."""

    # The socket file is created exactly like the JSON-RPC socket's (agent/listensock.py: born at its path
    # with no looser mode; refuse to remove a socket someone listens on): the same code, not a copy of it.
    _bind = rpcserver.Server._bind

    def __init__(self, service: Any, loop: Loop, cfg: Any, *, acls: Mapping[str, tuple[frozenset, frozenset]],
                 request: Any = None, log: logging.Logger | None = None) -> None:
        g = cfg.gateway
        self.service = service
        self.loop = loop
        self.cfg = g
        self.path = g.path
        self.mode = g.mode
        self.backlog = rpcserver.BACKLOG
        self.log = log or logging.getLogger("pass-agent.gateway")
        self.gateway = runner.Gateway(service, loop.call_soon_threadsafe, cfg, request=request, log=self.log)
        self._acls = dict(acls)
        self._configured = tuple(service.apps())
        self._own_uid = os.getuid()
        self._sock: socket.socket | None = None
        self._ino: tuple | None = None
        self._conns: dict[int, _Conn] = {}
        self._per_uid: dict[int, int] = {}
        self._sweep = sockshell.IdleSweep(loop, sockshell.sweep_period(g.idle_timeout), self._conns, self._close_idle)
        self._goodbyes = sockshell.Goodbyes(loop)  # refused peers and error answers, closed gracefully
        self._accept_pause = sockshell.AcceptPause(loop, self._on_accept, self.log, "[gateway] ")
        self.c: dict = {"accepted": 0, "denied": 0, "rejected_busy": 0, "closed_idle": 0, "bad_requests": 0,
                        "replies": 0}

    # -- setup and teardown ------------------------------------------------------------------------
    def start(self) -> None:
        if self._sock is not None:
            return
        try:
            sock = self._bind()
        except rpcserver.ServerError as e:
            e.message = e.message.replace("agent socket", "gateway socket")
            e.hint = (e.hint or "").replace("socket.path", "[gateway] path")
            raise
        sock.setblocking(False)
        self._sock = sock
        self.loop.add_reader(sock.fileno(), self._on_accept)
        self.log.info("serving the REST API v2 gateway on %s (mode %o) for %s", self.path, self.mode,
                      self.gateway.origin)

    def close(self) -> None:
        if self._sock is None:
            return
        self.loop.remove_reader(self._sock.fileno())
        self._sock.close()
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ino:
                os.unlink(self.path)
        except OSError:
            pass
        self._sock = None
        self._sweep.cancel()
        self._accept_pause.cancel()
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._goodbyes.close()
        self.gateway.stop()

    def set_acl(self, acls: Mapping[str, tuple[frozenset, frozenset]]) -> None:
        """New per-application lists (SIGHUP): peers keep the applications still allowed; others are closed."""
        self._acls = dict(acls)
        for conn in list(self._conns.values()):
            groups = rpcserver.peer_groups(conn.pid, conn.uid) if rpcserver.acl_apps_need_groups(
                conn.gid, self._acls) else frozenset()
            conn.apps = rpcserver.acl_apps(conn.uid, conn.gid, groups, self._acls, self._own_uid)
            if not conn.apps and not conn.busy:
                self._drop(conn)

    # -- accepting ---------------------------------------------------------------------------------
    def _on_accept(self) -> None:
        lsock = self._sock
        if lsock is None:
            return
        sockshell.accept_batch(lsock, self._new_conn, self._accept_error)

    def _accept_error(self, e: OSError) -> bool:
        """Out of fds: pause accepts (False); anything else concerns that one peer: accept on (True)."""
        lsock = self._sock
        if lsock is None:
            return False
        return not self._accept_pause.pause(e, lsock, self.path)

    def _refuse(self, sock: socket.socket, refusal: core.Refusal) -> None:
        """Answer a peer we will not serve with one HTTP response, then close without losing it: the
        peer may not have sent its request yet, and its write must not fail before it reads ours."""
        self._goodbyes.send(sock, raw_reply(refusal.reply()))

    def _new_conn(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            pid, uid, gid = rpcserver.peer_credentials(sock)
        except OSError:
            sock.close()
            return
        groups = rpcserver.peer_groups(pid, uid) if rpcserver.acl_apps_need_groups(gid, self._acls) else frozenset()
        apps = rpcserver.acl_apps(uid, gid, groups, self._acls, self._own_uid)
        if not apps:
            self.c["denied"] += 1
            self.log.warning("gateway: denied connection from pid %d uid %d gid %d", pid, uid, gid)
            self._refuse(sock, core.Refusal(403, "denied", "uid %d is not allowed to use the pass-agent gateway" % uid,
                                            "ask the integrator to add it to an [[app]] table's allow_uids or "
                                            "allow_gids (or [socket] allow_uids/allow_gids)"))
            return
        busy = sockshell.busy_reason("the gateway", "[gateway] ", len(self._conns), self.cfg.max_connections,
                                     self._per_uid, uid, self.cfg.max_per_uid)
        if busy is not None:
            self.c["rejected_busy"] += 1
            self._refuse(sock, core.Refusal(503, "busy", busy, "reuse one keep-alive connection", retry_after=1.0))
            return
        conn = _Conn(self, sock, pid, uid, gid, apps, self.cfg.max_header_bytes)
        self.c["accepted"] += 1
        self._conns[conn.fd] = conn
        sockshell.count_peer(self._per_uid, uid)
        self.loop.add_reader(conn.fd, functools.partial(self._on_readable, conn))
        self._sweep.arm()

    # -- reading -----------------------------------------------------------------------------------
    def _on_readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        conn.last = _now()
        conn.http.receive_data(data)
        self._events(conn)

    def _events(self, conn: _Conn) -> None:
        while not conn.closed and not conn.busy:
            try:
                ev = conn.http.next_event()
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint
                code = "head_too_large" if status == 431 else "bad_request"
                self.c["bad_requests"] += 1
                self._error(conn, core.Refusal(status, code, "the request is not valid HTTP/1.1 (%s)" % (
                    "its head exceeds [gateway] max_header_bytes" if status == 431 else dcr_safe(str(e))),
                    "send a plain HTTP/1.1 request, e.g. curl --unix-socket PATH http://localhost/api/v2/..."))
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.Request):
                conn.req, conn.body, conn.too_big = ev, [], 0
                conn.req_method = ev.method.decode("ascii", "replace")
                # h11 bounds a head that arrives in pieces; one that arrives whole is measured here.
                head = len(ev.method) + len(ev.target) + sum(len(k) + len(v) + 4 for k, v in ev.headers.raw_items())
                if head > self.cfg.max_header_bytes:
                    self.c["bad_requests"] += 1
                    self._error(conn, core.Refusal(431, "head_too_large", "the request head is about %d bytes; at "
                                                   "most %d are read ([gateway] max_header_bytes)"
                                                   % (head, self.cfg.max_header_bytes), "send fewer or shorter headers"))
                    return
                length = None
                for k, v in ev.headers:
                    if k == b"content-length":
                        length = int(v)
                if length is not None and length > self.cfg.max_body_bytes:
                    self._error(conn, self._too_large(length))
                    return
                if conn.http.they_are_waiting_for_100_continue:
                    conn._send(h11.InformationalResponse(status_code=100, headers=[]))
            elif isinstance(ev, h11.Data):
                conn.too_big += len(ev.data)
                if conn.too_big > self.cfg.max_body_bytes:
                    self._error(conn, self._too_large(conn.too_big))
                    return
                conn.body.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                self._dispatch(conn)
            elif isinstance(ev, h11.ConnectionClosed):
                self._close_after_flush(conn)
                return

    def _too_large(self, n: int) -> core.Refusal:
        return core.Refusal(413, "body_too_large", "the request body is %d bytes or more; at most %d are forwarded "
                            "([gateway] max_body_bytes)" % (n, self.cfg.max_body_bytes), "send a smaller body")

    def _error(self, conn: _Conn, refusal: core.Refusal) -> None:
        """A request we cannot read on: answer it if h11 still lets us, then close."""
        conn.busy = True
        if conn.http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            # h11 will not write a response to a request it could not parse: the bytes are ours.
            conn.out += raw_reply(refusal.reply())
        conn.linger = True  # the peer may still be sending the request we refused
        self._close_after_flush(conn)

    def _dispatch(self, conn: _Conn) -> None:
        ev = conn.req
        conn.busy = True
        self._pause(conn)
        method = ev.method.decode("ascii", "replace")
        target = ev.target.decode("ascii", "replace")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ev.headers.raw_items()]
        body = b"".join(conn.body)
        conn.body = []
        asked = None
        for k, v in headers:
            if k.lower() == "x-pass-app":
                asked = v.strip()
        try:
            try:
                app = rpc.resolve_app("gateway", asked, conn.apps, self._configured, conn.uid)
            except rpc.RpcError as e:
                code = e.data.get("code", "denied")
                raise core.Refusal(403 if code == "denied" else 400, code, e.message.replace(
                    'with the param "app"', "with the header X-Pass-App: NAME"),
                    "name one of: %s (header X-Pass-App)" % ", ".join(conn.apps))
            req = core.check_request(method, target, headers, body)
        except core.Refusal as r:
            self.c["bad_requests"] += 1
            conn.start(r.reply())
            return
        req.app, req.uid = app, conn.uid
        self.gateway.handle(req, conn)

    def _pause(self, conn: _Conn) -> None:
        if conn.reading and not conn.closed:
            conn.reading = False
            self.loop.remove_reader(conn.fd)

    def _resume(self, conn: _Conn) -> None:
        if conn.closed:
            return
        if not conn.reading:
            conn.reading = True
            self.loop.add_reader(conn.fd, functools.partial(self._on_readable, conn))
        self._events(conn)  # a pipelined request may already be in h11's buffer

    # -- writing -----------------------------------------------------------------------------------
    def _flush(self, conn: _Conn) -> None:
        if conn.closed:
            return
        try:
            n = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._drop(conn)
            return
        if n:
            del conn.out[:n]
            conn.last = _now()
        if conn.out:
            if len(conn.out) > OUT_MAX:
                self.log.warning("gateway: closing the connection of pid %d uid %d: it does not read its answers",
                                 conn.pid, conn.uid)
                self._drop(conn)
                return
            if not conn.writing:
                conn.writing = True
                self.loop.add_writer(conn.fd, lambda: self._flush(conn))
            return
        if conn.writing:
            conn.writing = False
            self.loop.remove_writer(conn.fd)
        if conn.closing:
            self._drop(conn, linger=conn.linger)

    def _close_after_flush(self, conn: _Conn) -> None:
        conn.closing = True
        self._pause(conn)
        if not conn.out:
            self._drop(conn, linger=conn.linger)
        else:
            self._flush(conn)

    # -- idle connections --------------------------------------------------------------------------
    def _close_idle(self, now: float) -> None:
        """The sweep (sockshell.IdleSweep): a connection waiting for Adobe is not idle."""
        for conn in list(self._conns.values()):
            if not conn.busy and now - conn.last >= self.cfg.idle_timeout:
                self.c["closed_idle"] += 1
                self._drop(conn)

    def _drop(self, conn: _Conn, linger: bool = False) -> None:
        """Forget a connection and close its socket: at once, or with linger through sockshell.Goodbyes
        (after an error answer: the peer may still be sending the request we refused)."""
        if conn.closed:
            return
        conn.closed = True
        if conn.reading:
            self.loop.remove_reader(conn.fd)
        if conn.writing:
            self.loop.remove_writer(conn.fd)
        conn.out = bytearray()
        conn.body = []
        if self._conns.pop(conn.fd, None) is not None:
            sockshell.release_peer(self._per_uid, conn.uid)
        if linger:
            self._goodbyes.send(conn.sock)
            return
        try:
            conn.sock.close()
        except OSError:
            pass

    def stats(self) -> dict:
        d = dict(self.c)
        d.update(path=self.path, listening=self._sock is not None, connections=len(self._conns),
                 gateway=self.gateway.stats())
        return d


_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large",
            414: "URI Too Long", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def raw_reply(r: core.Reply) -> bytes:
    """A whole response with Connection: close, written without h11 (refused peers, unparsable requests)."""
    head = "HTTP/1.1 %d %s\r\n" % (r.status, _REASONS.get(r.status, "Error"))
    head += "".join("%s: %s\r\n" % (k, v) for k, v in r.headers)
    head += "Content-Length: %d\r\nConnection: close\r\n\r\n" % len(r.body)
    return head.encode("latin-1") + r.body


def dcr_safe(text: str) -> str:
    from agent import dcr

    return dcr.printable(text, 120)


def rpc_line(req_id: Any, reply: core.Reply) -> bytes:
    """api.call's JSON-RPC answer for a reply: Adobe's answers (any status) as a result; the gateway's own
    refusals as an error with data.code, data.retry_after and data.status (the HTTP status the gateway
    socket would have answered)."""
    if reply.origin == "agent":
        try:
            info = json.loads(reply.body.decode("utf-8"))
        except ValueError:
            info = {}
        code = rpc.NOT_READY if reply.status == 503 and reply.code not in ("gateway_busy", "stopping") and \
            reply.code not in ("busy",) and reply.code and reply.code.startswith(("not_ready", "upstream")) \
            else rpc.AGENT_ERROR
        data = rpc.error_data(reply.code or "gateway_error", "retry" if reply.retry_after is not None else "fatal",
                              reply.retry_after, status=reply.status)
        if info.get("hint"):
            data["hint"] = info["hint"]
        return rpc.error_line(req_id, code, info.get("message") or "the gateway refused the call", data)
    result: dict = {"status": reply.status, "headers": {}}
    for k, v in reply.headers:
        result["headers"][k] = result["headers"][k] + ", " + v if k in result["headers"] else v
    try:
        result["body"] = reply.body.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        result["body_base64"] = base64.b64encode(reply.body).decode("ascii")
    return rpc.Dispatcher.result_line(req_id, result)
