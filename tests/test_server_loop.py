"""The event loop (agent/loop.py) the server runs in: fds, timers, cross-thread calls, idleness."""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest

from agent import clock
from agent.loop import Loop

try:
    from tests.fakes import LineReader, ServerHarness, connect, request, wait_for
except ImportError:  # tests/ on sys.path instead of the repo root
    from fakes import LineReader, ServerHarness, connect, request, wait_for


@pytest.fixture
def loop():
    lp = Loop()
    yield lp
    lp.close()


def run_in_thread(loop: Loop) -> threading.Thread:
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    return t


def test_timers_fire_in_order_and_cancel(loop: Loop) -> None:
    fired = []
    loop.call_later(0.05, lambda: fired.append("b"))
    loop.call_later(0.0, lambda: fired.append("a"))
    h = loop.call_later(0.01, lambda: fired.append("cancelled"))
    h.cancel()
    h.cancel()  # idempotent
    loop.call_later(0.1, loop.stop)
    loop.run()
    assert fired == ["a", "b"]


def test_readers_and_writers(loop: Loop) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    got = []

    def on_read() -> None:
        got.append(a.recv(100))
        loop.remove_reader(a.fileno())
        loop.stop()

    def on_write() -> None:
        a.send(b"ping")
        loop.remove_writer(a.fileno())
        loop.add_reader(a.fileno(), on_read)

    loop.add_writer(a.fileno(), on_write)
    t = run_in_thread(loop)
    assert b.recv(100) == b"ping"
    b.send(b"pong")
    t.join(5)
    assert got == [b"pong"] and not t.is_alive()
    a.close()
    b.close()


def test_call_soon_threadsafe_wakes_an_idle_loop(loop: Loop) -> None:
    asleep = threading.Event()
    real = loop._poll

    def poll(timeout=None):
        if timeout is None:
            asleep.set()  # about to block in select() with no timeout
        return real(timeout)

    loop._poll = poll
    t = run_in_thread(loop)
    done = threading.Event()
    assert asleep.wait(5)
    threading.Thread(target=lambda: loop.call_soon_threadsafe(done.set)).start()
    assert done.wait(5)
    loop.stop()
    t.join(5)
    assert not t.is_alive()


def test_call_soon_threadsafe_from_a_signal_handler(loop: Loop) -> None:
    got = []
    old = signal.signal(signal.SIGUSR1, lambda *a: loop.call_soon_threadsafe(lambda: (got.append(1), loop.stop())))
    try:
        loop.call_later(0.01, lambda: os.kill(os.getpid(), signal.SIGUSR1))
        loop.call_later(10, loop.stop)  # safety net
        loop.run()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert got == [1]


def test_a_failing_callback_does_not_stop_the_loop(loop: Loop) -> None:
    fired = []

    def boom() -> None:
        raise RuntimeError("callback failure for the test")

    loop.call_later(0, boom)
    loop.call_later(0.01, lambda: (fired.append(1), loop.stop()))
    loop.run()
    assert fired == [1]


def test_idle_loop_has_no_timeout_and_does_not_spin(loop: Loop) -> None:
    h = loop.call_later(100, lambda: None)
    h.cancel()
    assert loop._timeout() is None  # cancelled timers are dropped: nothing to wake up for
    calls = []
    entered, returned = threading.Event(), threading.Event()
    real = loop._poll

    def poll(timeout=None):
        calls.append(timeout)
        entered.set()
        try:
            return real(timeout)
        finally:
            returned.set()

    loop._poll = poll
    t = run_in_thread(loop)
    assert entered.wait(5)
    assert not returned.wait(0.3)  # still blocked in its first poll: an idle loop does not spin
    loop.stop()
    t.join(5)
    assert calls[0] is None and len(calls) <= 2  # one sleep, one wake-up for stop()


def test_close_refuses_while_running_and_after(loop: Loop) -> None:
    running = threading.Event()
    loop.call_soon_threadsafe(running.set)  # runs only once loop.run() is under way
    t = run_in_thread(loop)
    assert running.wait(5)
    with pytest.raises(RuntimeError, match="running"):
        loop.close()
    loop.stop()
    t.join(5)
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.run()
    loop.call_soon_threadsafe(lambda: None)  # harmless after close


def test_server_leaves_no_timers_once_connections_are_gone(tmp_path) -> None:
    path = str(tmp_path / "agent.sock")
    with ServerHarness(path, idle_timeout=1.0) as h:
        assert h.call(h.loop._timeout) is None
        socks = [connect(path) for _ in range(5)]
        for s in socks:
            s.sendall(request("token.get", {"wait": 50}))
            assert LineReader(s).json()["result"]["access_token"]
        # One idle sweep for all connections, none per connection (no cancelled timers pile up).
        assert h.call(lambda: len(h.loop._timers)) == 1
        for s in socks:
            s.close()
        assert wait_for(lambda: h.stats()["connections"] == 0)
        # The sweep does not re-arm once no connection is left: the idle loop has no timeout.
        assert wait_for(lambda: h.call(h.loop._timeout) is None)


def _recording_poll(loop: Loop) -> list:
    """Replace the loop's poll by one that records each timeout it is given."""
    timeouts: list = []
    real = loop._poll

    def poll(timeout=None):
        timeouts.append(timeout)
        return real(timeout)

    loop._poll = poll
    return timeouts


needs_alarm = pytest.mark.skipif(not clock.HAVE_ALARM, reason="no CLOCK_BOOTTIME timerfd: bounded sleeps apply")


@needs_alarm
def test_an_armed_alarm_lets_the_loop_sleep_without_a_timeout(loop: Loop) -> None:
    """Issue 20: while the alarm is armed at the earliest timer, a wake-up computes no timeout and reads
    no clock (the token hot path wakes once per request while the idle sweep's timer is pending)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    loop.add_reader(a.fileno(), lambda: a.recv(100))
    loop.call_later(100, lambda: None)
    timeouts = _recording_poll(loop)
    reads = []
    real_now = loop._now
    loop._now = lambda: (reads.append(1), real_now())[1]
    per_turn = []
    for _ in range(3):
        b.send(b"x")
        loop._run_once()
        per_turn.append(len(reads))
        del reads[:]
    assert timeouts[0] is not None and timeouts[0] > 50  # the first turn arms the alarm
    assert timeouts[1:] == [None, None]
    assert per_turn[0] > 0 and per_turn[1:] == [0, 0]  # later turns read no clock
    a.close()
    b.close()


@needs_alarm
def test_the_alarm_ends_a_sleep_without_timeout_and_runs_the_timer(loop: Loop) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    loop.add_reader(a.fileno(), lambda: a.recv(100))
    fired = []
    loop.call_later(0.2, lambda: (fired.append(1), loop.stop()))
    b.send(b"x")
    loop._run_once()  # arms the alarm for the timer; returns at once for the readable socket
    assert not fired
    timeouts = _recording_poll(loop)
    t = run_in_thread(loop)
    t.join(30)  # a guard against a hang only: the alarm ends the sleep after 0.2 s
    assert not t.is_alive() and fired == [1]
    assert timeouts[0] is None  # it slept without a timeout, and the alarm woke it
    a.close()
    b.close()


@needs_alarm
def test_a_timer_added_by_a_callback_runs_while_the_alarm_waits_for_a_later_one(loop: Loop) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    fired = []

    def on_read() -> None:
        a.recv(100)
        loop.call_later(0, lambda: (fired.append(1), loop.stop()))

    loop.add_reader(a.fileno(), on_read)
    loop.call_later(1000, lambda: None)  # the alarm is armed for this one, far away
    t = run_in_thread(loop)
    b.send(b"x")
    t.join(30)  # a guard against a hang only
    assert not t.is_alive() and fired == [1]
    a.close()
    b.close()
