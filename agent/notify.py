"""systemd notification protocol (sd_notify) without libsystemd: one datagram per message.

Uses `_socket`, the C module under `socket`: the daemon sends READY=1 before anything imports
`socket` (which brings enum, selectors and collections: ~5 ms of the start, issue 20).

Must never: raise into the caller (a missing or broken NOTIFY_SOCKET only disables notifications).
"""

from __future__ import annotations

import _socket
import os


class Notifier:
    def __init__(self, env: dict | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET") or ""
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        self.addr = addr or None
        self.watchdog_interval: float | None = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if usec and usec.isdecimal() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2.0  # ping at half the timeout, as systemd advises
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self.addr is not None

    def send(self, *lines: str) -> bool:
        if not self.addr:
            return False
        try:
            s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
            try:
                # Never wait: this runs on the event loop, and a receiver whose queue is full (a slow or
                # stuck manager; STATUS= after every upstream outcome of several applications) must not
                # stall the player socket. A dropped STATUS= is replaced by the next one.
                s.sendto("\n".join(lines).encode("utf-8", "replace"), _socket.MSG_DONTWAIT, self.addr)
            finally:
                s.close()
            self.sent += 1
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *(("STATUS=" + status,) if status else ()))

    def status(self, text: str) -> bool:
        return self.send("STATUS=" + text)

    def reloading(self) -> bool:
        import time

        return self.send("RELOADING=1", "MONOTONIC_USEC=%d" % int(time.monotonic() * 1e6))

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")
