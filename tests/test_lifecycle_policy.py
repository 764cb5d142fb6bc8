"""Virtual-time tests of the lifecycle rules added for issues 14 and 15 (agent/lifecycle.py):
statement identity, undocumented answers, capped Retry-After, the minimum interval between token
requests, unsatisfiable min_ttl, and the limits on re-registrations triggered by player reports.

Same driver as tests/test_lifecycle.py (tests/lifecycle_sim.py): no real waiting anywhere.
"""

from __future__ import annotations

import base64
import json

import pytest
from lifecycle_sim import (
    APP,
    INVALID_CLIENT,
    SERVER_ERROR,
    STATEMENT_HASH,
    THROTTLED,
    UNDOCUMENTED,
    Box,
    client,
    healthy,
)

from agent import lifecycle
from agent.errors import AgentError

DAY = 86400.0
OTHER_APP = "auth.adobe.com|app-2"


def jwt(payload: object, header: object = None) -> str:
    def part(obj: object) -> str:
        raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return "%s.%s.%s" % (part(header or {"alg": "RS256", "typ": "JWT"}), part(payload), part(b"s" * 64))


def stored(box_wall: float, **extra) -> dict:
    tok = {"access_token": "stored-token", "token_type": "bearer", "expires_in": 21600,
           "received_at": box_wall - 60.0, "expires_at": box_wall - 60.0 + 21600}
    return dict({"client": client(99), "registered_at": box_wall - DAY, "token": tok}, **extra)


WALL = 1.7e9 + 1000.0


# ----------------------------------------------------------------------------- statement identity (14.2)

def test_statement_identity_is_iss_and_sub_of_the_payload():
    a1 = jwt({"sub": "app-1", "iss": "auth.adobe.com", "iat": 1, "jti": "x"})
    a2 = jwt({"sub": "app-1", "iss": "auth.adobe.com", "iat": 99, "nbf": 99, "jti": "y"})  # re-downloaded
    b = jwt({"sub": "app-2", "iss": "auth.adobe.com", "iat": 1})
    ident = lifecycle.statement_identity
    assert ident(a1, "/s.jwt") == ident(a2 + "\n", "/s.jwt") == "auth.adobe.com|app-1"
    assert ident(b, "/s.jwt") == "auth.adobe.com|app-2"
    assert ident(jwt({"sub": "app-1", "iss": "auth-staging.adobe.com"}), "/s.jwt") != ident(a1, "/s.jwt")


@pytest.mark.parametrize("text,code", [
    ("", "statement_invalid"),
    ("hello world", "statement_invalid"),
    ("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", "statement_invalid"),
    ("eyJ.eyJ.x", "statement_invalid"),                               # base64 of nothing JSON
    (jwt(b"not json at all"), "statement_invalid"),
    (jwt(["sub", "app"]), "statement_invalid"),                        # payload not an object
    (jwt({"iss": "auth.adobe.com", "iat": 1}), "statement_no_sub"),    # no sub
    (jwt({"sub": "", "iss": "auth.adobe.com"}), "statement_no_sub"),
    (jwt({"sub": 42, "iss": "auth.adobe.com"}), "statement_no_sub"),
])
def test_a_file_that_is_not_a_statement_is_an_operator_error_naming_the_file(text, code):
    with pytest.raises(AgentError) as ei:
        lifecycle.statement_identity(text, "/etc/pass-agent/software-statement.jwt")
    e = ei.value
    assert e.code == code and e.kind == "operator"
    assert "/etc/pass-agent/software-statement.jwt" in e.message and e.hint
    assert "TVE Dashboard" in e.hint


def test_same_application_rotation_keeps_the_credentials_and_another_application_registers_once():
    box = Box()
    box.run_for(60)
    first_client = box.lc.client["client_id"]
    # A firmware update ships a fresh download of the same application's statement (new iat/jti).
    for i in range(5):
        assert box.lc.statement_changed(APP, "%064x" % (i + 1), box.now) is False
        box.run_for(3600)
    assert len(box.ops("register")) == 1 and box.lc.client["client_id"] == first_client
    assert box.lc.statement_hash == "%064x" % 5  # the new file is the one used from now on
    # A statement for another registered application: exactly one registration.
    assert box.lc.statement_changed(OTHER_APP, "b" * 64, box.now) is True
    box.run_for(DAY)
    assert len(box.ops("register")) == 2 and box.lc.client_statement_app == OTHER_APP
    assert box.saves[-1]["statement_app"] == OTHER_APP


def test_invalid_client_still_reregisters_with_the_rotated_statement():
    state = {"revoked": False}

    def upstream(op, box):
        if op == "token" and state["revoked"]:
            state["revoked"] = False
            return INVALID_CLIENT()
        return healthy(op, box)

    box = Box(upstream=upstream)
    box.run_for(60)
    assert box.lc.statement_changed(APP, "c" * 64, box.now) is False
    state["revoked"] = True
    box.lc.demand(box.now + 30)
    box.now += 30
    box.run_for(60)
    assert [r[1:] for r in box.requests] == [("register", "ok"), ("token", "ok"), ("token", "invalid_client"),
                                             ("register", "ok"), ("token", "ok")]
    assert box.saves[-1]["statement_hash"] == "c" * 64


def test_an_unusable_statement_needs_an_operator_registers_nothing_and_stored_credentials_keep_serving():
    box = Box(ttl=3600)
    box.run_for(60)
    problem = {"code": "statement_no_sub", "kind": "operator", "message": "the software statement /s.jwt has no sub",
               "hint": "download it again from the Adobe Pass TVE Dashboard"}
    assert box.lc.statement_changed(None, "d" * 64, box.now, problem) is False
    assert box.lc.state == lifecycle.NEEDS_OPERATOR
    assert box.lc.view(box.now, box.wall)["last_error"]["code"] == "statement_no_sub"
    box.run_for(4 * 3600)
    assert len(box.ops("register")) == 1  # no registration...
    assert len(box.ops("token", "ok")) >= 4  # ...and the stored credentials keep fetching tokens on schedule
    assert box.lc.token(box.now) is not None and box.lc.state == lifecycle.NEEDS_OPERATOR
    # The operator installs a good file of the same application: back to normal, still no registration.
    assert box.lc.statement_changed(APP, "e" * 64, box.now) is False
    assert box.lc.state == lifecycle.TOKEN_VALID and box.lc.last_error is None
    box.run_for(3600)
    assert len(box.ops("register")) == 1


def test_an_unusable_statement_without_credentials_waits_for_the_operator():
    box = Box(app=None)
    box.lc.statement_changed(None, None, box.now, {"code": "statement_invalid", "kind": "operator",
                                                    "message": "not a JWT", "hint": "download it again"})
    box.run_for(3 * 3600)
    assert box.requests == [] and box.lc.view(box.now, box.wall)["next_request_in"] is None
    assert box.lc.state == lifecycle.NEEDS_OPERATOR
    assert box.lc.statement_changed(APP, STATEMENT_HASH, box.now) is False
    assert box.lc.poll(box.now) == {"op": "register"}  # fixed: at once


def test_a_baseline_store_with_the_same_statement_bytes_adopts_the_identity_without_registering():
    box = Box(stored=stored(WALL, statement_hash=STATEMENT_HASH))
    assert box.lc.client_statement_app == APP
    box.run_for(DAY)
    assert box.ops("register") == []
    assert box.saves and box.saves[-1]["statement_app"] == APP
    assert not box.notes


def test_a_baseline_store_with_other_statement_bytes_adopts_the_identity_logs_it_and_does_not_register():
    box = Box(stored=stored(WALL, statement_hash="0" * 64))
    assert box.lc.client_statement_app == APP and not box.lc.pending_register
    assert box.notes and "adopted" in box.notes[0] and APP in box.notes[0]
    assert box.saves and box.saves[0]["statement_app"] == APP  # persisted: the next start says nothing
    box.run_for(DAY)
    assert box.ops("register") == []


# ----------------------------------------------------------------------------- undocumented answers (14.5)

def failing(make_error, op_fails: str = "token"):
    def upstream(op, box):
        return make_error() if op == op_fails else healthy(op, box)
    return upstream


@pytest.mark.parametrize("op", ["register", "token"])
def test_undocumented_answers_need_an_operator_after_three_over_ten_minutes(op):
    box = Box(upstream=failing(UNDOCUMENTED, op))
    box.run_for(3 * 3600)
    bad = box.ops(op, "http_401")
    assert box.lc.state == lifecycle.NEEDS_OPERATOR
    assert box.lc.last_error["code"] == "upstream_undocumented" and box.lc.last_error["kind"] == "operator"
    assert "401" in box.lc.last_error["message"] and "test error http_401" in box.lc.last_error["message"]
    assert box.lc.last_error["hint"]
    # It took at least three answers and ten minutes, then polling stopped: hourly tries only.
    streak_end = [t for t, _, _ in bad if t - bad[0][0] >= 600.0][0]
    assert len([b for b in bad if b[0] <= streak_end]) >= 3
    later = [t for t, _, _ in bad if t > streak_end]
    assert all(b - a >= 3600.0 - 1e-6 for a, b in zip([streak_end] + later, later))
    assert len(bad) < 40  # not one a minute for three hours (~180)


def _undocumented_token_answers_at(times: list[float]) -> list[str]:
    """A box that registered fine; its token requests get undocumented 401s at these offsets (or as soon
    after as its backoff allows). The lifecycle's state after each answer."""
    box = Box()
    assert box.step() and box.ops("register", "ok") and not box.ops("token")  # the token request is due now
    t0, states = box.now, []
    for dt in times:
        box.now = max(t0 + dt, box.lc.next_deadline())
        assert box.lc.poll(box.now) == {"op": "token"}
        box.lc.on_error(UNDOCUMENTED(), box.now, box.wall)
        states.append(box.lc.state)
    return states


def test_the_third_undocumented_answer_over_ten_minutes_calls_the_operator_not_the_fourth():
    # Exactly undocumented_count (3) answers spanning undocumented_span (600 s): the third one decides.
    op = lifecycle.NEEDS_OPERATOR
    assert _undocumented_token_answers_at([0, 1, 600]) == [lifecycle.BACKING_OFF, lifecycle.BACKING_OFF, op]
    assert _undocumented_token_answers_at([0, 700]) == [lifecycle.BACKING_OFF] * 2  # two are not enough


def test_undocumented_answers_in_quick_succession_wait_for_the_ten_minutes():
    # One proxy blip answering three times in a few seconds is not yet a reason to park for an hour.
    states = _undocumented_token_answers_at([0, 1, 2, 3, 599, 600])
    assert states == [lifecycle.BACKING_OFF] * 5 + [lifecycle.NEEDS_OPERATOR]


def test_a_documented_answer_resets_the_undocumented_streak():
    n = {"i": 0}

    def upstream(op, box):
        if op == "register":
            return healthy(op, box)
        n["i"] += 1
        return SERVER_ERROR() if n["i"] % 2 == 0 else UNDOCUMENTED(403)

    box = Box(upstream=upstream)
    box.run_for(3 * 3600)
    assert box.lc.state == lifecycle.BACKING_OFF
    assert len(box.ops("token")) > 100  # still polling within the outage cap: never needs an operator


def test_network_errors_neither_count_nor_reset_the_undocumented_streak():
    n = {"i": 0}

    def upstream(op, box):
        if op == "register":
            return healthy(op, box)
        n["i"] += 1
        from lifecycle_sim import err
        return err("network") if n["i"] % 2 == 0 else UNDOCUMENTED(401)

    box = Box(upstream=upstream)
    box.run_for(3600)
    assert box.lc.state == lifecycle.NEEDS_OPERATOR


# ----------------------------------------------------------------------------- Retry-After cap (15.4)

def test_a_day_of_retry_after_while_holding_a_ten_minute_token_retries_before_expiry():
    state = {"n": 0}

    def upstream(op, box):
        if op == "token" and box.lc.tok is not None:
            state["n"] += 1
            if state["n"] == 1:
                return THROTTLED(86400.0)
        return healthy(op, box)

    box = Box(upstream=upstream, ttl=600)
    box.run_for(60)
    exp = box.lc.tok["expires_mono"]
    box.run_until(exp + 1.0)
    retries = [t for t, op, code in box.ops("token") if code == "ok" and t > box.ops("token", "throttled")[0][0]]
    assert retries and retries[0] <= exp - 60.0 + 1e-6  # tried again no later than expiry_margin before expiry
    assert box.lc.token(box.now) is not None  # and the box never lost its token


@pytest.mark.parametrize("margin", [20.0, 200.0])
def test_the_one_try_before_expiry_follows_a_configured_expiry_margin(margin):
    """Server errors from the first refresh on, with a backoff that outgrows the token's life: the
    one extra try comes `expiry_margin` before expiry whatever the margin (it was fixed at 60 s)."""
    def upstream(op, box):
        if op == "token" and box.lc.tok is not None:
            return SERVER_ERROR()
        return healthy(op, box)

    box = Box(upstream=upstream, ttl=3600, expiry_margin=margin, backoff_cap=3600.0)
    box.run_for(60)
    exp = box.lc.tok["expires_mono"]
    box.run_until(exp - 1.0)
    tries = [t for t, op, code in box.ops("token") if code == "server_error"]
    assert any(abs(t - (exp - margin)) < 1e-6 for t in tries)


@pytest.mark.parametrize("op", ["register", "token"])
def test_a_day_of_retry_after_without_a_token_retries_within_backoff_cap(op):
    state = {"n": 0}

    def upstream(o, box):
        if o == op:
            state["n"] += 1
            if state["n"] == 1:
                return THROTTLED(86400.0)
        return healthy(o, box)

    box = Box(upstream=upstream, backoff_cap=300.0)
    box.run_for(3600)
    tries = [t for t, o, _ in box.ops(op)]
    assert box.ops(op, "throttled") and len(tries) >= 2
    assert 1.0 <= tries[1] - tries[0] <= 300.0 + 1e-6
    assert box.lc.token(box.now) is not None


def test_a_small_retry_after_is_still_a_floor():
    box = Box(upstream=failing(lambda: THROTTLED(120.0)), backoff_cap=300.0)
    box.run_for(3600)
    assert all(g >= 120.0 for g in box.gaps()[1:])


# ----------------------------------------------------------------------------- short tokens (15.5)

@pytest.mark.parametrize("ttl", [1, 5, 20])
def test_short_tokens_are_never_requested_more_often_than_the_minimum_interval(ttl):
    box = Box(ttl=ttl)
    t0 = box.now
    while box.now < t0 + 3600:
        box.lc.token(box.now)  # a player asking every second
        box.run_for(1.0)
    toks = [t for t, op, _ in box.ops("token")]
    assert all(b - a >= 30.0 - 1e-6 for a, b in zip(toks, toks[1:]))
    assert 100 <= len(toks) <= 121  # one per 30 s: 1/30 of Adobe's 1 request/s budget
    assert box.notes and "30" in box.notes[0] and ("%d s" % ttl) in box.notes[0]


def test_long_tokens_keep_their_refresh_schedule():
    box = Box(ttl=3600, jitter=0.0)
    box.run_for(3 * 3600)
    toks = [t for t, op, _ in box.ops("token")]
    assert [round(b - a) for a, b in zip(toks, toks[1:])] == [2880, 2880, 2880]
    assert not box.notes


def test_a_new_client_gets_its_token_at_once_whatever_the_interval():
    state = {"revoked": False}

    def upstream(op, box):
        if op == "token" and state["revoked"]:
            state["revoked"] = False
            return INVALID_CLIENT()
        return healthy(op, box)

    box = Box(upstream=upstream)
    box.run_for(60)
    state["revoked"] = True
    assert box.lc.report(401, "refresh", None, box.now)["decision"] == "refresh"
    box.run_for(60)
    ops = box.requests[2:]
    assert [r[1:] for r in ops] == [("token", "invalid_client"), ("register", "ok"), ("token", "ok")]
    assert ops[2][0] - ops[1][0] < 1.0


def test_min_ttl_longer_than_the_token_lifetime_is_refused_at_once():
    box = Box(ttl=8)
    box.run_for(1)
    with pytest.raises(AgentError) as ei:
        box.lc.token(box.now, min_ttl=600)
    e = ei.value
    assert e.code == "min_ttl_unsatisfiable"
    assert "600" in e.message and "8 s" in e.message and e.hint
    assert box.lc.poll(box.now) is None  # and it forced no refresh
    assert box.lc.token(box.now, min_ttl=5) is not None
    with pytest.raises(AgentError):
        box.lc.token(box.now, min_ttl=604800)


def test_min_ttl_below_the_lifetime_still_refreshes_early():
    box = Box(ttl=3600)
    box.run_for(1)
    box.now += 100
    assert box.lc.token(box.now, min_ttl=3550) is None
    assert box.lc.poll(box.now) == {"op": "token"}


# ----------------------------------------------------------------------------- player reports (15.11)

def test_a_reregister_report_about_an_old_token_is_ignored():
    box = Box()
    box.run_for(60)
    r = box.lc.report(401, "reregister", "an-old-token", box.now, uid=1000)
    assert r["decision"] == "ignored" and "current" in r["reason"]
    box.run_for(600)
    assert len(box.ops("register")) == 1


def test_reregister_reports_are_limited_per_uid_and_overall():
    box = Box()
    box.run_for(60)
    current = lambda: box.lc.tok["access_token"]  # noqa: E731
    assert box.lc.report(401, "reregister", current(), box.now, uid=1000)["decision"] == "reregister"
    # Same token again (any uid): one re-registration per token.
    assert box.lc.report(401, "reregister", current(), box.now + 1, uid=1001)["decision"] == "ignored"
    box.run_for(1000)
    assert len(box.ops("register")) == 2
    # The same uid, about the new token, an hour later: refused (one per uid per 6 h).
    r = box.lc.report(401, "reregister", current(), box.now + 3600, uid=1000)
    assert r["decision"] == "rate_limited" and "1000" in r["reason"]
    # Other uids: at most one per 15 min and four per day overall.
    decisions = []
    for i in range(40):
        box.run_for(901)
        decisions.append(box.lc.report(401, "reregister", current(), box.now, uid=2000 + i)["decision"])
        box.run_for(60)
    assert decisions.count("reregister") == 3  # 4 a day: 1 above + 3
    assert len(box.ops("register")) == 1 + 4
    box.run_for(DAY)
    assert box.lc.report(401, "reregister", current(), box.now, uid=3000)["decision"] == "reregister"


def test_report_limits_hold_a_bounded_amount_of_memory():
    box = Box()
    box.run_for(60)
    for uid in range(100000):
        box.lc.report(401, "reregister", None, box.now, uid=uid)
    assert len(box.lc.report_uids) <= 256


def test_a_reregister_report_without_a_token_held_is_ignored():
    box = Box(upstream=failing(SERVER_ERROR))
    box.run_for(60)
    assert box.lc.tok is None
    assert box.lc.report(401, "reregister", None, box.now, uid=1)["decision"] == "ignored"


def test_a_baseline_store_loaded_while_the_file_was_unusable_adopts_the_identity_once_it_is_fixed():
    box = Box(stored=stored(WALL, statement_hash="0" * 64), app=None, statement_hash=None)
    box.lc.statement_changed(None, None, box.now, {"code": "statement_unreadable", "kind": "operator",
                                                    "message": "missing", "hint": "install it"})
    assert box.lc.client_statement_app is None
    assert box.lc.statement_changed(APP, STATEMENT_HASH, box.now) is False  # adopted, no registration
    assert box.lc.client_statement_app == APP
    assert box.lc.statement_changed(OTHER_APP, "b" * 64, box.now) is True  # and later changes do count
