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

Must never: block or slow the token service (the only thing another thread does here is append a
log line to the core's bounded follow queue); hold a lock across a read or write on the port; let
the output queue grow without bound (oldest output is dropped and counted when the peer stops
reading); die on an exception (it logs, backs off and reopens).
"""

from __future__ import annotations

import collections
import logging
import os
import select
import threading
import time
from typing import Callable

from agent import log as agent_log
from agent.console import Console

_READ_MAX = 4096
_IDLE_TIMEOUT = 0.5     # read timeout when nothing is due: bounds stop()/reconfigure() latency
_BUSY_TIMEOUT = 0.05    # while following the log or when the core wants a poll soon
_WRITE_TIMEOUT = 0.5    # a peer that stops reading costs at most this per write, then output is dropped


class SerialConsole:
    """Runs a Console on a serial port in a daemon thread; reopens the port when it goes away."""

    def __init__(self, service, port: str, *, baudrate: int = 115200, password_hash: str | None = None,
                 dumb: bool = False, log: logging.Logger | None = None, opener: Callable | None = None,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, out_queue_bytes: int = 64 * 1024,
                 idle_lock: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self._log = log or agent_log.get("console")
        self._opener = opener
        self._backoff = (backoff_initial, backoff_max)
        self._out_cap = out_queue_bytes
        self._idle_lock = idle_lock
        self._clock = clock
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
        self._is_open = False
        self._stats = {"opens": 0, "open_failures": 0, "outages": 0, "bytes_in": 0, "bytes_out": 0,
                       "output_dropped_bytes": 0, "last_error": None}

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
                self._stop.wait(delay)
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
                    self._stop.wait(delay)
                    delay = min(delay * 2, self._backoff[1])
            finally:
                self._is_open = False
                try:
                    ser.close()
                except Exception:
                    pass

    def _session(self, ser) -> None:
        con = self._console
        con.new_session()
        self._outq.clear()
        self._outq_bytes = 0
        self._enqueue(con.banner())
        try:
            fd = ser.fileno()  # a device or pty: wait in select() on it and the wake pipe
        except Exception:
            fd = None  # loop://, socket:// and other URLs without a descriptor: read with a timeout
        timeout = _IDLE_TIMEOUT
        if fd is not None:
            ser.timeout = timeout = 0
        while not self._stop.is_set() and self._pending is None:
            self._flush(ser)
            at = con.wants_poll_at()
            if fd is not None:
                # Sleep until input, a wake-up, or the moment the core asked for: idle is idle.
                wait = _BUSY_TIMEOUT if con.following else (None if at is None else max(0.0, at - self._clock()))
                ready, _, _ = select.select([fd, self._wake_r], [], [], wait)
                if self._wake_r in ready:
                    self._drain_wake()
                data = ser.read(min(max(ser.in_waiting, 1), _READ_MAX)) if fd in ready else b""
                if fd in ready and not data:
                    raise OSError("the port reports data but returned none (hung up)")
            else:
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
        self._flush(ser)

    def _enqueue(self, data: bytes) -> None:
        if not data:
            return
        if len(data) > self._out_cap:
            self._count("output_dropped_bytes", len(data) - self._out_cap)
            data = data[-self._out_cap:]
        self._outq.append(data)
        self._outq_bytes += len(data)
        while self._outq_bytes > self._out_cap and len(self._outq) > 1:
            old = self._outq.popleft()
            self._outq_bytes -= len(old)
            self._count("output_dropped_bytes", len(old))

    def _flush(self, ser) -> None:
        import serial
        while self._outq:
            chunk = self._outq[0]
            try:
                n = ser.write(chunk)
            except serial.SerialTimeoutException:
                # Nobody reads the other end (flow control held, terminal gone): drop, keep serving input.
                self._count("output_dropped_bytes", self._outq_bytes)
                self._outq.clear()
                self._outq_bytes = 0
                return
            self._outq.popleft()
            self._outq_bytes -= len(chunk)
            self._count("bytes_out", n if isinstance(n, int) else len(chunk))
