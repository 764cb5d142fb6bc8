"""Throttling over real HTTP: burst, sustained rate, recovery, Retry-After modes, per-client buckets.

Assertions are on counts and on the emulator's own request log (monotonic arrival times), never on
how fast this machine is: a model bucket replayed over the logged times must agree with every answer.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time

from agent.emulator import Emulator
from agent.emulator.client import request
from agent.emulator.throttle import Throttle


def hit(emu, path="/o/client/token", headers=None):
    return request(emu.origin, "POST", path, "", dict({"Content-Type": "application/x-www-form-urlencoded"},
                                                          **(headers or {})))


def replay(log, rate, burst):
    """Decisions a reference token bucket makes for the logged arrival times, per client."""
    model = Throttle(rate, burst)
    return [model.take(r["ip"], r["t"])[0] for r in log]


def test_burst_of_ten_then_429_with_html_and_no_retry_after(keydir):
    # rate 0.001/s: no token comes back during the test, whatever the machine's speed
    with Emulator(state_dir=keydir, tls=False, rate=0.001, burst=10) as emu:
        answers = [hit(emu) for _ in range(13)]
        assert [a[0] for a in answers[:10]] == [400] * 10  # reached the service (invalid_request)
        for status, headers, body in answers[10:]:
            assert status == 429
            assert headers["content-type"].startswith("text/html") and b"429 Too Many Requests" in body
            assert "retry-after" not in headers
        s = emu.stats()
        assert s["throttled"] == 3 and s["per_client_ip"]["127.0.0.1"] == {"requests": 13, "throttled": 3}
        assert [r["status"] for r in s["requests"]] == [400] * 10 + [429] * 3
        assert s["token"]["error"] == 10  # throttled requests never reached the service


def test_all_throttled_endpoints_share_one_bucket_and_admin_is_exempt(keydir):
    with Emulator(state_dir=keydir, tls=False, rate=0.001, burst=3) as emu:
        assert hit(emu, "/o/client/register")[0] == 400
        assert hit(emu, "/o/client/token")[0] == 400
        assert request(emu.origin, "GET", "/api/v2/REF/configuration")[0] == 401
        assert request(emu.origin, "GET", "/api/v2/REF/configuration")[0] == 429
        assert hit(emu, "/o/client/register")[0] == 429
        for _ in range(20):
            assert request(emu.origin, "GET", "/_emulator/stats")[0] == 200
        assert emu.stats()["throttled"] == 2


def test_sustained_rate_after_burst_matches_a_token_bucket(keydir):
    rate, burst = 5.0, 5
    with Emulator(state_dir=keydir, tls=False, rate=rate, burst=burst) as emu:
        statuses = [hit(emu)[0] for _ in range(40)]
        log = emu.stats()["requests"]
        admitted = [r["status"] != 429 for r in log]
        assert [s != 429 for s in statuses] == admitted
        assert admitted == replay(log, rate, burst)
        assert all(admitted[:burst])
        span = log[-1]["t"] - log[0]["t"]
        assert sum(admitted) <= burst + rate * span + 1
        assert 429 in statuses  # all 40 fit only if each request took > 175 ms


def test_recovery_after_waiting(keydir):
    with Emulator(state_dir=keydir, tls=False, rate=10.0, burst=2, retry_after="seconds") as emu:
        statuses = []
        while 429 not in statuses and len(statuses) < 200:
            statuses.append(hit(emu)[0])
        assert statuses[-1] == 429
        time.sleep(0.25)  # 2.5 tokens' worth of refill at 10/s
        assert hit(emu)[0] == 400
        log = emu.stats()["requests"]
        assert [r["status"] != 429 for r in log] == replay(log, 10.0, 2)


def test_retry_after_modes(keydir):
    with Emulator(state_dir=keydir, tls=False, rate=0.5, burst=1, retry_after="seconds") as emu:
        hit(emu)
        status, headers, _ = hit(emu)
        assert status == 429 and headers["retry-after"] in ("1", "2")
        emu.configure(retry_after="date")  # also refills the bucket
        hit(emu)
        before = time.time()
        status, headers, _ = hit(emu)
        assert status == 429
        when = email.utils.parsedate_to_datetime(headers["retry-after"]).timestamp()
        assert before - 1 <= when <= time.time() + 3
        emu.configure(retry_after="none")
        hit(emu)
        assert "retry-after" not in hit(emu)[1]


def test_buckets_are_per_forwarded_client_unless_ignored(keydir):
    with Emulator(state_dir=keydir, tls=False, rate=0.001, burst=2, trust_forwarded_for=False) as emu:
        for _ in range(2):
            hit(emu, headers={"X-Forwarded-For": "10.0.0.1"})
        assert hit(emu, headers={"X-Forwarded-For": "10.0.0.2"})[0] == 429  # ignored: same peer bucket
        emu.configure(trust_forwarded_for=True)  # Adobe's default: the first X-Forwarded-For entry
        for ip in ("10.0.0.1", "10.0.0.2"):
            assert [hit(emu, headers={"X-Forwarded-For": ip + ", 192.0.2.1"})[0] for _ in range(3)] == [400, 400, 429]
        per_ip = emu.stats()["per_client_ip"]
        assert per_ip["10.0.0.1"] == {"requests": 3, "throttled": 1} and per_ip["10.0.0.2"]["throttled"] == 1


def test_many_concurrent_clients_all_served(keydir):
    with Emulator(state_dir=keydir, tls=True, throttle=False) as emu:
        results, errors = [], []

        def worker():
            try:
                for _ in range(5):
                    status, _, body = request(emu.origin, "POST", "/o/client/token", "",
                                              {"Content-Type": "application/x-www-form-urlencoded"},
                                              ca_file=emu.ca_file)
                    results.append((status, json.loads(body)))
            except Exception as e:  # surfaced by the assertion below
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert len(results) == 80 and all(r == (400, {"error": "invalid_request"}) for r in results)
        assert emu.stats()["token"]["error"] == 80
