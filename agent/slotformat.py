"""The credential store's file format: one slot (or runtime token) file, sealed and classified.

Job: turn a payload dict into the bytes of one file and back. A file is a fixed 56-byte header
(magic, format version, kind, generation, salt, nonce, key check, ciphertext length, CRC32 of the
header) followed by AES-256-GCM ciphertext (agent/sealing.py) of canonical JSON, with the header
as associated data. The header layout is frozen: versions change only the payload schema, and
``MIGRATIONS`` upgrades an old payload one version at a time (a new header would need new magic).
`unseal` classifies any bytes without raising: ok, empty (missing or erased flash), corrupt
(damaged bytes), foreign_device (another key check: a cloned image), unsupported_version (a newer
format, or an older one without a migration) or migration_failed (authentic bytes that a migration
of this agent failed on: a bug, never reported as damage). Generations are u32 compared with
serial-number arithmetic (RFC 1982), so the counter may wrap.

Must never: raise on bad bytes, decide what the store does about a status (agent/store.py does),
touch the file system, or put a secret or plaintext in a detail string.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any, Callable

from agent import sealing

MAGIC = b"PAGS"
FORMAT_VERSION = 1
KIND_SLOT = 1
KIND_TOKEN = 2
# magic, version, kind, generation, salt, nonce, key check, ciphertext length; then CRC32 of these.
_HEAD = struct.Struct(">4sHHI16s12s8sI")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _CRC.size
SALT_SIZE = 16
GEN_MASK = 0xFFFFFFFF
_GEN_HALF = 0x80000000
FIRST_GENERATION = 1

# Payload upgrades: MIGRATIONS[v] turns a version-v payload dict into a version v+1 payload dict.
# Load applies them in order up to FORMAT_VERSION; the next save rewrites the slot in the new version.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}


def gen_newer(a: int, b: int) -> bool:
    """True when generation a is newer than b, modulo 2**32 (serial-number arithmetic)."""
    d = (a - b) & GEN_MASK
    return 0 < d < _GEN_HALF


def seal(key: bytes, check: bytes, salt: bytes, generation: int, payload: bytes, *,
         kind: int = KIND_SLOT, version: int = FORMAT_VERSION, nonce: bytes | None = None) -> bytes:
    """One complete slot file: header + AES-GCM(payload) with the header as associated data."""
    nonce = nonce if nonce is not None else os.urandom(sealing.NONCE_SIZE)
    head = _HEAD.pack(MAGIC, version, kind, generation & GEN_MASK, salt, nonce, check,
                      len(payload) + sealing.TAG_SIZE)
    header = head + _CRC.pack(zlib.crc32(head))
    return header + sealing.encrypt(key, nonce, payload, header)


def canonical(obj: Any) -> bytes:
    """Deterministic JSON bytes: equal states give equal bytes, which is what skips unchanged saves."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def erased(blob: bytes) -> bool:
    # Missing, empty, or erased flash (all 0x00 or all 0xFF): nothing was ever stored there.
    return not blob.strip(b"\x00") or not blob.strip(b"\xff")


def result(status: str, detail: str, **kw: Any) -> dict:
    r = {"status": status, "detail": detail, "generation": None, "salt": None, "payload": None,
         "version": None}
    r.update(kw)
    return r


def unseal(blob: bytes, keys: sealing.KeyProvider, kind: int) -> dict:
    """Classify and decrypt one slot file. Never raises on bad bytes.

    Returns {"status": ok|empty|corrupt|foreign_device|unsupported_version|migration_failed, "detail",
    "generation", "salt", "payload" (dict, migrated to FORMAT_VERSION), "version" (as stored)}.
    """
    if erased(blob):
        return result("empty", "empty or erased (%d bytes)" % len(blob))
    if len(blob) < HEADER_SIZE:
        return result("corrupt", "truncated header (%d of %d bytes)" % (len(blob), HEADER_SIZE))
    head = blob[:_HEAD.size]
    magic, version, fkind, gen, salt, nonce, check, length = _HEAD.unpack(head)
    if magic != MAGIC:
        return result("corrupt", "not a pass-agent store file (bad magic)")
    if _CRC.unpack(blob[_HEAD.size:HEADER_SIZE])[0] != zlib.crc32(head):
        return result("corrupt", "header checksum mismatch")
    if fkind != kind:
        return result("corrupt", "wrong file kind %d (expected %d)" % (fkind, kind))
    if length != len(blob) - HEADER_SIZE or length < sealing.TAG_SIZE:
        return result("corrupt", "length mismatch (header says %d ciphertext bytes, file has %d)"
                      % (length, len(blob) - HEADER_SIZE), generation=gen)
    if version > FORMAT_VERSION or (version < FORMAT_VERSION and any(
            v not in MIGRATIONS for v in range(version, FORMAT_VERSION))):
        return result("unsupported_version", "format v%d, this agent reads v%d%s" % (
            version, FORMAT_VERSION, "" if version > FORMAT_VERSION else " and has no migration from it"),
            generation=gen, version=version)
    key, want = keys(salt)
    if check != want:
        return result("foreign_device", "key check mismatch: written with another device identifier",
                      generation=gen, version=version)
    try:
        plain = sealing.decrypt(key, nonce, blob[HEADER_SIZE:], blob[:HEADER_SIZE])
        payload = json.loads(plain.decode("utf-8"))
        if not isinstance(payload, dict):
            raise ValueError("payload is not an object")
    except sealing.Damaged:
        return result("corrupt", "authentication tag mismatch (damaged ciphertext)", generation=gen)
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON (ValueErrors), absurd nesting
        return result("corrupt", "undecodable payload (%s)" % type(e).__name__, generation=gen)
    # The bytes are authentic: from here on a failure is a bug in this agent's migration code, not
    # damaged data. Reporting it as corrupt would register afresh and log every user out.
    for v in range(version, FORMAT_VERSION):
        try:
            payload = MIGRATIONS[v](payload)
            if not isinstance(payload, dict):
                raise TypeError("migration returned %s, not a dict" % type(payload).__name__)
        except Exception as e:  # any bug in a migration: report it as one, never crash load()
            return result("migration_failed", "the migration from format v%d to v%d failed (%s)"
                          % (v, v + 1, type(e).__name__), generation=gen, version=version)
    return result("ok", "generation %d" % gen, generation=gen, salt=salt, payload=payload,
                  version=version)


def header_generation(blob: bytes) -> int | None:
    """The generation in an intact header (magic and CRC checked, nothing decrypted), else None."""
    if len(blob) < HEADER_SIZE or blob[:4] != MAGIC:
        return None
    if _CRC.unpack(blob[_HEAD.size:HEADER_SIZE])[0] != zlib.crc32(blob[:_HEAD.size]):
        return None
    return _HEAD.unpack(blob[:_HEAD.size])[3]
