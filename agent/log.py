"""Logging for the daemon: secret redaction by construction, journald-friendly stderr, a ring buffer.

Every record goes through `Redactor` before it is formatted anywhere (stderr, the console's
`log` command, the in-memory ring), so a secret can only leak if it is neither registered nor
shaped like a token. Secrets are registered as soon as the agent learns them (client secret,
access token, software statement), each under its kind: the redactor holds the current and the
previous secret of every kind (a rotated token can still be quoted by a late log line; older
ones cannot), so it stays small however many tokens the agent fetches. JWT-shaped strings and
`client_secret=`/`Bearer` forms are masked by pattern as a second net.

Every record is also one line: control characters (C0 including CR/LF/TAB, DEL, C1, and the
Unicode line/paragraph separators) in a record's arguments and exception text are shown
escaped (`\n`, `\x1b`, `\u2028`), because arguments carry what peers and upstream servers
supplied (a player's error code, an HTTP body) and must not forge log lines or drive the
terminal of whoever reads the journal. The agent's own message templates may contain a line
break: it continues the same record on an indented line with the same priority.

Must never: write a registered secret anywhere, let a peer's text start a log line or reach a
terminal unescaped, or block the caller on a slow consumer.
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
    """Replaces every registered secret and every token-shaped string with a mask.

    Holds, per kind ("access_token", "client_secret", "software_statement"...), the current and
    the previous secret; secrets registered without a kind are kept in a small FIFO of
    UNTYPED_MAX. The secrets to look for are sorted (longest first, so a secret that contains
    another is masked whole) once per change, not once per log line.
    """

    PER_KIND = 2        # the current and the previous secret of each kind
    UNTYPED_MAX = 16    # secrets registered without a kind

    def __init__(self) -> None:
        self._kinds: dict[str, list[str]] = {}
        self._untyped: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._ordered: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, *secrets: str | None, kind: str | None = None) -> None:
        """Register secrets. With `kind`, each one becomes that kind's current secret."""
        with self._lock:
            changed = False
            for s in secrets:
                if not s or len(s) < 6:
                    continue
                if kind is None:
                    if s in self._untyped:
                        continue
                    self._untyped[s] = None
                    while len(self._untyped) > self.UNTYPED_MAX:
                        self._untyped.popitem(last=False)
                else:
                    held = self._kinds.setdefault(kind, [])
                    if held and held[-1] == s:
                        continue
                    if s in held:
                        held.remove(s)
                    held.append(s)
                    del held[:-self.PER_KIND]
                changed = True
            if changed:
                every = set(self._untyped)
                for held in self._kinds.values():
                    every.update(held)
                self._ordered = tuple(sorted(every, key=len, reverse=True))

    def __len__(self) -> int:
        return len(self._ordered)

    def __contains__(self, secret: object) -> bool:
        return secret in self._ordered

    def redact(self, text: str) -> str:
        for s in self._ordered:  # a snapshot: add() replaces the tuple, never mutates it
            if s in text:
                text = text.replace(s, "[REDACTED]")
        text = _JWT.sub("[REDACTED-JWT]", text)
        text = _BEARER.sub(r"\1[REDACTED]", text)
        return _KV.sub(r"\1\2[REDACTED]", text)


REDACTOR = Redactor()


# Everything that can move a cursor, end a line or start a terminal escape sequence: C0 (with
# TAB, CR, LF), DEL, C1 (NEL, CSI...) and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_NOT_LF = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(m: re.Match) -> str:
    c = m.group()
    named = _NAMED.get(c)
    if named is not None:
        return named
    o = ord(c)
    return "\\x%02x" % o if o < 0x100 else "\\u%04x" % o


def escape_controls(text: str) -> str:
    """`text` with every control character shown as an escape (`\n`, `\x1b`, `\x85`, `\u2028`)."""
    return _CONTROL.sub(_escape_one, text)


class _Escaped:
    """Formats like the wrapped object (%s, %r), with control characters escaped."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __str__(self) -> str:
        return escape_controls(str(self.obj))

    def __repr__(self) -> str:
        return escape_controls(repr(self.obj))


def _escape_arg(a: object) -> object:
    if isinstance(a, str):
        return escape_controls(a)
    if a is None or isinstance(a, (int, float)):  # numbers keep %d/%f formatting; no text inside
        return a
    return _Escaped(a)


def _escaped_message(record: logging.LogRecord) -> str:
    """record.getMessage() with the arguments' control characters escaped."""
    msg = str(record.msg)
    args = record.args
    if not args:
        return msg
    if isinstance(args, dict):  # logger.info("%(k)s", {"k": ...})
        return msg % {k: _escape_arg(v) for k, v in args.items()}
    return msg % tuple(_escape_arg(a) for a in args)


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
        try:
            msg = _escaped_message(record)
        except (TypeError, ValueError):
            msg = record.getMessage()  # a broken format string: let logging report it as usual
        if record.exc_info:
            # Only the exception type and message: tracebacks can carry locals' reprs.
            etype, evalue = record.exc_info[0], record.exc_info[1]
            msg += " [%s: %s]" % (etype.__name__ if etype else "?", escape_controls(str(evalue)))
        # What is left unescaped is the agent's own template (or a non-literal message): escape all
        # but its line breaks, which continue this record on indented lines with the same prefix.
        msg = _CONTROL_NOT_LF.sub(_escape_one, self.redactor.redact(msg))
        if self.journal:
            prefix = "<%d>" % _SYSLOG_PRIORITY.get(record.levelno, 6)
            first, cont = prefix, prefix + "  "
        else:
            first, cont = "%-7s " % record.levelname, " " * 10
        if "\n" not in msg:
            return first + msg
        head, *rest = msg.split("\n")
        return first + head + "".join("\n" + cont + line for line in rest)


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
