"""The socket server against real sockets, a real Loop thread and a fake Service.

Covers every method, pipelining (with parked waits in the middle), subscriptions, waits,
oversize lines, invalid JSON, wrong types, half-closed and abruptly closed connections,
500 simultaneous connections, caps, idle and slow-reader handling.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import stat

import pytest

from agent import rpc

try:
    from tests.fakes import (
        APDI,
        TOKEN,
        XDI,
        FakeService,
        LineReader,
        ServerHarness,
        connect,
        request,
        wait_for,
    )
except ImportError:  # tests/ on sys.path instead of the repo root
    from fakes import APDI, TOKEN, XDI, FakeService, LineReader, ServerHarness, connect, request, wait_for


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "run" / "agent.sock")


@pytest.fixture
def h(path):
    with ServerHarness(path) as harness:
        yield harness


def rpc_call(sock: socket.socket, reader: LineReader, method: str, params=None, req_id=1) -> dict:
    sock.sendall(request(method, params, req_id))
    return reader.json()


def test_start_creates_dir_and_socket_with_modes(h: ServerHarness, path: str) -> None:
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o755
    assert [f for f in os.listdir(os.path.dirname(path)) if f != "agent.sock"] == []  # no temp left


def test_every_method(h: ServerHarness, path: str) -> None:
    s = connect(path)
    r = LineReader(s)
    tok = rpc_call(s, r, "token.get", {"min_ttl": 60}, 1)["result"]
    assert tok["access_token"] == TOKEN and tok["token_type"] == "bearer" and tok["expires_in"] > 21000
    hdr = rpc_call(s, r, "headers.get", None, 2)["result"]
    assert hdr["headers"] == {"Authorization": "Bearer " + TOKEN, "X-Device-Info": XDI, "AP-Device-Identifier": APDI}
    info = rpc_call(s, r, "device.info", None, 3)["result"]
    assert info["x_device_info"] == XDI and info["ap_device_identifier"] == APDI and info["fields"]["model"]
    rep = rpc_call(s, r, "error.report", {"status": 401, "body": "expired", "access_token": TOKEN}, 4)
    assert rep["result"]["decision"] == "refresh" and h.service.reports == [(401, "expired", TOKEN)]
    st = rpc_call(s, r, "agent.status", None, 5)["result"]
    assert st["state"] == "ready" and TOKEN not in json.dumps(st)
    assert rpc_call(s, r, "agent.health", None, 6)["result"] == {"live": True, "ready": True}
    assert rpc_call(s, r, "token.subscribe", None, 7)["result"] == {"subscribed": True}
    assert rpc_call(s, r, "token.unsubscribe", None, 8)["result"] == {"subscribed": False}
    s.close()


def test_errors_keep_the_connection_usable(h: ServerHarness, path: str) -> None:
    s = connect(path)
    r = LineReader(s)
    s.sendall(b"this is not json\n")
    assert r.json()["error"]["code"] == rpc.PARSE_ERROR
    assert rpc_call(s, r, "token.get", {"wait": "soon"})["error"]["code"] == rpc.INVALID_PARAMS
    assert rpc_call(s, r, "error.report", {"status": 4.5})["error"]["code"] == rpc.INVALID_PARAMS
    assert rpc_call(s, r, "no.such.method")["error"]["code"] == rpc.METHOD_NOT_FOUND
    s.sendall(b'[{"jsonrpc":"2.0","id":1,"method":"token.get"}]\n')
    assert r.json()["error"]["code"] == rpc.INVALID_REQUEST
    s.sendall(b"\n\r\n")  # blank lines are skipped
    assert rpc_call(s, r, "agent.health", None, 99) == {"jsonrpc": "2.0", "id": 99,
                                                         "result": {"live": True, "ready": True}}
    s.close()


def test_not_ready_error_says_when_to_retry(path: str) -> None:
    with ServerHarness(path, FakeService(token=None)):
        s = connect(path)
        e = rpc_call(s, LineReader(s), "headers.get")["error"]
        assert e["code"] == rpc.NOT_READY and e["data"] == {"code": "not_ready", "kind": "retry", "retry_after": 2.0}
        s.close()


def test_pipelining_answers_in_order(h: ServerHarness, path: str) -> None:
    s = connect(path)
    methods = ["token.get", "headers.get", "agent.health", "device.info", "bogus", "agent.status"]
    blob = b"".join(request(methods[i % len(methods)], None, i) for i in range(600))
    s.sendall(blob[:1000])
    s.sendall(blob[1000:])  # a request split across two writes still parses
    r = LineReader(s)
    ids = [r.json()["id"] for _ in range(600)]
    assert ids == list(range(600))
    s.close()


def test_pipelining_behind_a_parked_wait_keeps_order(path: str) -> None:
    with ServerHarness(path, FakeService(token=None)) as h:
        s = connect(path)
        s.sendall(request("agent.health", None, 1) + request("headers.get", {"wait": 20}, 2)
                  + request("agent.health", None, 3) + request("token.get", None, 4))
        r = LineReader(s)
        assert r.json() == {"jsonrpc": "2.0", "id": 1, "result": {"live": True, "ready": False}}
        assert wait_for(lambda: h.stats()["waiting"] == 1)
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            r.line()  # 3 and 4 are held back behind the wait
        s.settimeout(5)
        h.service.set_token(TOKEN)
        assert r.json()["result"]["headers"]["Authorization"] == "Bearer " + TOKEN
        assert r.json()["id"] == 3
        assert r.json()["error"]["code"] == rpc.NOT_READY  # answered before the token came
        s.close()


def test_wait_satisfied_by_a_token(path: str) -> None:
    with ServerHarness(path, FakeService(token=None)) as h:
        s = connect(path)
        s.sendall(request("token.get", {"wait": 30, "min_ttl": 10}, 5))
        assert wait_for(lambda: h.stats()["waiting"] == 1)
        h.service.set_token(TOKEN)
        res = LineReader(s).json()
        assert res["id"] == 5 and res["result"]["access_token"] == TOKEN
        assert h.stats()["waits_answered"] == 1
        s.close()


def test_wait_times_out_with_retry_advice(path: str) -> None:
    with ServerHarness(path, FakeService(token=None)) as h:
        s = connect(path)
        s.sendall(request("token.get", {"wait": 0.2}, 6))
        e = LineReader(s).json()["error"]
        assert e["code"] == rpc.NOT_READY and "waited 0.2s" in e["message"] and e["data"]["retry_after"] == 2.0
        assert h.stats()["waits_expired"] == 1
        s.close()


def test_min_ttl_wait_gets_the_fresh_token(path: str) -> None:
    svc = FakeService(lifetime=30)  # 30 s left: too short for min_ttl=600
    with ServerHarness(path, svc) as h:
        s = connect(path)
        s.sendall(request("token.get", {"min_ttl": 600, "wait": 30}, 1))
        assert wait_for(lambda: h.stats()["waiting"] == 1)
        assert svc.refresh_requests >= 1
        svc.set_token("fresh-token-abcdef", lifetime=21600)
        assert LineReader(s).json()["result"]["access_token"] == "fresh-token-abcdef"
        s.close()


def test_subscribers_get_token_changed_without_the_token(h: ServerHarness, path: str) -> None:
    subs = [connect(path) for _ in range(2)]
    readers = [LineReader(x) for x in subs]
    for x, r in zip(subs, readers):
        assert rpc_call(x, r, "token.subscribe")["result"] == {"subscribed": True}
    other = connect(path)
    other_r = LineReader(other)
    h.service.set_token("rotated-token-1-abcdef")
    h.service.set_token("rotated-token-2-abcdef")
    for r in readers:
        for _ in range(2):
            raw = r.line()
            note = json.loads(raw)
            assert note["method"] == "token.changed" and "id" not in note
            assert set(note["params"]) == {"expires_at", "refresh_at"}
            assert b"rotated-token" not in raw
    # The non-subscriber got nothing: its next line is the answer to its own request.
    assert rpc_call(other, other_r, "agent.health", None, 42)["id"] == 42
    assert rpc_call(subs[0], readers[0], "token.get")["result"]["access_token"] == "rotated-token-2-abcdef"
    assert h.stats()["notifications"] == 4
    for x in subs + [other]:
        x.close()


def test_oversize_line_gets_error_then_close(h: ServerHarness, path: str) -> None:
    s = connect(path)
    r = LineReader(s)
    assert rpc_call(s, r, "agent.health")["id"] == 1
    s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"token.get","params":{"x":"' + b"A" * (rpc.MAX_LINE + 10))
    e = r.json()
    assert e["id"] is None and e["error"]["code"] == rpc.TOO_LARGE and str(rpc.MAX_LINE) in e["error"]["message"]
    assert r.eof()
    assert wait_for(lambda: h.stats()["connections"] == 0)
    assert h.stats()["closed_too_large"] == 1


def test_oversize_complete_line_in_one_write(h: ServerHarness, path: str) -> None:
    s = connect(path)
    try:
        s.sendall(b" " * (rpc.MAX_LINE + 1) + b"\n" + request("agent.health"))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close before it read everything
    r = LineReader(s)
    assert r.json()["error"]["code"] == rpc.TOO_LARGE
    assert r.eof()


def test_line_of_exactly_the_limit_is_accepted(h: ServerHarness, path: str) -> None:
    s = connect(path)
    req = request("agent.health", None, 1).rstrip(b"\n")
    s.sendall(req + b" " * (rpc.MAX_LINE - len(req)) + b"\n")
    assert LineReader(s).json()["result"]["live"] is True
    s.close()


def test_half_closed_connection_still_gets_pending_answers(path: str) -> None:
    with ServerHarness(path, FakeService(token=None)) as h:
        s = connect(path)
        s.sendall(request("agent.health", None, 1) + request("token.get", {"wait": 20}, 2)
                  + request("device.info", None, 3)[:-1])  # the last one has no newline
        s.shutdown(socket.SHUT_WR)
        r = LineReader(s)
        assert r.json()["id"] == 1
        assert wait_for(lambda: h.stats()["waiting"] == 1)
        h.service.set_token(TOKEN)
        assert r.json()["result"]["access_token"] == TOKEN
        assert r.json()["result"]["x_device_info"] == XDI
        assert r.eof()
        assert wait_for(lambda: h.stats()["connections"] == 0)


def test_abruptly_closed_connections_are_cleaned_up(path: str) -> None:
    with ServerHarness(path, FakeService(token=None)) as h:
        for i in range(20):
            s = connect(path)
            s.sendall(request("token.get", {"wait": 60}, i) + request("agent.status") * 50)
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        assert wait_for(lambda: h.stats()["connections"] == 0 and h.stats()["waiting"] == 0)
        s = connect(path)
        assert rpc_call(s, LineReader(s), "agent.health")["result"]["live"] is True  # still serving
        s.close()


def test_500_simultaneous_connections(path: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    with ServerHarness(path, max_connections=512, max_per_uid=600) as h:
        socks = [connect(path, timeout=20) for _ in range(500)]
        for i, s in enumerate(socks):
            s.sendall(request("token.get", None, i))
        for i, s in enumerate(socks):
            res = LineReader(s).json()
            assert res["id"] == i and res["result"]["access_token"] == TOKEN
        assert h.stats()["connections"] == 500 and h.stats()["per_uid"] == {"0": 500}
        for s in socks:
            s.close()
        assert wait_for(lambda: h.stats()["connections"] == 0)


def test_connection_caps(path: str) -> None:
    with ServerHarness(path, max_connections=3, max_per_uid=2) as h:
        a, b = connect(path), connect(path)
        for x in (a, b):
            assert rpc_call(x, LineReader(x), "agent.health")["result"]["live"]
        c = connect(path)
        e = LineReader(c).json()["error"]
        assert e["code"] == rpc.BUSY and "max_per_uid" in e["message"] and e["data"]["kind"] == "retry"
        h.call(lambda: setattr(h.server, "max_per_uid", 10))
        d = connect(path)
        assert rpc_call(d, LineReader(d), "agent.health")["result"]["live"]
        e = LineReader(connect(path)).json()["error"]
        assert e["code"] == rpc.BUSY and "max_connections" in e["message"]
        assert h.stats()["rejected_busy"] == 2


def test_idle_connections_are_closed_but_subscribers_stay(path: str) -> None:
    with ServerHarness(path, idle_timeout=0.3) as h:
        idle, sub = connect(path), connect(path)
        sub_r = LineReader(sub)
        assert rpc_call(sub, sub_r, "token.subscribe")["result"]["subscribed"]
        assert LineReader(idle).eof()  # closed after 0.3 s of silence
        assert h.stats()["closed_idle"] == 1
        assert h.stats()["connections"] == 1  # the subscriber is not idle
        h.service.set_token("rotated-after-idle-abc")
        assert sub_r.json()["method"] == "token.changed"
        sub.close()


def test_reader_that_never_reads_is_bounded_and_closed(path: str) -> None:
    with ServerHarness(path, idle_timeout=0.5) as h:
        slow = connect(path)
        slow.setblocking(False)
        sent = 0
        req = request("agent.status")
        try:
            while sent < 64 * 1024 * 1024:
                sent += slow.send(req * 200)
        except BlockingIOError:
            pass
        # The server stopped reading (backpressure) instead of buffering answers without bound...
        assert sent < 64 * 1024 * 1024
        good = connect(path)
        assert rpc_call(good, LineReader(good), "agent.health")["result"]["live"]  # ...and serves others
        good.close()
        assert wait_for(lambda: h.stats()["closed_slow"] == 1)
        slow.close()


def test_set_acl_disconnects_peers_no_longer_allowed(path: str, monkeypatch) -> None:
    """The real decision on a reload (issue 21: this test used to replace Server._allowed itself).
    Only the kernel's answers are replaced: the peer is uid 54321 (gid 54322, no other groups)."""
    from agent import server as server_mod

    monkeypatch.setattr(server_mod, "peer_credentials", lambda sock: (4242, 54321, 54322))
    monkeypatch.setattr(server_mod, "peer_groups", lambda pid, uid: frozenset())
    with ServerHarness(path, allow_uids=(54321,)) as h:
        h.server._own_uid = 54320  # the agent runs as another user than the peer, even under root
        s = connect(path)
        r = LineReader(s)
        assert rpc_call(s, r, "agent.health")["result"]["live"]
        h.call(lambda: h.server.set_acl((54321,), (7,)))
        assert h.stats()["connections"] == 1  # still allowed by uid
        h.call(lambda: h.server.set_acl((), (54322 + 1,)))
        e = r.json()["error"]
        assert e["code"] == rpc.DENIED and "uid 54321" in e["message"] and "allow_uids" in e["message"]
        assert r.eof()
        stats = h.stats()
        assert stats["connections"] == 0 and stats["denied"] == 1


def test_close_removes_socket_and_drops_connections(path: str) -> None:
    h = ServerHarness(path)
    h.__enter__()
    s = connect(path)
    assert rpc_call(s, LineReader(s), "agent.health")["result"]["live"]
    assert h.service.subscribers == 1
    h.close()
    assert not os.path.exists(path)
    assert LineReader(s).eof()
    assert h.service.subscribers == 0
