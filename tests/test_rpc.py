"""The sans-I/O JSON-RPC core (agent/rpc.py): envelopes, params, error codes, encoding, actions."""

from __future__ import annotations

import json

import pytest

from agent import rpc
from agent.errors import OPERATOR, AgentError, ConfigError, NotReady, StoreError, UpstreamError

try:
    from tests.fakes import APDI, TOKEN, XDI, FakeService
except ImportError:  # tests/ on sys.path instead of the repo root
    from fakes import APDI, TOKEN, XDI, FakeService


def handle(d: rpc.Dispatcher, req) -> dict:
    line = req if isinstance(req, bytes) else json.dumps(req).encode()
    out = d.handle_line(line)
    assert isinstance(out, bytes) and out.endswith(b"\n") and out.count(b"\n") == 1
    return json.loads(out)


def req(method: str, params=None, req_id=1) -> dict:
    r = {"jsonrpc": "2.0", "id": req_id, "method": method}
    if params is not None:
        r["params"] = params
    return r


@pytest.fixture
def svc() -> FakeService:
    return FakeService()


@pytest.fixture
def d(svc: FakeService) -> rpc.Dispatcher:
    return rpc.Dispatcher(svc)


def test_token_get_result_matches_service(d: rpc.Dispatcher) -> None:
    r = handle(d, req("token.get", req_id=7))
    assert r["id"] == 7 and r["jsonrpc"] == "2.0"
    res = r["result"]
    assert set(res) == {"access_token", "token_type", "expires_at", "expires_in", "refresh_at"}
    assert res["access_token"] == TOKEN and res["token_type"] == "bearer"
    assert 21590 <= res["expires_in"] <= 21600


@pytest.mark.parametrize("req_id", [0, -5, 2**40, "abc", "ü\"quote", 1.5, None])
def test_fast_path_ids_round_trip_exactly(d: rpc.Dispatcher, req_id) -> None:
    r = handle(d, req("token.get", req_id=req_id))
    assert r["id"] == req_id and "result" in r


def test_cached_encoding_follows_token_changes(d: rpc.Dispatcher, svc: FakeService) -> None:
    a = handle(d, req("token.get"))["result"]["access_token"]
    svc.set_token("new-token-value-123456", notify=False)
    b = handle(d, req("token.get"))["result"]["access_token"]
    h = handle(d, req("headers.get"))["result"]
    assert (a, b) == (TOKEN, "new-token-value-123456")
    assert h["headers"]["Authorization"] == "Bearer new-token-value-123456"


def test_headers_get(d: rpc.Dispatcher) -> None:
    res = handle(d, req("headers.get", {"min_ttl": 60}))["result"]
    assert res["headers"] == {"Authorization": "Bearer " + TOKEN, "X-Device-Info": XDI, "AP-Device-Identifier": APDI}
    assert isinstance(res["expires_at"], float)


def test_min_ttl_passes_through_and_not_ready(d: rpc.Dispatcher, svc: FakeService) -> None:
    svc.record_calls = True
    r = handle(d, req("token.get", {"min_ttl": 30000}))  # longer than the 6 h token has left
    assert svc.token_calls == [30000.0]
    assert r["error"]["code"] == rpc.NOT_READY
    assert r["error"]["data"] == {"code": "not_ready", "kind": "retry", "retry_after": 2.0}


def test_wait_returns_park_action(d: rpc.Dispatcher, svc: FakeService) -> None:
    svc.set_token(None)
    act = d.handle_line(json.dumps(req("headers.get", {"wait": 2.5, "min_ttl": 1}, 9)).encode())
    assert isinstance(act, rpc.Action) and act.kind == "park"
    assert (act.id, act.method, act.wait, act.min_ttl) == (9, "headers.get", 2.5, 1.0)
    assert d.resume(act, final=False) is None
    expired = json.loads(d.resume(act, final=True))
    assert expired["id"] == 9 and expired["error"]["code"] == rpc.NOT_READY
    assert "waited 2.5s" in expired["error"]["message"]
    svc.set_token(TOKEN, notify=False)
    ok = json.loads(d.resume(act, final=False))
    assert ok["result"]["headers"]["Authorization"] == "Bearer " + TOKEN


def test_upstream_and_other_agent_errors(d: rpc.Dispatcher, svc: FakeService) -> None:
    svc.set_token(None)
    svc.error = UpstreamError("Adobe Pass rejected the software statement", code="invalid_software_statement",
                              kind=OPERATOR, status=400, hint="install a valid software statement")
    e = handle(d, req("token.get"))["error"]
    assert e["code"] == rpc.UPSTREAM
    assert e["data"] == {"code": "invalid_software_statement", "kind": "operator", "retry_after": None,
                         "hint": "install a valid software statement", "status": 400}
    # What the real Service returns when it needs an operator: a plain AgentError explaining the missing token.
    svc.error = AgentError("the agent needs an operator: statement revoked", code="invalid_software_statement",
                           kind=OPERATOR, retry_after=60.0)
    e = handle(d, req("headers.get"))["error"]
    assert e["code"] == rpc.UPSTREAM and e["data"]["kind"] == "operator" and e["data"]["retry_after"] == 60.0
    svc.error = StoreError("flash store unreadable", retry_after=5)
    e = handle(d, req("token.get"))["error"]
    assert e["code"] == rpc.UPSTREAM and e["data"]["code"] == "store_error" and e["data"]["retry_after"] == 5


def test_service_exception_is_internal_error_without_secret(d: rpc.Dispatcher, svc: FakeService, caplog) -> None:
    def boom(*a):
        raise RuntimeError("secret-value-in-message " + TOKEN)

    svc.status = boom
    e = handle(d, req("agent.status"))["error"]
    assert e["code"] == rpc.INTERNAL_ERROR and e["data"]["kind"] == "retry"
    assert TOKEN not in json.dumps(e)


def test_agent_error_raised_by_method_maps(d: rpc.Dispatcher, svc: FakeService) -> None:
    def bad(*a):
        raise ConfigError("socket.allow_gids: expected a list of integers")

    svc.identity = bad
    e = handle(d, req("device.info"))["error"]
    assert e["code"] == rpc.AGENT_ERROR and e["data"]["kind"] == "operator"


def test_device_info_status_health_report(d: rpc.Dispatcher, svc: FakeService) -> None:
    assert handle(d, req("device.info"))["result"] == {
        "x_device_info": XDI, "fields": {"model": "FakeBox", "osName": "Linux"}, "ap_device_identifier": APDI}
    assert handle(d, req("agent.health"))["result"] == {"live": True, "ready": True}
    assert handle(d, req("agent.status"))["result"]["state"] == "ready"
    r = handle(d, req("error.report", {"status": 401, "body": {"code": "x"}, "access_token": "tok"}))
    assert r["result"]["decision"] == "refresh"
    assert svc.reports == [(401, {"code": "x"}, "tok")]


@pytest.mark.parametrize(
    "method,params,fragment",
    [
        ("token.get", {"min_ttl": "10"}, "min_ttl"),
        ("token.get", {"min_ttl": True}, "min_ttl"),
        ("token.get", {"min_ttl": -1}, "min_ttl"),
        ("token.get", {"wait": 301}, "wait"),
        ("token.get", {"ttl": 5}, "unknown param 'ttl'"),
        ("token.get", [5], "by-position"),
        ("token.get", "x", "by-position"),
        ("error.report", {}, "missing required param 'status'"),
        ("error.report", {"status": "401"}, "status"),
        ("error.report", {"status": 99}, "status"),
        ("error.report", {"status": 401, "access_token": 5}, "access_token"),
        ("device.info", {"x": 1}, "unknown param"),
        ("agent.health", {"verbose": True}, "unknown param"),
    ],
)
def test_wrong_params(d: rpc.Dispatcher, method, params, fragment) -> None:
    e = handle(d, req(method, params))["error"]
    assert e["code"] == rpc.INVALID_PARAMS
    assert fragment in e["message"] and e["message"].startswith(method)
    assert e["data"] == {"code": "invalid_params", "kind": "fatal", "retry_after": None}


def test_wrong_param_strings_are_never_echoed(d: rpc.Dispatcher) -> None:
    e = handle(d, req("error.report", {"status": TOKEN}))["error"]
    assert TOKEN not in json.dumps(e)


@pytest.mark.parametrize(
    "line,code",
    [
        (b"{not json", rpc.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"token.get","params":{"wait":NaN}}', rpc.PARSE_ERROR),
        (b"\xff\xfe{}", rpc.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"token.get"} trailing', rpc.PARSE_ERROR),
        (b"[" * 100000, rpc.PARSE_ERROR),
        (b"[]", rpc.INVALID_REQUEST),
        (b'[{"jsonrpc":"2.0","id":1,"method":"token.get"}]', rpc.INVALID_REQUEST),
        (b"42", rpc.INVALID_REQUEST),
        (b'{"id":1,"method":"token.get"}', rpc.INVALID_REQUEST),
        (b'{"jsonrpc":"1.0","id":1,"method":"token.get"}', rpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":5}', rpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":[1],"method":"token.get"}', rpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":true,"method":"token.get"}', rpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"token.gett"}', rpc.METHOD_NOT_FOUND),
    ],
)
def test_bad_envelopes(d: rpc.Dispatcher, line: bytes, code: int) -> None:
    e = handle(d, line)["error"]
    assert e["code"] == code
    assert e["data"]["kind"] == "fatal" and e["data"]["retry_after"] is None
    if code == rpc.METHOD_NOT_FOUND:
        assert "token.get" in e["message"]  # lists what is available
    if line.startswith(b"[{"):
        assert "batch" in e["message"]


def test_notifications_get_no_answer_but_subscribe_acts(d: rpc.Dispatcher, svc: FakeService) -> None:
    assert d.handle_line(b'{"jsonrpc":"2.0","method":"token.get"}') is None
    assert d.handle_line(b'{"jsonrpc":"2.0","method":"nope"}') is None
    assert d.handle_line(b'{"jsonrpc":"2.0","method":"error.report","params":{"status":500}}') is None
    assert svc.reports == [(500, None, None)]
    act = d.handle_line(b'{"jsonrpc":"2.0","method":"token.subscribe"}')
    assert isinstance(act, rpc.Action) and act.kind == "subscribe" and act.reply is False
    svc.set_token(None)
    assert d.handle_line(b'{"jsonrpc":"2.0","method":"token.get","params":{"wait":5}}') is None


def test_blank_lines_are_ignored(d: rpc.Dispatcher) -> None:
    assert d.handle_line(b"") is None
    assert d.handle_line(b"  \r") is None
    assert d.requests == 0


def test_token_changed_notification_carries_no_token() -> None:
    line = rpc.token_changed({"method": "token.changed",
                              "params": {"expires_at": 2.0, "refresh_at": 1.0, "access_token": TOKEN}})
    assert json.loads(line) == {"jsonrpc": "2.0", "method": "token.changed",
                                "params": {"expires_at": 2.0, "refresh_at": 1.0}}


def test_from_agent_error_keeps_retry_advice() -> None:
    e = rpc.from_agent_error(NotReady("no token yet", retry_after=3))
    assert e.code == rpc.NOT_READY and e.data == {"code": "not_ready", "kind": "retry", "retry_after": 3}


def test_error_report_management_flag_is_validated_and_passed_on():
    from agent import rpc as _rpc
    from tests.fakes import FakeService

    seen = {}

    class S(FakeService):
        def report_error(self, status, body=None, access_token=None, management=False):
            seen.update(status=status, management=management)
            return {"decision": "reregister" if management else "ignored", "reason": "test"}

    d = _rpc.Dispatcher(S())
    out = json.loads(d.handle_line(b'{"jsonrpc":"2.0","id":1,"method":"error.report","params":{"status":403,'
                                   b'"management":true}}'))
    assert out["result"]["decision"] == "reregister" and seen == {"status": 403, "management": True}
    out = json.loads(d.handle_line(b'{"jsonrpc":"2.0","id":2,"method":"error.report","params":{"status":403,'
                                   b'"management":"yes"}}'))
    assert out["error"]["code"] == _rpc.INVALID_PARAMS and "management" in out["error"]["message"]


def test_error_report_passes_the_peers_uid(svc: FakeService) -> None:
    d = rpc.Dispatcher(svc)
    line = json.dumps(req("error.report", {"status": 401})).encode()
    assert json.loads(d.handle_line(line, uid=1234))["result"]["decision"] == "refresh"
    assert json.loads(d.handle_line(line))["result"]["decision"] == "refresh"  # no peer known
    assert svc.report_uids == [1234, None]


def test_error_report_works_with_a_service_without_the_uid_keyword() -> None:
    seen = []

    class Old(FakeService):
        def report_error(self, status, body=None, access_token=None, management=False):
            seen.append((status, management))
            return {"decision": "ignored", "reason": "test"}

    d = rpc.Dispatcher(Old())
    line = json.dumps(req("error.report", {"status": 403, "management": True})).encode()
    assert json.loads(d.handle_line(line, uid=1234))["result"]["decision"] == "ignored"
    assert seen == [(403, True)]
