"""Console password hashes and `pass-agent console-hash` (interactive run on a real pty)."""

from __future__ import annotations

import base64
import fcntl
import hmac
import io
import os
import select
import subprocess
import sys
import termios
import time

import pytest

from agent import consolehash
from agent.commands import console_hash_command
from agent.consolehash import hash_password, parse, verify
from agent.errors import ConfigError


@pytest.mark.parametrize("scheme", ["scrypt", "pbkdf2_sha256"])
def test_roundtrip(scheme):
    h = hash_password("s3cret pass", scheme)
    assert h.startswith(scheme + "$") and "s3cret" not in h
    assert verify("s3cret pass", h)
    assert not verify("s3cret pasS", h)
    assert not verify("", h)
    assert hash_password("s3cret pass", scheme) != h  # salted


def test_scrypt_format():
    h = hash_password("x")
    name, n, r, p, salt, dk = h.split("$")
    assert (name, int(n), int(r), int(p)) == ("scrypt", 16384, 8, 1)
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(dk)) == 32


def test_comparison_is_constant_time(monkeypatch):
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((len(a), len(b)))
        return real(a, b)
    monkeypatch.setattr(consolehash.hmac, "compare_digest", spy)
    h = hash_password("pw", "pbkdf2_sha256")
    assert verify("pw", h) and not verify("wp", h)
    assert seen == [(32, 32), (32, 32)]


@pytest.mark.parametrize("bad", [
    "", "plain-password", "scrypt$16384$8$1$c2FsdHNhbHQ=", "md5$1$2$3",
    "scrypt$1000$8$1$c2FsdHNhbHRzYWx0$" + "A" * 44,          # n not a power of two
    "scrypt$1073741824$8$1$c2FsdHNhbHRzYWx0$" + "A" * 44,    # 1 TiB of memory
    "scrypt$x$8$1$c2FsdHNhbHRzYWx0$" + "A" * 44,
    "pbkdf2_sha256$10$c2FsdHNhbHRzYWx0$" + "A" * 44,         # too few iterations
    "pbkdf2_sha256$600000$not*base64$" + "A" * 44,
    "pbkdf2_sha256$600000$c2FsdA==$" + "A" * 44,             # salt too short
])
def test_malformed_hashes_are_config_errors(bad):
    with pytest.raises(ConfigError) as e:
        parse(bad)
    msg = str(e.value)
    assert msg.startswith("console.password_hash: ") and "pass-agent console-hash" in msg
    if len(bad) > 12:
        assert bad not in msg


def test_command_stdin():
    out = io.StringIO()
    assert console_hash_command(["--stdin"], io.StringIO("bench pw\r\n"), out) == 0
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert verify("bench pw", line.strip())


def test_command_stdin_pbkdf2():
    out = io.StringIO()
    assert console_hash_command(["--stdin", "--scheme", "pbkdf2_sha256"], io.StringIO("pw"), out) == 0
    assert out.getvalue().startswith("pbkdf2_sha256$600000$") and verify("pw", out.getvalue().strip())


def test_command_refuses_empty_and_non_tty(capsys):
    out = io.StringIO()
    assert console_hash_command(["--stdin"], io.StringIO("\n"), out) == 2
    assert console_hash_command([], io.StringIO("pw\n"), out) == 2
    assert console_hash_command(["--bogus"], io.StringIO(""), out) == 2
    assert out.getvalue() == ""
    err = capsys.readouterr().err
    assert "empty password" in err and "pass --stdin" in err


def _read_until(fd: int, pattern: bytes, buf: bytearray, limit: float = 60.0) -> None:
    end = time.monotonic() + limit  # a generous guard against a hung child, not a speed assertion
    while pattern not in buf:
        assert time.monotonic() < end, "never saw %r in %r" % (pattern, bytes(buf))
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            assert chunk, "child closed the terminal; saw %r" % bytes(buf)
            buf.extend(chunk)


def _spawn_on_pty():
    master, slave = os.openpty()
    code = "import sys; from agent.commands import console_hash_command; sys.exit(console_hash_command([]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave, close_fds=True,
        start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    return master, proc


@pytest.mark.parametrize("second", ["pty pw 1", "different"])
def test_command_interactive_asks_twice_without_echo(second):
    master, proc = _spawn_on_pty()
    try:
        buf = bytearray()
        _read_until(master, b"New console password: ", buf)
        os.write(master, b"pty pw 1\r")
        _read_until(master, b"Repeat it: ", buf)
        os.write(master, second.encode() + b"\r")
        rc = proc.wait(60)
        try:
            while True:
                r, _, _ = select.select([master], [], [], 0.2)
                chunk = os.read(master, 4096) if r else b""
                if not chunk:
                    break
                buf.extend(chunk)
        except OSError:
            pass
        text = buf.decode()
        assert "pty pw 1" not in text and "different" not in text  # never echoed
        if second == "different":
            assert rc == 1 and "the two passwords differ" in text
        else:
            assert rc == 0
            line = [x for x in text.split("\r\n") if x.startswith("scrypt$")][0]
            assert verify("pty pw 1", line.strip())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
