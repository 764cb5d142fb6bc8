"""The web endpoint (agent/web) in process: a real WebServer on a real Loop and loopback TCP, with the
fake Service, a fake SecurityAgent (a real HTTP server) and a real tokens file. Every refusal the issue
names (wrong token, wrong Origin, no Origin, foreign Host, no token, oversized frames, non-loopback
bind) has its test here; tests/test_web_daemon.py and tests/test_web_browser.py run the real daemon."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading
from typing import Any

import pytest

pytest.importorskip("h11", reason="the web endpoint needs the optional packages h11 and wsproto (pass-agent[web])")
pytest.importorskip("wsproto", reason="the web endpoint needs the optional packages h11 and wsproto (pass-agent[web])")

from agent import config as configmod  # noqa: E402
from agent.errors import ConfigError  # noqa: E402
from agent.loop import Loop  # noqa: E402
from agent.web import guard  # noqa: E402
from agent.web.server import WebServer  # noqa: E402
from tests.fakes import TOKEN, FakeService, assert_accepts_paused, connect_while_out_of_fds, wait_for  # noqa: E402
from tests.webclient import Refused, connect  # noqa: E402

ORIGIN = "http://127.0.0.1:8000"
GOOD = "good-web-token-0123456789"
IS_ROOT = os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tokens(path: str, lines: str, mode: int = 0o600) -> str:
    with open(path, "w") as f:
        f.write(lines)
    os.chmod(path, mode)
    return path


def token_line(token: str, app: str = "default") -> str:
    return "%s %s\n" % (hashlib.sha256(token.encode()).hexdigest(), app)


class FakeSecurityAgent:
    """Thunder's JSON-RPC endpoint with SecurityAgent.1.validate: valid for the tokens in `valid`."""

    def __init__(self, valid: set | None = None, broken: bool = False) -> None:
        self.valid = set(valid or ())
        self.broken = broken
        self.requests: list = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body, self.headers.get("Authorization")))
                if outer.broken:
                    answer = {"jsonrpc": "2.0", "id": body.get("id"), "error": {"code": -32601, "message": "Unknown"}}
                else:
                    token = body.get("params", {}).get("token")
                    answer = {"jsonrpc": "2.0", "id": body.get("id"), "result": {"valid": token in outer.valid}}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/jsonrpc" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeSecurityAgent:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class WebHarness:
    """A WebServer in a Loop running in a background thread."""

    def __init__(self, service: FakeService | None = None, **web: Any) -> None:
        self.service = service or FakeService()
        self.port = free_port()
        values = {"listen": "127.0.0.1:%d" % self.port, "allowed_origins": (ORIGIN,)}
        values.update(web)
        self.cfg = configmod.defaults().replace(web=values).web
        self.loop = Loop()
        self.server = WebServer(self.service, self.loop, self.cfg)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)

    def __enter__(self) -> WebHarness:
        self.server.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        done = threading.Event()
        self.loop.call_soon_threadsafe(lambda: (self.server.close(), done.set()))
        assert done.wait(10)
        self.loop.stop()
        self.thread.join(10)
        self.loop.close()

    def stats(self) -> dict:
        box: list = []
        done = threading.Event()
        self.loop.call_soon_threadsafe(lambda: (box.append(self.server.stats()), done.set()))
        assert done.wait(10)
        return box[0]

    def connect(self, token: str | None = GOOD, **kw: Any) -> Any:
        return connect(self.port, token, **kw)


@pytest.fixture
def sa():
    with FakeSecurityAgent({GOOD}) as s:
        yield s


@pytest.fixture
def web(sa):
    with WebHarness(securityagent=sa.url) as h:
        yield h


# -- the dialect ----------------------------------------------------------------------------------


def test_socket_methods_in_thunders_dialect(web):
    with web.connect() as c:
        hdr = c.call("PassAgent.1.headers")["result"]
        assert hdr["headers"]["Authorization"] == "Bearer " + TOKEN
        assert set(hdr["headers"]) == {"Authorization", "X-Device-Info", "AP-Device-Identifier"}
        tok = c.call("PassAgent.1.token", {"min_ttl": 60})["result"]
        assert tok["access_token"] == TOKEN and tok["token_type"] == "bearer"
        assert c.call("PassAgent.status")["result"] == web.service.status()  # no version: version 1
        assert c.call("PassAgent.1.health")["result"] == {"live": True, "ready": True}
        assert c.call("PassAgent.1.deviceinfo")["result"]["x_device_info"]
        rep = c.call("PassAgent.1.reporterror", {"status": 401, "access_token": TOKEN})
        assert "result" in rep and web.service.reports
        # The socket API's validation and errors, unchanged.
        bad = c.call("PassAgent.1.token", {"min_ttl": "soon"})["error"]
        assert bad["code"] == -32602 and "min_ttl" in bad["message"]
        unknown = c.call("PassAgent.1.wipe")["error"]
        assert unknown["code"] == -32601 and "PassAgent.1.headers" in unknown["message"]
        other = c.call("Controller.1.activate", {"callsign": "x"})["error"]
        assert other["code"] == -32601 and "PassAgent only" in other["message"]
        assert c.call("PassAgent.2.headers")["error"]["code"] == -32601
        c.send_text("{not json")
        assert c.recv()["error"]["code"] == -32700


def test_register_delivers_tokenchanged_until_unregister(web):
    with web.connect() as c:
        reg = c.call("PassAgent.1.register", {"event": "tokenchanged", "id": "client.PassAgent.events"})
        assert reg["result"] == 0
        web.service.set_token(TOKEN + "2", lifetime=3600)
        note = c.recv()
        assert note["method"] == "client.PassAgent.events.tokenchanged" and "id" not in note
        assert set(note["params"]) == {"expires_at", "refresh_at"}
        assert c.call("PassAgent.1.unregister", {"event": "tokenchanged", "id": "client.PassAgent.events"})["result"] == 0
        web.service.set_token(TOKEN + "3", lifetime=3600)
        # The next answer is the first message: no notification came in between.
        c.send({"jsonrpc": "2.0", "id": 99, "method": "PassAgent.1.health"})
        assert c.recv()["id"] == 99
        bad = c.call("PassAgent.1.register", {"event": "token.changed", "id": "x"})["error"]
        assert bad["code"] == -32602 and "tokenchanged" in bad["message"]


def test_a_parked_wait_is_answered_when_the_token_arrives(sa):
    svc = FakeService(token=None)
    with WebHarness(svc, securityagent=sa.url) as web, web.connect() as c:
        c.send({"jsonrpc": "2.0", "id": 7, "method": "PassAgent.1.headers", "params": {"wait": 30}})
        assert wait_for(lambda: web.stats()["waiting"] == 1)
        svc.set_token(TOKEN)
        ans = c.recv()
        assert ans["id"] == 7 and ans["result"]["headers"]["Authorization"] == "Bearer " + TOKEN
        assert web.stats()["waiting"] == 0


def test_parked_waits_are_capped_per_connection(sa):
    svc = FakeService(token=None)
    with WebHarness(svc, securityagent=sa.url) as web:
        web.server.max_waits_per_conn = 2
        with web.connect() as c:
            for i in range(2):
                c.send({"jsonrpc": "2.0", "id": i, "method": "PassAgent.1.token", "params": {"wait": 60}})
            third = c.call("PassAgent.1.token", {"wait": 60})
            assert third["error"]["code"] == -32007 and third["error"]["data"]["code"] == "too_many_waits"


def test_thunderjs_subprotocol_is_accepted_and_unknown_ones_refused(web):
    with web.connect(subprotocols=["notification"]) as c:
        assert c.subprotocol == "notification"
        assert c.call("PassAgent.1.health")["result"]["ready"] is True
    with pytest.raises(Refused) as e:
        web.connect(subprotocols=["mqtt"])
    assert e.value.status == 400 and e.value.code == "web_subprotocol"


# -- refusals ------------------------------------------------------------------------------------


def test_wrong_token_is_refused(web, sa):
    with pytest.raises(Refused) as e:
        web.connect("not-a-valid-token")
    assert e.value.status == 403 and e.value.code == "web_bad_token"
    assert "not-a-valid-token" not in json.dumps(e.value.body)


def test_no_token_is_refused(web, sa):
    for token in (None, ""):
        with pytest.raises(Refused) as e:
            web.connect(token)
        assert e.value.status == 401 and e.value.code == "web_no_token"
    assert sa.requests == []


def test_wrong_origin_is_refused_before_the_token_is_looked_at(web, sa):
    for origin in ("http://evil.example", "http://127.0.0.1:8001", "https://127.0.0.1:8000", "null"):
        with pytest.raises(Refused) as e:
            web.connect(GOOD, origin=origin)
        assert e.value.status == 403 and e.value.code == "web_origin", origin
    assert sa.requests == []  # a foreign page never makes the agent ask SecurityAgent (no oracle)


def test_no_origin_is_refused(web, sa):
    with pytest.raises(Refused) as e:
        web.connect(GOOD, origin=None)
    assert e.value.status == 403 and e.value.code == "web_origin"
    assert sa.requests == []


def test_a_foreign_host_header_is_refused_dns_rebinding(web, sa):
    # A rebinding page reaches 127.0.0.1 under its own name and sends its own origin's... or, with an
    # allowed Origin forged by a non-browser, still its own Host: refused either way.
    for host in ("attacker.example:%d" % web.port, "127.0.0.1:%d" % (web.port + 1), "192.168.1.2:%d" % web.port,
                 "attacker.example"):
        with pytest.raises(Refused) as e:
            web.connect(GOOD, host=host)
        assert e.value.status == 403 and e.value.code == "web_host", host
    assert sa.requests == []
    for host in ("localhost:%d" % web.port, "127.0.0.1:%d" % web.port):
        with web.connect(GOOD, host=host) as c:
            assert c.call("PassAgent.1.health")["result"]["live"] is True


def test_oversized_messages_and_frames_close_the_connection(sa):
    with WebHarness(securityagent=sa.url, max_message=4096) as web:
        with web.connect() as c:
            c.send_text(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "PassAgent.1.health", "pad": "x" * 5000}))
            with pytest.raises(ConnectionError):
                c.recv()
            assert c.closed.code == 1009
        with web.connect() as c:
            # One frame that announces 100 MB: closed after max_message bytes, not buffered to the end.
            mask = b"\x01\x02\x03\x04"
            c.send_raw(b"\x81\xff" + (100 * 1024 * 1024).to_bytes(8, "big") + mask)
            try:
                c.send_raw(b"a" * 8192)
            except OSError:
                pass
            with pytest.raises(ConnectionError):
                c.recv()
            assert c.closed.code == 1009
        with web.connect() as c:  # a message split over frames counts as a whole
            from wsproto.events import Message
            for _ in range(3):
                c.send_raw(c.ws.send(Message(data="x" * 2000, message_finished=False)))
            with pytest.raises(ConnectionError):
                c.recv()
            assert c.closed.code == 1009
        assert web.stats()["closed_too_large"] == 3


def test_split_pipelined_and_escaped_requests_are_answered(web):
    from wsproto.events import Message

    with web.connect() as c:
        frame = c.ws.send(Message(data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "PassAgent.1.health"})))
        c.send_raw(frame[:5])  # one frame over two writes: the connection leaves the hot path for wsproto
        c.send_raw(frame[5:])
        assert c.recv()["result"]["live"] is True
        two = b"".join(c.ws.send(Message(data=json.dumps({"jsonrpc": "2.0", "id": i, "method": "PassAgent.1.token"})))
                       for i in (2, 3))
        c.send_raw(two)
        assert [c.recv()["id"], c.recv()["id"]] == [2, 3]
    with web.connect() as c:
        # The designator escaped in the method and verbatim in the id: still the method that counts.
        c.send_text('{"jsonrpc":"2.0","id":"PassAgent.1.token","method":"PassAgent.1.head\\u0065rs"}')
        ans = c.recv()
        assert ans["id"] == "PassAgent.1.token" and "headers" in ans["result"]
        c.send_text(json.dumps({"jsonrpc": "2.0", "id": 5, "method": "PassAgent.1.token",
                                "params": {"min_ttl": 1}, "x": "\u00e9" * 200}))
        assert c.recv()["result"]["access_token"] == TOKEN  # a 16-bit-length frame of non-ASCII text


def test_binary_messages_are_refused(web):
    with web.connect() as c:
        from wsproto.events import Message
        c.send_raw(c.ws.send(Message(data=b"{}")))
        with pytest.raises(ConnectionError):
            c.recv()
        assert c.closed.code == 1003


def test_connection_cap_answers_busy(sa):
    with WebHarness(securityagent=sa.url, max_connections=2) as web:
        with web.connect() as a, web.connect() as b:
            assert a.call("PassAgent.1.health")["result"] and b.call("PassAgent.1.health")["result"]
            with pytest.raises(Refused) as e:
                web.connect()
            assert e.value.status == 503 and e.value.code == "web_busy"


def test_a_silent_connection_is_closed_after_the_handshake_timeout(sa):
    with WebHarness(securityagent=sa.url, handshake_timeout=0.2) as web:
        s = socket.create_connection(("127.0.0.1", web.port), timeout=30)
        s.sendall(b"GET /jsonrpc?token=x HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes its head
        assert s.recv(1) == b""  # closed by the agent
        s.close()


def test_an_idle_open_connection_is_closed(sa):
    with WebHarness(securityagent=sa.url, idle_timeout=0.2) as web, web.connect() as c:
        assert c.call("PassAgent.1.health")["result"]["live"] is True
        with pytest.raises(ConnectionError):
            c.recv()  # nothing was asked: the agent closes it after idle_timeout
        assert wait_for(lambda: web.stats()["closed_idle"] == 1 and web.stats()["connections"] == 0)


def test_a_request_head_beyond_the_bound_is_refused(web):
    s = socket.create_connection(("127.0.0.1", web.port), timeout=30)
    s.sendall(b"GET /jsonrpc?token=x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Pad: " % web.port + b"a" * 40000)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 400") and b"web_bad_request" in data


# -- SecurityAgent ---------------------------------------------------------------------------------


def test_securityagent_is_asked_as_thunder_documents(web, sa):
    with web.connect() as c:
        assert c.call("PassAgent.1.health")["result"]["live"] is True
    path, body, auth = sa.requests[-1]
    assert path == "/jsonrpc" and body["method"] == "SecurityAgent.1.validate"
    assert body["params"] == {"token": GOOD} and auth == "Bearer " + GOOD


def test_securityagent_unreachable_or_erroring_is_a_refusal(sa):
    with FakeSecurityAgent(broken=True) as broken, WebHarness(securityagent=broken.url) as web:
        with pytest.raises(Refused) as e:
            web.connect()
        assert e.value.status == 503 and e.value.code == "web_securityagent"
    with WebHarness(securityagent="http://127.0.0.1:%d/jsonrpc" % free_port()) as web:
        with pytest.raises(Refused) as e:
            web.connect()
        assert e.value.status == 503 and e.value.code == "web_securityagent"


def _jwt(claims: dict) -> str:
    import base64

    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return "%s.%s.c2ln" % (b64({"alg": "HS256", "typ": "JWT"}), b64(claims))


def test_a_securityagent_token_for_another_origin_is_refused(sa):
    mine, theirs = _jwt({"url": ORIGIN + "/index.html", "user": "app"}), _jwt({"url": "https://other.example/app"})
    sa.valid |= {mine, theirs}
    with WebHarness(securityagent=sa.url) as web:
        with web.connect(mine) as c:
            assert c.call("PassAgent.1.health")["result"]["live"] is True
        with pytest.raises(Refused) as e:
            web.connect(theirs)
        assert e.value.status == 403 and e.value.code == "web_token_origin"


# -- the tokens file -----------------------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="a tokens file must be owned by root: creating one needs root")
def test_tokens_file_maps_a_token_to_its_application(tmp_path, sa):
    path = write_tokens(str(tmp_path / "tokens"), "# web apps\n\n" + token_line("file-token"))
    with WebHarness(tokens_file=path) as web:
        with web.connect("file-token") as c:
            assert c.call("PassAgent.1.headers")["result"]["headers"]["Authorization"] == "Bearer " + TOKEN
        with pytest.raises(Refused) as e:
            web.connect("other-token")
        assert e.value.code == "web_bad_token"
        assert web.stats()["opened"] == 1


@pytest.mark.skipif(not IS_ROOT, reason="chown to another user needs root")
def test_tokens_file_not_root_only_is_refused_with_a_clear_error(tmp_path):
    path = write_tokens(str(tmp_path / "tokens"), token_line("t"), mode=0o644)
    with pytest.raises(guard.WebError) as e:
        guard.load_tokens(path)
    assert "mode 0644" in e.value.message and "0600" in e.value.message
    os.chmod(path, 0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(guard.WebError) as e:
        guard.load_tokens(path)
    assert "owned by uid 65534, not root" in e.value.message
    os.chown(path, 0, 0)
    assert guard.load_tokens(path) == {hashlib.sha256(b"t").hexdigest(): "default"}
    write_tokens(path, token_line("t", "other-app"))
    with pytest.raises(guard.WebError) as e:
        guard.load_tokens(path)
    assert "line 1: no application named 'other-app' (known: default)" in e.value.message
    write_tokens(path, "not-a-hash default\n")
    with pytest.raises(guard.WebError) as e:
        guard.load_tokens(path)
    assert "line 1: expected" in e.value.message
    link = str(tmp_path / "link")
    os.symlink(path, link)
    with pytest.raises(guard.WebError):
        guard.load_tokens(link)


# -- configuration ---------------------------------------------------------------------------------


def _validate(statement_file: str, **web: Any) -> configmod.Config:
    return configmod.validate({"adobe": {"software_statement": statement_file}, "web": web})


def test_non_loopback_bind_is_a_config_error(statement_file):
    for listen in ("0.0.0.0:9997", "192.168.1.20:9997", "[::]:9997", "box.local:9997"):
        with pytest.raises(ConfigError) as e:
            _validate(statement_file, listen=listen, allowed_origins=[ORIGIN], securityagent="http://127.0.0.1:9998/jsonrpc")
        assert any("[web] listen:" in p and "not a loopback address" in p for p in e.value.problems), listen
    cfg = _validate(statement_file, listen="127.0.0.1:9997", allowed_origins=[ORIGIN],
                    securityagent="http://127.0.0.1:9998/jsonrpc")
    assert cfg.web.listen == "127.0.0.1:9997" and cfg.web.allowed_origins == (ORIGIN,)
    # The shell refuses it too, whatever built its configuration.
    bad = configmod.defaults().replace(web={"listen": "0.0.0.0:9997"}).web
    with pytest.raises(guard.WebError) as e:
        WebServer(FakeService(), Loop(), bad)
    assert "not a loopback address" in e.value.message


def test_web_config_problems_are_each_reported(statement_file):
    with pytest.raises(ConfigError) as e:
        _validate(statement_file, listen="127.0.0.1:9997", allowed_origins=["*", "ftp://x", "http://a/path"],
                  securityagent="http://10.0.0.1:9998/jsonrpc")
    text = "\n".join(e.value.problems)
    assert "would let any page in" in text and "'ftp://x' is not an origin" in text
    assert "'http://a/path' is not an origin" in text and "[web] securityagent:" in text
    with pytest.raises(ConfigError) as e:
        _validate(statement_file, listen="127.0.0.1:9997")
    text = "\n".join(e.value.problems)
    assert "allowed_origins: empty" in text and "neither tokens_file nor securityagent" in text
    assert configmod.defaults().web.listen == ""  # off by default


# -- out of file descriptors ------------------------------------------------------------------------


def test_out_of_fds_pauses_accepts_instead_of_spinning_and_serves_once_fds_are_free(web):
    """A box out of descriptors (EMFILE at accept) must not turn the loop into a busy spin: the web
    endpoint kept the listening socket in the loop, so every turn accepted, failed and logged again
    (thousands of lines a second, a core at 100 %). It pauses accepts as the player socket does, says
    what to change, and serves the waiting peer once a descriptor is free."""
    peer, failed = connect_while_out_of_fds(socket.socket, ("127.0.0.1", web.port), web.server.log)
    assert_accepts_paused(failed)
    # Descriptors free again: the peer that waited in the backlog is accepted within a pause.
    assert wait_for(lambda: web.stats()["connections"] == 1), web.stats()
    peer.close()
