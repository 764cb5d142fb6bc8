"""agent/gateway/core.py without I/O: the path policy, header injection, each row of the answer table,
and the configuration cache with time passed in (issue 17)."""

from __future__ import annotations

import json

import pytest

from agent.gateway import core

IDENT = {"ap_device_identifier": "fingerprint YWJj", "x_device_info": "eyJtb2RlbCI6IngifQ=="}
JSON = [("Content-Type", "application/json")]


def req(method: str = "GET", target: str = "/api/v2/REF30/profiles", body: bytes = b"", headers=()) -> core.Request:
    return core.check_request(method, target, list(headers), body)


def eec(code: str, action: str, status: int) -> bytes:
    return json.dumps({"action": action, "status": status, "code": code, "message": "m"}).encode()


@pytest.mark.parametrize("target", [
    "/api/v2/REF30/configuration", "/api/v2/REF30/sessions/8ER64AM", "/api/v2/REF30/profiles/code/ABC",
    "/api/v2/REF30/logout/Cablevision?redirectUrl=https%3A%2F%2Fadobe.com", "/api/v2/authenticate/REF30/X?complete=1",
    "/api/v2/A.B~c_d-e/profiles", "/api/v2/REF30/x%20y"])
def test_rest_v2_targets_pass_byte_for_byte(target):
    r = req(target=target)
    assert r.target == target and r.path == target.split("?")[0]


@pytest.mark.parametrize("method, target, code", [
    ("GET", "/api/v2/", "not_rest_v2"), ("GET", "/api/v2", "not_rest_v2"), ("GET", "/", "not_rest_v2"),
    ("GET", "/API/V2/REF30/profiles", "not_rest_v2"), ("GET", "*", "bad_target"),
    ("GET", "sp.auth.adobe.com:443", "bad_target"), ("CONNECT", "sp.auth.adobe.com:443", "connect_refused"),
    ("PUT", "/api/v2/REF30/profiles", "method_not_allowed"), ("HEAD", "/api/v2/REF30/profiles", "method_not_allowed"),
    ("GET", "/api/v2/REF30/./profiles", "dot_segment"), ("GET", "/api/v2/REF30/%2E/profiles", "dot_segment"),
    ("GET", "/api/v2/../o/client/token", "dot_segment"), ("GET", "/api/v2/REF30/a\\b", "bad_path"),
    ("GET", "/api/v2/REF30/a%2fb", "encoded_separator"), ("GET", "/api/v2/REF30/a%00", "encoded_control"),
    ("GET", "/api/v2/REF30/a?x=%7f", "encoded_control"), ("GET", "/api/v2/REF30/a?x=%g1", "bad_escape"),
    ("GET", "/api/v2/REF30/a#frag", "bad_target"), ("GET", "/api/v2/REF30/" + "a" * 5000, "target_too_long"),
    ("GET", "https://sp.auth.adobe.com/api/v2/REF30/profiles", "absolute_form")])
def test_the_policy_refuses(method, target, code):
    with pytest.raises(core.Refusal) as info:
        req(method, target)
    assert info.value.code == code
    reply = info.value.reply()
    assert reply.origin == "agent" and json.loads(reply.body)["hint"]


def test_upstream_headers_drop_the_players_credentials_and_hop_by_hop_headers():
    player = [("Authorization", "Bearer PLAYER"), ("Connection", "keep-alive, X-Secret-Hop"), ("X-Secret-Hop", "1"),
              ("Keep-Alive", "300"), ("Host", "evil"), ("Content-Length", "5"), ("Cookie", "a=b"),
              ("X-Forwarded-For", "1.2.3.4"), ("Accept-Encoding", "gzip"), ("X-Pass-App", "news"),
              ("AP-Device-Identifier", "fingerprint bWluZQ=="), ("X-Device-Info", "bWluZQ=="),
              ("Accept", "application/json"), ("accept", "text/plain"), ("Content-Type", "application/json"),
              ("AP-Partner-Framework-Status", "abc")]
    out = core.upstream_headers(player, "TOKEN", IDENT)
    assert out == {"Accept": "application/json, text/plain", "Content-Type": "application/json",
                   "AP-Partner-Framework-Status": "abc", "Authorization": "Bearer TOKEN",
                   "AP-Device-Identifier": IDENT["ap_device_identifier"], "X-Device-Info": IDENT["x_device_info"]}


def test_reply_headers_drop_framing_and_cookies():
    assert core.reply_headers([("Content-Type", "application/json"), ("Transfer-Encoding", "chunked"),
                               ("Content-Length", "3"), ("Set-Cookie", "a=b"), ("Connection", "close, X-H"),
                               ("X-H", "1"), ("Cache-Control", "no-store")]) == [
        ("Content-Type", "application/json"), ("Cache-Control", "no-store")]


def test_a_401_is_retried_once_after_a_refresh_and_never_twice():
    ex = core.Exchange(req())
    assert ex.first().kind == "send"
    step = ex.on_answer(401, [], b"")
    assert (step.kind, step.report) == ("refresh", True)
    assert ex.on_token(True).kind == "send"
    step = ex.on_answer(401, [], b"")
    assert (step.kind, step.report, step.reply.status) == ("reply", True, 401)
    assert step.reply.header("X-Pass-Agent-Retries") == "1"
    assert ex.sends == 2


def test_a_token_validity_code_refreshes_even_when_paired_with_application_registration():
    ex = core.Exchange(req())
    ex.first()
    step = ex.on_answer(401, JSON, eec("access_token_expired", "application-registration", 401))
    assert step.kind == "refresh"


def test_without_a_new_token_the_kept_401_is_the_answer():
    ex = core.Exchange(req())
    ex.first()
    ex.on_answer(401, [("WWW-Authenticate", "Bearer")], b"")
    step = ex.on_token(False)
    assert step.kind == "reply" and step.reply.status == 401 and step.reply.header("WWW-Authenticate") == "Bearer"
    assert step.reply.header("X-Pass-Agent-Retries") is None and ex.sends == 1


def test_a_registration_code_is_reported_and_not_retried():
    ex = core.Exchange(req())
    ex.first()
    step = ex.on_answer(401, JSON, eec("invalid_access_token_client_application", "application-registration", 401))
    assert (step.kind, step.report) == ("reply", True)


def test_other_errors_are_passed_through_unreported():
    ex = core.Exchange(req())
    ex.first()
    step = ex.on_answer(403, JSON, eec("authenticated_profile_missing", "authentication", 403))
    assert (step.kind, step.report, step.reply.status) == ("reply", False, 403)
    step = core.Exchange(req()).on_answer(429, [("Content-Type", "text/html")], None)
    assert (step.kind, step.reply.status) == ("reply", 429)


def _decisions(*items) -> bytes:
    out = []
    for res, err in items:
        d = {"resource": res, "authorized": err is None}
        if err:
            d["error"] = {"action": "retry" if err == "retry" else "none", "status": 403, "code": err}
        out.append(d)
    return json.dumps({"decisions": out}).encode()


def test_items_marked_retry_are_resent_alone_with_backoff_and_merged():
    r = req("POST", "/api/v2/REF30/decisions/authorize/Cablevision", json.dumps({"resources": ["A", "B", "C"]}).encode())
    ex = core.Exchange(r, item_retries=2, backoff=1.0, random=lambda: 1.0)
    ex.first()
    step = ex.on_answer(200, JSON, _decisions(("A", None), ("B", "retry"), ("C", "denied")))
    assert step.kind == "wait" and json.loads(step.body) == {"resources": ["B"]} and step.delay == 1.0
    step = ex.on_answer(200, JSON, _decisions(("B", "retry")))
    assert step.kind == "wait" and step.delay == 2.0  # doubled
    step = ex.on_answer(200, JSON, _decisions(("B", None)))
    assert step.kind == "reply" and not step.report
    merged = json.loads(step.reply.body)["decisions"]
    assert [(d["resource"], d["authorized"]) for d in merged] == [("A", True), ("B", True), ("C", False)]
    assert step.reply.header("X-Pass-Agent-Retries") == "2"


def test_item_retries_stop_at_the_bound_and_on_a_failed_retry():
    r = req("POST", "/api/v2/REF30/decisions/preauthorize/Cablevision", json.dumps({"resources": ["B"]}).encode())
    ex = core.Exchange(r, item_retries=1, random=lambda: 0.0)
    ex.first()
    assert ex.on_answer(200, JSON, _decisions(("B", "retry"))).kind == "wait"
    step = ex.on_answer(200, JSON, _decisions(("B", "retry")))
    assert step.kind == "reply" and json.loads(step.reply.body)["decisions"][0]["error"]["action"] == "retry"
    ex = core.Exchange(r, item_retries=3, random=lambda: 0.0)
    ex.first()
    ex.on_answer(200, JSON, _decisions(("B", "retry")))
    step = ex.on_answer(503, [("Content-Type", "text/html")], None)  # the retry failed: what is known
    assert step.kind == "reply" and step.reply.status == 200


def test_a_whole_answer_marked_retry_is_resent_with_retry_after_as_floor():
    ex = core.Exchange(req(), item_retries=2, backoff=0.1, random=lambda: 0.0)
    ex.first()
    step = ex.on_answer(503, JSON, eec("network_connection_timeout", "retry", 503), retry_after=3.0)
    assert step.kind == "wait" and step.delay == 3.0
    step = ex.on_answer(503, JSON, eec("network_connection_timeout", "retry", 503), retry_after=100.0)
    assert step.kind == "wait" and step.delay == core.MAX_RETRY_WAIT
    assert ex.on_answer(503, JSON, eec("network_connection_timeout", "retry", 503)).kind == "reply"


def test_the_configuration_cache():
    cache = core.ConfigCache(ttl=180, max_entries=2)
    conf = req(target="/api/v2/REF30/configuration")
    conf.app = "a"
    ok = core.Reply(200, [("Content-Type", "application/json")], b"{}")
    assert cache.get(conf, 0.0) is None
    cache.put(conf, ok, 0.0)
    hit = cache.get(conf, 179.0)
    assert hit.body == b"{}" and hit.header("Age") == "179" and hit.header("X-Pass-Agent-Cache") == "hit"
    assert cache.get(conf, 180.0) is None  # expired
    other = req(target="/api/v2/REF30/configuration")
    other.app = "b"  # another application: its own entry
    cache.put(conf, ok, 200.0)
    assert cache.get(other, 200.0) is None
    cache.put(core.check_request("GET", "/api/v2/REF30/profiles", [], b""), ok, 200.0)  # never user data
    cache.put(conf, core.Reply(500, [], b"x"), 201.0)  # never an error
    assert cache.get(conf, 201.0).body == b"{}"
    cache.put(conf, core.Refusal(429, "budget_spent", "m").reply(), 201.0)  # never the gateway's own answers
    assert cache.get(conf, 201.0).body == b"{}"
    fresh = req(target="/api/v2/REF30/configuration", headers=[("Cache-Control", "no-cache")])
    fresh.app = "a"
    assert cache.get(fresh, 201.0) is None and cache.bypassed == 1
    for sp in ("X", "Y", "Z"):
        c = req(target="/api/v2/%s/configuration" % sp)
        cache.put(c, ok, 300.0)
    assert cache.view()["entries"] == 2
    assert core.ConfigCache(ttl=0).get(conf, 0.0) is None


def test_a_refusal_tells_when_to_retry():
    r = core.Refusal(429, "budget_spent", "spent", "wait", retry_after=0.2).reply()
    assert r.header("Retry-After") == "1" and json.loads(r.body)["retry_after"] == 1
    assert core.Refusal(429, "x", "m", retry_after=2.01).reply().header("Retry-After") == "3"
