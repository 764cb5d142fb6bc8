"""Fuzzing the serial console's input path (`Console.feed`) with arbitrary bytes.

Escape sequences, control characters, invalid UTF-8, split multi-byte characters, line noise: the
console never raises, never reaches its internal-error fallback, keeps its state bounded, keeps
its output bounded by the input, never prints a token or secret, and with a password set no
random input unlocks it.
"""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from tests.console_fakes import FAKE_SECRET, FAKE_TOKEN, FakeClock, FakeService
except ImportError:  # tests/ on sys.path instead of the repo root
    from console_fakes import FAKE_SECRET, FAKE_TOKEN, FakeClock, FakeService

from agent import console as consolemod
from agent.console import COMMANDS, HISTORY, MAX_LINE, Console

PASSWORD = "fuzz-unguessable-Pa55-9f3e7c"


def cheap_hash(pw: str) -> str:
    """A valid pbkdf2 line at the lowest accepted cost, so that many wrong guesses stay fast."""
    salt = b"fuzzsalt0123"
    dk = hashlib.pbkdf2_hmac("sha256", pw.encode(), salt, 1000, 32)
    return "pbkdf2_sha256$1000$%s$%s" % (base64.b64encode(salt).decode(), base64.b64encode(dk).decode())


HASH = cheap_hash(PASSWORD)

words = st.sampled_from(list(COMMANDS) + ["log follow", "log 5", "log 9999", "help log", "device-info --decode",
                                          "yes", "no", "unlock", PASSWORD[:-1], "token x", "\x1b[A", "\x1bOB"])
keys = st.sampled_from([b"\r", b"\n", b"\r\n", b"\x03", b"\x15", b"\x7f", b"\x08", b"\t", b"\x1b", b"\x1b[",
                        b"\x1b[A", b"\x1b[B", b"\x1bOA", b"\x1b[1;5D", b"\x1b[200~", b"\x1b]0;x\x07", b"\x00",
                        b"\xc3", b"\xa9", b"\xe2\x82", b"\xff", b"\xf0\x9f\x98\x80", b"\x9b", b"\xef\xbf\xbd"])
pieces = st.one_of(st.binary(max_size=40), keys, words.map(lambda w: w.encode() + b"\r"),
                   st.text(max_size=20).map(lambda t: t.encode("utf-8")),
                   st.integers(1, 400).map(lambda n: b"a" * n))
sessions = st.lists(pieces, min_size=1, max_size=40)


def out_bound(data: bytes) -> int:
    # Each finished line may print a command's answer (a few kB at most with a 100-line log);
    # every other byte may echo or redraw the line (prompt + at most MAX_LINE characters).
    ends = data.count(b"\r") + data.count(b"\n") + data.count(b"\x03") + 1
    return 512 + 8192 * ends + 4 * (MAX_LINE + 40) * len(data)


def check_state(con: Console) -> None:
    assert len(con._buf) <= MAX_LINE
    assert len(con._esc) <= consolemod._ESC_MAX
    assert len(con._history) <= HISTORY
    assert len(con._out) == 0  # everything produced was handed back


def feed_all(con: Console, clock: FakeClock, chunks: list, step: float = 0.0) -> bytes:
    typed = b"".join(chunks).decode("utf-8", "replace")
    out = []
    for c in chunks:
        ans = con.feed(c)
        assert isinstance(ans, bytes)
        assert len(ans) <= out_bound(c), "output of %d bytes for %d bytes of input" % (len(ans), len(c))
        ans.decode("utf-8")  # what goes to the terminal is valid UTF-8
        check_state(con)
        out.append(ans)
        clock.advance(step)
        out.append(con.poll())
    text = b"".join(out).decode("utf-8")
    assert FAKE_TOKEN not in text and FAKE_SECRET not in text
    # The password may appear only as the echo of a line typed at the prompt (not in password mode).
    assert PASSWORD not in text or PASSWORD in typed
    assert "internal error in the console" not in text
    return b"".join(out)


@settings(max_examples=250, deadline=None)
@given(chunks=sessions, dumb=st.booleans())
def test_any_input_never_raises_and_stays_bounded(chunks: list, dumb: bool) -> None:
    svc = FakeService()
    for i in range(120):
        svc.logs.append("log line %d token=%s" % (i, FAKE_TOKEN))  # a leaky log line, redacted on output
    clock = FakeClock()
    con = Console(svc, clock=clock, dumb=dumb)
    con.banner()
    feed_all(con, clock, chunks, step=0.5)
    # Still usable afterwards: Ctrl-C, then a command answers normally.
    out = con.feed(b"\x03\rversion\r").decode()
    assert "pass-agent 0.1.0" in out
    con.close()


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=1, max_size=600), split=st.integers(1, 7), dumb=st.booleans())
def test_byte_at_a_time_equals_any_split(data: bytes, split: int, dumb: bool) -> None:
    # The decoder and escape parser keep state across reads: a sequence cut anywhere means the same.
    def run(chunks: list) -> bytes:
        clock = FakeClock()
        con = Console(FakeService(), clock=clock, dumb=dumb)
        con.banner()
        return feed_all(con, clock, chunks)

    whole = run([data])
    cut = run([data[i:i + split] for i in range(0, len(data), split)])
    assert whole == cut


@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(st.one_of(pieces, st.just(b"unlock\r"), st.just(b"unlock\r" + PASSWORD[:8].encode() + b"\r"),
                                 st.just(PASSWORD.encode()), st.just(PASSWORD.upper().encode() + b"\r")),
                       min_size=1, max_size=30),
       dumb=st.booleans())
def test_no_random_input_unlocks(chunks: list, dumb: bool) -> None:
    svc = FakeService()
    clock = FakeClock()
    con = Console(svc, clock=clock, dumb=dumb, password_hash=HASH)
    con.banner()
    # The clock runs on so that the lockout never stops the guesses from being checked.
    feed_all(con, clock, chunks, step=400.0)
    assert con.locked
    out = con.feed(b"\x03\rtoken\r").decode()
    assert "locked" in out and FAKE_TOKEN[:8] not in out
    assert "refresh" not in svc.calls and "register" not in svc.calls and "reset" not in svc.calls
    # The real password still works after all that noise (a fresh line, after any lockout).
    clock.advance(1000.0)
    con.feed(b"\x03")
    out = con.feed(b"unlock\r" + PASSWORD.encode() + b"\r").decode()
    assert not con.locked, out
