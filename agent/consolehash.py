"""Password hashes for the serial console's production lock, and the `pass-agent console-hash` command.

Format (one line, safe to put in TOML):
    scrypt$<n>$<r>$<p>$<salt_b64>$<hash_b64>          (default: n=16384, r=8, p=1, 16-byte salt)
    pbkdf2_sha256$<iterations>$<salt_b64>$<hash_b64>   (for builds whose OpenSSL lacks scrypt)

Verification derives the key again and compares with hmac.compare_digest (constant time), like
U-Boot's hashed stop key. Cost parameters read from a hash are bounded so a bad config line cannot
make the agent allocate gigabytes.

Must never: print, log or return a password; accept a malformed hash silently (parse() raises
ConfigError naming `console.password_hash`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from agent.errors import ConfigError

KEY = "console.password_hash"
SCRYPT_DEFAULT = (1 << 14, 8, 1)  # 16 MiB for ~50 ms on a PC: bearable on a set-top box, once per unlock
PBKDF2_DEFAULT = 600_000
_SALT_BYTES = 16
_DK_BYTES = 32
# Upper bounds accepted from a config file (memory = 128 * n * r bytes).
_MAX_SCRYPT_MEM = 64 * 1024 * 1024
_MAX_P = 16
_MAX_ITER = 10_000_000


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str, what: str) -> bytes:
    try:
        return base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ConfigError("%s: the %s part is not valid base64; make a new hash with "
                          "`pass-agent console-hash`" % (KEY, what))


def _bad(msg: str) -> ConfigError:
    return ConfigError("%s: %s; expected scrypt$n$r$p$salt$hash or pbkdf2_sha256$iterations$salt$hash "
                       "as printed by `pass-agent console-hash`" % (KEY, msg))


def parse(h: str) -> dict:
    """Split and check a hash line. Raises ConfigError (never echoing the line) when it is malformed."""
    if not isinstance(h, str) or not h:
        raise _bad("empty or not a string")
    parts = h.strip().split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            if n < 2 or n & (n - 1) or r < 1 or p < 1 or p > _MAX_P or 128 * n * r > _MAX_SCRYPT_MEM:
                raise _bad("scrypt parameters out of range (n a power of two, 128*n*r <= 64 MiB, p <= 16)")
            d = {"scheme": "scrypt", "n": n, "r": r, "p": p}
            salt, dk = parts[4], parts[5]
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            it = int(parts[1])
            if it < 1000 or it > _MAX_ITER:
                raise _bad("pbkdf2 iterations out of range (1000..10000000)")
            d = {"scheme": "pbkdf2_sha256", "iterations": it}
            salt, dk = parts[2], parts[3]
        else:
            raise _bad("unknown scheme or wrong number of $-separated parts")
    except ValueError:  # int() of a non-number
        raise _bad("a cost parameter is not an integer")
    d["salt"] = _unb64(salt, "salt")
    d["hash"] = _unb64(dk, "hash")
    if len(d["salt"]) < 8 or len(d["hash"]) < 16:
        raise _bad("salt or hash too short")
    return d


def _derive(pw: bytes, d: dict, dklen: int) -> bytes:
    if d["scheme"] == "scrypt":
        n, r, p = d["n"], d["r"], d["p"]
        return hashlib.scrypt(pw, salt=d["salt"], n=n, r=r, p=p, maxmem=128 * n * r * p + 2 * 1024 * 1024,
                              dklen=dklen)
    return hashlib.pbkdf2_hmac("sha256", pw, d["salt"], d["iterations"], dklen)


def hash_password(pw: str, scheme: str = "scrypt") -> str:
    """A new salted hash line for `pw` (scheme "scrypt" or "pbkdf2_sha256")."""
    if not pw:
        raise ValueError("empty password: choose a non-empty console password")
    salt = os.urandom(_SALT_BYTES)
    if scheme == "scrypt":
        n, r, p = SCRYPT_DEFAULT
        d = {"scheme": "scrypt", "n": n, "r": r, "p": p, "salt": salt}
        dk = _derive(pw.encode("utf-8"), d, _DK_BYTES)
        return "scrypt$%d$%d$%d$%s$%s" % (n, r, p, _b64(salt), _b64(dk))
    if scheme == "pbkdf2_sha256":
        d = {"scheme": scheme, "iterations": PBKDF2_DEFAULT, "salt": salt}
        dk = _derive(pw.encode("utf-8"), d, _DK_BYTES)
        return "pbkdf2_sha256$%d$%s$%s" % (PBKDF2_DEFAULT, _b64(salt), _b64(dk))
    raise ValueError("unknown scheme %r: use scrypt or pbkdf2_sha256" % scheme)


def verify(pw: str, h: str | dict) -> bool:
    """True when `pw` matches the hash line (or a parse() result). Constant-time comparison."""
    d = parse(h) if isinstance(h, str) else h
    try:
        dk = _derive(pw.encode("utf-8", "surrogatepass"), d, len(d["hash"]))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(dk, d["hash"])
