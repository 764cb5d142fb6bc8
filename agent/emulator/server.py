"""HTTP(S) shell of the emulator and the in-process `Emulator` API used by tests, demos and the CLI.

Threaded stdlib server (one thread per connection, HTTP/1.1 keep-alive). TLS is set up per
connection inside the worker thread so a slow handshake never blocks accepting. The shell turns
each request into a plain dict, asks the core (`service`/`admin`) for a plain response dict under
one lock, then delivers it, carrying out the delivery faults: latency, hang, reset, truncate,
chunked. Must never: log a client secret, access token or statement (query strings are masked and
headers and bodies are not logged), or bind anything but what the caller asked (loopback default).
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import select
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

from . import admin, keys
from .service import REASONS, Service, endpoint_of

LOG = logging.getLogger("pass-emulator")
MAX_BODY = 64 * 1024
_SECRET_QS = re.compile(r"(?i)((?:client_secret|access_token|software_statement)=)([^&]*)")


def mask_query(query: str) -> str:
    """Keep a query string readable in logs while hiding secret values (4-character prefix at most)."""
    return _SECRET_QS.sub(lambda m: m.group(1) + (m.group(2)[:4] + "…" if m.group(2) else ""), query)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pass-agent-emulator"
    sys_version = ""
    timeout = 30  # an idle keep-alive connection is closed after this many seconds

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOG.debug("%s %s", self.client_address[0], format % args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _dispatch(self) -> None:
        emu: Emulator = self.server.emulator  # type: ignore[attr-defined]
        t, now = emu.clock(), time.time()
        split = urlsplit(self.path)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._simple(411, "send the request body with Content-Length, not chunked\n")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError
        except ValueError:
            self._simple(400, "Content-Length is not a non-negative integer\n")
            return
        if length > MAX_BODY:
            self._simple(413, "request body over %d bytes\n" % MAX_BODY)
            return
        body = self.rfile.read(length) if length else b""
        req = {"method": self.command, "path": split.path or "/", "query": split.query,
               "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
               "header_list": list(self.headers.items()),  # as sent: order and case, for the request log
               "ip": self.client_address[0], "port": self.client_address[1], "tls": self.server.ssl_ctx is not None,
               "t": t, "now": now}
        with emu._lock:
            if endpoint_of(req["path"]) == "admin":
                resp = admin.handle(emu._service, req)
            else:
                resp = emu._service.handle(req)
        try:
            self._deliver(resp, now)
        finally:
            emu._log_request(req, resp, emu.clock() - t)

    def _simple(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain;charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _deliver(self, resp: dict[str, Any], now: float) -> None:
        emu: Emulator = self.server.emulator  # type: ignore[attr-defined]
        fault = resp.get("fault") or {}
        if fault.get("latency"):
            emu._stop.wait(fault["latency"])
        if fault.get("reset"):
            self._reset()
            return
        if fault.get("hang"):
            self._hang(emu._stop)
            return
        status, body = resp["status"], resp["body"]
        self.send_response_only(status, REASONS.get(status, "Status"))
        self.send_header("Date", email.utils.formatdate(now + fault.get("clock_skew", 0.0), usegmt=True))
        self.send_header("Server", self.server_version)
        for name, value in resp["headers"]:
            self.send_header(name, value)
        if fault.get("chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            step = max(1, len(body) // 3)
            payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                               for i in range(0, len(body), step)) + b"0\r\n\r\n"
        else:
            self.send_header("Content-Length", str(len(body)))
            payload = body
        if fault.get("truncate"):
            payload = payload[: len(payload) // 2]
            self.send_header("Connection", "close")  # also makes the handler close after this response
        elif self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST: SO_LINGER 0, then drop every reference to the socket."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        for f in (self.rfile, self.wfile):
            try:
                f.close()
            except OSError:
                pass
        self.connection.close()

    def _hang(self, stop: threading.Event) -> None:
        """Say nothing until the client gives up (closes) or the emulator stops."""
        self.close_connection = True
        sock = self.connection
        while not stop.is_set():
            try:
                readable, _, _ = select.select([sock], [], [], 0.2)
                if readable and not sock.recv(4096):
                    return
            except ssl.SSLWantReadError:
                continue
            except (OSError, ValueError):
                return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], emulator: Emulator, ssl_ctx: ssl.SSLContext | None) -> None:
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.emulator = emulator
        self.ssl_ctx = ssl_ctx
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn = request
        try:
            # Headers and body go out in separate writes; without this, Nagle plus the client's
            # delayed ACK would add ~40 ms to every TLS answer.
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_ctx is not None:
                request.settimeout(10)  # bound the handshake; the handler sets its own timeout after
                conn = self.ssl_ctx.wrap_socket(request, server_side=True)
            with self.sockets_lock:
                self.open_sockets.add(conn)
            self.RequestHandlerClass(conn, client_address, self)
        except (ssl.SSLError, OSError, ValueError) as e:  # ValueError: the reset fault closed the files
            LOG.info("%s connection ended: %s", client_address[0], e)
        finally:
            with self.sockets_lock:
                self.open_sockets.discard(conn)
            if conn is not request:
                conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        LOG.exception("%s emulator error while handling a request", client_address[0])


class Emulator:
    """A running Adobe Pass stand-in. `start()` serves from background threads; `stop()` ends it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: bool = True, state_dir: str | None = None,
                 token_ttl: int = 21600, legacy: bool = False, strict_device_info: bool = False,
                 rate: float = 1.0, burst: int = 10, retry_after: str | None = None,
                 trust_forwarded_for: bool = True, throttle: bool = True,
                 redirect_uri_prefixes: tuple[str, ...] = ("http://localhost",), burst_refill: bool = False,
                 register_content_type: str = "strict", error_style: str = "current", error_form: str = "top",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.clock = clock  # arrival times for the throttle and the request log; tests may drive it
        self._own_state_dir = state_dir is None
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="pass-emulator-")
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            self._service = Service(keys.load_or_create_signing_key(self.state_dir), token_ttl=token_ttl,
                                    legacy=legacy, strict_device_info=strict_device_info, rate=rate, burst=burst,
                                    retry_after=retry_after, trust_forwarded_for=trust_forwarded_for,
                                    throttle=throttle, redirect_uri_prefixes=tuple(redirect_uri_prefixes),
                                    burst_refill=burst_refill, register_content_type=register_content_type,
                                    error_style=error_style, error_form=error_form)
        except BaseException:
            if self._own_state_dir:  # a bad setting must not leave a temp dir with a key behind
                shutil.rmtree(self.state_dir, ignore_errors=True)
            raise
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.ca_file: str | None = None

    # ----- life cycle -----------------------------------------------------------------------------

    def start(self) -> Emulator:
        ctx = None
        if self.tls:
            paths = keys.load_or_create_tls(self.state_dir, (self.host,))
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(paths["cert_file"], paths["key_file"])
            self.ca_file = paths["ca_file"]
            with open(self.ca_file, "rb") as f:
                self._service.ca_pem = f.read()
        try:
            self._server = _Server((self.host, self.port), self, ctx)
        except OSError as e:
            raise OSError(e.errno, "cannot listen on %s port %d: %s; choose another --port (0 picks a free one)"
                          % (self.host, self.port, e.strerror or e))
        self.port = self._server.server_address[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="pass-emulator", daemon=True)
        self._thread.start()
        LOG.info("listening on %s (tls %s, state dir %s)", self.base_url, "on" if self.tls else "off", self.state_dir)
        return self

    def stop(self) -> None:
        self._stop.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            with server.sockets_lock:
                conns = list(server.open_sockets)
            for conn in conns:  # wake keep-alive and hung handlers; bypass SSLSocket.shutdown's state change
                try:
                    socket.socket.shutdown(conn, socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> Emulator:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----- addresses --------------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host:
            host = "[%s]" % host
        return "%s://%s:%d" % ("https" if self.tls else "http", host, self.port)

    @property
    def base_url(self) -> str:
        return self.origin + "/o"

    # ----- administration (same as the /_emulator/ API) ---------------------------------------------

    def mint_statement(self, app_id: str | None = None, approved: bool = True,
                       redirect_uris: list[str] | None = None) -> str:
        with self._lock:
            return self._service.mint_statement(app_id, time.time(), approved, redirect_uris)

    def write_statement(self, path: str, app_id: str | None = None) -> str:
        statement = self.mint_statement(app_id)
        tmp = "%s.tmp%d" % (path, os.getpid())
        with open(tmp, "w", encoding="ascii") as f:
            f.write(statement)
        os.replace(tmp, path)
        return statement

    def revoke_statement(self, statement_or_app_id: str, clients: bool = True) -> dict[str, int]:
        with self._lock:
            return self._service.revoke_statement(statement_or_app_id, clients)

    def revoke_client(self, client_id: str) -> None:
        with self._lock:
            self._service.revoke_client(client_id)

    def set_client_allowed(self, client_id: str, allowed: bool) -> None:
        with self._lock:
            self._service.set_client_allowed(client_id, allowed)

    def clients(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._service.list_clients()

    def add_fault(self, endpoint: str = "any", **knobs: Any) -> dict[str, Any]:
        with self._lock:
            return self._service.faults.add(dict(knobs, endpoint=endpoint))

    def clear_faults(self) -> int:
        with self._lock:
            return self._service.faults.clear()

    def configure(self, **changes: Any) -> dict[str, Any]:
        with self._lock:
            return self._service.configure(**changes)

    def config(self) -> dict[str, Any]:
        with self._lock:
            return self._service.config()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._service.stats()

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """The request log (secrets masked), optionally for one endpoint: register, token or protected."""
        with self._lock:
            return self._service.requests(endpoint)

    def reset_stats(self) -> None:
        with self._lock:
            self._service.reset_stats()

    # ----- request log -----------------------------------------------------------------------------

    def _log_request(self, req: dict[str, Any], resp: dict[str, Any], elapsed: float) -> None:
        if not LOG.isEnabledFor(logging.INFO):
            return
        fault = resp.get("fault")
        extras = []
        if resp.get("call"):  # the REST v2 call, e.g. sessions.create
            extras.append(resp["call"])
        if resp.get("code"):
            extras.append(resp["code"])
        if resp.get("client_id"):
            extras.append("client=" + resp["client_id"])
        if fault:
            extras.append("fault=" + "+".join(k for k in fault if k not in ("endpoint", "count", "id")))
        if resp.get("reason") and resp["status"] != 429:
            extras.append("(%s)" % resp["reason"])
        extras.append("%dms" % int(elapsed * 1000))
        LOG.info("%s %s %s%s -> %s %s", req["ip"], req["method"], req["path"],
                 "?" + mask_query(req["query"]) if req["query"] else "", resp["status"] or "no-answer",
                 " ".join(extras))
