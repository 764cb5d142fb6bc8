"""Purpose-built local HTTP(S) servers and a generated PKI for the urequests shim tests (CPython only).

A `RawServer` accepts on 127.0.0.1 (port 0), optionally speaks TLS, parses each request itself and
hands it to a route function that writes whatever bytes it likes (malformed, slow, chunked...), so
tests can produce responses no well-behaved server library would. Every connection is recorded,
including whether the client closed its end.

Must never: listen on anything but loopback, or outlive the test that started it.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Callable

Route = Callable[["Request", socket.socket], None]


class Request:
    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes, host_seen: str):
        self.method, self.target, self.headers, self.body, self.host_seen = method, target, headers, body, host_seen

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


def response(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None,
             reason: str = "OK") -> bytes:
    lines = ["HTTP/1.1 %d %s" % (status, reason)]
    h = {"Content-Length": str(len(body)), "Connection": "close"}
    h.update(headers or {})
    lines += ["%s: %s" % kv for kv in h.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def chunked(parts: list[bytes], ext: bool = False, trailer: bool = False) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
    for p in parts:
        out += b"%x%s\r\n%s\r\n" % (len(p), b";name=val" if ext else b"", p)
    return out + b"0\r\n" + (b"X-Trailer: yes\r\n" if trailer else b"") + b"\r\n"


def _read_request(sock: socket.socket) -> tuple[Request | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        got = sock.recv(65536)
        if not got:
            return None, data
        data += got
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            got = sock.recv(65536)
            if not got:
                break
            rest += got
        body = rest[:n]
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += sock.recv(65536)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += sock.recv(65536)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2:]
    else:
        body = b""
    return Request(method, target, headers, body, headers.get("host", "")), rest


class RawServer:
    """A threaded loopback server; `routes` maps a path (or '*') to a function(req, sock)."""

    def __init__(self, routes: dict[str, Route], tls: ssl.SSLContext | None = None, backlog: int = 16,
                 accept: bool = True):
        self.routes = routes
        self.tls = tls
        self.requests: list[Request] = []
        self.client_closed: list[bool] = []  # per connection: did the client close its end?
        self.tls_errors: list[str] = []
        self.finished = 0  # connections fully handled and closed on the server side
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(("127.0.0.1", 0))
        self._lsock.listen(backlog)
        self.port = self._lsock.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        if accept:
            t = threading.Thread(target=self._accept_loop, daemon=True)
            t.start()
            self._threads.append(t)

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return "%s://%s:%d%s" % ("https" if self.tls else "http", host, self.port, path)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _accept_loop(self) -> None:
        self._lsock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._lsock.accept()
            except (socket.timeout, OSError):
                continue
            with self._lock:
                self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        sock = conn
        try:
            conn.settimeout(30)
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    self.tls_errors.append(str(e))
                    return
                with self._lock:
                    self._conns.append(sock)
            req, _ = _read_request(sock)
            if req is None:
                return
            with self._lock:
                self.requests.append(req)
            route = self.routes.get(req.path) or self.routes.get("*")
            if route is None:
                sock.sendall(response(404, b"no route"))
            else:
                route(req, sock)
            # Half-close (ends until-close bodies), then wait (bounded) for the client to close:
            # proves the client does not leak its socket.
            try:
                socket.socket.shutdown(sock, socket.SHUT_WR)
            except OSError:
                pass
            sock.settimeout(5)
            try:
                closed = sock.recv(1) == b""
            except OSError:
                closed = True
            self.client_closed.append(closed)
        except OSError:
            pass
        finally:
            for c in (sock, conn):
                try:
                    c.close()
                except OSError:
                    pass
            with self._lock:
                self.finished += 1

    def wait_finished(self, n: int, limit: float = 10.0) -> None:
        """Wait until n connections are closed server-side (so fd counts see only the client's)."""
        end = time.monotonic() + limit
        while self.finished < n and time.monotonic() < end:
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._lsock.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
        for t in self._threads:
            t.join(timeout=10)

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Trap:
    """A listening socket nobody accepts on: after a synchronous client call returns, a connection the
    client made is already in the backlog (the loopback handshake completes inside connect()), so a
    non-blocking accept() tells for certain whether anything connected. close() or a with block."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        self.sock.setblocking(False)
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Trap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send(data: bytes) -> Route:
    """A route that writes fixed bytes."""
    return lambda req, sock: sock.sendall(data)


def drip(head: bytes, piece: bytes, interval: float, count: int, server: list[RawServer]) -> Route:
    """Headers at once, then `piece` every `interval` seconds, `count` times (a slow-drip body)."""
    def route(req: Request, sock: socket.socket) -> None:
        sock.sendall(head)
        for _ in range(count):
            if server and server[0].stopping:
                return
            time.sleep(interval)
            sock.sendall(piece)
    return route


# ----------------------------------------------------------------------------------------------
# PKI


class Pki:
    """A test CA with leaf certificates: good (localhost + 127.0.0.1), wrong host, untrusted CA."""

    def __init__(self, directory: Path):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        self.dir = directory

        def name(cn: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def make_ca(cn: str):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(days=1))
                    .not_valid_after(now + datetime.timedelta(days=30))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                    .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                 content_commitment=False, key_encipherment=False,
                                                 data_encipherment=False, key_agreement=False,
                                                 encipher_only=False, decipher_only=False), critical=True)
                    .sign(key, hashes.SHA256()))
            return key, cert

        def make_leaf(ca_key, ca_cert, sans, stem: str) -> None:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (x509.CertificateBuilder().subject_name(name("pass-agent test leaf"))
                    .issuer_name(ca_cert.subject).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(days=1))
                    .not_valid_after(now + datetime.timedelta(days=30))
                    .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                    .sign(ca_key, hashes.SHA256()))
            (directory / (stem + ".crt")).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            (directory / (stem + ".key")).write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

        local = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        ca_key, ca_cert = make_ca("pass-agent test CA")
        self.ca_file = str(directory / "ca.pem")
        Path(self.ca_file).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        make_leaf(ca_key, ca_cert, local, "good")
        make_leaf(ca_key, ca_cert, [x509.DNSName("wrong.example")], "wrong")
        other_key, other_cert = make_ca("some other CA")
        make_leaf(other_key, other_cert, local, "untrusted")

    def server_context(self, stem: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.dir / (stem + ".crt")), str(self.dir / (stem + ".key")))
        return ctx
