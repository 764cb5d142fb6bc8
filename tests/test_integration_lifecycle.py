"""The real Service (lifecycle + dcr + urequests shim + Store) against the real emulator over TLS.

Each test starts its own emulator on an ephemeral loopback port and its own Service, injects the
emulator's faults, and checks what the agent did from the emulator's request log. After every
test the log is replayed through Adobe's throttle (burst 10, then 1 request/s): the agent must
never have asked more often than that, faults or not.
"""

from __future__ import annotations

import base64
import email.utils
import json
import threading
import time

import pytest

from agent import config, lifecycle
from agent.emulator.server import Emulator
from agent.service import Service
from agent.store import Store

DEVICE_INFO = {"primaryHardwareType": "SetTopBox", "model": "IT-Box", "version": "1.0", "manufacturer": "Test",
               "osName": "Linux", "osFamily": "Linux", "osVersion": "6.1", "connectionType": "LAN"}
IDENTITY = {"x_device_info": base64.b64encode(json.dumps(DEVICE_INFO).encode()).decode(),
            "ap_device_identifier": "fingerprint " + base64.b64encode(b"it-device-1").decode(),
            "device_id": "it-device-1", "fields": DEVICE_INFO}
HTML_429 = "<html><head><title>429 Too Many Requests</title></head></html>"


def replay_throttle(times: list[float], rate: float = 1.0, burst: int = 10) -> list[float]:
    """Request times that Adobe's bucket would have refused (empty: the agent stayed within it)."""
    tokens, last, refused = float(burst), None, []
    for t in sorted(times):
        if last is not None:
            tokens = min(float(burst), tokens + (t - last) * rate)
        last = t
        if tokens >= 1.0 - 1e-6:
            tokens -= 1.0
        else:
            refused.append(t)
    return refused


class Rig:
    """One emulator + one Service + one Store in a tmp dir; `log()` is the emulator's DCR request log."""

    def __init__(self, tmp_path, token_ttl: int = 21600, refresh_at: float = 0.8, jitter: float = 0.1,
                 timeout: float = 2.0, **lc) -> None:
        self.emu = Emulator(tls=True, state_dir=str(tmp_path / "emu"), token_ttl=token_ttl).start()
        self.statement_path = tmp_path / "statement.jwt"
        self.statement = self.emu.write_statement(str(self.statement_path))
        cfg = config.defaults().replace(
            adobe={"base_url": self.emu.base_url, "ca_file": self.emu.ca_file,
                   "software_statement": str(self.statement_path), "timeout": timeout},
            refresh={"at": refresh_at, "jitter": jitter}, storage={"dir": str(tmp_path / "store")})
        self.cfg = cfg
        self.store = Store(str(tmp_path / "store"), IDENTITY["device_id"], runtime_dir=str(tmp_path / "run"))
        self.store.open()
        self.svc = Service(cfg, identity=IDENTITY, store=self.store)
        for k, v in lc.items():
            setattr(self.svc.lc, k, v)
        self.changed = threading.Event()
        self.svc.add_listener(self.changed.set)

    def start(self) -> Rig:
        self.svc.start()
        return self

    def close(self) -> None:
        self.svc.stop(5)
        self.store.close()
        self.emu.stop()

    def log(self) -> list[dict]:
        return [r for r in self.emu.stats()["requests"] if r["endpoint"] in ("register", "token")]

    def outcomes(self) -> list[tuple[str, object]]:
        return [(r["endpoint"], r["code"] or r["status"]) for r in self.log()]

    def wait(self, predicate, timeout: float = 30.0) -> bool:
        """Wait (on the service's outcome notifications) until predicate() is true."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.wait(min(left, 0.2))
            self.changed.clear()
        return True

    def assert_within_throttle(self) -> None:
        times = [r["t"] for r in self.log()]
        assert replay_throttle(times) == [], "the agent asked faster than Adobe's throttle allows: %r" % times
        assert self.emu.stats()["throttled"] == 0


@pytest.fixture
def rig_factory(tmp_path):
    rigs = []

    def make(**kw) -> Rig:
        r = Rig(tmp_path / str(len(rigs)), **kw)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        try:
            r.assert_within_throttle()
        finally:
            r.close()


def gaps(log: list[dict]) -> list[float]:
    return [b["t"] - a["t"] for a, b in zip(log, log[1:])]


def test_registers_fetches_and_persists_over_tls(rig_factory, tmp_path):
    rig = rig_factory().start()
    tok = rig.svc.wait_token(30)
    assert tok is not None and tok["token_type"] == "bearer"
    assert rig.outcomes() == [("register", 201), ("token", 201)]
    # The save happens right after the token is served (outside the service's lock).
    assert rig.wait(lambda: (rig.store.load() or {}).get("token") is not None)
    stored = rig.store.load()
    assert stored["client"]["client_id"] == rig.emu.clients()[0]["client_id"]
    assert stored["token"]["access_token"] == tok["access_token"]
    # A restart from the store needs no request at all.
    rig.svc.stop(5)
    svc2 = Service(rig.cfg, identity=IDENTITY, store=rig.store)
    svc2.start()
    try:
        assert svc2.token()["access_token"] == tok["access_token"]
        time.sleep(0.3)
        assert len(rig.log()) == 2
    finally:
        svc2.stop(5)


@pytest.mark.parametrize("retry_after", [None, "2", "date"])
def test_429_storm_backs_off_then_gets_a_token(rig_factory, retry_after):
    rig = rig_factory(throttle_cap=3.0)  # short windows so the test stays short; growth and floor are real
    knobs = {"count": 2, "status": 429, "body": HTML_429, "content_type": "text/html"}
    if retry_after == "2":
        knobs["retry_after"] = "2"
    rig.emu.add_fault("register", **knobs)
    if retry_after == "date":
        # Each answer's date must lie ahead of the moment it is served: one fault per attempt.
        rig.emu.clear_faults()
        rig.emu.add_fault("register", **dict(knobs, count=1,
                                             retry_after=email.utils.formatdate(time.time() + 3, usegmt=True)))
    rig.start()
    if retry_after == "date":
        assert rig.wait(lambda: len(rig.log()) >= 1)
    assert rig.svc.wait_token(60) is not None
    log = rig.log()
    n429 = 1 if retry_after == "date" else 2
    assert [r["status"] for r in log] == [429] * n429 + [201, 201]
    floor = {None: 1.0, "2": 2.0, "date": 1.5}[retry_after]
    assert all(g >= floor - 0.05 for g in gaps(log)[:n429]), gaps(log)
    assert rig.svc.lc.counters["register"] == {"throttled": n429, "ok": 1}
    assert rig.svc.status()["last_error"] is None


def test_revoked_client_reregisters_once_then_gets_a_token(rig_factory, caplog):
    caplog.set_level("DEBUG")
    rig = rig_factory().start()
    first = rig.svc.wait_token(30)
    assert rig.wait(lambda: rig.store.load() is not None)
    old_client = rig.store.load()["client"]["client_id"]
    rig.emu.revoke_client(old_client)
    rig.svc.request_refresh()
    assert rig.wait(lambda: rig.svc.lc.token_generation >= 2 and rig.svc.lc.state == lifecycle.TOKEN_VALID
                    and rig.store.load()["client"]["client_id"] != old_client)
    assert rig.outcomes() == [("register", 201), ("token", 201), ("token", "invalid_client"),
                              ("register", 201), ("token", 201)]
    new = rig.svc.token()
    assert new["access_token"] != first["access_token"]
    assert rig.store.load()["client"]["client_id"] not in (old_client, None)
    time.sleep(0.5)
    assert len(rig.log()) == 5  # and nothing more
    secrets = [first["access_token"], new["access_token"], rig.store.load()["client"]["client_secret"],
               rig.statement]
    assert not [s for s in secrets if s in caplog.text or s in json.dumps(rig.svc.status())]
    assert "invalid_client" in caplog.text  # the log does tell what happened


def test_revoked_statement_needs_an_operator_without_looping(rig_factory):
    rig = rig_factory().start()
    first = rig.svc.wait_token(30)
    rig.emu.revoke_statement(rig.statement)  # also revokes the clients registered with it
    rig.svc.request_refresh()
    assert rig.wait(lambda: rig.svc.lc.state == lifecycle.NEEDS_OPERATOR)
    assert rig.outcomes()[2:] == [("token", "invalid_client"), ("register", "invalid_software_statement")]
    status = rig.svc.status()
    assert status["last_error"]["code"] == "invalid_software_statement"
    assert "new one" in status["last_error"]["hint"]
    assert rig.svc.token()["access_token"] == first["access_token"]  # still served while valid
    for _ in range(20):
        rig.svc.token()
        rig.svc.token(min_ttl=21599.9)  # longer than what is left: asks for a refresh
    time.sleep(1.5)
    assert len(rig.log()) == 4  # no loop: the next try is an hour away
    assert rig.svc.status()["next_request_in"] > 3000
    # An operator installs a new statement: the agent registers with it at once.
    rig.emu.write_statement(str(rig.statement_path))
    rig.svc.reload(rig.cfg)  # what SIGHUP does; the worker also re-checks the file every 30 s
    assert rig.wait(lambda: rig.svc.lc.state == lifecycle.TOKEN_VALID and rig.svc.lc.token_generation >= 2)
    assert rig.outcomes()[4:] == [("register", 201), ("token", 201)]


def test_5xx_and_hangs_keep_the_cached_token_served(rig_factory):
    rig = rig_factory(token_ttl=10, refresh_at=0.2, jitter=0.0, timeout=1.0, min_token_interval=1.0).start()
    first = rig.svc.wait_token(30)
    rig.emu.add_fault("token", count=1, status=503, body="<html>down</html>", content_type="text/html")
    rig.emu.add_fault("token", count=1, hang=True)
    served = []
    deadline = time.monotonic() + 20
    while rig.svc.lc.token_generation < 2 and time.monotonic() < deadline:
        t = rig.svc.token()
        served.append(t and t["access_token"])
        time.sleep(0.02)
    assert rig.svc.lc.token_generation >= 2, rig.outcomes()
    assert served and set(served[:-1]) == {first["access_token"]}  # never None while the refresh failed
    codes = [r["status"] for r in rig.log()]
    assert codes[:2] == [201, 201] and 503 in codes and 0 in codes  # 0: no answer (hang)
    counters = rig.svc.lc.counters["token"]
    assert counters.get("server_error") == 1 and counters.get("timeout", 0) + counters.get("network", 0) == 1
    assert rig.svc.lc.counters["register"] == {"ok": 1}  # never re-registered


@pytest.mark.parametrize("endpoint,knobs,code", [
    ("token", {"malformed_json": True}, "malformed_response"),
    ("register", {"status": 201, "body": "<html>portal</html>", "content_type": "text/html"}, "malformed_response"),
    ("register", {"status": 200, "body": "", "content_type": "text/plain"}, "malformed_response"),
    ("token", {"truncate": True}, "network"),  # the connection closed inside the body
])
def test_malformed_answers_are_retried(rig_factory, endpoint, knobs, code):
    rig = rig_factory()
    rig.emu.add_fault(endpoint, count=1, **knobs)
    rig.start()
    assert rig.svc.wait_token(30) is not None
    counters = rig.svc.lc.counters[endpoint]
    assert counters.get(code) == 1 and counters["ok"] == 1
    assert rig.svc.lc.counters["register"]["ok"] == 1
    assert len(rig.log()) == 3


# ----------------------------------------------------------------------------- statement rotation (issue 14.2)

def test_a_re_downloaded_statement_of_the_same_application_keeps_the_credentials(rig_factory):
    rig = rig_factory().start()
    first = rig.svc.wait_token(30)
    old_hash = rig.svc.status()["statement_sha256"]
    old_statement = rig.statement
    # A firmware update ships a fresh download (new iat/jti) of the same registered application.
    rig.statement = rig.emu.write_statement(str(rig.statement_path))
    assert rig.statement != old_statement
    # Noticed without SIGHUP or reload (the file watch), and without registering again.
    assert rig.wait(lambda: rig.svc.status()["statement_sha256"] not in (old_hash, None), timeout=15)
    assert rig.outcomes() == [("register", 201), ("token", 201)]
    assert len(rig.emu.clients()) == 1 and rig.svc.token()["access_token"] == first["access_token"]
    assert rig.svc.status()["pending_register"] is False
    # The new file is the one used from then on: with the old statement (and its client) revoked,
    # the re-registration after invalid_client succeeds.
    rig.emu.revoke_statement(old_statement)
    rig.svc.request_refresh()
    assert rig.wait(lambda: rig.svc.lc.token_generation >= 2 and rig.svc.lc.state == lifecycle.TOKEN_VALID)
    assert rig.outcomes()[2:] == [("token", "invalid_client"), ("register", 201), ("token", 201)]


def test_a_statement_for_another_application_registers_exactly_once(rig_factory):
    rig = rig_factory().start()
    rig.svc.wait_token(30)
    rig.statement = rig.emu.write_statement(str(rig.statement_path), app_id="another-app")
    assert rig.wait(lambda: rig.svc.lc.token_generation >= 2 and rig.svc.lc.state == lifecycle.TOKEN_VALID,
                    timeout=15)
    assert rig.outcomes() == [("register", 201), ("token", 201), ("register", 201), ("token", 201)]
    status = rig.svc.status()
    assert status["pending_register"] is False and status["next_request_in"] > 1000  # nothing more is due
    assert status["statement_app"].endswith("|another-app")
    assert rig.wait(lambda: (rig.store.load() or {}).get("statement_app", "").endswith("|another-app"))


@pytest.mark.parametrize("content,code", [("hello, not a JWT\n", "statement_invalid"),
                                          (None, "statement_no_sub")])
def test_a_file_that_is_not_a_statement_needs_an_operator_and_the_credentials_keep_serving(rig_factory, content,
                                                                                          code):
    rig = rig_factory().start()
    first = rig.svc.wait_token(30)
    if content is None:  # a JWT without sub
        payload = base64.urlsafe_b64encode(json.dumps({"iss": "auth.adobe.com", "iat": 1}).encode()).decode()
        content = "eyJhbGciOiJSUzI1NiJ9.%s.c2ln" % payload.rstrip("=")
    rig.statement_path.write_text(content)
    assert rig.wait(lambda: rig.svc.lc.state == lifecycle.NEEDS_OPERATOR, timeout=15)
    err = rig.svc.status()["last_error"]
    assert err["code"] == code and str(rig.statement_path) in err["message"] and err["hint"]
    assert rig.svc.token()["access_token"] == first["access_token"]  # still served
    rig.svc.request_refresh()  # the stored credentials still work without a statement
    assert rig.wait(lambda: rig.svc.lc.token_generation >= 2)
    assert rig.outcomes() == [("register", 201), ("token", 201), ("token", 201)]  # no registration
    # The operator installs a good file: back to normal, still no registration.
    rig.statement = rig.emu.write_statement(str(rig.statement_path))
    assert rig.wait(lambda: rig.svc.lc.state == lifecycle.TOKEN_VALID, timeout=15)
    assert rig.svc.status()["last_error"] is None
    assert [o for o in rig.outcomes() if o[0] == "register"] == [("register", 201)]


# ----------------------------------------------------------------------------- undocumented answers (issue 14.5)

def test_401_without_a_body_in_a_row_needs_an_operator_instead_of_polling(rig_factory):
    # A shorter span than the default 10 min keeps the test short; the count (3) is the real one.
    rig = rig_factory(undocumented_span=2.0)
    rig.emu.add_fault("token", count=-1, status=401, body="", content_type="text/plain")
    rig.start()
    assert rig.wait(lambda: rig.svc.lc.state == lifecycle.NEEDS_OPERATOR, timeout=30)
    err = rig.svc.status()["last_error"]
    assert err["code"] == "upstream_undocumented" and err["kind"] == "operator"
    assert "401" in err["message"] and err["hint"]
    tokens = [r["status"] for r in rig.log() if r["endpoint"] == "token"]
    assert 3 <= len(tokens) <= 6 and set(tokens) == {401}
    assert rig.svc.status()["next_request_in"] > 3000  # hourly, not every minute
    assert [o for o in rig.outcomes() if o[0] == "register"] == [("register", 201)]


# ----------------------------------------------------------------------------- short tokens (issue 15.5)

def test_one_second_tokens_are_asked_for_at_most_every_30_s(rig_factory):
    rig = rig_factory(token_ttl=1).start()
    assert rig.svc.wait_token(30) is not None
    t0 = time.monotonic()
    served = 0
    while time.monotonic() - t0 < 6.0:  # a player asking all the time, for a bounded run of 6 s
        served += 1 if rig.svc.wait_token(0.5) else 0
    log = rig.log()
    tokens = [r for r in log if r["endpoint"] == "token"]
    assert len(tokens) == 1, [(r["endpoint"], r["status"], r["t"]) for r in log]  # the next one is due at 30 s
    assert rig.emu.stats()["throttled"] == 0
    err = rig.svc.not_ready_error()
    assert "live 1 s" in err.message and "30 s" in err.message
