"""Virtual-time tests of the credential lifecycle (agent/lifecycle.py): every rule of issue 6.

A fake monotonic clock, a fake wall clock and a seeded random source (tests/lifecycle_sim.py);
no real waiting anywhere.
"""

from __future__ import annotations

import random

import pytest
from lifecycle_sim import (
    APP,
    INVALID_CLIENT,
    OPERATOR_ERR,
    SERVER_ERROR,
    STATEMENT_HASH,
    THROTTLED,
    Box,
    SimulationStuck,
    client,
    err,
    healthy,
    token,
)

from agent import dcr, lifecycle
from agent.lifecycle import LifecycleError

DAY = 86400.0
TRANSIENT = [("throttled", 429), ("server_error", 503), ("network", None), ("timeout", None),
             ("malformed_response", 200), ("http_502", 502), ("unknown_error", 400), ("tls_verify", None)]


def stored_state(box_wall: float, token_age: float | None = 0.0, expires_in: int = 21600) -> dict:
    tok = None
    if token_age is not None:
        tok = {"access_token": "stored-token", "token_type": "bearer", "expires_in": expires_in,
               "received_at": box_wall - token_age, "expires_at": box_wall - token_age + expires_in}
    return {"client": client(99), "statement_app": APP, "statement_hash": STATEMENT_HASH,
            "registered_at": box_wall - DAY, "token": tok}


def failing_token(make_error):
    """Registration works; every token request fails with make_error()."""
    def upstream(op, box):
        if op == "register":
            return healthy(op, box)
        return make_error()
    return upstream


# ----------------------------------------------------------------------------- the table

def test_every_listed_transition_reaches_its_target_and_unlisted_pairs_raise():
    checked = 0
    for state in lifecycle.STATES:
        for event in lifecycle.EVENTS:
            lc = lifecycle.Lifecycle(random=random.Random(0).random)
            lc.state = state
            key = (state, event)
            if key in lifecycle.TRANSITIONS:
                target = lifecycle.TRANSITIONS[key]
                got = lc._fire(event, 0.0)
                if target == lifecycle.SETTLE:
                    assert got == lifecycle.UNREGISTERED  # nothing held
                    lc2 = lifecycle.Lifecycle(random=random.Random(0).random)
                    lc2.client = client()
                    lc2.state = state
                    assert lc2._fire(event, 0.0) == lifecycle.REGISTERED
                    lc2.state = state
                    lc2._set_token(token(), 0.0, 100.0, 100.0, None)
                    assert lc2._fire(event, 1.0) == lifecycle.TOKEN_VALID
                else:
                    assert got == target and lc.state == target
            else:
                with pytest.raises(LifecycleError) as ei:
                    lc._fire(event, 0.0)
                assert repr(state) in str(ei.value) and repr(event) in str(ei.value)
                assert lc.state == state  # a refused event changes nothing
            checked += 1
    assert checked == len(lifecycle.STATES) * len(lifecycle.EVENTS)
    # Every state is reachable as a target, and every transition names known states and events.
    targets = set(lifecycle.TRANSITIONS.values())
    assert all(s in lifecycle.STATES for s, _ in lifecycle.TRANSITIONS)
    assert all(e in lifecycle.EVENTS for _, e in lifecycle.TRANSITIONS)
    assert {lifecycle.REGISTERING, lifecycle.FETCHING, lifecycle.REFRESHING, lifecycle.BACKING_OFF,
            lifecycle.NEEDS_OPERATOR, lifecycle.TOKEN_VALID, lifecycle.UNREGISTERED} <= targets


def test_outcome_without_request_in_flight_is_a_lifecycle_error():
    box = Box()
    with pytest.raises(LifecycleError):
        box.lc.on_token(token(), box.now, box.wall)  # unregistered: nothing was asked


# ----------------------------------------------------------------------------- registration triggers

def test_fresh_box_registers_once_then_fetches_a_token():
    box = Box()
    assert box.lc.state == lifecycle.UNREGISTERED
    box.run_for(60)
    assert [r[1:] for r in box.requests] == [("register", "ok"), ("token", "ok")]
    assert box.lc.state == lifecycle.TOKEN_VALID
    assert box.lc.token(box.now)["access_token"] == "token-000002"
    assert box.saves[-1]["client"]["client_id"] == "client-0001-0000-0000"
    assert box.saves[-1]["statement_app"] == APP and box.saves[-1]["statement_hash"] == STATEMENT_HASH


def test_stored_credentials_and_token_need_no_request_at_start():
    box = Box(stored=stored_state(1.7e9 + 1000.0, token_age=600.0))
    assert box.lc.state == lifecycle.TOKEN_VALID
    assert box.lc.token(box.now)["access_token"] == "stored-token"
    assert box.lc.poll(box.now) is None
    box.run_for(3600)
    assert box.requests == []


@pytest.mark.parametrize("code,status", TRANSIENT)
def test_transient_errors_never_cause_a_registration(code, status):
    # Stored client, expired token: the token endpoint fails for two days.
    box = Box(upstream=failing_token(lambda: err(code, status=status)),
              stored=stored_state(1.7e9 + 1000.0, token_age=30000.0))
    assert box.lc.state == lifecycle.REGISTERED
    box.run_for(2 * DAY)
    assert box.ops("register") == []
    assert len(box.ops("token")) > 5
    assert box.lc.state == lifecycle.BACKING_OFF
    assert box.lc.client["client_id"] == "client-0099-0000-0000"  # credentials kept


@pytest.mark.parametrize("code,status", TRANSIENT)
def test_transient_registration_errors_retry_the_registration_with_backoff(code, status):
    calls = []

    def upstream(op, box):
        calls.append(op)
        if len(calls) <= 3:
            return err(code, status=status)
        return healthy(op, box)

    box = Box(upstream=upstream)
    box.run_for(3600)
    assert [r[1:] for r in box.requests] == [("register", code)] * 3 + [("register", "ok"), ("token", "ok")]
    assert all(g >= 1.0 for g in box.gaps()[:3])


def test_invalid_client_reregisters_once_at_once_then_backs_off():
    state = {"revoked": False}

    def upstream(op, box):
        if op == "token" and state["revoked"]:
            return INVALID_CLIENT()
        return healthy(op, box)

    box = Box(upstream=upstream)
    box.run_for(60)
    assert len(box.ops("register")) == 1
    state["revoked"] = True  # from now on every client is refused
    box.lc.demand(box.now)
    t0 = box.now
    box.run_for(6 * 3600)
    ops = [r[1:] for r in box.requests[2:]]
    # token refused -> immediate re-registration -> token refused again -> backoff before the next one
    assert ops[:4] == [("token", "invalid_client"), ("register", "ok"), ("token", "invalid_client"), ("register", "ok")]
    assert box.requests[3][0] == box.requests[2][0]  # the first re-registration is immediate
    assert box.requests[5][0] - box.requests[4][0] >= 1.0  # the second waits
    regs = [r[0] for r in box.ops("register") if r[0] >= t0]
    gaps = [b - a for a, b in zip(regs[1:], regs[2:])]
    assert gaps == sorted(gaps) or max(gaps) >= 200  # backing off, not looping
    assert len(regs) < 40  # 6 hours of a dead client: a few dozen registrations at most, not hundreds
    assert max(gaps) <= 3600.0 and max(gaps) > 1800.0  # grows up to the hourly operator wait
    assert box.lc.state == lifecycle.BACKING_OFF


def test_invalid_client_then_recovery_keeps_the_token_served_throughout():
    state = {"refuse": 0}

    def upstream(op, box):
        if op == "token" and state["refuse"]:
            state["refuse"] -= 1
            return INVALID_CLIENT()
        return healthy(op, box)

    box = Box(upstream=upstream)
    box.run_for(60)
    first = box.lc.token(box.now)["access_token"]
    state["refuse"] = 1
    box.run_until(box.lc.due)
    box.step()
    box.step()
    box.step()
    assert [r[1:] for r in box.requests[2:]] == [("token", "invalid_client"), ("register", "ok"), ("token", "ok")]
    assert box.lc.token(box.now)["access_token"] != first
    assert box.lc.client["client_id"] == "client-0003-0000-0000"
    assert box.saves[-1]["client"]["client_id"] == "client-0003-0000-0000"


def test_statement_for_another_application_registers_once_and_the_same_one_does_nothing():
    box = Box()
    box.run_for(60)
    served = box.lc.token(box.now)["access_token"]
    assert box.lc.statement_changed(APP, STATEMENT_HASH, box.now) is False
    assert box.lc.statement_changed("auth.adobe.com|app-2", "b" * 64, box.now) is True
    assert box.lc.token(box.now)["access_token"] == served  # still served while re-registering
    assert box.lc.statement_changed("auth.adobe.com|app-2", "b" * 64, box.now) is False  # same file again
    box.run_for(60)
    assert [r[1] for r in box.requests] == ["register", "token", "register", "token"]
    assert box.saves[-1]["statement_app"] == "auth.adobe.com|app-2" and box.saves[-1]["statement_hash"] == "b" * 64
    # Going back to a statement of the application the current client was registered for is not a trigger.
    box2 = Box(stored=stored_state(1.7e9 + 1000.0, token_age=0.0))
    assert box2.lc.statement_changed(APP, "c" * 64, box2.now) is False


def test_statement_for_another_application_at_start_registers_while_serving_stored_token():
    box = Box(stored=stored_state(1.7e9 + 1000.0, token_age=60.0), app="auth.adobe.com|app-3", statement_hash="c" * 64)
    assert box.lc.token(box.now)["access_token"] == "stored-token"
    box.run_for(60)
    assert [r[1] for r in box.requests] == ["register", "token"]


def test_statement_change_while_registering_with_the_old_one_registers_again():
    box = Box()
    req = box.lc.poll(box.now)
    assert req == {"op": "register"}
    assert box.lc.statement_changed("auth.adobe.com|app-4", "d" * 64, box.now) is True  # in flight: remembered
    box.lc.on_registered(client(1), APP, box.now, box.wall)  # registered with the old statement
    assert box.lc.pending_register
    assert box.lc.poll(box.now) == {"op": "register"}


def test_statement_change_during_a_refused_registration_retries_at_once():
    box = Box()
    assert box.lc.poll(box.now) == {"op": "register"}  # with the old (revoked) statement
    assert box.lc.statement_changed(APP, "f" * 64, box.now) is False  # same application: no new trigger...
    box.lc.on_error(OPERATOR_ERR("invalid_software_statement"), box.now + 0.2, box.wall)
    assert box.lc.state == lifecycle.NEEDS_OPERATOR
    assert box.lc.poll(box.now + 0.2) == {"op": "register"}  # ...but the refusal may be fixed: not an hour later


def test_forget_while_in_flight_ignores_the_outcome_and_registers_afresh():
    box = Box()
    box.run_for(60)
    box.lc.demand(box.now + 20000)
    box.now += 20000
    assert box.lc.poll(box.now) == {"op": "token"}
    box.lc.forget(box.now)
    assert box.lc.on_token(token(7), box.now, box.wall) == []
    assert box.lc.tok is None and box.lc.client is None
    assert box.lc.poll(box.now) == {"op": "register"}


# ----------------------------------------------------------------------------- expiry and refresh

@pytest.mark.parametrize("created_at", [None, 0.0, 1.0, 4e9, 1.7e12])
def test_expiry_is_monotonic_receipt_plus_expires_in_whatever_created_at_says(created_at):
    def upstream(op, box):
        return client() if op == "register" else token(1, 3600, created_at)

    box = Box(upstream=upstream, latency=0.25)
    box.run_until(box.now + 1.0)
    received = box.ops("token")[0][0]
    t = box.lc.tok
    assert t["received_mono"] == received
    assert t["expires_mono"] == received + 3600
    assert box.lc.token(received + 3599.999) is not None
    assert box.lc.token(received + 3600.0) is None


def test_refresh_time_is_at_plus_minus_jitter_of_the_lifetime():
    fractions = []
    for seed in range(400):
        box = Box(seed=seed, ttl=10000)
        box.run_for(60)
        t = box.lc.tok
        fractions.append((t["refresh_mono"] - t["received_mono"]) / 10000.0)
    assert all(0.7 - 1e-9 <= f <= 0.9 + 1e-9 for f in fractions)
    assert min(fractions) < 0.72 and max(fractions) > 0.88  # the whole band is used
    assert abs(sum(fractions) / len(fractions) - 0.8) < 0.01
    box = Box(ttl=10000, refresh_at=0.5, jitter=0.0)
    box.run_for(60)
    t = box.lc.tok
    assert t["refresh_mono"] - t["received_mono"] == pytest.approx(5000.0)


def _ten_days(wall_jumps: dict | None = None, seed: int = 7):
    box = Box(seed=seed, latency=0.3)
    gaps_ok = []
    jumps = dict(wall_jumps or {})

    def check(b):
        for at in list(jumps):
            if b.now >= at:
                b.wall_offset += jumps.pop(at)
        gaps_ok.append(b.lc.tok is None or b.lc.tok["expires_mono"] > b.now)

    box.run_for(10 * DAY, check)
    return box, gaps_ok


def test_ten_days_of_six_hour_tokens_one_registration_and_the_expected_token_calls():
    box, gaps_ok = _ten_days()
    assert len(box.ops("register")) == 1
    n = len(box.ops("token"))
    # One token at start, then one per 0.8 +- 0.1 of 6 h: between 240/5.4 and 240/4.2 refreshes.
    assert 1 + 44 <= n <= 1 + 58
    assert abs(n - (1 + 240 / 4.8)) <= 4
    assert all(r[2] == "ok" for r in box.requests)
    assert all(gaps_ok)  # every refresh happened before the previous token expired
    assert box.lc.counters == {"register": {"ok": 1}, "token": {"ok": n}}


def test_wall_clock_jumps_of_a_day_change_nothing():
    base, _ = _ten_days()
    jumped, _ = _ten_days({1000.0 + 2 * DAY: +DAY, 1000.0 + 5 * DAY: -DAY, 1000.0 + 7 * DAY: -DAY})
    assert [r[:2] for r in jumped.requests] == [r[:2] for r in base.requests]


def test_stored_token_with_wall_clock_behind_is_served_and_refreshed_at_once():
    # A box without RTC boots at 1970 before NTP: the stored token's age is unknown.
    box = Box(stored=stored_state(1.7e9, token_age=0.0))
    box.wall_offset = 0.0 - box.now  # wall = 1970
    box.lc.load(stored_state(1.7e9, token_age=0.0), APP, STATEMENT_HASH, box.now, box.wall)
    assert box.lc.token(box.now)["access_token"] == "stored-token"
    assert box.lc.poll(box.now) == {"op": "token"}


def test_stored_token_expired_by_wall_clock_is_not_served():
    box = Box(stored=stored_state(1.7e9 + 1000.0, token_age=21601.0))
    assert box.lc.token(box.now) is None
    assert box.lc.state == lifecycle.REGISTERED


# ----------------------------------------------------------------------------- single flight

def test_a_thousand_callers_on_an_expired_token_cause_one_request():
    box = Box()
    box.run_for(60)
    box.now = box.lc.tok["expires_mono"] + 5.0
    box.lc.due = box.now + 9999.0  # the scheduled refresh was missed (box suspended)
    for _ in range(1000):
        assert box.lc.token(box.now) is None
    assert box.lc.poll(box.now) == {"op": "token"}
    for _ in range(1000):
        assert box.lc.token(box.now) is None
        assert box.lc.poll(box.now) is None
    box.lc.on_token(token(3), box.now, box.wall)
    assert len([1 for _ in range(1000) if box.lc.token(box.now)]) == 1000
    assert box.lc.counters["token"] == {"ok": 2}


def test_min_ttl_demand_refreshes_early_but_not_in_a_loop():
    box = Box()
    box.run_for(1)
    assert box.lc.token(box.now, min_ttl=21599.5) is None  # token too young to be refreshed for min_ttl
    assert box.lc.poll(box.now) is None
    box.now += 100
    assert box.lc.token(box.now, min_ttl=21599.5) is None
    assert box.lc.poll(box.now) == {"op": "token"}


# ----------------------------------------------------------------------------- backoff

def test_backoff_is_exponential_full_jitter_from_one_second_capped():
    delays_by_attempt: dict[int, list[float]] = {}
    for seed in range(60):
        box = Box(upstream=failing_token(SERVER_ERROR), seed=seed, backoff_cap=300.0, outage_cap=300.0)
        box.run_for(3 * 3600)
        gaps = box.gaps()[1:]  # after register -> first token
        for i, g in enumerate(gaps):
            delays_by_attempt.setdefault(i, []).append(g)
        assert box.ops("register") and len(box.ops("register")) == 1
    assert all(g == 1.0 for g in delays_by_attempt[0])  # first retry after exactly 1 s
    for i, ds in delays_by_attempt.items():
        ceiling = min(300.0, 2.0 ** i)
        assert all(1.0 <= d <= max(ceiling, 1.0) + 1e-9 for d in ds), i
    late = [d for i, ds in delays_by_attempt.items() if i >= 10 for d in ds]
    assert max(late) <= 300.0 and max(late) > 250.0  # capped, and the cap is reached
    assert min(late) < 60.0  # full jitter: the whole [0, cap] range is used
    assert 100 < sum(late) / len(late) < 200  # mean of U(0, 300) is 150


def test_throttled_backoff_never_below_one_second_and_capped():
    box = Box(upstream=failing_token(THROTTLED), throttle_cap=1800.0)
    box.run_for(2 * DAY)
    gaps = box.gaps()[1:]
    assert min(gaps) >= 1.0
    assert max(gaps) <= 1800.0
    assert max(gaps) > 1000.0
    assert box.ops("register") and len(box.ops("register")) == 1


@pytest.mark.parametrize("code", ["throttled", "server_error"])
def test_retry_after_seconds_is_honoured(code):
    box = Box(upstream=failing_token(lambda: err(code, retry_after=120.0, status=429)))
    box.run_for(1000)
    assert all(g >= 120.0 for g in box.gaps()[1:])
    assert 6 <= len(box.ops("token")) <= 9


def test_retry_after_http_date_is_honoured():
    def upstream(op, box):
        if op == "register":
            return healthy(op, box)
        retry_at = box.wall + 90
        days, rest = divmod(int(retry_at), 86400)
        import time
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(days * 86400 + rest))
        return dcr.error_from_response("token", 429, {"Retry-After": date}, b"<html>429</html>", box.wall)

    box = Box(upstream=upstream)
    box.run_for(600)
    gaps = box.gaps()[1:]
    assert gaps and all(g >= 89.0 for g in gaps)


def test_a_backoff_is_never_shortened_by_callers():
    box = Box(upstream=failing_token(SERVER_ERROR))
    box.run_for(600)
    due = box.lc.due
    for _ in range(100):
        assert box.lc.token(box.now) is None
    assert box.lc.due == due
    assert box.lc.poll(box.now) is None or box.now >= due


def test_success_resets_the_backoff():
    state = {"fail": 8}

    def upstream(op, box):
        if op == "token" and state["fail"]:
            state["fail"] -= 1
            return SERVER_ERROR()
        return healthy(op, box)

    box = Box(upstream=upstream)
    box.run_for(3600)
    assert box.lc.attempts == 0 and box.lc.throttled == 0
    assert box.lc.state == lifecycle.TOKEN_VALID


def test_refresh_failing_with_a_held_token_retries_before_it_expires():
    state = {"fail": False}

    def upstream(op, box):
        if op == "token" and state["fail"]:
            return SERVER_ERROR()
        return healthy(op, box)

    box = Box(upstream=upstream, ttl=3600, backoff_cap=7200.0)
    box.run_for(60)
    state["fail"] = True
    exp = box.lc.tok["expires_mono"]
    box.run_until(exp - 1.0)
    # At least one attempt falls within the last minutes of the token's life.
    assert any(exp - 120.0 <= r[0] < exp for r in box.ops("token", "server_error"))


# ----------------------------------------------------------------------------- configuration errors

REGISTER_OPERATOR_CODES = ["invalid_request", "invalid_redirect_uri", "invalid_software_statement",
                           "unapproved_software_statement"]
TOKEN_OPERATOR_CODES = ["invalid_request", "unauthorized_client", "unsupported_grant_type"]


@pytest.mark.parametrize("code", REGISTER_OPERATOR_CODES)
def test_register_configuration_errors_need_an_operator_and_retry_hourly(code):
    def upstream(op, box):
        return dcr.error_from_response("register", 400, {}, ('{"error": "%s"}' % code).encode(), box.wall)

    box = Box(upstream=upstream)
    box.run_for(10)
    assert box.lc.state == lifecycle.NEEDS_OPERATOR
    assert box.lc.last_error["code"] == code and box.lc.last_error["kind"] == "operator"
    for _ in range(50):
        box.lc.token(box.now)  # callers cannot shorten the wait
    box.run_for(3 * 3600 + 10)
    times = [r[0] for r in box.requests]
    assert len(times) == 4  # at start, then hourly
    assert all(b - a == pytest.approx(3600.0) for a, b in zip(times, times[1:]))
    assert box.lc.statement_changed(APP, "e" * 64, box.now) is False  # a new file, same application...
    assert box.lc.poll(box.now) == {"op": "register"}  # ...fixed by an operator: tried at once


@pytest.mark.parametrize("code", TOKEN_OPERATOR_CODES)
def test_token_configuration_errors_need_an_operator(code):
    def upstream(op, box):
        if op == "register":
            return healthy(op, box)
        return dcr.error_from_response("token", 400, {}, ('{"error": "%s"}' % code).encode(), box.wall)

    box = Box(upstream=upstream)
    box.run_for(2 * 3600 + 10)
    assert box.lc.state == lifecycle.NEEDS_OPERATOR
    assert [r[1] for r in box.requests] == ["register", "token", "token", "token"]
    assert box.lc.retry_now(box.now) is True  # console `refresh`
    assert box.lc.poll(box.now) == {"op": "token"}


def test_operator_error_keeps_serving_a_held_token():
    box = Box(upstream=lambda op, b: OPERATOR_ERR("unauthorized_client") if b.lc.tok else healthy(op, b))
    box.run_for(60)
    held = box.lc.tok["access_token"]
    box.run_until(box.lc.tok["expires_mono"] - 1.0)
    assert box.lc.state == lifecycle.NEEDS_OPERATOR
    assert box.lc.token(box.now)["access_token"] == held


# ----------------------------------------------------------------------------- player reports

def test_player_401_refreshes_once_and_only_for_the_current_token():
    box = Box()
    box.run_for(60)
    current = box.lc.tok["access_token"]
    assert box.lc.report(401, "refresh", "an-old-token", box.now)["decision"] == "ignored"
    assert box.lc.poll(box.now) is None
    r = box.lc.report(401, "refresh", current, box.now)
    assert r["decision"] == "refresh"
    assert box.lc.token(box.now)["access_token"] == current  # still served until the new one arrives
    assert box.lc.report(401, "refresh", current, box.now + 60)["decision"] == "ignored"  # once per token
    box.step()
    assert box.ops("token")[-1][0] == box.now and len(box.ops("token")) == 2
    new = box.lc.tok["access_token"]
    assert new != current
    assert box.lc.report(401, "refresh", current, box.now)["decision"] == "ignored"
    assert box.lc.report(401, "refresh", new, box.now + 1)["decision"] == "rate_limited"
    assert box.lc.report(401, "refresh", new, box.now + 31)["decision"] == "refresh"


def test_player_reregister_reports_register_once_and_are_rate_limited():
    box = Box()
    box.run_for(60)
    body = {"action": "application-registration", "code": "invalid_access_token_client_application", "status": 401}
    decision, _ = dcr.classify_protected_error(401, body)
    assert decision == "reregister"
    assert box.lc.report(401, decision, None, box.now)["decision"] == "reregister"
    for i in range(100):  # the same token: already acted on
        assert box.lc.report(401, decision, None, box.now + i)["decision"] == "ignored"
    box.run_for(600)
    assert [r[1] for r in box.requests] == ["register", "token", "register", "token"]
    for i in range(100):  # the new token, within 15 min
        assert box.lc.report(401, decision, None, box.now + i)["decision"] == "rate_limited"
    assert box.lc.report(403, dcr.classify_protected_error(403, b"", management=True)[0], None,
                         box.now + 900)["decision"] == "rate_limited"  # the same (unknown) peer: 6 h
    assert box.lc.report(403, dcr.classify_protected_error(403, b"", management=True)[0], None,
                         box.now + 900, uid=1000)["decision"] == "reregister"  # another peer, 15 min later


def test_player_report_does_not_shorten_a_backoff():
    box = Box(upstream=lambda op, b: SERVER_ERROR() if op == "token" and b.lc.tok else healthy(op, b), ttl=600)
    box.run_for(550)
    assert box.lc.state == lifecycle.BACKING_OFF
    due = box.lc.due
    box.lc.report(401, "reregister", None, box.now)
    assert box.lc.due == due and box.lc.pending_register
    box.run_until(due)
    assert [r[1] for r in box.requests[-2:]] == ["register", "token"]
    assert box.requests[-2][0] == due


@pytest.mark.parametrize("status,body", [(500, b""), (403, b"{}"), (400, {"action": "retry", "code": "x"}),
                                         (429, b"<html/>"), (404, None)])
def test_other_player_reports_are_ignored(status, body):
    box = Box()
    box.run_for(60)
    decision, _ = dcr.classify_protected_error(status, body)
    assert decision == "ignore"
    assert box.lc.report(status, decision, None, box.now)["decision"] == "ignored"
    box.run_for(600)
    assert len(box.requests) == 2


# ----------------------------------------------------------------------------- serving and counters

@pytest.mark.parametrize("make_error", [SERVER_ERROR, THROTTLED, INVALID_CLIENT, OPERATOR_ERR,
                                        lambda: OPERATOR_ERR("unauthorized_client"),
                                        lambda: err("network"), lambda: err("timeout")])
def test_a_valid_token_is_always_served_whatever_the_upstream_does(make_error):
    state = {"broken": False}

    def upstream(op, box):
        return make_error() if state["broken"] else healthy(op, box)

    box = Box(upstream=upstream, ttl=3600)
    box.run_for(60)
    held = box.lc.tok["access_token"]
    expires = box.lc.tok["expires_mono"]
    state["broken"] = True
    served = []
    box.run_until(expires - 0.001, lambda b: served.append(b.lc.token(b.now)))
    assert served and all(t is not None and t["access_token"] == held for t in served)
    assert box.lc.token(expires - 0.001)["access_token"] == held
    assert box.lc.token(expires) is None


def test_counters_count_every_call_by_endpoint_and_outcome():
    seq = iter([SERVER_ERROR(), THROTTLED(), None, INVALID_CLIENT(), None, None])

    def upstream(op, box):
        e = next(seq)
        return e if e is not None else healthy(op, box)

    box = Box(upstream=upstream)
    box.run_for(3600)
    assert box.lc.counters == {"register": {"server_error": 1, "throttled": 1, "ok": 2},
                               "token": {"invalid_client": 1, "ok": 1}}
    view = box.lc.view(box.now, box.wall)
    assert view["upstream"] == box.lc.counters
    assert "secret" not in repr(view) and "token-0" not in repr(view)


# ----------------------------------------------------------------------------- crowd-aware 429 policy

def test_throttle_window_grows_with_the_time_the_streak_has_lasted():
    box = Box(upstream=lambda op, b: THROTTLED(), throttle_spread=0.25, throttle_min=3.0, throttle_cap=3600.0)
    box.run_for(4 * 3600)
    times = [r[0] for r in box.requests]
    start = times[0]
    for a, b in zip(times, times[1:]):
        assert b - a >= 1.0  # Adobe's minimum after a 429
        assert b - a <= max(3.0, 0.25 * (a - start)) + 1e-6  # never more than the learned window
    late = [b - a for a, b in zip(times, times[1:]) if a - start > 3000]
    assert max(late) > 200  # the window did grow with the crowd's queue
    assert box.ops("register", "ok") == []


def test_the_first_retries_after_a_429_spread_over_the_minimum_window():
    early = []
    for seed in range(40):
        box = Box(upstream=lambda op, b: THROTTLED(), seed=seed, throttle_min=3.0)
        box.run_for(8.0)
        early += box.gaps()
    assert min(early) >= 1.0 and max(early) <= 3.0 + 1e-9
    assert max(early) > 2.5  # the 3 s minimum window is used, not a fixed 1 s


def test_by_default_a_crowd_keeps_asking_every_second_then_spreads_with_the_streak():
    # Issue 20: Adobe's bucket holds one token after its one-time burst, so an idle second is lost;
    # the defaults retry within 1-1.25 s (never sooner than Adobe's 1 s) until 0.04 x the streak exceeds
    # 1.25 s (H6: a 1.25 s minimum window spends the time the governor's change won on fewer 429s).
    box = Box(upstream=lambda op, b: THROTTLED(), seed=7)
    box.run_for(600.0)
    times = [r[0] for r in box.requests]
    start = times[0]
    gaps = [(a - start, b - a) for a, b in zip(times, times[1:])]
    assert all(g >= 1.0 for _, g in gaps)
    assert all(g <= 1.25 + 1e-6 for age, g in gaps if age < 1.25 / 0.04)
    assert all(g <= max(1.25, 0.04 * age) + 1e-6 for age, g in gaps)
    assert max(g for age, g in gaps if age > 300) > 4.0  # the window grows with the streak
    assert box.ops("register", "ok") == []  # never re-registers on 429


def test_after_a_throttled_registration_the_token_request_follows_after_one_second():
    state = {"n": 0}

    def upstream(op, box):
        state["n"] += 1
        if state["n"] <= 12:
            return THROTTLED()
        if op == "token" and state["n"] <= 14:
            return THROTTLED()
        return healthy(op, box)

    box = Box(upstream=upstream)
    box.run_for(3 * 3600)
    reg = box.ops("register", "ok")[0][0]
    first_token = box.ops("token")[0][0]
    assert first_token - reg == 1.0  # half-way boxes go first; never sooner than 1 s
    # The 429 streak goes on: the token request's retries use the streak's window, not a fresh one.
    assert box.lc.throttled == 0 and box.ops("token", "ok")
    gaps = [b[0] - a[0] for a, b in zip(box.requests, box.requests[1:])]
    assert all(g >= 1.0 for g in gaps)
    assert len(box.ops("register")) == 13 and len(box.ops("register", "ok")) == 1


def test_a_refresh_throttled_while_holding_a_token_yields_but_retries_before_expiry():
    state = {"busy": False}

    def upstream(op, box):
        return THROTTLED() if state["busy"] and op == "token" else healthy(op, box)

    box = Box(upstream=upstream)
    box.run_for(60)
    state["busy"] = True
    exp = box.lc.tok["expires_mono"]
    box.run_until(box.lc.due)
    box.step()
    left = exp - box.now
    first_retry = box.lc.due - box.now
    assert 0.5 * left - 1e-6 <= first_retry <= left - 60.0 + 1e-6  # yields to boxes without a token
    box.run_until(exp - 1.0)
    assert any(exp - 120.0 <= r[0] < exp for r in box.ops("token", "throttled"))  # still tried before expiry
    assert box.ops("register") == [box.requests[0]]


# ----------------------------------------------------------------------------- outage (5xx) policy

def test_a_box_without_a_token_retries_5xx_within_the_outage_cap_and_load_stays_bounded():
    per_hour = []
    for seed in range(20):
        box = Box(upstream=failing_token(SERVER_ERROR), seed=seed, backoff_cap=300.0, outage_cap=60.0)
        box.run_for(2 * 3600 + 2)
        gaps = box.gaps()[1:]
        assert min(gaps) >= 1.0 and max(gaps) <= 60.0 + 1e-9
        late = [g for g in gaps[10:]]
        assert max(late) > 50.0  # the cap is reached
        assert len(box.ops("register")) == 1  # never re-register on a 5xx
        per_hour.append(len(box.ops("token", "server_error")) / 2.0)
    # Full jitter under a 60 s cap: about one request per 30 s, 120 an hour (the bound docs/FLEET.md quotes).
    assert 100 <= sum(per_hour) / len(per_hour) <= 140


def test_a_refresh_failing_5xx_while_holding_a_token_yields_then_densifies_before_expiry():
    state = {"down": False}

    def upstream(op, box):
        return SERVER_ERROR() if state["down"] and op == "token" else healthy(op, box)

    box = Box(upstream=upstream, seed=4)
    box.run_for(60)
    state["down"] = True
    exp = box.lc.tok["expires_mono"]
    box.run_until(exp - 1.0)
    tries = [r[0] for r in box.ops("token", "server_error")]
    assert tries, "the refresh was tried"
    # Far from expiry: each retry waits at least half the remaining life (a few requests an hour).
    for a, b in zip(tries, tries[1:]):
        if exp - a > 900:
            assert b - a >= 0.5 * (exp - a) - 1e-6 or exp - b <= 60.0 + 1e-6
    assert len(tries) < 20
    assert any(exp - 120.0 <= t < exp for t in tries)  # still tried in the last minutes
    assert box.lc.token(box.now) is not None  # and the token was served all along
    # Once it has expired, the box lacks a token: retries come within the outage cap.
    box.run_until(exp + 1800.0)
    after = [r[0] for r in box.ops("token", "server_error") if r[0] >= exp]
    assert after and all(b - a <= 60.0 + 1e-9 for a, b in zip(after, after[1:]))
    assert len(box.ops("register")) == 1


def test_a_token_with_less_than_the_long_cap_left_uses_the_outage_cap():
    # A new statement arrives while the old client's token has 4 minutes left (less than the 5 min
    # backoff_cap); the new client's token requests fail with 5xx. The box is about to lack a token,
    # so its retries must come within the outage cap, not up to 5 minutes after expiry.
    box = Box(upstream=failing_token(SERVER_ERROR), stored=stored_state(1000.0 + 1.7e9, token_age=21360.0),
              app="auth.adobe.com|app-5", statement_hash="b" * 64, backoff_cap=300.0, outage_cap=60.0)
    assert box.lc.token(box.now) is not None and box.lc.pending_register
    box.run_for(1800)
    assert len(box.ops("register", "ok")) == 1
    gaps = box.gaps()[1:]
    assert len(gaps) > 30 and max(gaps) <= 60.0 + 1e-9


# ----------------------------------------------------------------------------- suspend (issue 14 item 1)
# The service passes CLOCK_BOOTTIME as `now` (agent/clock.py), so a night in standby is a jump of `now`
# with no poll in between. The lifecycle must judge the token by that clock on the first call after
# resume: never serve what expired in standby, and ask for the overdue request at once.

def test_a_night_in_standby_past_expiry_serves_nothing_and_fetches_at_once():
    box = Box()
    box.run_until(box.now + 60.0)
    assert box.lc.token(box.now) is not None and len(box.ops("token")) == 1
    box.now += 9 * 3600.0           # suspended for 9 h: the 6 h token expired during standby
    assert box.lc.token(box.now) is None
    assert box.lc.view(box.now, box.wall)["token"] is None
    assert box.lc.poll(box.now) == {"op": "token"}   # no waiting for a deadline computed before the night


def test_a_short_standby_past_the_refresh_point_refreshes_at_once_and_keeps_serving():
    box = Box()
    box.run_until(box.now + 60.0)
    t = box.lc.tok
    box.now = t["refresh_mono"] + 10.0   # woke after the refresh point, before expiry
    assert box.lc.token(box.now)["access_token"] == t["access_token"]
    assert box.lc.next_deadline() <= box.now
    assert box.lc.poll(box.now) == {"op": "token"}
    assert box.lc.token(box.now)["access_token"] == t["access_token"]  # served while the refresh runs


def test_the_simulation_fails_loudly_when_the_lifecycle_stops_time(monkeypatch):
    """Issue 21: re-registering at once on every invalid_client made Box.run_until spin for ever (the run
    hung instead of failing). Any lifecycle that keeps acting at one virtual instant now fails the test."""
    box = Box(upstream=lambda op, b: INVALID_CLIENT() if op == "token" else client(1))
    monkeypatch.setattr(box.lc, "next_deadline", lambda: box.now)  # always due again at once
    with pytest.raises(SimulationStuck, match=r"stuck at t=1000\.000 after 1000 steps \(1000 at this instant"):
        box.run_for(3600)
    assert len(box.requests) >= 2  # it did run the requests it was asked to, then stopped


def test_another_error_ends_the_429_streak_so_the_next_429_starts_a_fresh_window():
    """A 429 streak of an hour has a wide window; a 503 in between means Adobe answered something else,
    so a later 429 starts over from the 3 s minimum window instead of the hour-old streak's."""
    state = {"phase": "throttled"}

    def upstream(op, box):
        return THROTTLED() if state["phase"] == "throttled" else SERVER_ERROR()

    box = Box(upstream=upstream, throttle_spread=0.25, throttle_min=3.0, throttle_cap=3600.0)
    box.run_for(3600)
    assert max(box.gaps()) > 200  # the streak's window has grown
    state["phase"] = "server_error"
    box.run_until(box.lc.next_deadline())  # exactly one 503
    assert box.requests[-1][2] == "server_error" and box.lc.throttled == 0
    state["phase"] = "throttled"
    box.run_until(box.lc.next_deadline())  # one 429, the first of a new streak
    t = box.requests[-1][0]
    assert box.requests[-1][2] == "throttled"
    assert 1.0 <= box.lc.next_deadline() - t <= 3.0  # the minimum window, not 0.25 x an hour
