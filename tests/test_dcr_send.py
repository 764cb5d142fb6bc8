"""dcr.send() over real loopback sockets: answers pass through, failures become typed UpstreamErrors."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest

from agent import dcr
from agent.errors import RETRY, UpstreamError

sys.path.insert(0, str(Path(__file__).parent / "compat"))
from urequests_servers import Trap  # noqa: E402


class OneShotServer:
    """Accepts connections on 127.0.0.1:0 and answers each with `reply` bytes (or nothing)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.conns.append(conn)
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            while len(body) < length:
                body += conn.recv(65536)
            self.received = head + b"\r\n\r\n" + body
            if self.reply is not None:
                conn.sendall(self.reply)
                conn.close()
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()
        self.thread.join(5)

    @property
    def base(self) -> str:
        return "http://127.0.0.1:%d/o" % self.port


@pytest.fixture
def server_factory():
    servers = []

    def make(reply):
        s = OneShotServer(reply)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def test_send_delivers_the_documented_request_and_returns_the_answer(server_factory):
    body = b'{"access_token": "abc", "expires_in": 21600}'
    srv = server_factory(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
    req = dcr.token_request(srv.base, "cid", "sec ret", "WERJ")
    status, headers, got = dcr.send(req, timeout=5)
    assert status == 201 and got == body
    assert dcr.parse_token(status, headers, got)["access_token"] == "abc"
    head, _, sent = srv.received.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /o/client/token HTTP/1.1\r\n")
    assert b"\r\ncontent-type: application/x-www-form-urlencoded" in head.lower()
    assert b"\r\nx-device-info: WERJ" in head.lower().replace(b"werj", b"WERJ")
    assert sent == b"client_id=cid&client_secret=sec%20ret&grant_type=client_credentials"


def test_send_refused_connection_is_a_network_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(UpstreamError) as ei:
        dcr.send(dcr.register_request("http://127.0.0.1:%d/o" % port, "eyJ.a.b", "X"), timeout=5)
    assert (ei.value.code, ei.value.kind) == ("network", RETRY)
    assert "127.0.0.1" in str(ei.value) and ei.value.hint


def test_send_silent_server_is_a_timeout(server_factory):
    srv = server_factory(None)  # reads the request, never answers
    with pytest.raises(UpstreamError) as ei:
        dcr.send(dcr.token_request(srv.base, "cid", "the-secret", "X"), timeout=0.5)
    assert (ei.value.code, ei.value.kind) == ("timeout", RETRY)
    assert "the-secret" not in str(ei.value)


@pytest.mark.parametrize("reply", [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: zz\r\n\r\n"])
def test_send_malformed_http_is_a_malformed_response(server_factory, reply):
    srv = server_factory(reply)
    with pytest.raises(UpstreamError) as ei:
        dcr.send(dcr.token_request(srv.base, "cid", "the-secret", "X"), timeout=5)
    assert (ei.value.code, ei.value.kind) == ("malformed_response", RETRY)
    assert "the-secret" not in str(ei.value)


# -- redirects: the DCR requests never follow one (issue 15 item 2) ------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("which", ["register", "token"])
def test_send_never_follows_a_redirect_and_no_byte_reaches_the_location(server_factory, status, which):
    trap = Trap()
    location = "http://localhost:%d/steal" % trap.port
    srv = server_factory(b"HTTP/1.1 %d Moved\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n"
                         % (status, location.encode()))
    if which == "register":
        req = dcr.register_request(srv.base, "eyJ.statement-never-elsewhere.sig", "X")
    else:
        req = dcr.token_request(srv.base, "cid", "the-secret-never-elsewhere", "X")
    try:
        got_status, headers, body = dcr.send(req, timeout=5)
        assert trap.connections() == 0  # not one connection, so not one byte, reached the Location
    finally:
        trap.close()
    assert got_status == status
    assert srv.received.endswith(req["body"])  # the first origin got the request
    with pytest.raises(UpstreamError) as ei:
        (dcr.parse_register if which == "register" else dcr.parse_token)(got_status, headers, body)
    assert ei.value.code == "redirected" and location in ei.value.message


# -- one network hint through the service's wrapping (issue 15 item 17) --------------------------


def test_network_hint_appears_once_in_the_service_log_and_not_ready_error(tmp_path, caplog):
    import logging

    from agent import config as configmod
    from agent.service import Service
    from tests.conftest import fake_statement

    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    port = trap.getsockname()[1]
    trap.close()  # nothing listens there: connection refused
    st = tmp_path / "statement.jwt"
    st.write_text(fake_statement())
    cfg = configmod.defaults().replace(adobe={"software_statement": str(st), "base_url": "http://127.0.0.1:%d/o" % port,
                                              "timeout": 5.0})
    identity = {"x_device_info": "eyJtb2RlbCI6IngifQ==", "ap_device_identifier": "fingerprint eA==",
                "device_id": "serial:1", "fields": {"model": "x"}, "sources": {}, "warnings": []}
    failed = threading.Event()
    svc = Service(cfg, identity=identity)
    svc.add_listener(failed.set)
    with caplog.at_level(logging.WARNING):
        svc.start()
        try:
            assert failed.wait(30)
            err = svc.not_ready_error()
        finally:
            svc.stop()
    lines = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert lines, caplog.text
    for text in lines + [str(err)]:
        assert text.lower().count("check the network") == 1, text
        assert "then retry" not in text and "urequests:" not in text, text
