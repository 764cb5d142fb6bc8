"""The serial console's transport: pyserial on `console.port`, one daemon thread, the Console core.

One thread owns the port and the Console: it waits in select() on the port and a wake-up pipe (no
timer while idle; ports without a descriptor are read with a short timeout), feeds the core, polls it
when the core asks (followed log lines, idle re-lock), and writes the result through a bounded
output queue. `console.port` is anything `serial.serial_for_url` opens: a device (/dev/ttyS0,
/dev/ttyUSB0, a pty) or a URL (loop://, socket://host:port, rfc2217://...). Ptys have no modem
lines; pyserial ignores the failing modem ioctls, and the port is put in raw mode when opened.

When the port fails (USB adapter unplugged, pty closed) or cannot be opened, the thread closes it
and retries with exponential backoff, logging once when the outage starts and once when the port
is back. A new session (banner, locked again) starts on every (re)open.

Time is agent.clock.now() (CLOCK_BOOTTIME, counts suspend); every sleep (idle re-lock, reopen
backoff, a stuck terminal's retry) also watches a CLOCK_BOOTTIME alarm, so a deadline that passed
while the box was suspended is acted on at resume, not a suspend's length later.

A terminal that stops reading (flow control held, nobody at the other end of a pty) costs next to
nothing: on a port with a descriptor the thread writes with non-blocking os.write() (pyserial's
write() spins on EAGAIN for its whole write timeout) and waits for writability in the same select();
a port that claims to be writable but takes nothing is retried after a growing pause (20 ms to
1 s). Output waits in a queue of `out_queue_bytes`; beyond it the oldest output is dropped and
counted, and a marker line saying how much was lost is written when the terminal reads again.

Input costs a bounded amount of CPU whatever arrives: at most INPUT_RATE bytes per second (burst
INPUT_BURST) reach the console core, in reads of at most _READ_MAX; input beyond that is read and
discarded (counted, one log line and one marker line per flood): a discarded read costs a system
call (a tty hands out at most 4 KB per read), about a thousandth of what the core spends on the
same bytes. Lines are capped by the core (MAX_LINE).

Must never: block or slow the token service (the only thing another thread does here is append a
log line to the core's bounded follow queue); hold a lock across a read or write on the port; let
the output queue grow without bound; spin on a port that does not take output; die on an
exception (it logs, backs off and reopens).
"""

from __future__ import annotations

import collections
import logging
import os
import select
import threading
from typing import Callable

from agent import clock as clockmod
from agent import log as agent_log
from agent.console import Console

_READ_MAX = 4096
_DISCARD_MAX = 65536    # one read of input that is over the rate budget (thrown away)
_IDLE_TIMEOUT = 0.5     # read timeout when nothing is due (ports without a descriptor only)
_BUSY_TIMEOUT = 0.05    # while following the log or when the core wants a poll soon
_WRITE_TIMEOUT = 0.5    # ports without a descriptor: a peer that stops reading costs this per write
INPUT_RATE = 16384      # bytes/s of input the core handles (a 115200-baud line carries 11,520)
INPUT_BURST = 65536     # bytes handled at once after a quiet spell (a pasted block)
_STUCK_MIN, _STUCK_MAX = 0.02, 1.0  # pause after a write that took nothing, doubling up to the max
_DROP_MARK = b"\r\n[console: "    # how the transport's own notices start (never counted as dropped output)


class SerialConsole:
    """Runs a Console on a serial port in a daemon thread; reopens the port when it goes away."""

    def __init__(self, service, port: str, *, baudrate: int = 115200, password_hash: str | None = None,
                 dumb: bool = False, log: logging.Logger | None = None, opener: Callable | None = None,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, out_queue_bytes: int = 64 * 1024,
                 idle_lock: float = 300.0, clock: Callable[[], float] = clockmod.now) -> None:
        self.service = service
        self._log = log or agent_log.get("console")
        self._opener = opener
        self._backoff = (backoff_initial, backoff_max)
        self._out_cap = out_queue_bytes
        self._idle_lock = idle_lock
        self._clock = clock
        # The console thread's sleeps end at their CLOCK_BOOTTIME deadline even across a suspend
        # (only when time is the agent's clock: an injected test clock has no kernel timer behind it).
        self._alarm = clockmod.Alarm() if clock is clockmod.now else None
        self._port, self._baud = port, baudrate
        self._console = self._make_console(password_hash, dumb)  # ConfigError here on a bad hash
        self._lock = threading.Lock()  # guards _pending and _stats; never held across port I/O
        self._pending: tuple | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()  # stop()/reconfigure() wake the thread: no polling when idle
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._outq: collections.deque = collections.deque()
        self._outq_bytes = 0
        self._dropped_unreported = 0       # output dropped since the last marker line
        self._write_retry_at = 0.0         # a stuck port is not written to before this
        self._write_pause = 0.0
        self._in_budget = float(INPUT_BURST)
        self._in_budget_at = 0.0
        self._in_flooding = False
        self._is_open = False
        self._stats = {"opens": 0, "open_failures": 0, "outages": 0, "bytes_in": 0, "bytes_out": 0,
                       "output_dropped_bytes": 0, "input_dropped_bytes": 0, "write_stalls": 0,
                       "last_error": None}

    def _make_console(self, password_hash: str | None, dumb: bool) -> Console:
        return Console(self.service, password_hash=password_hash, dumb=dumb, clock=self._clock,
                       idle_lock=self._idle_lock)

    # --- control (any thread) ---------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="serial-console", daemon=True)
        self._thread.start()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # pipe full: a wake-up is already pending
            pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 256):
                pass
        except OSError:
            pass

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake()
        t = self._thread
        if t is not None:
            t.join(timeout)
        self._thread = None
        self._console.close()
        if self._alarm is not None and (t is None or not t.is_alive()):
            self._alarm.close()
            self._alarm = None

    def reconfigure(self, port: str, baudrate: int, password_hash: str | None, dumb: bool,
                    idle_lock: float | None = None) -> None:
        """Apply new settings (SIGHUP): validated here (ConfigError), applied by the console thread.
        An empty `port` turns the console off (the thread idles) until a later reconfigure."""
        if idle_lock is not None:
            self._idle_lock = idle_lock
        console = self._make_console(password_hash, dumb)
        with self._lock:
            self._pending = (port, baudrate, console)
        self._wake()

    def stats(self) -> dict:
        with self._lock:
            d = dict(self._stats)
        c = self._console
        d.update(port=self._port, baudrate=self._baud, open=self._is_open, dumb=c.dumb, locked=c.locked,
                 running=bool(self._thread and self._thread.is_alive()), console=dict(c.stats))
        return d

    # --- the console thread -----------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _apply_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending:
            old = self._console
            self._port, self._baud, self._console = pending
            old.close()
            self._log.info("console: settings reloaded (port %s, %d baud)", self._port, self._baud)

    def _open(self):
        opener = self._opener
        if opener is None:
            import serial  # pyserial: imported only when a console is configured
            opener = serial.serial_for_url
        return opener(self._port, baudrate=self._baud, timeout=_IDLE_TIMEOUT, write_timeout=_WRITE_TIMEOUT)

    def _run(self) -> None:
        delay = self._backoff[0]
        outage = False
        while not self._stop.is_set():
            self._apply_pending()
            if not self._port:  # console switched off by a reload: sleep until stop() or reconfigure()
                select.select([self._wake_r], [], [])
                self._drain_wake()
                continue
            try:
                ser = self._open()
            except Exception as e:  # SerialException, OSError, ValueError (bad URL)...
                self._count("open_failures")
                with self._lock:
                    self._stats["last_error"] = "open: %s" % e
                if not outage:
                    outage = True
                    self._count("outages")
                    self._log.warning("console: cannot open %s (%s); retrying with backoff up to %d s "
                                      "(logged once per outage); check console.port and the cable",
                                      self._port, e, self._backoff[1])
                self._sleep(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            if outage:
                self._log.info("console: %s is back", self._port)
            outage, delay = False, self._backoff[0]
            self._count("opens")
            self._is_open = True
            try:
                self._session(ser)
            except Exception as e:  # the port failed under us (unplugged, hung up) or a bug
                if not self._stop.is_set():
                    outage = True
                    self._count("outages")
                    with self._lock:
                        self._stats["last_error"] = "io: %s" % e
                    self._log.warning("console: lost %s (%s: %s); reopening with backoff (logged once per "
                                      "outage)", self._port, type(e).__name__, e)
                    self._sleep(delay)
                    delay = min(delay * 2, self._backoff[1])
            finally:
                self._is_open = False
                try:
                    ser.close()
                except Exception:
                    pass

    def _sleep(self, delay: float) -> None:
        """Back off for `delay` seconds on the agent's clock; stop() and reconfigure() end it early."""
        deadline = self._clock() + delay
        while not self._stop.is_set() and self._pending is None:
            now = self._clock()
            if now >= deadline:
                return
            self._select([], [], deadline, now)

    def _select(self, rlist: list, wlist: list, deadline: float | None, now: float,
                timeout: float | None = -1.0) -> tuple:
        """select() on `rlist` + the wake pipe + the alarm, until `deadline` (suspend counted)."""
        alarm = self._alarm
        fds = rlist + [self._wake_r]
        if alarm is not None:
            alarm.set(deadline)
            if alarm.available:
                fds.append(alarm.fileno())
        if timeout is not None and timeout < 0:
            timeout = clockmod.wait_timeout(deadline, now, alarm)
        ready, writable, _ = select.select(fds, wlist, [], timeout)
        if alarm is not None and alarm.fileno() in ready:
            alarm.clear()
        if self._wake_r in ready:
            self._drain_wake()
        return ready, writable

    def _session(self, ser) -> None:
        con = self._console
        con.new_session()
        self._outq.clear()
        self._outq_bytes = 0
        self._dropped_unreported = 0
        self._write_retry_at, self._write_pause = 0.0, 0.0
        self._in_budget, self._in_budget_at = float(INPUT_BURST), self._clock()
        self._in_flooding = False
        self._enqueue(con.banner())
        try:
            fd = ser.fileno()  # a device or pty: wait in select() on it and the wake pipe
        except Exception:
            fd = None  # loop://, socket:// and other URLs without a descriptor: read with a timeout
        if fd is not None:
            os.set_blocking(fd, False)  # reads and writes go straight to the fd, never blocking
            self._fd_session(ser, fd, con)
        else:
            self._url_session(ser, con)

    def _fd_session(self, ser, fd: int, con: Console) -> None:
        while not self._stop.is_set() and self._pending is None:
            now = self._clock()
            self._flush_fd(fd, now)
            deadlines = [t for t in (con.wants_poll_at(),
                                     self._write_retry_at if self._outq and self._write_retry_at > now else None)
                         if t is not None]
            deadline = min(deadlines) if deadlines else None
            rlist = [fd]
            wlist = [fd] if self._outq and self._write_retry_at <= now else []
            # Sleep until input, writability, a wake-up, or the moment something is due: idle is idle.
            ready, writable = self._select(rlist, wlist, deadline, now,
                                           _BUSY_TIMEOUT if con.following else -1.0)
            if fd in ready:
                self._read_fd(fd, con)
            at = con.wants_poll_at()
            if at is not None and at <= self._clock():
                self._enqueue(con.poll())
        self._flush_fd(fd, self._clock())

    def _read_fd(self, fd: int, con: Console) -> None:
        now = self._clock()
        self._in_budget = min(float(INPUT_BURST), self._in_budget + (now - self._in_budget_at) * INPUT_RATE)
        self._in_budget_at = now
        if self._in_budget < 1.0:
            # Over the rate: throw away what is waiting, one system call per read and nothing else.
            data = self._os_read(fd, _DISCARD_MAX)
            self._count("input_dropped_bytes", len(data))
            if not self._in_flooding:
                self._in_flooding = True
                self._log.warning("console: input arrives faster than %d bytes/s on %s; the excess is "
                                  "discarded (line noise or a wrong baud rate?)", INPUT_RATE, self._port)
                self._enqueue(_DROP_MARK + b"input faster than %d bytes/s is being discarded]\r\n" % INPUT_RATE)
            return
        if self._in_budget >= INPUT_BURST:
            self._in_flooding = False  # a quiet spell ends the flood: the next one is reported again
        data = self._os_read(fd, min(_READ_MAX, int(self._in_budget)))
        self._in_budget -= len(data)
        self._count("bytes_in", len(data))
        self._enqueue(con.feed(data))

    @staticmethod
    def _os_read(fd: int, n: int) -> bytes:
        try:
            data = os.read(fd, n)
        except BlockingIOError:  # readiness went away (another reader, a flush): nothing to do
            return b""
        if not data:
            raise OSError("the port reports data but returned none (hung up)")
        return data

    def _url_session(self, ser, con: Console) -> None:
        timeout = _IDLE_TIMEOUT
        while not self._stop.is_set() and self._pending is None:
            self._flush_url(ser)
            at = con.wants_poll_at()
            busy = con.following or (at is not None and at - self._clock() < _IDLE_TIMEOUT)
            want = _BUSY_TIMEOUT if busy else _IDLE_TIMEOUT
            if want != timeout:  # pyserial reconfigures the tty on every timeout change: only when needed
                ser.timeout = timeout = want
            data = ser.read(min(max(ser.in_waiting, 1), _READ_MAX))
            if data:
                self._count("bytes_in", len(data))
                self._enqueue(con.feed(data))
            at = con.wants_poll_at()
            if at is not None and at <= self._clock():
                self._enqueue(con.poll())
        self._flush_url(ser)

    def _enqueue(self, data: bytes) -> None:
        if not data:
            return
        if len(data) > self._out_cap:
            self._dropped(len(data) - self._out_cap)
            data = data[-self._out_cap:]
        self._outq.append(data)
        self._outq_bytes += len(data)
        while self._outq_bytes > self._out_cap and len(self._outq) > 1:
            old = self._outq.popleft()
            self._outq_bytes -= len(old)
            if not old.startswith(_DROP_MARK):
                self._dropped(len(old))

    def _dropped(self, n: int) -> None:
        self._count("output_dropped_bytes", n)
        self._dropped_unreported += n

    def _flush_fd(self, fd: int, now: float) -> None:
        """Write queued output without ever blocking or spinning: stop at the first short write."""
        if now < self._write_retry_at:
            return
        if self._dropped_unreported and self._outq:
            mark = _DROP_MARK + b"%d bytes of output dropped: the terminal was not reading]\r\n" % (
                self._dropped_unreported)
            self._dropped_unreported = 0
            self._outq.appendleft(mark)
            self._outq_bytes += len(mark)
        while self._outq:
            chunk = self._outq[0]
            try:
                n = os.write(fd, chunk)
            except BlockingIOError:
                n = 0
            if n <= 0:
                # Took nothing although select() may have said writable (ptys do that): pause before
                # the next try instead of spinning; the queue keeps the newest output meanwhile.
                self._count("write_stalls")
                self._write_pause = min(max(self._write_pause * 2, _STUCK_MIN), _STUCK_MAX)
                self._write_retry_at = now + self._write_pause
                return
            self._write_pause = 0.0
            self._count("bytes_out", n)
            self._outq_bytes -= n
            if n < len(chunk):
                self._outq[0] = chunk[n:]
                return  # the rest when select() says the port is writable again
            self._outq.popleft()

    def _flush_url(self, ser) -> None:
        import serial
        while self._outq:
            chunk = self._outq[0]
            try:
                n = ser.write(chunk)
            except serial.SerialTimeoutException:
                # Nobody reads the other end (flow control held, terminal gone): drop, keep serving input.
                self._dropped(self._outq_bytes)
                self._outq.clear()
                self._outq_bytes = 0
                return
            self._outq.popleft()
            self._outq_bytes -= len(chunk)
            self._count("bytes_out", n if isinstance(n, int) else len(chunk))
