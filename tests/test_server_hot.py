"""token.get's hot path through the real server (issue 20: p50 <= 2x the echo floor).

A lone canonical request line on an idle connection is answered by a shortcut in
agent/server.py (`_on_readable`) and agent/rpc.py (`handle_line`): no JSON parsing, no generic
dispatch, no `_send` frame. These tests pin what the shortcut must not change: every answer is
byte-identical to the one the generic path gives for the same request (valid token, no token, a peer
with several applications, a peer allowed one application of several, a pipelined burst), the
counters agree, and the cost stays what it was made: a handful of Python calls in the loop thread.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest

from agent import rpc, server
from agent.loop import Loop
from agent.server import Server

try:
    from tests.fakes import TOKEN, FakeService, LineReader, ServerHarness, connect
except ImportError:  # tests/ on sys.path instead of the repo root
    from fakes import TOKEN, FakeService, LineReader, ServerHarness, connect

PEER, PEER_GID = 54321, 54322  # a peer of another uid than the agent's (no real user has it here)
OWN = 54320


def canonical(req_id: int) -> bytes:
    """The line agent/client.py, token_client.c and the benchmarks send: the hot path's."""
    return b'{"jsonrpc":"2.0","id":%d,"method":"token.get"}\n' % req_id


def generic(req_id: int) -> bytes:
    """The same request spelled otherwise: parsed as JSON, dispatched through the method table."""
    return b'{"method": "token.get", "id": %d, "jsonrpc": "2.0"}\n' % req_id


class FrozenService(FakeService):
    """Token dicts that do not tick (expires_in fixed), one per application: answers compare byte for byte."""

    def __init__(self, apps: tuple = ("default",), token: bool = True) -> None:
        FakeService.__init__(self, token=TOKEN if token else None)
        self._names = list(apps)

    def apps(self) -> list[str]:
        return list(self._names)

    def token(self, min_ttl: float = 0, app: str | None = None) -> dict | None:
        if self._tok is None:
            return None
        return {"access_token": TOKEN + "-" + (app or "only"), "token_type": "bearer", "expires_at": 1700021600.0,
                "expires_in": 21599, "refresh_at": 1700016200.0}


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "agent.sock")


def one_by_one(path: str, lines: list) -> list:
    """Each line sent alone, its answer read before the next is sent (the server's hot path)."""
    s = connect(path)
    r = LineReader(s)
    out = []
    for line in lines:
        s.sendall(line)
        out.append(r.line())
    s.close()
    return out


def same_answers(path: str, ids: list) -> list:
    """The answers to canonical and generic lines for `ids`, asserted identical; returns them."""
    hot = one_by_one(path, [canonical(i) for i in ids])
    assert hot == one_by_one(path, [generic(i) for i in ids])
    return hot


def test_valid_token_answers_are_byte_identical(path) -> None:
    with ServerHarness(path, service=FrozenService()) as h:
        ids = [0, 7, 123456789012345678]
        answers = same_answers(path, ids)
        for i, a in zip(ids, answers):
            assert a.endswith(b"}}") and json.loads(a) == {"jsonrpc": "2.0", "id": i, "result": {
                "access_token": TOKEN + "-only", "token_type": "bearer", "expires_at": 1700021600.0,
                "expires_in": 21599, "refresh_at": 1700016200.0}}
        st = h.stats()
        assert st["requests"] == 2 * len(ids) and st["errors"] == 0


def test_no_token_answers_are_byte_identical(path) -> None:
    with ServerHarness(path, service=FrozenService(token=False)) as h:
        for a in same_answers(path, [3, 4]):
            assert json.loads(a)["error"]["code"] == rpc.NOT_READY
        st = h.stats()
        assert st["requests"] == 4 and st["errors"] == 4


def test_a_peer_of_several_applications_gets_the_generic_app_required(path) -> None:
    acls = {"a": (frozenset(), frozenset()), "b": (frozenset(), frozenset())}  # the agent's own uid: both
    with ServerHarness(path, service=FrozenService(("a", "b")), apps=acls):
        for a in same_answers(path, [5]):
            err = json.loads(a)["error"]
            assert err["code"] == rpc.INVALID_PARAMS and err["data"]["code"] == "app_required"


@pytest.fixture
def peer(monkeypatch):
    """Every connection is from uid PEER (not root, not the agent's uid), whatever runs the test."""
    monkeypatch.setattr(server, "peer_credentials", lambda sock: (4242, PEER, PEER_GID))
    monkeypatch.setattr(server, "peer_groups", lambda pid, uid: frozenset())


def test_a_peer_allowed_one_application_gets_that_ones_token_only(path, peer) -> None:
    acls = {"a": (frozenset(), frozenset()), "b": (frozenset({PEER}), frozenset())}
    with ServerHarness(path, service=FrozenService(("a", "b")), apps=acls) as h:
        h.server._own_uid = OWN
        for a in same_answers(path, [1, 2]):
            assert json.loads(a)["result"]["access_token"] == TOKEN + "-b"
        # The application it may not use stays refused, on either path.
        s = connect(path)
        s.sendall(b'{"jsonrpc":"2.0","id":9,"method":"token.get","params":{"app":"a"}}\n')
        assert json.loads(LineReader(s).line())["error"]["code"] == rpc.DENIED
        s.close()


def test_a_pipelined_burst_gets_the_answers_of_lone_requests_in_order(path) -> None:
    with ServerHarness(path, service=FrozenService()) as h:
        ids = list(range(1, 201))
        lone = one_by_one(path, [generic(i) for i in ids])
        s = connect(path)
        # Canonical and generic lines mixed, all in one write: the hot path's server shortcut does
        # not apply (several lines), rpc's canonical recognition does for every other line.
        s.sendall(b"".join(canonical(i) if i % 2 else generic(i) for i in ids))
        r = LineReader(s)
        assert [r.line() for _ in ids] == lone
        s.close()
        assert h.stats()["requests"] == 2 * len(ids)


def test_a_hot_token_get_costs_four_python_calls_in_the_loop(path) -> None:
    """The budget the hot path was cut to (issue 20): the loop's turn, the connection's read callback,
    one clock read (the idle timeout) and handle_line; the service's own calls are not counted. The
    loop sleeps without a timeout (its alarm is armed at the idle sweep), so it reads no clock itself."""
    loop = Loop()
    srv = Server(FrozenService(), loop, path)
    srv.start()
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        c.connect(path)
        loop._run_once()  # accepts; the idle sweep's timer and the loop's alarm are armed
        agent_dir = os.path.dirname(os.path.abspath(server.__file__)) + os.sep
        for i in range(3):  # the first turns arm the alarm and fill the token cache
            calls: list = []

            def prof(frame, event, arg, calls=calls) -> None:
                if event == "call" and frame.f_code.co_filename.startswith(agent_dir):
                    calls.append(frame.f_code.co_name)

            c.sendall(canonical(i))
            sys.setprofile(prof)
            try:
                loop._run_once()
            finally:
                sys.setprofile(None)
            assert json.loads(LineReader(c).line())["id"] == i
        assert calls == ["_run_once", "_on_readable", "now", "handle_line"]
    finally:
        c.close()
        srv.close()
        loop.close()
