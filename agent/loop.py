"""A small selectors-based event loop for the daemon's main thread.

Job: wait on file descriptors and timers in one thread and call back. Other threads (the
lifecycle, signal handlers) hand work to it with `call_soon_threadsafe`, which wakes the
loop through a self-pipe. When nothing is scheduled the loop sleeps in `select()` with no
timeout: an idle agent costs no CPU and no wake-ups.

Must never: block inside a callback on anything but a quick system call, spin or poll on a
period, or let one failing callback stop the loop (failures are logged and the loop goes on).

CPython-only (selectors, os.pipe); not part of the portable core.
"""

from __future__ import annotations

import collections
import heapq
import logging
import os
import selectors
import time
from typing import Callable

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


class Loop:
    """Readers, writers, timers and a thread-safe queue, multiplexed by one selector."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
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
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)

    # -- file descriptors -------------------------------------------------------------------

    def _update(self, fd: int) -> None:
        mask = (selectors.EVENT_READ if fd in self._readers else 0) | (
            selectors.EVENT_WRITE if fd in self._writers else 0
        )
        try:
            key = self._sel.get_key(fd)
        except KeyError:
            key = None
        if key is None:
            if mask:
                self._sel.register(fd, mask, fd)
        elif not mask:
            self._sel.unregister(fd)
        elif key.events != mask:
            self._sel.modify(fd, mask, fd)

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
        """The loop's clock: monotonic seconds (immune to NTP jumps)."""
        return time.monotonic()

    def call_later(self, delay: float, cb: Callback) -> TimerHandle:
        """Run `cb` in the loop thread after `delay` seconds. Loop thread only."""
        h = TimerHandle(time.monotonic() + max(0.0, delay), cb)
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
            return None  # idle is idle: sleep until an fd or another thread wakes us
        return max(0.0, timers[0].when - time.monotonic())

    def _run_once(self) -> None:
        try:
            events = self._sel.select(self._timeout())
        except InterruptedError:
            events = []
        readers, writers = self._readers, self._writers
        for key, mask in events:
            fd = key.data
            if fd is None:
                self._drain_wake()
                continue
            if mask & selectors.EVENT_READ:
                cb = readers.get(fd)
                if cb is not None:
                    self._call(cb)
            if mask & selectors.EVENT_WRITE:
                cb = writers.get(fd)  # looked up again: the read callback may have removed it
                if cb is not None:
                    self._call(cb)
        timers = self._timers
        if timers:
            now = time.monotonic()
            while timers and (timers[0].cancelled or timers[0].when <= now):
                h = heapq.heappop(timers)
                if not h.cancelled:
                    cb = h.callback
                    h.cancel()
                    self._call(cb)
        ready = self._ready
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

    def close(self) -> None:
        """Release the selector and the self-pipe. Do not call while `run()` is active."""
        if self._closed:
            return
        if self._running:
            raise RuntimeError("cannot close a running event loop; call stop() and wait for run() to return")
        self._closed = True
        self._readers.clear()
        self._writers.clear()
        self._timers.clear()
        self._ready.clear()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
