"""Fuzzing the urequests shim's response parsing through a real socket.

A raw TCP server on 127.0.0.1 (ephemeral port) answers each request with the bytes hypothesis
chose (arbitrary bytes, or HTTP-shaped responses with odd status lines, headers and framing),
then closes, or keeps the connection open. The shim returns a Response with a status and a body
within max_body, or raises OSError / ValueError; never another exception, never a hang past its
timeout. Redirects are disabled (max_redirects=0) so a fuzzed Location never leaves loopback.
"""

from __future__ import annotations

import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import urequests

MAX_BODY = 4096


class RawServer:
    """Accepts connections; answers each with the current `reply` bytes, then closes (or holds)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.reply = b""
        self.hold = False
        self.release = threading.Event()
        self.closed = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10.0)
                try:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    conn.sendall(self.reply)
                    if self.hold:
                        self.release.wait(30.0)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.release.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not on Linux)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def server():
    s = RawServer()
    yield s
    s.close()


def fetch(server: RawServer, reply: bytes, hold: bool = False, timeout: float = 5.0, stream: bool = False):
    """Run one request in a thread (the hang detector) and return the Response or the exception."""
    server.reply, server.hold = reply, hold
    server.release.clear()
    box: list = []

    def run() -> None:
        try:
            r = urequests.request("POST", "http://127.0.0.1:%d/o/client/token" % server.port, data=b"a=b",
                                  headers={"Accept": "application/json"}, timeout=timeout, max_body=MAX_BODY,
                                  max_redirects=0, stream=stream)
            if stream:
                r.content  # noqa: B018
            box.append(r)
        except BaseException as e:  # handed to the test thread
            box.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout + 30.0)  # a hang detector, not a speed check
    server.release.set()
    assert not t.is_alive(), "the request did not end after its timeout"
    return box[0]


def check(result: object) -> None:
    if isinstance(result, BaseException):
        assert isinstance(result, (OSError, ValueError)), repr(result)
        assert "urequests" in str(result) or isinstance(result, TimeoutError), str(result)
        return
    r = result
    assert isinstance(r.status_code, int) and 100 <= r.status_code <= 599
    assert isinstance(r.reason, bytes)
    assert isinstance(r.content, bytes) and len(r.content) <= MAX_BODY
    assert isinstance(r.headers, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in r.headers.items())


token = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABC-_.!#0123456789"), min_size=1, max_size=12)
status_lines = st.one_of(
    st.builds(lambda v, code, reason: b"HTTP/%s %s %s\r\n" % (v, code, reason),
              st.sampled_from([b"1.1", b"1.0", b"1.", b"2", b"1.1x"]),
              st.one_of(st.integers(0, 1000).map(lambda n: str(n).encode()), st.sampled_from([b"2OO", b"", b"99"])),
              st.binary(max_size=20).map(lambda b: b.replace(b"\n", b""))),
    st.sampled_from([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", b"HTTP/1.1 200\r\n", b"HTTP/1.1 204 No\n",
                     b"\r\n", b"ICY 200 OK\r\n"]),
)
header_lines = st.one_of(
    st.builds(lambda n, v: n + b": " + v + b"\r\n", token.map(str.encode),
              st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))),
    st.builds(lambda v: b"Content-Length: " + v + b"\r\n",
              st.one_of(st.integers(-5, 10000).map(lambda n: str(n).encode()),
                        st.sampled_from([b"", b"5, 5", b"5, 6", b"0x10", b" 7 ", b"\xc2\xb2", b"1e3", b"9" * 30]))),
    st.sampled_from([b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n",
                     b"Transfer-Encoding: identity\r\n", b" folded\r\n", b"NoColon\r\n", b": empty\r\n",
                     b"Location: http://192.0.2.1/\r\n", b"Retry-After: 5\r\n", b"X: \xff\xfe\r\n",
                     b"Content-Type: application/json\r\n", b"a" * 9000 + b": b\r\n"]),
)
chunked_bodies = st.lists(
    st.one_of(st.binary(max_size=40).map(lambda b: b"%x\r\n%s\r\n" % (len(b), b)),
              st.sampled_from([b"0\r\n\r\n", b"0\r\nTrailer: x\r\n\r\n", b"zz\r\n", b"5\r\nab\r\n", b"5;ext=1\r\nabcde\r\n",
                               b"ffffffffffffffffff\r\n", b"1000\r\n" + b"x" * 4096 + b"\r\n", b"\r\n"])),
    max_size=6).map(b"".join)
responses = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda s, hs, end, body: s + b"".join(hs) + end + body, status_lines, st.lists(header_lines, max_size=8),
              st.sampled_from([b"\r\n", b"\n", b""]), st.one_of(st.binary(max_size=200), chunked_bodies,
                                                                 st.just(b"x" * (MAX_BODY + 1)))),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(reply=responses, stream=st.booleans())
def test_any_response_then_close(server: RawServer, reply: bytes, stream: bool) -> None:
    check(fetch(server, reply, stream=stream))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(reply=responses)
def test_any_response_then_silence_ends_by_the_timeout(server: RawServer, reply: bytes) -> None:
    # The server sends its bytes and then neither answers more nor closes: the deadline ends the call.
    check(fetch(server, reply, hold=True, timeout=0.5))


def test_server_answers_normally(server: RawServer) -> None:
    r = fetch(server, b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
    assert r.status_code == 201 and r.json() == {}


# Found by this fuzzing (int(x, 16) accepted "-1", "+5", "0x5", "1_0"); fixed in 00928b7.
@pytest.mark.parametrize("size", [b"-1", b"+5", b"0x5", b"1_0"])
def test_chunk_size_must_be_hex_digits(server: RawServer, size: bytes) -> None:
    r = fetch(server, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n0\r\n\r\n")
    assert isinstance(r, ValueError) and "chunk size" in str(r)


# -- the redirect policy under fuzzed redirects (issue 15 item 2) --------------------------------
# Two recording servers (tests/compat/urequests_servers.py): the origin, whose /start answers the
# chosen redirect, and another port. Whatever the status, method, body, credentials and target,
# a request that arrives at another origin (another port, or another host name on the same port)
# carries no byte of the body and no credential; the call returns a Response or raises ValueError.

SECRET_BODY = b"client_secret=fuzz-body-secret"
SECRET_HEADERS = {"Authorization": "Bearer fuzz-auth-secret", "Cookie": "c=fuzz-cookie-secret",
                  "Proxy-Authorization": "Basic fuzz-proxy-secret"}


@pytest.fixture(scope="module")
def origins():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "compat"))
    from urequests_servers import RawServer as Recorder
    from urequests_servers import response

    state = {"status": 302, "location": "/end"}
    a = Recorder({"/start": lambda req, s: s.sendall(response(state["status"],
                                                              headers={"Location": state["location"]})),
                  "*": lambda req, s: s.sendall(response(200, b"end"))})
    b = Recorder({"*": lambda req, s: s.sendall(response(200, b"other"))})
    yield a, b, state
    a.close()
    b.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(status=st.sampled_from([301, 302, 303, 307, 308]),
       method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
       body=st.sampled_from([None, b"", SECRET_BODY]),
       creds=st.lists(st.sampled_from(sorted(SECRET_HEADERS)), unique=True),
       target=st.sampled_from(["relative", "same", "other-port", "other-host", "other-host-port"]))
def test_redirects_carry_no_body_or_credential_to_another_origin(origins, status, method, body, creds, target):
    a, b, state = origins
    a.requests.clear()
    b.requests.clear()
    state["status"] = status
    state["location"] = {"relative": "/end?x=1", "same": a.url("/end"), "other-port": b.url("/end"),
                         "other-host": a.url("/end", host="localhost"),
                         "other-host-port": b.url("/end", host="localhost")}[target]
    try:
        r = urequests.request(method, a.url("/start"), data=body, headers={k: SECRET_HEADERS[k] for k in creds},
                              timeout=10)
        assert r.status_code == 200
    except ValueError as e:
        assert "another origin" in str(e) and target not in ("relative", "same"), str(e)
        assert body and b"fuzz" not in str(e).encode()
    origin_host = "127.0.0.1:%d" % a.port
    elsewhere = [q for q in a.requests if q.host_seen != origin_host] + list(b.requests)
    for q in elsewhere:
        assert b"fuzz-" not in q.body and not any("fuzz-" in v for v in q.headers.values()), (q.method, q.headers)
    if target in ("relative", "same"):
        assert len(a.requests) == 2 and not b.requests
        if status == 307 or status == 308 or (status in (301, 302) and method != "POST"):
            assert a.requests[1].body == (body or b"") and a.requests[1].method == method
