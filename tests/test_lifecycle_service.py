"""The real agent.service.Service driving the lifecycle: single-flight under 1000 threads.

Only `send` is replaced (by a function that answers like Adobe and can hold an answer back), so
the worker thread, the lock, the condition variable and the lifecycle are the real ones. The
monotonic clock is a fake one the test moves, so the token can be made to expire at will.
"""

from __future__ import annotations

import json
import threading

from agent import config
from agent.service import Service

STATEMENT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhcHAiLCJpc3MiOiJhdXRoLmFkb2JlLmNvbSJ9.c2ln"
IDENTITY = {"x_device_info": "eyJtb2RlbCI6IkJveCJ9", "ap_device_identifier": "fingerprint YWJj",
            "device_id": "dev-1", "fields": {"model": "Box"}}


class FakeAdobe:
    """A `send` replacement: answers register/token like Adobe; `hold` blocks token answers."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, req, timeout=None, ca_file=None, wall_now=0.0):
        op = "register" if req["url"].endswith("/client/register") else "token"
        with self.lock:
            self.calls.append(op)
            n = len(self.calls)
        if op == "register":
            return 201, {}, json.dumps({"client_id": "cid-%d" % n, "client_secret": "sec-%d" % n}).encode()
        self.entered.set()
        assert self.hold.wait(30), "the test never released the token answer"
        return 201, {}, json.dumps({"access_token": "tok-%d" % n, "token_type": "bearer",
                                    "expires_in": 21600}).encode()


def make_service(tmp_path, send, clock):
    statement = tmp_path / "statement.jwt"
    statement.write_text(STATEMENT)
    cfg = config.defaults().replace(adobe={"software_statement": str(statement), "base_url": "http://127.0.0.1:9/o"})
    return Service(cfg, identity=IDENTITY, store=None, send=send, clock=lambda: clock[0], wall=lambda: 1.7e9 + clock[0])


def test_a_thousand_threads_on_an_expired_token_cause_one_token_request(tmp_path):
    adobe = FakeAdobe()
    clock = [100.0]
    svc = make_service(tmp_path, adobe, clock)
    svc.start()
    threads: list[threading.Thread] = []
    try:
        first = svc.wait_token(30)
        assert first is not None and adobe.calls == ["register", "token"]
        # Let the token expire (the refresh was never run: the fake clock jumped past it).
        adobe.hold.clear()
        adobe.entered.clear()
        clock[0] += 30000.0
        saw_none = []
        got = []
        lock = threading.Lock()
        start = threading.Barrier(1001)

        def caller():
            start.wait()
            t = svc.token()
            with lock:
                saw_none.append(t is None)
            t = t or svc.wait_token(60)
            with lock:
                got.append(t and t["access_token"])

        threads = [threading.Thread(target=caller, daemon=True) for _ in range(1000)]
        for t in threads:
            t.start()
        start.wait()
        assert adobe.entered.wait(30)
        # Every caller has found the token expired while the single request is held upstream.
        for _ in range(3000):
            with lock:
                if len(saw_none) == 1000:
                    break
            threading.Event().wait(0.01)
        assert len(saw_none) == 1000 and all(saw_none)
        assert adobe.calls == ["register", "token", "token"]
        adobe.hold.set()
        for t in threads:
            t.join(60)
        assert len(got) == 1000 and set(got) == {"tok-3"}
        assert adobe.calls == ["register", "token", "token"]  # one upstream request for 1000 callers
        assert svc.status()["upstream"] == {"register": {"ok": 1}, "token": {"ok": 2}}
    finally:
        adobe.hold.set()
        svc.stop(5)
        for t in threads:
            t.join(5)
