"""The service shell: hot path without the lock, epoch times that are stable and follow wall jumps."""

from __future__ import annotations

import json
import threading

import pytest

from agent import config as configmod
from agent.service import Service
from tests.conftest import IDENTITY, Clocks, fake_statement


@pytest.fixture
def svc(tmp_path):
    st = tmp_path / "statement.jwt"
    st.write_text(fake_statement())
    cfg = configmod.defaults().replace(adobe={"software_statement": str(st)})
    clocks = Clocks()
    calls = []
    done = threading.Event()

    def send(req, timeout, ca_file, wall_now):
        calls.append(req["url"])
        if req["url"].endswith("/client/register"):
            body = {"client_id": "cid-123456789", "client_secret": "sec-abcdef-123456"}
        else:
            body = {"access_token": "tok-%d-abcdefgh" % len(calls), "token_type": "bearer", "expires_in": 3600}
            done.set()
        return 201, {}, json.dumps(body).encode()

    s = Service(cfg, identity=IDENTITY, clock=clocks.m, wall=clocks.w, send=send)
    s.start()
    assert done.wait(10)
    s.clocks, s.calls = clocks, calls
    yield s
    s.stop()


def test_epoch_times_are_stable_and_follow_wall_jumps(svc):
    t1 = svc.wait_token(5)
    svc.clocks.mono += 0.25
    svc.clocks.wall += 0.2500003  # the two clocks tick together, with sub-second noise
    t2 = svc.token()
    assert t2["expires_at"] == t1["expires_at"] and t2["refresh_at"] == t1["refresh_at"]
    assert t2["access_token"] == t1["access_token"]
    svc.clocks.wall += 86400  # NTP sync on a box without RTC
    t3 = svc.token()
    assert t3["expires_at"] == t1["expires_at"] + 86400
    assert t3["expires_in"] == t2["expires_in"]  # validity comes from the monotonic clock only


def test_expired_token_is_not_served_and_one_fetch_is_triggered(svc):
    old = svc.wait_token(5)["access_token"]
    n = len(svc.calls)
    svc.clocks.mono += 3601
    results = []
    threads = [threading.Thread(target=lambda: results.append(svc.token())) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The expired token is never served; callers after the fetch completed get the new one.
    assert all(r is None or r["access_token"] != old for r in results)
    assert svc.wait_token(5)["access_token"] != old
    assert len(svc.calls) == n + 1, "200 callers on an expired token must cause exactly one token request"


def test_min_ttl_is_honoured_on_the_hot_path(svc):
    svc.wait_token(5)
    svc.clocks.mono += 100
    t = svc.token()
    assert svc.token(min_ttl=t["expires_in"] - 10) is not None
    assert svc.token(min_ttl=t["expires_in"] + 10) is None


def test_status_and_status_line_never_contain_secrets(svc):
    svc.wait_token(5)
    text = json.dumps(svc.status()) + svc.status_line()
    assert "sec-abcdef-123456" not in text and "abcdefgh" not in text
    assert svc.status()["state"] == "token_valid"
    assert svc.health() == {"live": True, "ready": True}


def test_management_403_reregisters_but_a_plain_403_is_ignored(svc):
    svc.wait_token(5)
    assert svc.report_error(403, {"error": "forbidden"})["decision"] == "ignored"
    r = svc.report_error(403, None, management=True)
    assert r["decision"] == "reregister" and "management" in r["classified"]
    n = len(svc.calls)
    svc.clocks.mono += 1
    deadline = 50
    while len(svc.calls) < n + 2 and deadline:
        import time

        time.sleep(0.05)
        deadline -= 1
    assert svc.calls[n].endswith("/client/register") and svc.calls[n + 1].endswith("/client/token")


def test_min_ttl_longer_than_the_token_lifetime_answers_at_once_and_asks_nothing(svc):
    from agent.errors import AgentError

    svc.wait_token(5)
    n = len(svc.calls)
    for call in (lambda: svc.token(min_ttl=604800), lambda: svc.wait_token(30, min_ttl=3600)):
        with pytest.raises(AgentError) as ei:
            call()
        assert ei.value.code == "min_ttl_unsatisfiable"
        assert "3600 s" in ei.value.message and ei.value.hint
    assert len(svc.calls) == n  # no refresh forced


def test_not_ready_says_the_held_token_is_too_short_not_holding_a_valid_token(svc):
    svc.wait_token(5)
    n = len(svc.calls)
    svc.clocks.mono += 20  # within the 30 s minimum interval: the refresh is scheduled, not started
    assert svc.token(min_ttl=3590) is None
    e = svc.not_ready_error()
    assert e.code == "not_ready"
    assert "holding a valid token" not in e.message
    assert "has 3580 s left" in e.message and "requested in 10 s" in e.message
    assert len(svc.calls) == n


def test_report_error_takes_the_peer_uid_and_limits_reregistrations_per_uid(svc):
    tok = svc.wait_token(5)["access_token"]
    body = {"action": "application-registration", "code": "invalid_access_token_client_application"}
    assert svc.report_error(401, body, access_token="not-the-current-one", uid=1000)["decision"] == "ignored"
    assert svc.report_error(401, body, access_token=tok, uid=1000)["decision"] == "reregister"
    assert svc.report_error(401, body)["decision"] in ("ignored", "rate_limited")  # default uid None works


def test_a_second_start_is_refused_and_the_running_service_keeps_serving(svc):
    """start() twice reloaded every lifecycle under the running worker (its state back to
    'unregistered' while it held credentials and a token) and started a second worker: the first
    poll then died with LifecycleError 'start_refresh ... in state unregistered'."""
    held = svc.wait_token(5)["access_token"]
    n = len(svc.calls)
    with pytest.raises(RuntimeError, match="called twice"):
        svc.start()
    assert sum(1 for t in threading.enumerate() if t.name == "lifecycle") == 1
    assert svc.token()["access_token"] == held and len(svc.calls) == n
    svc.clocks.mono += 3601  # expired: the one worker still fetches
    assert svc.wait_token(10)["access_token"] != held
