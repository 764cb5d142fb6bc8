"""Fuzzing the player's API: the sans-I/O JSON-RPC dispatcher and the socket server's framing.

Every input line gets a valid JSON-RPC 2.0 response line (or nothing, for blank lines and
notifications), never an exception; through a real socket with a live Server, any chunking of
valid and invalid lines gets one answer per request, in order, and an oversized line gets the
too_large error and a close. The bugs it found are kept as regression tests at the end.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import rpc

try:
    from tests.fakes import TOKEN, FakeService, ServerHarness
except ImportError:  # tests/ on sys.path instead of the repo root
    from fakes import TOKEN, FakeService, ServerHarness

METHODS = ["token.get", "headers.get", "device.info", "error.report", "token.subscribe", "token.unsubscribe",
           "agent.status", "agent.health"]
KINDS = {"retry", "operator", "reregister", "fatal"}

# JSON values as a client could send them (no NaN/Infinity: not JSON).
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)), max_leaves=12)
# Request ids of every JSON type (lone surrogates and 1e400 come from the raw lines below).
ids = st.one_of(st.integers(-(2 ** 70), 2 ** 70), st.text(max_size=20), st.none(),
                st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.lists(st.integers(), max_size=2))
params = st.one_of(
    st.none(), json_values,
    st.fixed_dictionaries({}, optional={"min_ttl": json_scalars, "wait": st.sampled_from([0, 0.0, 0.5, 300, -1, 301, "1"]),
                                        "status": st.one_of(st.integers(0, 700), json_scalars),
                                        "body": json_values, "access_token": st.one_of(st.just(TOKEN), json_scalars),
                                        "bogus": json_scalars}),
)
requests = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "1.0", 2.0, None])},
    optional={"id": ids, "method": st.one_of(st.sampled_from(METHODS), st.text(max_size=20), json_scalars),
              "params": params, "extra": json_values},
)


def request_lines() -> st.SearchStrategy[bytes]:
    return st.one_of(
        requests.map(lambda r: json.dumps(r).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=80).map(lambda b: b.replace(b"\n", b" ")),
        st.text(max_size=60).map(lambda t: t.replace("\n", " ").encode("utf-8")),
        st.sampled_from([b"", b"   ", b"\r", b"{", b"[]", b"[{}]", b"null", b"NaN", b'{"jsonrpc":"2.0"}',
                         b'{"jsonrpc":"2.0","method":"token.get","id":1}\r', b"\xff\xfe", b'"\\ud800"',
                         b'{"jsonrpc":"2.0","id":"\\udc00x","method":"token.get"}', b'{"jsonrpc":"2.0","id":-1e400}',
                         b'{"jsonrpc":"2.0","id":1e400,"method":"agent.health"}']),
    )


def check_answer(line: bytes, req: object) -> dict:
    """A response line is one JSON-RPC 2.0 response with either a result or a well-formed error."""
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    msg = json.loads(line)
    assert msg["jsonrpc"] == "2.0" and "id" in msg
    assert ("result" in msg) != ("error" in msg)
    if "error" in msg:
        err = msg["error"]
        assert isinstance(err["code"], int) and isinstance(err["message"], str) and err["message"]
        assert err["data"]["kind"] in KINDS and isinstance(err["data"]["code"], str)
        assert "retry_after" in err["data"]
        # Strings from the request are never echoed (params may hold secrets); the token never leaks.
        assert TOKEN not in err["message"]
    if isinstance(req, dict) and "id" in req and msg["id"] is not None:
        assert msg["id"] == req["id"]
    return msg


@settings(max_examples=400, deadline=None)
@given(line=request_lines())
def test_dispatcher_answers_every_line(line: bytes) -> None:
    d = rpc.Dispatcher(FakeService())
    ans = d.handle_line(line)
    try:
        req = json.loads(line)
    except ValueError:
        req = None
    if ans is None:
        # Only blank lines and notifications (valid requests without an id) go unanswered.
        assert not line.strip() or (isinstance(req, dict) and "id" not in req and req.get("jsonrpc") == "2.0")
    elif isinstance(ans, rpc.Action):
        assert ans.kind in ("park", "subscribe", "unsubscribe")
        assert ans.kind != "park" or 0 < ans.wait <= rpc.MAX_WAIT
    else:
        check_answer(ans, req)


@settings(max_examples=200, deadline=None)
@given(req=requests, has_token=st.booleans())
def test_dispatcher_structured_requests(req: dict, has_token: bool) -> None:
    d = rpc.Dispatcher(FakeService(token=TOKEN if has_token else None))
    ans = d.handle_line(json.dumps(req).encode())
    if isinstance(ans, bytes):
        msg = check_answer(ans, req)
        if "result" in msg and req.get("method") == "token.get":
            assert msg["result"]["access_token"] == TOKEN
    elif isinstance(ans, rpc.Action) and ans.kind == "park":
        # Parked only without a token, and resuming always answers once the wait is over.
        assert not has_token
        check_answer(d.resume(ans, final=True), req)


@settings(max_examples=150, deadline=None)
@given(nesting=st.integers(1, 200_000), opener=st.sampled_from([b"[", b'{"a":']))
def test_dispatcher_survives_deep_nesting(nesting: int, opener: bytes) -> None:
    line = b'{"jsonrpc":"2.0","id":1,"method":"error.report","params":{"status":200,"body":' + opener * nesting
    ans = rpc.Dispatcher(FakeService()).handle_line(line)
    assert json.loads(ans)["error"]["code"] == rpc.PARSE_ERROR


# -- through a real socket --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fuzz") / "agent.sock")
    with ServerHarness(path) as h:
        yield h


def exchange(path: str, chunks: list, timeout: float = 20.0) -> bytes:
    """Send the chunks (then half-close) and read until the server closes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    out = []

    def reader() -> None:
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    return
                out.append(b)
        except OSError:
            return

    t = threading.Thread(target=reader)
    t.start()
    try:
        for c in chunks:
            s.sendall(c)
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server may close first (oversized line); what it answered is still read
    t.join(timeout + 5)
    assert not t.is_alive(), "the server neither answered nor closed"
    s.close()
    return b"".join(out)


def expected(line: bytes) -> bool:
    """Whether the dispatcher answers this line (a separate Dispatcher is the reference)."""
    ans = rpc.Dispatcher(FakeService()).handle_line(line)
    return ans is not None and (not isinstance(ans, rpc.Action) or ans.reply)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(lines=st.lists(request_lines(), min_size=1, max_size=25), cuts=st.lists(st.integers(0, 4000), max_size=12),
       final_newline=st.booleans())
def test_server_framing_any_chunking(server, lines: list, cuts: list, final_newline: bool) -> None:
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    # The last line without its newline is still answered at EOF, unless it is blank.
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(points, points[1:]) if b > a]
    got = exchange(server.path, chunks)
    answers = [ln + b"\n" for ln in got.split(b"\n")[:-1]]
    assert got.endswith(b"\n") or got == b""
    want = [ln for ln in lines if expected(ln)]
    assert len(answers) == len(want)
    for ans, ln in zip(answers, want):
        try:
            req = json.loads(ln)
        except ValueError:
            req = None
        check_answer(ans, req)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(before=st.integers(0, 3), extra=st.integers(1, 3000), chunk=st.sampled_from([1000, 8192, 65536, 200000]),
       newline=st.booleans())
def test_server_oversized_line(server, before: int, extra: int, chunk: int, newline: bool) -> None:
    good = b'{"jsonrpc":"2.0","id":7,"method":"agent.health"}\n' * before
    big = b"x" * (rpc.MAX_LINE + extra) + (b"\n" if newline else b"")
    data = good + big + b'{"jsonrpc":"2.0","id":8,"method":"agent.health"}\n'
    got = exchange(server.path, [data[i:i + chunk] for i in range(0, len(data), chunk)])
    msgs = [json.loads(ln) for ln in got.split(b"\n") if ln]
    assert [m["id"] for m in msgs[:before]] == [7] * before
    assert msgs[before]["error"]["code"] == rpc.TOO_LARGE
    assert len(msgs) == before + 1  # nothing after the too_large answer: the connection is closed


def test_server_still_serves_after_fuzzing(server) -> None:
    got = exchange(server.path, [b'{"jsonrpc":"2.0","id":1,"method":"token.get"}\n'])
    assert json.loads(got)["result"]["access_token"] == TOKEN


# -- bugs the fuzzing found, fixed in 00928b7 (ids that cannot be echoed are invalid) ----------------


def test_lone_surrogate_id_is_answered() -> None:
    d = rpc.Dispatcher(FakeService())
    check_answer(d.handle_line(b'{"jsonrpc":"2.0","id":"\\ud800","method":"agent.health"}'), None)


def test_infinite_id_is_answered() -> None:
    d = rpc.Dispatcher(FakeService())
    check_answer(d.handle_line(b'{"jsonrpc":"2.0","id":1e400,"method":"agent.health"}'), None)


def test_server_answers_unechoable_id(server) -> None:
    got = exchange(server.path, [b'{"jsonrpc":"2.0","id":"\\ud800","method":"agent.health"}\n'], timeout=3.0)
    assert json.loads(got)["error"]["code"] == rpc.INVALID_REQUEST
