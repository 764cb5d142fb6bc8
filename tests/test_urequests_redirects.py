"""The shim's redirect policy against real local HTTP(S) servers (issue 15 item 2).

Never resend a body or credentials (Authorization, Cookie, Proxy-Authorization) to another origin
(scheme + host + port), never follow https -> http, and keep a 307/308 body only for the same
origin. Each test proves that no byte of the body (and no credential) reaches the other origin:
every byte that server receives is recorded, and a "trap" listener nobody accepts on counts the
connections the client made (a loopback connect() completes the handshake before it returns, so a
non-blocking accept() after the call is a certain answer).
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).parent / "compat"))
from urequests_servers import Pki, RawServer, Trap, response, send  # noqa: E402

from agent import urequests  # noqa: E402

BODY = b"client_secret=the-body-secret-never-elsewhere"
CREDS = {"Authorization": "Bearer auth-secret-never-elsewhere", "Cookie": "c=cookie-secret-never-elsewhere",
         "Proxy-Authorization": "Basic proxy-secret-never-elsewhere"}
SECRETS = [b"the-body-secret", b"auth-secret", b"cookie-secret", b"proxy-secret"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


class DualServer:
    """One loopback port speaking plain HTTP and TLS (it peeks at the first byte: 0x16 is a TLS
    handshake), so that a redirect can change the scheme alone. Records every byte received per
    scheme after decryption."""

    def __init__(self, tls: ssl.SSLContext, answer: Callable[[str, str], bytes]) -> None:
        self.tls, self.answer = tls, answer  # answer(scheme, path) -> the bytes to send
        self.received: dict[str, bytes] = {"http": b"", "https": b""}
        self.connections: dict[str, int] = {"http": 0, "https": 0}
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.done = threading.Semaphore(0)
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        sock = conn
        try:
            conn.settimeout(10)
            first = conn.recv(1, socket.MSG_PEEK)
            scheme = "https" if first == b"\x16" else "http"
            self.connections[scheme] += 1
            if scheme == "https":
                sock = self.tls.wrap_socket(conn, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data:
                got = sock.recv(65536)
                if not got:
                    break
                data += got
            head = data.split(b"\r\n\r\n", 1)[0].lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(data) - len(head) - 4 < length:
                got = sock.recv(65536)
                if not got:
                    break
                data += got
            self.received[scheme] += data
            path = data.split(b" ", 2)[1].decode("ascii") if data.count(b" ") >= 2 else "/"
            sock.sendall(self.answer(scheme, path))
        except OSError:
            pass
        finally:
            sock.close()
            self.done.release()

    def url(self, scheme: str, path: str) -> str:
        return "%s://127.0.0.1:%d%s" % (scheme, self.port, path)

    def close(self) -> None:
        self.lsock.close()
        for t in self.threads:
            t.join(10)


def no_secret_in(data: bytes) -> bool:
    return not any(s in data for s in SECRETS)


# --------------------------------------------------------------------------------------------
# Port-only change (same scheme, same host): another origin


@pytest.mark.parametrize("status", [307, 308])
def test_307_308_to_another_port_does_not_resend_the_body(status):
    with Trap() as trap:
        location = "http://127.0.0.1:%d/to" % trap.port
        with RawServer({"/from": send(response(status, headers={"Location": location}))}) as a:
            with pytest.raises(ValueError) as ei:
                urequests.post(a.url("/from"), data=BODY, headers=dict(CREDS), timeout=10)
            assert a.requests[0].body == BODY  # the first origin got it
        assert trap.connections() == 0  # not one byte reached the other port
    msg = str(ei.value)
    assert "another origin" in msg and location in msg and "the-body-secret" not in msg


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_credentials_never_reach_another_port(status):
    with RawServer({"*": send(response(200, b"ok"))}) as b:
        with RawServer({"/from": send(response(status, headers={"Location": b.url("/to")}))}) as a:
            r = urequests.get(a.url("/from"), headers=dict(CREDS), timeout=10)
            assert r.content == b"ok"
            assert a.requests[0].headers["authorization"] == CREDS["Authorization"]
        got = b.requests[0]
        assert got.path == "/to"
        for name in ("authorization", "cookie", "proxy-authorization"):
            assert name not in got.headers


@pytest.mark.parametrize("status", [301, 302, 303])
def test_post_redirected_as_get_to_another_port_carries_no_body(status):
    with RawServer({"*": send(response(200, b"ok"))}) as b:
        with RawServer({"/from": send(response(status, headers={"Location": b.url("/to")}))}) as a:
            assert urequests.post(a.url("/from"), data=BODY, headers=dict(CREDS), timeout=10).content == b"ok"
        got = b.requests[0]
        assert got.method == "GET" and got.body == b""
        assert "content-length" not in got.headers or got.headers["content-length"] == "0"
        assert "authorization" not in got.headers and "cookie" not in got.headers


def test_307_without_a_body_to_another_origin_is_followed_without_credentials():
    with RawServer({"*": send(response(200, b"ok"))}) as b:
        with RawServer({"/from": send(response(307, headers={"Location": b.url("/to")}))}) as a:
            assert urequests.get(a.url("/from"), headers=dict(CREDS), timeout=10).content == b"ok"
        assert "authorization" not in b.requests[0].headers


def test_307_same_origin_keeps_body_and_credentials():
    with RawServer({"/from": send(response(307, headers={"Location": "/to"})),
                    "/to": send(response(200, b"ok"))}) as a:
        assert urequests.post(a.url("/from"), data=BODY, headers=dict(CREDS), timeout=10).content == b"ok"
        second = a.requests[1]
        assert second.body == BODY and second.headers["authorization"] == CREDS["Authorization"]
        assert second.headers["cookie"] == CREDS["Cookie"]


def test_credentials_stay_dropped_after_leaving_the_origin_once():
    # a -> b (other origin) -> a again: what was dropped is not re-added on the way back.
    with RawServer({"/back": send(response(200, b"ok"))}) as a2:
        with RawServer({"/hop": send(response(302, headers={"Location": a2.url("/back")}))}) as b:
            with RawServer({"/from": send(response(302, headers={"Location": b.url("/hop")}))}) as a:
                assert urequests.get(a.url("/from"), headers=dict(CREDS), timeout=10).content == b"ok"
        assert "authorization" not in a2.requests[0].headers


def test_host_name_only_change_is_another_origin_for_the_body():
    with RawServer({"/to": send(response(200, b"ok"))}) as srv:
        srv.routes["/from"] = send(response(307, headers={"Location": srv.url("/to", host="localhost")}))
        with pytest.raises(ValueError, match="another origin"):
            urequests.post(srv.url("/from"), data=BODY, timeout=10)
        assert len(srv.requests) == 1  # nothing arrived under the other name


# --------------------------------------------------------------------------------------------
# Scheme-only change (same host, same port)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("method,data", [("GET", None), ("POST", BODY)])
def test_scheme_only_https_to_http_downgrade_is_refused(pki, status, method, data):
    srv = DualServer(pki.server_context("good"),
                     lambda scheme, path: response(status, headers={"Location": srv.url("http", "/to")}))
    try:
        with pytest.raises(ValueError) as ei:
            urequests.request(method, srv.url("https", "/from"), data=data, headers=dict(CREDS), timeout=10,
                              ca_file=pki.ca_file)
        assert srv.done.acquire(timeout=10)  # the https exchange is complete and recorded
    finally:
        srv.close()
    assert srv.received["https"].startswith(method.encode() + b" /from ")
    if data:
        assert srv.received["https"].endswith(BODY)
    assert srv.connections["http"] == 0 and srv.received["http"] == b""  # no byte in clear text
    assert "https to http" in str(ei.value) and "the-body-secret" not in str(ei.value)


def test_scheme_only_http_to_https_upgrade_is_another_origin_for_a_307_body(pki):
    srv = DualServer(pki.server_context("good"),
                     lambda scheme, path: response(307, headers={"Location": srv.url("https", "/to")}))
    try:
        with pytest.raises(ValueError, match="another origin"):
            urequests.post(srv.url("http", "/from"), data=BODY, headers=dict(CREDS), timeout=10,
                           ca_file=pki.ca_file)
        assert srv.done.acquire(timeout=10)
    finally:
        srv.close()
    assert srv.received["http"].endswith(BODY)
    assert srv.connections["https"] == 0


def test_scheme_only_http_to_https_upgrade_is_followed_without_credentials(pki):
    def answer(scheme: str, path: str) -> bytes:
        if scheme == "http":
            return response(302, headers={"Location": srv.url("https", "/to")})
        return response(200, b"ok")

    srv = DualServer(pki.server_context("good"), answer)
    try:
        r = urequests.get(srv.url("http", "/from"), headers=dict(CREDS), timeout=10, ca_file=pki.ca_file)
        assert r.content == b"ok"
        assert srv.done.acquire(timeout=10) and srv.done.acquire(timeout=10)
    finally:
        srv.close()
    assert b"auth-secret" in srv.received["http"]
    assert srv.connections["https"] == 1 and srv.received["https"].startswith(b"GET /to HTTP/1.1\r\n")
    assert no_secret_in(srv.received["https"])
