"""The web endpoint's I/O shell: loopback TCP, h11 for the upgrade handshake, wsproto for frames.

Job: accept connections on the `[web] listen` address in the daemon's event loop (agent/loop.py),
read each upgrade request with h11, let agent/web/guard.py decide it (Host, Origin, token), answer a
refusal with an HTTP error (JSON body: code, message, hint) or the 101 upgrade, then exchange
WebSocket text messages through wsproto and agent/web/dialect.py, push `tokenchanged` events, and
answer parked waits when the Service announces a token.

Why the daemon's loop and not a thread of its own: the Service's quick methods, the Dispatcher's
caches and the token events are already served from that loop for the Unix socket; a second loop
would need locks around the Dispatcher and a second wake-up path, for no gain (every handler returns
at once). The one blocking step, asking Thunder's SecurityAgent over HTTP, runs in one validator
thread (started only when `[web] securityagent` is set) and hands its verdict back with
`call_soon_threadsafe`; the connection does not read meanwhile.

Limits, as on the Unix socket (agent/server.py): `max_connections` (handshakes included; more are
answered 503), `max_message` bytes per message (a bigger message or frame closes the connection with
1009), h11's bound on the request head, `handshake_timeout` for the upgrade (and the SecurityAgent
verdict), `idle_timeout` (a connection with registrations or parked waits is not idle), parked waits
per connection and overall, and the same output caps (stop reading above OUT_HIGH, close above
OUT_MAX). Answers go out as soon as they exist: JSON-RPC over WebSocket matches them by id, so an
answer never waits behind a parked one.

Must never: block the loop, serve a connection that guard.py refused, log a token or request params,
keep a connection's memory after it is gone, or listen on anything but loopback.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from typing import Any, Callable, Optional

import h11
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError, generate_accept_token

from agent import clock as _clock
from agent import rpc, sockshell
from agent.errors import RETRY
from agent.facade import ServiceFacade
from agent.loop import Loop
from agent.server import MAX_WAITS, MAX_WAITS_PER_CONN, OUT_HIGH, OUT_LOW, OUT_MAX, WAIT_GRAIN, _Deadlines
from agent.web import dialect, guard

RECV_SIZE = 65536
MAX_HEAD = 16 * 1024          # bytes of the upgrade request's head (h11 refuses more)
SA_TIMEOUT = 5.0              # seconds for one SecurityAgent answer
LINGER_TIME = 2.0             # after our last bytes, wait this long for the peer to close
_now = _clock.now

# Connection states.
HANDSHAKE, VALIDATING, OPEN, CLOSING = "handshake", "validating", "open", "closing"


class _Conn:
    __slots__ = ("sock", "fd", "state", "http", "ws", "up", "session", "out", "waits", "last", "born", "paused",
                 "writing", "closed", "parts", "size", "linger", "fast")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = HANDSHAKE
        self.http: Any = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.ws: Optional[WsConnection] = None
        self.up: Optional[guard.Upgrade] = None
        self.session: Optional[dialect.Session] = None
        self.out = bytearray()
        self.waits: list = []
        self.last = self.born = _now()
        self.paused = False
        self.writing = False
        self.closed = False
        self.parts: list = []     # the message being received, in pieces
        self.size = 0             # its size in bytes so far
        self.linger: Any = None
        self.fast = True          # every byte so far came in whole single-frame messages (see _one_frame)


class _Wait:
    __slots__ = ("conn", "act", "done")

    def __init__(self, conn: _Conn, act: rpc.Action) -> None:
        self.conn, self.act, self.done = conn, act, False


class _Validator:
    """One thread that asks SecurityAgent, one token at a time; verdicts go back through the loop."""

    def __init__(self, loop: Loop, url: str) -> None:
        self._loop = loop
        self._url = url
        self._q: queue.Queue = queue.Queue()
        self._thread: Optional[threading.Thread] = None

    def submit(self, token: str, done: Callable[[Optional[bool]], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="web-securityagent", daemon=True)
            self._thread.start()
        self._q.put((token, done))

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            token, done = item
            valid = guard.ask_securityagent(self._url, token, SA_TIMEOUT)
            self._loop.call_soon_threadsafe(lambda d=done, v=valid: d(v))

    def close(self) -> None:
        if self._thread is not None:
            self._q.put(None)


def one_frame(data: bytes, limit: int) -> Optional[str]:
    """The text when `data` is exactly one complete, final, masked text frame of at most `limit` bytes of
    valid UTF-8 (what a browser sends for a message, in one read), else None.

    The hot path (measured: wsproto's parser costs ~9 us a message, this ~1 us): used only while every
    earlier read of the connection was such a frame, so wsproto, which then has seen nothing, starts
    between two frames when anything else arrives (a split frame, two frames in one read, a control
    frame, a fragmented or oversized message); the connection then stays on wsproto for good."""
    n = len(data)
    if n < 6 or data[0] != 0x81 or not data[1] & 0x80:
        return None
    ln = data[1] & 0x7F
    if ln < 126:
        off = 2
    elif ln == 126 and n >= 8:
        ln, off = (data[2] << 8) | data[3], 4
    else:
        return None
    if off + 4 + ln != n or ln > limit:
        return None
    key = (data[off:off + 4] * (ln // 4 + 1))[:ln]
    raw = (int.from_bytes(data[off + 4:], "little") ^ int.from_bytes(key, "little")).to_bytes(ln, "little")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None  # wsproto closes it with 1007


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame (a server's frames carry no mask): what wsproto would build for
    TextMessage(payload.decode()), without the decode and re-encode of every answer."""
    n = len(payload)
    if n < 126:
        return b"\x81" + bytes((n,)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def refusal_bytes(r: guard.Refusal) -> bytes:
    """The HTTP answer to a refused upgrade: status line, JSON body with code, message and hint."""
    body = rpc.encode({"error": {"code": r.code, "message": r.message, "hint": r.hint}})
    reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
              426: "Upgrade Required", 503: "Service Unavailable"}.get(r.status, "Error")
    head = ["HTTP/1.1 %d %s" % (r.status, reason), "Content-Type: application/json",
            "Content-Length: %d" % len(body), "Cache-Control: no-store", "Connection: close"]
    if r.status == 426:
        head.append("Sec-WebSocket-Version: 13")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class WebServer:
    """Serves the Service to web apps over WebSocket on loopback. See docs/WEB.md for the contract."""

    def __init__(self, service: ServiceFacade, loop: Loop, web: Any, *, log: logging.Logger | None = None,
                 max_waits: int = MAX_WAITS, max_waits_per_conn: int = MAX_WAITS_PER_CONN) -> None:
        self.service = service
        self.loop = loop
        self.log = log or logging.getLogger("pass-agent.web")
        try:
            self.host, self.port = guard.parse_listen(web.listen)
        except ValueError as e:
            raise guard.WebError("[web] listen: %s" % e)
        self.max_connections = web.max_connections
        self._accept_pause = sockshell.AcceptPause(loop, self._on_accept, self.log, "[web] ")
        self.max_message = web.max_message
        self.idle_timeout = web.idle_timeout
        self.handshake_timeout = web.handshake_timeout
        self.max_waits = max_waits
        self.max_waits_per_conn = max_waits_per_conn
        self.dialect = dialect.Dialect(rpc.Dispatcher(service))
        self.apps: tuple = self.dialect.dispatcher.apps  # the service's applications (issue 16)
        self._web = web
        self._origins = frozenset(guard.normalise_origin(o) for o in web.allowed_origins)
        self._tokens: dict = {}
        self._validator = _Validator(loop, web.securityagent) if web.securityagent else None
        self._sock: Optional[socket.socket] = None
        self._conns: dict = {}
        self._nwaits = 0
        self._waits = _Deadlines(loop, self._expire, WAIT_GRAIN)
        self._sweep = sockshell.IdleSweep(loop, sockshell.sweep_period(min(self.idle_timeout, self.handshake_timeout)),
                                          self._conns, self._close_idle)
        self._c = {"accepted": 0, "opened": 0, "refused": {}, "rejected_busy": 0, "closed_idle": 0,
                   "closed_too_large": 0, "closed_slow": 0, "closed_protocol": 0, "notifications": 0,
                   "waits_answered": 0, "waits_expired": 0, "waits_refused": 0}

    # -- setup and teardown -----------------------------------------------------------------

    def start(self) -> None:
        """Load the tokens file, bind and listen on loopback. Raises WebError (bad file, address in use)."""
        if self._sock is not None:
            return
        if self._web.tokens_file:
            self._tokens = guard.load_tokens(self._web.tokens_file, self.apps)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError as e:
            sock.close()
            raise guard.WebError("[web] listen: cannot listen on %s port %d: %s" % (self.host, self.port, e.strerror),
                                 hint="pick a free loopback port (Thunder itself usually holds 9998)")
        sock.setblocking(False)
        self._sock = sock
        self.loop.add_reader(sock.fileno(), self._on_accept)
        self.service.subscribe(self._on_service_event)
        self.log.info("web apps: WebSocket on ws://%s:%d%s (origins: %s; tokens: %s)",
                      ("[%s]" % self.host) if family == socket.AF_INET6 else self.host, self.port, guard.PATH,
                      ", ".join(sorted(self._origins)),
                      " and ".join(w for w, on in (("tokens file", self._web.tokens_file),
                                                   ("SecurityAgent", self._web.securityagent)) if on))

    def reload(self, web: Any) -> None:
        """SIGHUP: new origins and a re-read tokens file (a bad file keeps the old list and is logged).
        Listening address and limits need a restart."""
        try:
            tokens = guard.load_tokens(web.tokens_file, self.apps) if web.tokens_file else {}
        except guard.WebError as e:
            self.log.error("reload: [web] tokens file NOT reloaded: %s (%s)", e.message, e.hint)
            return
        self._tokens = tokens
        self._origins = frozenset(guard.normalise_origin(o) for o in web.allowed_origins)

    def close(self) -> None:
        if self._sock is None:
            return
        self.service.unsubscribe(self._on_service_event)
        self.loop.remove_reader(self._sock.fileno())
        self._accept_pause.cancel()
        self._sock.close()
        self._sock = None
        self._sweep.cancel()
        for conn in list(self._conns.values()):
            self._drop(conn)
        if self._validator is not None:
            self._validator.close()

    # -- accepting and the handshake -----------------------------------------------------------

    def _on_accept(self) -> None:
        if self._sock is not None:
            sockshell.accept_batch(self._sock, self._new_conn, self._accept_error)

    def _accept_error(self, e: OSError) -> bool:
        """Out of fds: pause accepts for a moment (False), as the player socket does: the listening
        socket stays readable, so staying in the loop would spin and log on every turn. Anything else
        concerns that one peer (gone before accept()): accept on (True)."""
        if self._sock is not None and self._accept_pause.pause(e, self._sock, "%s:%d" % (self.host, self.port)):
            return False
        self.log.debug("web: accept failed: %s", e.strerror)
        return True

    def _new_conn(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        conn = _Conn(sock)
        busy = sockshell.busy_reason("the agent", "[web] ", len(self._conns), self.max_connections,
                                     noun="web connections")
        if busy is not None:
            self._c["rejected_busy"] += 1
            self._refuse(conn, guard.Refusal(503, "web_busy", busy, "reuse one connection; retry in a second"),
                         counted=False)
            return
        self._c["accepted"] += 1
        self._conns[conn.fd] = conn
        self.loop.add_reader(conn.fd, lambda c=conn: self._on_readable(c))
        self._sweep.arm()

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        conn.last = _now()
        if conn.state == OPEN:
            self._frames(conn, data)
        elif conn.state == HANDSHAKE:
            self._handshake(conn, data)
        elif not data:  # CLOSING: the peer closed after our last bytes
            self._drop(conn)

    def _handshake(self, conn: _Conn, data: bytes) -> None:
        http = conn.http
        try:
            http.receive_data(data)
            event = http.next_event()
        except h11.RemoteProtocolError:
            self._refuse(conn, guard.Refusal(400, "web_bad_request", "the upgrade request is not valid HTTP/1.1 or "
                                             "its head exceeds %d bytes" % MAX_HEAD, "use a browser's WebSocket"))
            return
        if event is h11.NEED_DATA:
            if not data:
                self._drop(conn)
            return
        if not isinstance(event, h11.Request):
            self._drop(conn)
            return
        verdict = guard.check_upgrade(event.method, event.target, event.headers, self.port, self._origins)
        if isinstance(verdict, guard.Refusal):
            self._refuse(conn, verdict)
            return
        conn.up = verdict
        known = guard.verdict_from_file(verdict.token, self._tokens)
        if known is not None or self._validator is None:
            self._judged(conn, known or guard.Verdict(None, guard.BAD_TOKEN))
            return
        conn.state = VALIDATING
        self.loop.remove_reader(conn.fd)  # nothing more is read until the verdict
        self._validator.submit(verdict.token, lambda valid, c=conn: self._judged(
            c, guard.verdict_from_securityagent(valid, c.up.token, c.up.origin, self.apps) if c.up else None))

    def _judged(self, conn: _Conn, verdict: Optional[guard.Verdict]) -> None:
        if conn.closed or verdict is None or conn.up is None:
            return
        if verdict.refusal is not None or verdict.app is None:
            self._refuse(conn, verdict.refusal or guard.BAD_TOKEN)
            return
        up = conn.up
        headers = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
                   (b"Sec-WebSocket-Accept", generate_accept_token(up.key))]
        if up.subprotocol:
            headers.append((b"Sec-WebSocket-Protocol", up.subprotocol.encode("ascii")))
        try:
            head = conn.http.send(h11.InformationalResponse(status_code=101, headers=headers))
            trailing, _ = conn.http.trailing_data
        except h11.LocalProtocolError:
            self._drop(conn)
            return
        conn.http = None
        conn.up = None  # the token is not kept
        conn.session = dialect.Session(verdict.app)
        conn.ws = WsConnection(ConnectionType.SERVER)
        conn.state = OPEN
        self._c["opened"] += 1
        self.log.debug("web: connection for application %s (token via %s)", verdict.app, verdict.via)
        self._emit(conn, head)
        if conn.closed:
            return
        if not conn.paused:
            self.loop.add_reader(conn.fd, lambda c=conn: self._on_readable(c))
        if trailing:
            self._frames(conn, bytes(trailing))

    def _refuse(self, conn: _Conn, r: guard.Refusal, counted: bool = True) -> None:
        refused = self._c["refused"]
        n = refused[r.code] = refused.get(r.code, 0) + 1
        if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th... of each kind: a hostile page cannot flood the log
            self.log.warning("web: refused an upgrade request (%d so far): %s: %s", n, r.code, r.message)
        conn.up = None
        conn.http = None
        if not counted:  # never registered: a plain last answer, then close
            try:
                conn.sock.send(refusal_bytes(r))
            except OSError:
                pass
            conn.sock.close()
            return
        self._emit(conn, refusal_bytes(r))
        self._close_after_flush(conn)

    # -- WebSocket messages ---------------------------------------------------------------------

    def _frames(self, conn: _Conn, data: bytes) -> None:
        if conn.fast:
            text = one_frame(data, self.max_message) if data else None
            if text is not None:
                self._message(conn, text)
                return
            conn.fast = False  # from here on, every byte goes through wsproto
        ws = conn.ws
        assert ws is not None
        try:
            ws.receive_data(data or None)
            for ev in ws.events():
                if conn.closed or conn.state != OPEN:
                    return
                if isinstance(ev, TextMessage):
                    chunk = ev.data
                    conn.size += len(chunk.encode("utf-8")) if not chunk.isascii() else len(chunk)
                    if conn.size > self.max_message:
                        self._c["closed_too_large"] += 1
                        self._ws_close(conn, 1009, "message larger than %d bytes" % self.max_message)
                        return
                    conn.parts.append(chunk)
                    if ev.message_finished:
                        text = conn.parts[0] if len(conn.parts) == 1 else "".join(conn.parts)
                        conn.parts, conn.size = [], 0
                        self._message(conn, text)
                elif isinstance(ev, BytesMessage):
                    self._ws_close(conn, 1003, "send JSON-RPC as text messages")
                    return
                elif isinstance(ev, Ping):
                    self._emit(conn, ws.send(ev.response()))
                elif isinstance(ev, CloseConnection):
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        self._emit(conn, ws.send(ev.response()))
                    self._close_after_flush(conn)
                    return
        except (RemoteProtocolError, LocalProtocolError):
            self._c["closed_protocol"] += 1
            self._ws_close(conn, 1002, "WebSocket protocol error")

    def _message(self, conn: _Conn, text: str) -> None:
        assert conn.session is not None
        ans = self.dialect.handle(text, conn.session)
        if ans is None:
            return
        if type(ans) is bytes:
            self._send_text(conn, ans)
            return
        self._park(conn, ans)

    def _send_text(self, conn: _Conn, payload: bytes) -> None:
        if conn.closed or conn.ws is None or conn.state != OPEN or conn.ws.state is not ConnectionState.OPEN:
            return
        self._emit(conn, text_frame(payload))

    def _ws_close(self, conn: _Conn, code: int, reason: str) -> None:
        ws = conn.ws
        conn.parts, conn.size = [], 0
        if ws is not None and ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            try:
                self._emit(conn, ws.send(CloseConnection(code=code, reason=reason)))
            except LocalProtocolError:
                pass
        self._close_after_flush(conn)

    # -- parked waits and events ----------------------------------------------------------------

    def _park(self, conn: _Conn, act: rpc.Action) -> None:
        refused = None
        if len(conn.waits) >= self.max_waits_per_conn:
            refused = "this connection already holds %d parked waits (the per-connection limit)" % len(conn.waits)
        elif self._nwaits >= self.max_waits:
            refused = "the agent already holds %d parked waits for all clients (its limit)" % self._nwaits
        if refused is not None:
            self._c["waits_refused"] += 1
            self._send_text(conn, rpc.error_line(act.id, rpc.LIMIT, "%s: %s; retry in a second" % (act.method, refused),
                                                 rpc.error_data("too_many_waits", RETRY, 1.0))[:-1])
            return
        w = _Wait(conn, act)
        conn.waits.append(w)
        self._nwaits += 1
        self._waits.add(act.wait, w)

    def _answer(self, w: _Wait, ans: Optional[bytes]) -> None:
        if w.done:  # its connection went away while another answer was sent
            return
        w.done = True
        w.conn.waits.remove(w)
        self._nwaits -= 1
        if ans:
            self._send_text(w.conn, ans)

    def _expire(self, w: _Wait) -> None:
        self._c["waits_expired"] += 1
        self._answer(w, self.dialect.resume(w.act, final=True))

    def _on_service_event(self, event: dict) -> None:
        # The Service's worker thread: hop to the loop.
        if event.get("method") == "token.changed":
            self.loop.call_soon_threadsafe(lambda: self._token_changed(event))

    def _token_changed(self, event: dict) -> None:
        params = None
        app = (event.get("params") or {}).get("app")  # token.changed is per application (issue 16)
        for conn in list(self._conns.values()):
            if conn.closed or conn.session is None or (app is not None and app != conn.session.app):
                continue
            if conn.session.ids:
                params = params if params is not None else self.dialect.event_params(event)
                for note in self.dialect.notifications(params, conn.session):
                    self._c["notifications"] += 1
                    self._send_text(conn, note)
            for w in list(conn.waits):
                ans = self.dialect.resume(w.act, final=False)
                if ans is not None:
                    self._c["waits_answered"] += 1
                    self._answer(w, ans)
                    self._waits.finished_early()

    # -- writing --------------------------------------------------------------------------------

    def _emit(self, conn: _Conn, data: bytes) -> None:
        if conn.closed or not data:
            return
        conn.out += data
        if len(conn.out) > OUT_MAX:
            self._c["closed_slow"] += 1
            self.log.warning("web: closing a connection that does not read its answers")
            self._drop(conn)
            return
        if not conn.writing:
            self._flush(conn)
        if not conn.closed and len(conn.out) > OUT_HIGH and not conn.paused:
            conn.paused = True
            self.loop.remove_reader(conn.fd)

    def _flush(self, conn: _Conn) -> None:
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
            if not conn.writing:
                conn.writing = True
                self.loop.add_writer(conn.fd, lambda c=conn: self._flush(c))
            return
        if conn.writing:
            conn.writing = False
            self.loop.remove_writer(conn.fd)
        if conn.state == CLOSING:
            self._finish(conn)
        elif conn.paused and len(conn.out) < OUT_LOW and conn.state == OPEN:
            conn.paused = False
            self.loop.add_reader(conn.fd, lambda c=conn: self._on_readable(c))

    def _close_after_flush(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.state = CLOSING
        if not conn.out:
            self._finish(conn)

    def _finish(self, conn: _Conn) -> None:
        """Our last bytes are out: shut our side, let the peer close (a close with unread input would
        reset the connection and could lose those bytes), at most LINGER_TIME."""
        if conn.closed or conn.linger is not None:
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(conn)
            return
        conn.linger = self.loop.call_later(LINGER_TIME, lambda c=conn: self._drop(c))
        if conn.paused:
            conn.paused = False
        self.loop.add_reader(conn.fd, lambda c=conn: self._on_readable(c))

    # -- timeouts and teardown -------------------------------------------------------------------

    def _close_idle(self, now: float) -> None:
        """The sweep (sockshell.IdleSweep): close handshakes older than handshake_timeout and idle connections."""
        for conn in list(self._conns.values()):
            if conn.closed or conn.state == CLOSING:
                continue
            if conn.state in (HANDSHAKE, VALIDATING):
                if now - conn.born >= self.handshake_timeout:
                    self._c["closed_idle"] += 1
                    self._drop(conn)
                continue
            if now - conn.last < self.idle_timeout:
                continue
            if (conn.waits or (conn.session is not None and conn.session.ids)) and not conn.out:
                continue
            self._c["closed_slow" if conn.out else "closed_idle"] += 1
            self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.loop.remove_reader(conn.fd)
        if conn.writing:
            self.loop.remove_writer(conn.fd)
        if conn.linger is not None:
            conn.linger.cancel()
            conn.linger = None
        for w in conn.waits:
            w.done = True
            self._waits.finished_early()
        self._nwaits -= len(conn.waits)
        conn.waits = []
        conn.out = bytearray()
        conn.parts = []
        conn.http = conn.ws = conn.up = conn.session = None
        self._conns.pop(conn.fd, None)
        conn.sock.close()

    # -- introspection ----------------------------------------------------------------------------

    @property
    def address(self) -> tuple:
        return (self.host, self.port)

    def stats(self) -> dict:
        conns = list(self._conns.values())
        d = dict(self._c)
        d["refused"] = dict(self._c["refused"])
        d.update(listening=self._sock is not None, address="%s:%d" % (self.host, self.port), connections=len(conns),
                 open=sum(1 for c in conns if c.state == OPEN), waiting=self._nwaits,
                 registrations=sum(len(c.session.ids) for c in conns if c.session is not None),
                 requests=self.dialect.dispatcher.requests, errors=self.dialect.dispatcher.errors)
        return d
