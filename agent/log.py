"""Logging for the daemon: secret redaction by construction, journald-friendly stderr, a ring buffer.

Every record goes through `Redactor` before it is formatted anywhere (stderr, the console's
`log` command, the in-memory ring), so a secret can only leak if it is neither registered nor
shaped like a token. Secrets are registered as soon as the agent learns them (client secret,
access token, software statement); JWT-shaped strings and `client_secret=`/`Bearer` forms are
masked by pattern as a second net.

Must never: write a registered secret anywhere, or block the caller on a slow consumer.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import sys
import threading
from typing import Callable

LOGGER_NAME = "pass-agent"

# A JWT (three base64url segments, the first starting with eyJ) or a long opaque bearer value.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")
_KV = re.compile(r"(?i)(client_secret|access_token|secret|password)([\"']?\s*[:=]\s*[\"']?)([^\s\"'&,}]+)")
_BEARER = re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]{8,})")

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def mask(secret: str | None, keep: int = 4) -> str:
    """A printable stand-in for a secret: a short prefix and the length, never enough to use it."""
    if not secret:
        return "<none>"
    return "%s…(%d chars)" % (secret[:keep], len(secret))


class Redactor:
    """Replaces every registered secret and every token-shaped string with a mask."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *secrets: str | None) -> None:
        with self._lock:
            for s in secrets:
                if s and len(s) >= 6:
                    self._secrets.add(s)

    def redact(self, text: str) -> str:
        for s in sorted(self._secrets, key=len, reverse=True):
            if s in text:
                text = text.replace(s, "[REDACTED]")
        text = _JWT.sub("[REDACTED-JWT]", text)
        text = _BEARER.sub(r"\1[REDACTED]", text)
        return _KV.sub(r"\1\2[REDACTED]", text)


REDACTOR = Redactor()


class LogBuffer:
    """The last `capacity` formatted (already redacted) lines, with live subscribers."""

    def __init__(self, capacity: int = 500) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self._subs: list[Callable[[str], None]] = []
        self._lock = threading.Lock()

    def append(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            subs = list(self._subs)
        for cb in subs:
            try:
                cb(line)
            except Exception:  # a broken subscriber must not break logging
                pass

    def tail(self, n: int = 20) -> list[str]:
        with self._lock:
            lines = list(self._lines)
        return lines[-n:] if n > 0 else []

    def subscribe(self, cb: Callable[[str], None]) -> None:
        with self._lock:
            self._subs.append(cb)

    def unsubscribe(self, cb: Callable[[str], None]) -> None:
        with self._lock:
            if cb in self._subs:
                self._subs.remove(cb)


class RedactingFormatter(logging.Formatter):
    """Formats a record, then redacts it. `journal` adds sd-daemon `<N>` priority prefixes."""

    def __init__(self, redactor: Redactor, journal: bool) -> None:
        super().__init__()
        self.redactor = redactor
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            # Only the exception type and message: tracebacks can carry locals' reprs.
            etype, evalue = record.exc_info[0], record.exc_info[1]
            msg += " [%s: %s]" % (etype.__name__ if etype else "?", evalue)
        msg = self.redactor.redact(msg)
        if self.journal:
            return "<%d>%s" % (_SYSLOG_PRIORITY.get(record.levelno, 6), msg)
        return "%-7s %s" % (record.levelname, msg)


class _BufferHandler(logging.Handler):
    def __init__(self, buf: LogBuffer, redactor: Redactor) -> None:
        super().__init__()
        self.buf = buf
        self.setFormatter(RedactingFormatter(redactor, journal=False))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.buf.append(self.format(record))
        except Exception:
            self.handleError(record)


LEVELS = ("debug", "info", "warning", "error")


def setup(level: str = "info", buffer: LogBuffer | None = None, stream=None) -> logging.Logger:
    """Configure the agent's logger (idempotent): stderr handler plus the optional ring buffer."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(RedactingFormatter(REDACTOR, journal))
    logger.addHandler(h)
    if buffer is not None:
        logger.addHandler(_BufferHandler(buffer, REDACTOR))
    return logger


def get(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME + ("." + name if name else ""))
