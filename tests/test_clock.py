"""Time that counts standby (issue 14 item 1): a simulated suspend on the service, the loop and the console.

A suspend is simulated with agent.clock.set_source(): the agent's clock (CLOCK_BOOTTIME) jumps ahead
while CLOCK_MONOTONIC (what epoll/select/Condition timeouts count on) does not, and every alarm is
re-programmed as the kernel does at resume. `time.monotonic` is moved by a smaller amount as well, as
on a real box (it stops during the suspend but not during the rest of the night).
"""

from __future__ import annotations

import json
import os
import threading
import time
import tty

import pytest
from console_fakes import FakeService

from agent import clock
from agent import config as configmod
from agent.console import Console
from agent.consolehash import hash_password
from agent.loop import Loop
from agent.serialconsole import SerialConsole
from agent.service import Service
from tests.conftest import fake_statement

LIMIT = 30.0  # guard against hangs only: without the alarm these waits last hours
IDENTITY = {"x_device_info": "eyJtb2RlbCI6IngifQ==", "ap_device_identifier": "fingerprint eA==",
            "device_id": "serial:1", "fields": {"model": "x"}, "sources": {}, "warnings": []}


class Suspend:
    """Moves the agent's clock (and time.monotonic, by less) forward as a night in standby would."""

    def __init__(self, monkeypatch) -> None:
        self.boot = 0.0
        self.mono = 0.0
        real_mono = time.monotonic
        monkeypatch.setattr(time, "monotonic", lambda: real_mono() + self.mono)
        base = clock._kernel
        self._source = lambda: base() + self.boot
        clock.set_source(self._source)

    def night(self, boottime: float, monotonic: float) -> None:
        self.boot += boottime
        self.mono += monotonic
        clock.set_source(self._source)  # the kernel fires every alarm whose deadline passed

    def close(self) -> None:
        clock.set_source(None)


@pytest.fixture
def suspend(monkeypatch):
    if not clock.HAVE_ALARM:
        pytest.skip("no CLOCK_BOOTTIME timerfd here (%s): the bounded-sleep fallback applies" % clock.SOURCE)
    s = Suspend(monkeypatch)
    yield s
    s.close()


class Adobe:
    """send() for the service: a register answer, then tokens of `ttl` s; token requests can be held."""

    def __init__(self, ttl: int = 7200) -> None:
        self.ttl = ttl
        self.tokens = 0
        self.token_started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, req, timeout, ca_file, wall_now):
        if req["url"].endswith("/client/register"):
            return 201, {}, json.dumps({"client_id": "cid-123456789", "client_secret": "sec-abcdef-123456"}).encode()
        self.tokens += 1
        self.token_started.set()
        assert self.release.wait(LIMIT)
        body = {"access_token": "tok-%d-abcdefgh" % self.tokens, "token_type": "bearer", "expires_in": self.ttl}
        return 201, {}, json.dumps(body).encode()


def make_service(tmp_path, send) -> Service:
    st = tmp_path / "statement.jwt"
    st.write_text(fake_statement())
    cfg = configmod.defaults().replace(adobe={"software_statement": str(st)})
    return Service(cfg, identity=IDENTITY, send=send)  # the default clock: agent.clock.now


def test_service_after_suspend_serves_no_expired_token_and_refreshes_at_once(tmp_path, suspend):
    adobe = Adobe(ttl=7200)
    svc = make_service(tmp_path, adobe)
    svc.start()
    try:
        first = svc.wait_token(LIMIT)
        assert first is not None and adobe.tokens == 1
        adobe.token_started.clear()
        adobe.release.clear()  # hold the refresh upstream so the window after resume can be inspected
        # Nine hours in standby: CLOCK_BOOTTIME +9 h, CLOCK_MONOTONIC +1 h (the reproduction).
        suspend.night(boottime=9 * 3600, monotonic=3600)
        # The refresh starts on its own at resume (no caller asked): the worker's alarm fired.
        assert adobe.token_started.wait(LIMIT), "no refresh after resume (the worker sleeps on CLOCK_MONOTONIC)"
        assert svc.token() is None, "the token that expired during the suspend was served"
        assert svc.status()["token"] is None and not svc.health()["ready"]
        adobe.release.set()
        second = svc.wait_token(LIMIT)
        assert second is not None and second["access_token"] != first["access_token"]
        assert second["expires_in"] > 7000
    finally:
        adobe.release.set()
        svc.stop()


def test_wait_token_deadline_counts_the_suspend(tmp_path, suspend):
    adobe = Adobe()
    adobe.release.clear()  # no token ever arrives during this test
    svc = make_service(tmp_path, adobe)
    svc.start()
    got = []
    waiter = threading.Thread(target=lambda: got.append(svc.wait_token(600)))
    try:
        assert adobe.token_started.wait(LIMIT)
        waiter.start()
        # A sleeping caller's Condition timeout counts on CLOCK_MONOTONIC: it re-reads the agent's clock
        # at least every WAIT_SLICE, even while the worker is busy with a request that hangs upstream.
        suspend.night(boottime=3600, monotonic=0)
        waiter.join(LIMIT)
        assert not waiter.is_alive(), "wait_token(600) still waiting an hour after its deadline"
        assert got == [None]
    finally:
        adobe.release.set()
        waiter.join(LIMIT)
        svc.stop()


def test_loop_timers_run_at_resume_and_use_the_agent_clock(suspend):
    loop = Loop()
    assert abs(loop.time() - clock.now()) < 1.0 and loop.time() > time.monotonic() - 1.0 - suspend.mono
    fired = threading.Event()
    scheduled = threading.Event()

    def schedule() -> None:
        loop.call_later(3600, fired.set)  # e.g. a connection's idle timeout or a parked wait's expiry
        scheduled.set()

    t = threading.Thread(target=loop.run)
    t.start()
    try:
        loop.call_soon_threadsafe(schedule)
        assert scheduled.wait(LIMIT)
        suspend.night(boottime=2 * 3600, monotonic=60)
        assert fired.wait(LIMIT), "a timer due during the suspend did not run at resume"
    finally:
        loop.stop()
        t.join(LIMIT)
        loop.close()


def test_console_idle_lock_counts_the_suspend(suspend):
    pw = "s3cret-pass"
    con = Console(FakeService(), password_hash=hash_password(pw), idle_lock=300)  # default clock
    con.banner()
    con.feed(b"unlock\r")
    assert b"unlocked" in con.feed(pw.encode() + b"\r") and not con.locked
    suspend.night(boottime=3600, monotonic=10)
    assert b"console locked after 5m00s without input" in con.poll() and con.locked


def test_serial_console_locks_at_resume_and_reopens_on_the_agent_clock(tmp_path, suspend):
    """The console thread sleeps in select() until its idle-lock moment; after a suspend the alarm wakes it.
    Its reopen backoff counts the suspend too."""
    master, slave = os.openpty()
    tty.setraw(slave)
    link = str(tmp_path / "ttyCONSOLE")  # does not exist yet: the console backs off (10 min)
    pw = "s3cret-pass"
    sc = SerialConsole(FakeService(), link, password_hash=hash_password(pw), idle_lock=300,
                       backoff_initial=600, backoff_max=600)
    sc.start()
    out = b""

    def read_until(needle: bytes) -> None:
        nonlocal out
        end = time.monotonic() + LIMIT
        while needle not in out:
            assert time.monotonic() < end, "never saw %r; got %r" % (needle, out[-300:])
            import select
            if select.select([master], [], [], 0.1)[0]:
                out += os.read(master, 65536)

    try:
        end = time.monotonic() + LIMIT
        while sc.stats()["open_failures"] < 1:
            assert time.monotonic() < end
            time.sleep(0.01)
        os.symlink(os.ttyname(slave), link)
        suspend.night(boottime=700, monotonic=0)  # the 600 s backoff ended during the suspend
        read_until(b"[locked] pass-agent> ")
        os.write(master, b"unlock\r")
        read_until(b"Password: ")
        os.write(master, pw.encode() + b"\r")
        read_until(b"unlocked")
        suspend.night(boottime=3600, monotonic=5)
        read_until(b"console locked after 5m00s without input")
        assert sc.stats()["opens"] == 1 and sc.stats()["locked"]
    finally:
        sc.stop()
        os.close(master)
        os.close(slave)
