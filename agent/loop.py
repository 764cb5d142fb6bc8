"""A small selectors-based event loop for the daemon's main thread.

Job: wait on file descriptors and timers in one thread and call back. Other threads (the
lifecycle, signal handlers) hand work to it with `call_soon_threadsafe`, which wakes the
loop through a self-pipe. When nothing is scheduled the loop sleeps in `select()` with no
timeout: an idle agent costs no CPU and no wake-ups.

Time is `agent.clock.now()` (CLOCK_BOOTTIME: it counts suspend). Timers are also watched by a
CLOCK_BOOTTIME alarm fd (`agent.clock.Alarm`) armed at the earliest timer, because the
epoll timeout counts on CLOCK_MONOTONIC and would end late by the length of a suspend; after a
resume the alarm makes every timer that fell due during the suspend run at once. While the alarm is
armed at the earliest timer the loop sleeps without a timeout and checks timers only when the alarm
fired: a wake-up for a connection (the token.get hot path, issue 20) then reads no clock at all.
Without an alarm (an injected clock, no timerfd) every sleep has its timeout and every turn checks.

Must never: block inside a callback on anything but a quick system call, spin or poll on a
period, or let one failing callback stop the loop (failures are logged and the loop goes on).

CPython-only (selectors, os.pipe); not part of the portable core.
"""

from __future__ import annotations

import collections
import heapq
import logging
import os
import select
import selectors
from typing import Callable

from agent import clock as _clock

_log = logging.getLogger("pass-agent.loop")

Callback = Callable[[], None]


class TimerHandle:
    """What `call_later` returns: `cancel()` it to drop the timer (idempotent)."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = None  # drop references early (connections, closures)

    def __lt__(self, other: TimerHandle) -> bool:  # heap order
        return self.when < other.when


_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class _Epoll:
    """select.epoll behind the small part of the selectors API the loop uses.

    The selectors module costs about a microsecond per wake-up (key objects, event mapping);
    on the token hot path that is a measurable share, so Linux gets epoll directly.
    """

    def __init__(self) -> None:
        self._ep = select.epoll()

    def register(self, fd: int, mask: int) -> None:
        self._ep.register(fd, (select.EPOLLIN if mask & _READ else 0) | (select.EPOLLOUT if mask & _WRITE else 0))

    def modify(self, fd: int, mask: int) -> None:
        ev = (select.EPOLLIN if mask & _READ else 0) | (select.EPOLLOUT if mask & _WRITE else 0)
        try:
            self._ep.modify(fd, ev)
        except FileNotFoundError:  # the fd was closed and reused without remove_*(): start afresh
            self._ep.register(fd, ev)

    def unregister(self, fd: int) -> None:
        try:
            self._ep.unregister(fd)
        except OSError:
            pass  # already closed: the kernel dropped it

    # Raw (fd, epoll events) pairs; the loop tests them against these masks. Like selectors,
    # errors and hang-ups count as both readable and writable so that callbacks see them.
    READ_MASK = ~select.EPOLLOUT if hasattr(select, "EPOLLOUT") else 0
    WRITE_MASK = ~select.EPOLLIN if hasattr(select, "EPOLLIN") else 0

    def select(self, timeout: float | None) -> list:
        return self._ep.poll(-1 if timeout is None else timeout)

    def close(self) -> None:
        self._ep.close()


class _Selector:
    """Portable fallback (non-Linux) with the same interface as _Epoll."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()

    def register(self, fd: int, mask: int) -> None:
        self._sel.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self._sel.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        self._sel.unregister(fd)

    READ_MASK = _READ
    WRITE_MASK = _WRITE

    def select(self, timeout: float | None) -> list:
        return [(key.fd, mask) for key, mask in self._sel.select(timeout)]

    def close(self) -> None:
        self._sel.close()


class Loop:
    """Readers, writers, timers and a thread-safe queue, multiplexed by one epoll/selector."""

    def __init__(self, clock: Callable[[], float] = _clock.now) -> None:
        self._sel = _Epoll() if hasattr(select, "epoll") else _Selector()
        self._now = clock
        self._masks: dict[int, int] = {}  # fd -> registered event mask
        # epoll.poll(None) blocks like select(None): call it directly on Linux (one call less per wake-up).
        self._poll = self._sel._ep.poll if isinstance(self._sel, _Epoll) else self._sel.select
        self._readers: dict[int, Callback] = {}
        self._writers: dict[int, Callback] = {}
        self._timers: list[TimerHandle] = []
        self._ready: collections.deque[Callback] = collections.deque()
        self._running = False
        self._stopping = False
        self._closed = False
        # Self-pipe: writing one byte wakes select() from any thread or a signal handler.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, _READ)
        # A CLOCK_BOOTTIME alarm at the earliest timer (only when time is the agent's clock: an
        # injected test clock has no kernel timer behind it).
        self._alarm = _clock.Alarm() if clock is _clock.now else None
        if self._alarm is not None and not self._alarm.available:
            self._alarm = None  # no timerfd here: bounded sleeps (clock.wait_timeout) instead
        self._alarm_fd = self._alarm.fileno() if self._alarm is not None else None
        # The `when` of the timer the alarm is armed at (None: not armed, or fired since). While it is
        # the earliest timer's, the loop sleeps without a timeout: the alarm fd ends the sleep.
        self._armed: float | None = None
        if self._alarm_fd is not None:
            self._sel.register(self._alarm_fd, _READ)

    # -- file descriptors -------------------------------------------------------------------

    def _update(self, fd: int) -> None:
        mask = (_READ if fd in self._readers else 0) | (_WRITE if fd in self._writers else 0)
        old = self._masks.get(fd, 0)
        if mask == old:
            return
        if not old:
            self._sel.register(fd, mask)
            self._masks[fd] = mask
        elif not mask:
            self._sel.unregister(fd)
            del self._masks[fd]
        else:
            self._sel.modify(fd, mask)
            self._masks[fd] = mask

    def add_reader(self, fd: int, cb: Callback) -> None:
        self._readers[fd] = cb
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, cb: Callback) -> None:
        self._writers[fd] = cb
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    # -- time and other threads ------------------------------------------------------------

    def time(self) -> float:
        """The loop's clock: agent.clock.now() (CLOCK_BOOTTIME: immune to NTP, counts suspend)."""
        return self._now()

    def call_later(self, delay: float, cb: Callback) -> TimerHandle:
        """Run `cb` in the loop thread after `delay` seconds. Loop thread only."""
        h = TimerHandle(self._now() + max(0.0, delay), cb)
        heapq.heappush(self._timers, h)
        return h

    def call_soon_threadsafe(self, cb: Callback) -> None:
        """Run `cb` in the loop thread soon. Safe from any thread and from signal handlers."""
        self._ready.append(cb)  # deque.append is atomic under the GIL
        self._wake()

    def _wake(self) -> None:
        if self._closed:
            return  # the pipe's fd numbers may already belong to someone else
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # pipe full (a wake-up is already pending) or loop closed

    # -- running ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Make `run()` return after the current iteration. Safe from any thread."""
        self._stopping = True
        self._wake()

    def run(self) -> None:
        """Dispatch events until `stop()`."""
        if self._closed:
            raise RuntimeError("event loop is closed; create a new Loop")
        self._running = True
        self._stopping = False
        try:
            while not self._stopping:
                self._run_once()
        finally:
            self._running = False

    def _timeout(self) -> float | None:
        if self._ready:
            return 0
        timers = self._timers
        while timers and timers[0].cancelled:
            heapq.heappop(timers)  # lazy deletion; an all-cancelled heap empties here
        if not timers:
            if self._armed is not None:  # nothing left to wake for: no stale alarm either
                self._armed = None
                self._alarm.set(None)  # type: ignore[union-attr]
            return None  # idle is idle: sleep until an fd or another thread wakes us
        when = timers[0].when
        if self._alarm is not None and when != self._armed:
            self._armed = when
            self._alarm.set(when)  # ends the wait at `when` even if the box was suspended meanwhile
        return _clock.wait_timeout(when, self._now(), self._alarm)

    def _run_once(self) -> None:
        timers = self._timers
        if not self._ready and timers and timers[0].when == self._armed:
            # The common case on the token hot path (the idle sweep is armed while connections exist):
            # the alarm already wakes us at the earliest timer, so sleep without a timeout and skip the
            # timer phase unless the alarm fired. This saves _timeout()'s calls and two clock reads per
            # wake-up. A timer added by a callback is seen next turn: _timeout() re-arms the alarm for it.
            timeout = None
        else:
            timeout = self._timeout()  # a finite timeout (or the ready queue): check timers below
        try:
            events = self._poll(timeout)
        except InterruptedError:
            events = []
        due = timeout is not None
        readers, writers = self._readers, self._writers
        rmask, wmask = self._sel.READ_MASK, self._sel.WRITE_MASK
        for fd, mask in events:
            if mask & rmask:
                cb = readers.get(fd)  # first: a connection is the common case
                if cb is not None:
                    try:
                        cb()
                    except Exception:
                        _log.exception("event loop callback %r failed; the loop continues", cb)
                elif fd == self._wake_r:
                    self._drain_wake()
                    continue
                elif fd == self._alarm_fd:
                    self._alarm.clear()  # type: ignore[union-attr]
                    self._armed = None  # re-armed for the next timer by _timeout()
                    due = True
                    continue
            if mask & wmask:
                cb = writers.get(fd)  # looked up again: the read callback may have removed it
                if cb is not None:
                    self._call(cb)
        if due and timers:
            now = self._now()
            while timers and (timers[0].cancelled or timers[0].when <= now):
                h = heapq.heappop(timers)
                if not h.cancelled:
                    cb = h.callback
                    h.cancel()
                    self._call(cb)
        ready = self._ready
        if ready:
            for _ in range(len(ready)):  # only what is queued now; new work waits a turn
                self._call(ready.popleft())

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    @staticmethod
    def _call(cb: Callback) -> None:
        try:
            cb()
        except Exception:
            _log.exception("event loop callback %r failed; the loop continues", cb)

    def fd_count(self) -> int:
        """How many fds are registered (besides the wake-up pipe): for tests and stats."""
        return len(self._masks)

    def close(self) -> None:
        """Release the selector and the self-pipe. Do not call while `run()` is active."""
        if self._closed:
            return
        if self._running:
            raise RuntimeError("cannot close a running event loop; call stop() and wait for run() to return")
        self._closed = True
        self._readers.clear()
        self._writers.clear()
        self._masks.clear()
        self._timers.clear()
        self._ready.clear()
        self._sel.close()
        if self._alarm is not None:
            self._alarm.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
