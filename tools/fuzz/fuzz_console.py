"""Harness: the serial console's input path (`agent.console.Console.feed`).

The first byte picks dumb mode and whether a password is set; the rest is fed in chunks whose
sizes come from the data. Checks: feed returns bytes, never reaches the internal-error fallback,
state stays bounded, no secret in the output, a locked console stays locked. Must never: do I/O.
"""

from __future__ import annotations

import base64
import hashlib

from agent import console as consolemod
from tools.fuzz.fakes import SECRET, TOKEN, FakeService

_PW = "fuzz-unguessable-Pa55-4b1d"
_SALT = b"fuzzsalt0123"
_HASH = "pbkdf2_sha256$1000$%s$%s" % (base64.b64encode(_SALT).decode(),
                                      base64.b64encode(hashlib.pbkdf2_hmac("sha256", _PW.encode(), _SALT, 1000, 32)).decode())


class _Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_one_input(data: bytes) -> None:
    if not data:
        return
    flags, data = data[0], data[1:]
    clock = _Clock()
    con = consolemod.Console(FakeService(), dumb=bool(flags & 1), clock=clock,
                             password_hash=_HASH if flags & 2 else None)
    out = [con.banner()]
    i = 0
    while i < len(data):
        n = 1 + data[i] % 16
        out.append(con.feed(data[i:i + n]))
        clock.t += 400.0 if flags & 4 else 0.5  # past any lockout, or inside the idle window
        out.append(con.poll())
        assert len(con._buf) <= consolemod.MAX_LINE and len(con._esc) <= consolemod._ESC_MAX
        i += n
    text = b"".join(out).decode("utf-8")
    assert "internal error in the console" not in text
    assert TOKEN not in text and SECRET not in text
    if flags & 2:
        assert con.locked, "random input unlocked the console"


KNOWN: list = []

DICT = [b"\r", b"\x1b[A", b"\x1b[B", b"\x03", b"\x15", b"\x7f", b"\t", b"help", b"status", b"token", b"unlock",
        b"log follow", b"log 500", b"register", b"yes", b"device-info --decode", b"config", b"lock"]
