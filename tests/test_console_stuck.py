"""The serial console on a terminal that never reads, under a flood of garbage, and the password echo.

Real ptys (os.openpty): the agent's SerialConsole opens the slave, the test is the terminal on the
master. CPU is the console thread's own CPU clock (pthread_getcpuclockid), compared with a baseline
measured in the same test or with the time it had; no test asserts wall-clock speed.

The input limiter discards what arrives while its budget is spent, so a test that types after a
flood first lets the console's clock pass a quiet spell (QuietClock.skip): typed within a few
microseconds of the flood's last read, a command is discarded by design, which is what made the
megabyte test flaky (see test_input_over_the_rate_is_discarded_until_the_line_has_been_quiet).
"""

from __future__ import annotations

import os
import random
import threading
import time
import tty

import pytest
from console_fakes import FakeClock, FakeService

from agent import clock as clockmod
from agent.console import Console
from agent.consolehash import hash_password
from agent.serialconsole import _STUCK_MAX, INPUT_BURST, INPUT_RATE, SerialConsole

LIMIT = 60.0  # guard against hangs only


def wait_for(cond, what, limit: float = LIMIT) -> None:
    """Poll `cond` until true; `what` (a string, or a callable for a message made at the timeout)."""
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, "timed out waiting for " + (what() if callable(what) else what)
        time.sleep(0.01)


class Terminal:
    """The pty master: what a technician's terminal (or nobody) does at the other end."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.buf = b""
        self._reading = threading.Event()
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import select
        while not self._stop:
            if not self._reading.wait(0.05):
                continue
            r, _, _ = select.select([self.master], [], [], 0.05)
            if r:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    return
                with self._lock:
                    self.buf += data

    def reading(self, on: bool) -> None:
        (self._reading.set if on else self._reading.clear)()

    def seen(self) -> bytes:
        with self._lock:
            return self.buf

    def expect(self, pattern: bytes, count: int = 1, start: int = 0) -> None:
        # The message shows what the terminal had seen when the wait gave up (made when it started,
        # it said b'' after a flood the terminal had not read yet: "saw nothing" when it had).
        wait_for(lambda: self.seen()[start:].count(pattern) >= count,
                 lambda: "%d x %r; after %d bytes, got %r" % (count, pattern, len(self.seen()) - start,
                                                             self.seen()[-200:]))

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def term():
    t = Terminal()
    yield t
    t.close()


@pytest.fixture
def console(term):
    made = []

    def make(**kw) -> SerialConsole:
        sc = SerialConsole(FakeService(), term.path, **kw)
        sc.start()
        made.append(sc)
        return sc

    yield make
    for sc in made:
        sc.stop()


class QuietClock:
    """The agent's clock plus the quiet spells a test declares: skip(s) is s seconds in which the line
    carried nothing, without the test sleeping them (the limiter's budget refills by s * INPUT_RATE)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return clockmod.now() + self.offset

    def skip(self, seconds: float) -> None:
        self.offset += seconds


def flood(term: Terminal, junk: bytes) -> threading.Thread:
    """Write `junk` to the port as fast as the pty takes it, from a thread (the pty blocks the writer
    whenever the console is behind); join it to know the console read all of it or stopped reading."""

    def write_all() -> None:
        view = memoryview(junk)
        while view:
            view = view[os.write(term.master, view[:4096]):]

    writer = threading.Thread(target=write_all, daemon=True)
    writer.start()
    return writer


def input_seen(sc: SerialConsole) -> int:
    st = sc.stats()
    return st["bytes_in"] + st["input_dropped_bytes"]


def thread_cpu(sc: SerialConsole) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(sc._thread.ident))


def type_lines(term: Terminal, line: bytes, n: int) -> None:
    # A technician (or a script) typing: one line every 25 ms; pacing, not synchronisation.
    for _ in range(n):
        os.write(term.master, line)
        time.sleep(0.025)


def test_a_terminal_that_never_reads_costs_no_cpu(term, console):
    """Issue 15 item 8: pyserial's write() spun on EAGAIN for its whole write timeout (7.4 s of CPU
    in 10 s). The same typing costs about the same CPU whether or not the terminal reads."""
    term.reading(True)
    sc = console()
    term.expect(b"pass-agent> ")
    n, line = 40, b"help\r"
    # Baseline: the terminal reads everything.
    c0, t0 = thread_cpu(sc), time.monotonic()
    type_lines(term, line, n)
    term.expect(b"pass-agent> ", n + 1)
    cpu_reading, elapsed_reading = thread_cpu(sc) - c0, time.monotonic() - t0
    # The terminal stops reading: type until the pty is full and the console has been dropping
    # output for a while (a first short drop can come from a partial write, before the pty is full).
    term.reading(False)
    sent = sc.stats()["bytes_in"]
    while sc.stats()["output_dropped_bytes"] < 32768:
        os.write(term.master, line)
        sent += len(line)
        wait_for(lambda want=sent: sc.stats()["bytes_in"] >= want, "the console to read the line")
    # Now the same typing against the stuck terminal.
    c1, t1 = thread_cpu(sc), time.monotonic()
    type_lines(term, line, n)
    sent += n * len(line)
    wait_for(lambda: sc.stats()["bytes_in"] >= sent, "the console to read every line")
    cpu_stuck, elapsed_stuck = thread_cpu(sc) - c1, time.monotonic() - t1
    st = sc.stats()
    assert cpu_stuck <= 2 * cpu_reading + 0.05 * elapsed_stuck, (
        "stuck terminal: %.3f s CPU in %.2f s for %d lines (reading terminal: %.3f s in %.2f s); %r"
        % (cpu_stuck, elapsed_stuck, n, cpu_reading, elapsed_reading, st))
    assert st["output_dropped_bytes"] > 0 and st["open"] and st["outages"] == 0
    # The terminal reads again: it learns what it missed, and the console still answers.
    start = len(term.seen())
    term.reading(True)
    os.write(term.master, b"\x15version\r")
    term.expect(b"pass-agent 0.1.0\r\n", start=start)
    assert b"bytes of output dropped: the terminal was not reading]" in term.seen()[start:]


def test_a_megabyte_of_garbage_costs_bounded_cpu(term, console, caplog):
    """Issue 15 item 8: 1 MB of garbage cost 72 s of CPU. Only INPUT_RATE bytes/s (after a burst of
    INPUT_BURST) reach the console core; the rest is read and thrown away, so the console thread
    needs a small share of the time the flood lasts, and the console still works afterwards."""
    term.reading(False)  # and nobody reads the answers either: the worst case
    clock = QuietClock()
    sc = console(clock=clock)
    wait_for(lambda: sc.stats()["bytes_out"] > 0, "the banner")
    junk = random.Random(15).randbytes(1 << 20)
    c0, t0 = thread_cpu(sc), time.monotonic()
    writer = flood(term, junk)
    writer.join(LIMIT)
    assert not writer.is_alive(), "the console stopped reading its port"
    wait_for(lambda: input_seen(sc) >= len(junk), "the flood to be read")
    cpu, elapsed = thread_cpu(sc) - c0, time.monotonic() - t0
    st = sc.stats()
    assert input_seen(sc) == len(junk), st
    assert st["bytes_in"] <= INPUT_BURST + INPUT_RATE * elapsed + 4096, st
    assert st["input_dropped_bytes"] > 0
    # Baseline, same run: the console core alone handling what the limiter may let through in that
    # time (the burst plus the rate), fed in this thread. A flood read in 0.15 s is mostly the burst,
    # so a bound in elapsed time alone failed on a loaded 3.9 run (0.133 s CPU > 0.087 s) with the
    # limiter working; without the limiter the core would handle the whole megabyte, far above this.
    allowed = junk[:min(len(junk), INPUT_BURST + int(INPUT_RATE * elapsed))]
    core = Console(FakeService(), clock=clock)
    c1 = time.thread_time()
    for i in range(0, len(allowed), 4096):
        core.feed(allowed[i:i + 4096])
    core_cpu = time.thread_time() - c1
    assert cpu <= 2 * core_cpu + 0.25 * elapsed + 0.05, (
        "1 MB of garbage: %.3f s CPU in %.2f s (the core alone on the %d bytes allowed: %.3f s); %r"
        % (cpu, elapsed, len(allowed), core_cpu, st))
    # Afterwards (the line quiet for a second: typed at once, the command would be over the rate
    # and discarded) the console answers a technician as before, and nothing they typed is lost.
    clock.skip(1.0)
    start = len(term.seen())
    term.reading(True)
    cmd = b"\x03\x15version\r"
    os.write(term.master, cmd)
    term.expect(b"pass-agent 0.1.0\r\n", start=start)
    st2 = sc.stats()
    assert st2["bytes_in"] == st["bytes_in"] + len(cmd) and st2["input_dropped_bytes"] == st["input_dropped_bytes"]
    flood_logs = [r.getMessage() for r in caplog.records if "faster than" in r.getMessage()]
    assert len(flood_logs) == 1 and "%d bytes/s" % INPUT_RATE in flood_logs[0], flood_logs  # once per flood


def test_input_over_the_rate_is_discarded_until_the_line_has_been_quiet(term, console):
    """Why the megabyte test flaked (H7): it typed ^C ^U version right after the flood, and when the
    console had read the flood's last bytes a few microseconds earlier its budget was still spent,
    so the command was discarded whole or after a few bytes (10 of 10 runs when typed at once:
    0 to 7 of its 10 bytes processed). That is the limiter working: the budget comes back with
    time, at INPUT_RATE, so a key typed any moment later is handled. Pinned here on a clock that
    does not move unless the test says so."""
    term.reading(False)
    clock = FakeClock()
    sc = console(clock=clock)
    wait_for(lambda: sc.stats()["bytes_out"] > 0, "the banner")
    junk = random.Random(15).randbytes(4 * INPUT_BURST)
    writer = flood(term, junk)
    writer.join(LIMIT)
    assert not writer.is_alive(), "the console stopped reading its port"
    wait_for(lambda: input_seen(sc) >= len(junk), "the flood to be read")
    st = sc.stats()
    assert st["bytes_in"] == INPUT_BURST and st["input_dropped_bytes"] == len(junk) - INPUT_BURST, st
    # No time has passed: the budget is spent, the whole command is discarded (it reaches no core).
    cmd = b"\x03\x15version\r"
    os.write(term.master, cmd)
    wait_for(lambda: input_seen(sc) >= len(junk) + len(cmd), "the command to be read")
    st = sc.stats()
    assert st["bytes_in"] == INPUT_BURST and st["input_dropped_bytes"] == len(junk) - INPUT_BURST + len(cmd), st
    commands = st["console"]["commands"]
    # A moment of quiet buys exactly its share of INPUT_RATE: the same keys reach the core whole.
    clock.advance(len(cmd) / INPUT_RATE)
    os.write(term.master, cmd)
    wait_for(lambda: sc.stats()["console"]["commands"] == commands + 1, "the command to run")
    st = sc.stats()
    assert st["bytes_in"] == INPUT_BURST + len(cmd) and st["input_dropped_bytes"] == len(junk) - INPUT_BURST + len(cmd), st
    # The terminal reads again; once the stuck terminal's write pause is over on this clock too (the
    # console thread re-checks it at least every _STUCK_MAX of real time) the answer arrives, after
    # the marker saying how much output was lost meanwhile.
    start = len(term.seen())
    term.reading(True)
    clock.advance(_STUCK_MAX)
    term.expect(b"pass-agent 0.1.0\r\n", start=start)
    assert b"bytes of output dropped: the terminal was not reading]" in term.seen()[start:]


def test_password_prompt_echoes_nothing_that_reveals_the_length():
    """Issue 15 item 17: the password echo printed one '*' per character."""
    pw = "correct horse battery"
    con = Console(FakeService(), password_hash=hash_password(pw), clock=lambda: 1000.0)
    con.banner()
    assert con.feed(b"unlock\r").endswith(b"Password: ")
    typed = b""
    for ch in pw[:-3].encode():  # type, then erase and retype the last characters, then Ctrl-U and again
        typed += con.feed(bytes([ch]))
    typed += con.feed(b"\x7f\x7f") + con.feed(b"\x15") + con.feed(b"\x1b[A")
    assert b"*" not in typed and pw[:4].encode() not in typed
    assert typed.count(b"\b") == 0, "erasing must not show how many characters were there"
    out = b"".join(con.feed(bytes([c])) for c in pw.encode()) + con.feed(b"\r")
    assert b"*" not in out and pw.encode() not in out
    assert b"unlocked" in out and not con.locked
    # Two passwords of different lengths produce the same bytes on the terminal.
    shown = []
    for guess in ("a", "a much longer wrong guess"):
        c = Console(FakeService(), password_hash=hash_password(pw), clock=lambda: 1000.0, dumb=False)
        c.banner()
        c.feed(b"unlock\r")
        shown.append(b"".join(c.feed(bytes([ch])) for ch in guess.encode()))
    assert shown[0] == shown[1] == b""
