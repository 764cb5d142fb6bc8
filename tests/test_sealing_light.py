"""The store's cryptography without its weight (issue 20): agent/sealing.py derives keys with its own
HKDF-SHA256 over CPython's built-in SHA-256 (not hashlib, which loads OpenSSL) and seals with
cryptography's AES-GCM binding without importing cryptography's Python layers.

The store format must not change: the derivation is checked against RFC 5869's test vectors and
against cryptography's own HKDF, and slots sealed by the light path open with cryptography's
public AESGCM and the other way round, with tampering detected either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent import sealing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# RFC 5869 appendix A, test cases 1-3 (SHA-256): IKM, salt, info, L, OKM.
RFC5869 = [
    ("0b" * 22, "000102030405060708090a0b0c", "f0f1f2f3f4f5f6f7f8f9", 42,
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
    ("".join("%02x" % i for i in range(0x00, 0x50)), "".join("%02x" % i for i in range(0x60, 0xb0)),
     "".join("%02x" % i for i in range(0xb0, 0x100)), 82,
     "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8"
     "367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"),
    ("0b" * 22, "", "", 42,
     "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
]


@pytest.mark.parametrize("ikm,salt,info,length,okm", RFC5869)
def test_hkdf_sha256_gives_rfc5869_test_vectors(ikm, salt, info, length, okm):
    assert sealing.hkdf_sha256(bytes.fromhex(ikm), bytes.fromhex(salt), bytes.fromhex(info), length).hex() == okm


def test_hkdf_sha256_agrees_with_cryptography_for_every_length_and_long_keys():
    rng = os.urandom
    for n in range(1, 100):
        ikm, salt, info = rng(n % 70 + 1), rng((n * 7) % 130), rng(n % 40)  # salts longer than a block too
        want = HKDF(algorithm=hashes.SHA256(), length=n, salt=salt or None, info=info).derive(ikm)
        assert sealing.hkdf_sha256(ikm, salt, info, n) == want, n


def test_store_keys_are_derived_exactly_as_before():
    # What the device and hardware providers derived through cryptography's HKDF (store format v1/v2).
    salt = bytes(range(16))
    okm = HKDF(algorithm=hashes.SHA256(), length=40, salt=salt, info=b"pass-agent store key v1").derive(
        "box-\u00e9-1".encode("utf-8"))
    assert sealing.derive_key("box-\u00e9-1", salt) == (okm[:32], okm[32:])
    k = os.urandom(32)
    okm = HKDF(algorithm=hashes.SHA256(), length=40, salt=salt, info=b"pass-agent store key v2 pkcs11").derive(k)
    assert sealing.derive_from_store_key(k, salt, "pkcs11") == (okm[:32], okm[32:])


def test_sealed_by_one_opens_with_the_other_both_ways_and_tampering_is_detected():
    key, nonce, aad = os.urandom(32), os.urandom(12), b"PAGS header bytes"
    for plain in (b"", b"x", os.urandom(4000)):
        ours = sealing.encrypt(key, nonce, plain, aad)
        theirs = AESGCM(key).encrypt(nonce, plain, aad)
        assert ours == theirs
        assert AESGCM(key).decrypt(nonce, ours, aad) == plain
        assert sealing.decrypt(key, nonce, theirs, aad) == plain
        for bad in (bytes([ours[0] ^ 1]) + ours[1:], ours[:-1] + bytes([ours[-1] ^ 0x80])):
            with pytest.raises(sealing.Damaged):
                sealing.decrypt(key, nonce, bad, aad)
        with pytest.raises(sealing.Damaged):
            sealing.decrypt(key, nonce, ours, aad + b"!")
        with pytest.raises(sealing.Damaged):
            sealing.decrypt(os.urandom(32), nonce, ours, aad)


def test_sealing_loads_neither_openssl_through_hashlib_nor_cryptographys_python_layers():
    # A fresh interpreter derives a key, seals and opens (a store load does this), then lists what
    # it imported: hashlib/_hashlib (the system's OpenSSL, ~1 MB, ~6 ms) and cryptography's
    # primitives packages (typing, enum, re, ~8 ms) stay out; only the compiled binding is needed.
    code = ("import sys, json\n"
            "from agent import sealing\n"
            "k, c = sealing.derive_key('dev', b'salt' * 4)\n"
            "ct = sealing.encrypt(k, b'n' * 12, b'plain', b'aad')\n"
            "assert sealing.decrypt(k, b'n' * 12, ct, b'aad') == b'plain'\n"
            "try:\n"
            "    sealing.decrypt(k, b'n' * 12, ct[:-1] + b'?', b'aad')\n"
            "except sealing.Damaged:\n"
            "    pass\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    r = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, %r)\n" % ROOT + code],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    mods = json.loads(r.stdout)
    assert "cryptography.hazmat.bindings._rust" in mods  # the real AES-GCM, not a stand-in
    assert not [m for m in mods if m in ("hashlib", "_hashlib", "hmac")]
    assert not [m for m in mods if m.startswith("cryptography.hazmat.primitives")]
