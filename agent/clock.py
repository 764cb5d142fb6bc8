"""The agent's clock: seconds that keep counting while the box is suspended, and waits that end on time.

Job. Every expiry, refresh, backoff, wait, idle-lock and timer decision in the agent reads `now()`,
and every thread that sleeps until such a deadline sleeps through `Alarm` (or `wait_timeout`):

- `now()` is CLOCK_BOOTTIME: monotonic (NTP and `date` do not move it) and, unlike CLOCK_MONOTONIC
  (`time.monotonic()`), it counts the time the box spent suspended to RAM. Set-top boxes suspend
  every night; on CLOCK_MONOTONIC a token that expired during the night still looked valid in the
  morning, with no refresh scheduled.
- Sleeping is the other half. The timeouts of epoll/select/poll and `threading.Condition.wait`
  count on CLOCK_MONOTONIC, so a sleep scheduled before a suspend ends late by the suspend's
  length. An `Alarm` is a timerfd on CLOCK_BOOTTIME armed at an absolute `now()` time: its fd
  becomes readable at the deadline, and after a resume at once if the deadline passed during the
  suspend. Callers put it in the same select()/epoll as their other fds and keep their ordinary
  timeout as well (the alarm only ends the wait earlier, never later).

Fallbacks (stated once, here):
- No CLOCK_BOOTTIME (not Linux): `now()` is `time.monotonic()`; on such a system suspended time is
  not counted (as before this module existed). `SOURCE` says which clock is in use; `pass-agent run`
  logs it at start.
- CLOCK_BOOTTIME but no timerfd (os.timerfd_* needs Python 3.13; older ones reach timerfd through
  ctypes, which an image may lack): alarms are unavailable (`Alarm.fileno()` is None) and
  `wait_timeout` bounds every sleep to `BLIND_SLEEP_MAX` seconds, so after a resume a due action
  starts within that bound instead of at once. An idle agent then wakes that often while a timer
  is pending (never while nothing is scheduled).

Tests replace the time source with `set_source()` (a plain function, never configuration or the
environment: nothing outside the process can move the agent's clock); every live alarm is then
re-programmed as the kernel does on resume, so one whose deadline has passed fires at once.

Must never: read the wall clock; make an idle process wake up (an unarmed alarm never fires);
raise from `now()`.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from typing import Callable

BLIND_SLEEP_MAX = 60.0  # longest sleep when CLOCK_BOOTTIME exists but no timerfd can follow it

_BOOT_ID = getattr(time, "CLOCK_BOOTTIME", None)


def _probe_boottime() -> bool:
    if _BOOT_ID is None:
        return False
    try:
        time.clock_gettime(_BOOT_ID)
    except OSError:  # an old kernel or a sandbox refusing the clock id
        return False
    return True


HAVE_BOOTTIME = _probe_boottime()

if HAVE_BOOTTIME:
    # The kernel's CLOCK_BOOTTIME (what a timerfd on that clock counts in). A partial of the C function,
    # not a Python function: the loop and the token path read the clock several times per request.
    _kernel: Callable[[], float] = functools.partial(time.clock_gettime, _BOOT_ID)  # type: ignore[arg-type]
else:
    _kernel = time.monotonic

_source: Callable[[], float] = _kernel


def now() -> float:
    """Seconds on the agent's clock (CLOCK_BOOTTIME, or the stated fallback). Only differences matter."""
    return _source()


# --------------------------------------------------------------------------- timerfd access

_TFD_TIMER_ABSTIME = 1
_NS_MAX_S = 2**31 - 1


class _TimerfdOS:
    """Python 3.13+: os.timerfd_*."""

    def create(self) -> int:
        return os.timerfd_create(_BOOT_ID, flags=os.TFD_NONBLOCK | os.TFD_CLOEXEC)  # type: ignore[attr-defined]

    def set_abs(self, fd: int, ns: int) -> None:
        os.timerfd_settime_ns(fd, flags=os.TFD_TIMER_ABSTIME, initial=ns)  # type: ignore[attr-defined]


class _TimerfdCtypes:
    """Older Pythons: timerfd_create/timerfd_settime from the C library through ctypes."""

    def __init__(self) -> None:
        import ctypes

        class _Timespec(ctypes.Structure):
            # The legacy (non-_TIME_BITS=64) symbol: time_t and long both have the width of `long`.
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class _Itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]

        libc = ctypes.CDLL(None, use_errno=True)
        self._create = libc.timerfd_create
        self._create.argtypes = [ctypes.c_int, ctypes.c_int]
        self._create.restype = ctypes.c_int
        self._settime = libc.timerfd_settime
        self._settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
        self._settime.restype = ctypes.c_int
        self._spec = _Itimerspec
        self._ctypes = ctypes

    def create(self) -> int:
        fd = self._create(_BOOT_ID, os.O_NONBLOCK | os.O_CLOEXEC)  # TFD_* flags are the O_* values
        if fd < 0:
            e = self._ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return fd

    def set_abs(self, fd: int, ns: int) -> None:
        spec = self._spec()
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(ns, 1_000_000_000)
        if self._settime(fd, _TFD_TIMER_ABSTIME, self._ctypes.byref(spec), None) < 0:
            e = self._ctypes.get_errno()
            raise OSError(e, os.strerror(e))


def _load_timerfd():
    if not HAVE_BOOTTIME:
        return None, "no CLOCK_BOOTTIME"
    try:
        api = _TimerfdOS() if hasattr(os, "timerfd_create") else _TimerfdCtypes()
        fd = api.create()
        api.set_abs(fd, 0)  # disarm: proves settime works too
        os.close(fd)
        return api, ""
    except Exception as e:  # no ctypes, no libc symbol, a seccomp filter...
        return None, "no timerfd (%s: %s)" % (type(e).__name__, e)


_TIMERFD, _TIMERFD_PROBLEM = _load_timerfd()
HAVE_ALARM = _TIMERFD is not None

if HAVE_BOOTTIME and HAVE_ALARM:
    SOURCE = "CLOCK_BOOTTIME with timerfd wake-ups (time in suspend counts; due work starts at resume)"
elif HAVE_BOOTTIME:
    SOURCE = ("CLOCK_BOOTTIME, %s: sleeps are bounded to %d s, so due work starts within %d s of a resume"
              % (_TIMERFD_PROBLEM, BLIND_SLEEP_MAX, BLIND_SLEEP_MAX))
else:
    SOURCE = "CLOCK_MONOTONIC (no CLOCK_BOOTTIME here: time spent in suspend is not counted)"

_alarms: weakref.WeakSet = weakref.WeakSet()
_alarms_lock = threading.Lock()


class Alarm:
    """A one-shot wake-up at an absolute `now()` time that counts suspend: a CLOCK_BOOTTIME timerfd.

    `fileno()` is None when alarms are unavailable (see the fallbacks above); `set()` is then a no-op
    and callers rely on `wait_timeout`. Thread-safe: another thread may re-arm it while one sleeps on it.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._deadline: float | None = None
        self._lock = threading.Lock()
        if _TIMERFD is not None:
            try:
                self._fd = _TIMERFD.create()
            except OSError:
                self._fd = None  # out of fds: degrade to bounded sleeps rather than fail
        if self._fd is not None:
            with _alarms_lock:
                _alarms.add(self)

    def fileno(self) -> int | None:
        return self._fd

    @property
    def available(self) -> bool:
        return self._fd is not None

    def set(self, deadline: float | None) -> None:
        """Arm at `deadline` (a `now()` value; in the past fires at once), or disarm with None.
        Re-arming also clears an expiry that was not read yet."""
        with self._lock:
            self._deadline = deadline
            self._program()

    def _program(self) -> None:
        fd = self._fd
        if fd is None:
            return
        d = self._deadline
        if d is None:
            ns = 0  # an it_value of zero disarms
        else:
            if _source is not _kernel:  # a test's source: translate its deadline to the kernel's clock
                d = d - _source() + _kernel()
            # At least 1 ns (zero would disarm instead of firing at once); at most what a 32-bit time_t
            # holds (68 years of uptime: "never" for a set-top box). NaN compares false: never.
            ns = max(1, int(d * 1e9)) if d < _NS_MAX_S else _NS_MAX_S * 1_000_000_000
        try:
            _TIMERFD.set_abs(fd, ns)  # type: ignore[union-attr]
        except OSError:
            pass  # closed under us (shutdown): nothing to wake any more

    def clear(self) -> None:
        """Consume a fired expiry so the fd stops being readable (the deadline stays recorded)."""
        if self._fd is None:
            return
        try:
            os.read(self._fd, 8)
        except OSError:  # EAGAIN: not fired (or re-armed meanwhile)
            pass

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            with _alarms_lock:
                _alarms.discard(self)
            os.close(fd)


def wait_timeout(deadline: float | None, now_value: float, alarm: Alarm | None = None) -> float | None:
    """The select()/wait timeout for sleeping until `deadline`, given `now_value` = now().

    With a working alarm armed at the deadline this is just the time left (the alarm cuts it short
    after a resume). Without one, on CLOCK_BOOTTIME, it is bounded by BLIND_SLEEP_MAX so the caller
    re-reads the clock at least that often while a deadline is pending. None: no deadline, sleep
    until an fd is ready."""
    if deadline is None:
        return None
    left = max(0.0, deadline - now_value)
    if HAVE_BOOTTIME and (alarm is None or not alarm.available):
        left = min(left, BLIND_SLEEP_MAX)
    return left


def set_source(source: Callable[[], float] | None) -> None:
    """Tests only: read time from `source` (None: the kernel's clock again). Every live alarm is
    re-programmed against the new time, as the kernel does at resume: one whose deadline has now
    passed fires at once."""
    global _source
    _source = source if source is not None else _kernel
    with _alarms_lock:
        alarms = list(_alarms)
    for a in alarms:
        with a._lock:
            a._program()
