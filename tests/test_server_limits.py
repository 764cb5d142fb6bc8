"""What one connection can make the server hold is bounded, and all of it is freed on disconnect.

Issue 15 item 1: answers queued behind a parked `wait` used to escape the output limits, and a
connection could park any number of waits. These tests drive a real Server in a real Loop thread
over real sockets (the daemon-process version of the attack, with RSS, is test_server_attack.py).
"""

from __future__ import annotations

import json
import select
import socket
import threading

from agent import rpc, server

try:
    from tests.fakes import TOKEN, FakeService, LineReader, ServerHarness, connect, request, wait_for
except ImportError:  # tests/ on sys.path instead of the repo root
    from fakes import TOKEN, FakeService, LineReader, ServerHarness, connect, request, wait_for


def _path(tmp_path) -> str:
    return str(tmp_path / "agent.sock")


def _read_all(s: socket.socket) -> list[dict]:
    """Every answer line until the server closes (megabytes: one split, not a line at a time)."""
    chunks = []
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return [json.loads(line) for line in b"".join(chunks).splitlines()]
        chunks.append(chunk)


def test_answers_behind_a_parked_wait_count_towards_the_output_limit(tmp_path) -> None:
    path = _path(tmp_path)
    with ServerHarness(path, FakeService(token=None)) as h:
        s = connect(path)
        s.sendall(request("token.get", {"wait": 120}, 0))
        assert wait_for(lambda: h.stats()["waiting"] == 1)
        # Pipeline requests and never read: their answers queue behind the parked wait.
        s.setblocking(False)
        blob = request("agent.status", None, 1) * 256
        pending, sent, cap = b"", 0, 16 * 1024 * 1024
        while sent < cap:
            if not pending:
                pending = blob
            try:
                n = s.send(pending)
            except BlockingIOError:
                # Full socket buffer: does the server drain it within 2 s, or has it stopped reading?
                if not select.select([], [s], [], 2.0)[1]:
                    break
                continue
            pending = pending[n:]
            sent += n
        # The server stopped reading (backpressure) instead of queueing answers without bound.
        assert sent < cap, "the server kept reading %d bytes of requests whose answers nobody read" % sent
        st = h.stats()
        assert st["queued_bytes"] <= server.OUT_HIGH + 4096, st
        # Nothing was lost: once the token comes, every answer arrives, in order.
        h.service.set_token(TOKEN)
        s.settimeout(30)  # for both threads: set before the reader starts
        answers: list = []
        reader = threading.Thread(target=lambda: answers.extend(_read_all(s)))
        reader.start()  # read while finishing the last partial request, so that every request is whole
        s.sendall(pending)
        sent += len(pending)
        s.shutdown(socket.SHUT_WR)
        reader.join(60)
        assert answers[0]["id"] == 0 and answers[0]["result"]["access_token"] == TOKEN
        assert len(answers) == 1 + sent // len(request("agent.status", None, 1))
        assert all(a["id"] == 1 for a in answers[1:])
        # Answered in order: those read before the token came say so, then the rest.
        states = [a["result"]["state"] for a in answers[1:]]
        n = states.count("registering")
        assert states == ["registering"] * n + ["ready"] * (len(states) - n)
        s.close()


def test_parked_waits_with_huge_ids_count_towards_the_output_limit(tmp_path) -> None:
    path = _path(tmp_path)
    with ServerHarness(path, FakeService(token=None)) as h:
        s = connect(path)
        s.setblocking(False)
        blob = b"".join(request("token.get", {"wait": 120}, "%02d" % i + "x" * 60000) for i in range(12))
        sent = 0
        while sent < len(blob):
            try:
                sent += s.send(blob[sent:])
            except BlockingIOError:
                if not select.select([], [s], [], 2.0)[1]:
                    break  # the server stopped reading
        st = h.stats()
        # Each parked wait holds its 60 kB id: the server stops reading after the first ones.
        assert st["waiting"] <= 2 and st["queued_bytes"] <= server.OUT_HIGH + 61000, st
        h.service.set_token(TOKEN)
        s.settimeout(30)
        answers: list = []
        reader = threading.Thread(target=lambda: answers.extend(_read_all(s)))
        reader.start()
        s.sendall(blob[sent:])
        s.shutdown(socket.SHUT_WR)
        reader.join(60)
        assert [a["id"][:2] for a in answers] == ["%02d" % i for i in range(12)]
        assert all(a["result"]["access_token"] == TOKEN for a in answers)
        s.close()


def test_parked_waits_per_connection_are_capped(tmp_path) -> None:
    path = _path(tmp_path)
    cap = server.MAX_WAITS_PER_CONN
    with ServerHarness(path, FakeService(token=None)) as h:
        s = connect(path)
        s.sendall(b"".join(request("token.get", {"wait": 120}, i) for i in range(cap + 2)))
        assert wait_for(lambda: h.stats()["waits_refused"] == 2)
        assert h.stats()["waiting"] == cap
        other = connect(path)  # another connection may still park its own wait
        other.sendall(request("headers.get", {"wait": 120}, "x"))
        assert wait_for(lambda: h.stats()["waiting"] == cap + 1)
        h.service.set_token(TOKEN)
        r = LineReader(s)
        answers = [r.json() for _ in range(cap + 2)]
        assert [a["id"] for a in answers] == list(range(cap + 2))  # order kept around the refusals
        assert all(a["result"]["access_token"] == TOKEN for a in answers[:cap])
        for a in answers[cap:]:
            e = a["error"]
            assert e["code"] == rpc.LIMIT and e["data"]["code"] == "too_many_waits", e
            assert e["data"]["kind"] == "retry" and e["data"]["retry_after"] is not None
            assert "%d parked waits" % cap in e["message"]
        assert LineReader(other).json()["result"]["headers"]["Authorization"] == "Bearer " + TOKEN
        s.close()
        other.close()


def test_parked_waits_overall_are_capped(tmp_path) -> None:
    path = _path(tmp_path)
    with ServerHarness(path, FakeService(token=None), max_waits=3) as h:
        a = connect(path)
        a.sendall(b"".join(request("token.get", {"wait": 120}, i) for i in range(3)))
        assert wait_for(lambda: h.stats()["waiting"] == 3)
        b = connect(path)
        b.sendall(request("token.get", {"wait": 120}, 9))
        ans = LineReader(b).json()  # refused at once: nothing of b's is parked
        e = ans["error"]
        assert ans["id"] == 9 and e["code"] == rpc.LIMIT and e["data"]["code"] == "too_many_waits"
        assert "agent" in e["message"]
        b.sendall(request("agent.health", None, 10))
        assert LineReader(b).json()["id"] == 10  # the connection stays open and usable
        a.close()
        assert wait_for(lambda: h.stats()["waiting"] == 0)
        b.sendall(request("token.get", {"wait": 120}, 11))
        assert wait_for(lambda: h.stats()["waiting"] == 1)  # freed with a's disconnect
        b.close()


def test_connection_churn_leaves_nothing_behind(tmp_path) -> None:
    """Connect, park waits, pipeline, disconnect, 300 times: no timer or buffer is kept for them."""
    path = _path(tmp_path)
    with ServerHarness(path, FakeService(token=None), idle_timeout=300) as h:
        keeper = connect(path)  # a live connection whose wait is due first keeps the loop's timer heap busy
        keeper.sendall(request("token.get", {"wait": 200}, "keeper"))
        assert wait_for(lambda: h.stats()["waiting"] == 1)
        for i in range(300):
            s = connect(path)
            s.sendall(request("token.get", {"wait": 300}, i) + request("headers.get", {"wait": 250}, i)
                      + request("agent.status") * 40)
            if i % 2:
                assert wait_for(lambda: h.stats()["waiting"] >= 3)
            s.close()
        assert wait_for(lambda: h.stats()["connections"] == 1 and h.stats()["waiting"] == 1)
        # The loop's timer heap does not keep one entry (and its connection) per past wait or peer.
        timers = h.call(lambda: len(h.loop._timers))
        assert timers <= 8, "%d timers left in the loop after every connection closed" % timers
        assert h.call(lambda: len(h.server._waits)) <= 64  # parked-wait bookkeeping was compacted
        s = connect(path)
        s.sendall(request("agent.health"))
        assert json.loads(LineReader(s).line())["result"]["live"] is True
        s.close()
        keeper.close()


def test_subscription_is_one_per_connection(tmp_path) -> None:
    path = _path(tmp_path)
    with ServerHarness(path) as h:
        s = connect(path)
        s.sendall(request("token.subscribe", None, 1) * 50)
        r = LineReader(s)
        assert all(r.json()["result"] == {"subscribed": True} for _ in range(50))
        assert h.stats()["subscribers"] == 1
        h.service.set_token("rotated-once-abcdef")
        assert r.json()["method"] == "token.changed"  # one notification, not fifty
        s.sendall(request("agent.health", None, 2))
        assert r.json()["id"] == 2
        s.close()
        assert wait_for(lambda: h.stats()["subscribers"] == 0)


def test_out_of_fds_pauses_accepts_and_serves_the_waiting_player_once_fds_are_free(tmp_path) -> None:
    """EMFILE at accept() (a box out of descriptors): the player socket pauses accepts for 0.5 s with
    an error saying what to change, instead of spinning on a listening socket that stays readable,
    and the player waiting in the backlog is served once a descriptor is free (guard: the web
    endpoint had no such pause, tests/test_web.py)."""
    try:
        from tests.fakes import assert_accepts_paused, connect_while_out_of_fds
    except ImportError:
        from fakes import assert_accepts_paused, connect_while_out_of_fds

    with ServerHarness(_path(tmp_path)) as h:
        peer, failed = connect_while_out_of_fds(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), h.path,
                                                h.server.log)
        assert_accepts_paused(failed)
        peer.settimeout(10)
        peer.sendall(request("token.get"))
        answer = json.loads(LineReader(peer).line())
        assert answer["result"]["access_token"] == TOKEN, answer
        peer.close()
