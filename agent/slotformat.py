"""The credential store's file format: one slot (or runtime token) file, sealed and classified.

Job: turn a payload dict into the bytes of one file and back. A file is a header followed by
AES-256-GCM ciphertext (agent/sealing.py) of canonical JSON, with the whole header as associated
data. Two header layouts, told apart by their magic, both frozen:

- ``PAGS`` (56 bytes): magic, format version, kind, generation, salt, nonce, key check, ciphertext
  length, CRC32 of the header. Sealed by the ``device`` provider (implicitly: it has no provider
  field); what every agent before hardware keys wrote and read, and what the device provider still
  writes, so a downgrade keeps reading a device-sealed store.
- ``PAG2`` (60 bytes + sealed key): the same fields, then the provider id (u8, sealing.PROVIDER_*),
  a reserved byte (0), the length of the sealed store key (u16) and the sealed key itself, then the
  CRC32. Written by the hardware providers (pkcs11, kernel): the header names who sealed the slot.

Versions change only the payload schema, and ``MIGRATIONS`` upgrades an old payload one version at
a time. `unseal` classifies any bytes without raising: ok, empty (missing or erased flash), corrupt
(damaged bytes), foreign_device (another key check, or a sealed key another token's key made: a
cloned image), unsupported_version (a newer format, or an older one without a migration),
key_unavailable (sealed by a provider this configuration does not set up, or that cannot be used
now: the token is missing, the PIN wrong; nothing is wrong with the bytes) or migration_failed
(authentic bytes that a migration of this agent failed on: a bug, never reported as damage).
Generations are u32 compared with serial-number arithmetic (RFC 1982), so the counter may wrap.

Canonical JSON without the `json` package (issue 20): `canonical` and `loads` drive the C encoder
and scanner of `_json` (what `json` itself uses) directly, because importing `json` also imports
`re` and costs the daemon's start ~2 ms before READY=1. The bytes are exactly json.dumps(obj,
sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False); `loads` takes the fast
path only for text the scanner consumes whole and hands anything else (whitespace around the
value, an error) to json.loads, so both accept and reject exactly what json does
(tests/test_store.py compares them).

Must never: raise on bad bytes, decide what the store does about a status (agent/store.py does),
touch the file system, or put a secret or plaintext in a detail string.
"""

from __future__ import annotations

import os
import struct
import zlib

from agent import sealing

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: `typing` costs the daemon's start ~2 ms (issue 20)
    from typing import Any, Callable

try:
    import _json
except ImportError:  # pragma: no cover - a Python without the C accelerator: json does it all
    _json = None

MAGIC = b"PAGS"
MAGIC2 = b"PAG2"
FORMAT_VERSION = 1
KIND_SLOT = 1
KIND_TOKEN = 2
# magic, version, kind, generation, salt, nonce, key check, ciphertext length; then CRC32 of these.
_HEAD = struct.Struct(">4sHHI16s12s8sI")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _CRC.size
# PAG2: the same fields, then provider id, reserved, sealed-key length; the sealed key; then CRC32.
_HEAD2 = struct.Struct(">4sHHI16s12s8sIBBH")
MAX_SEALED = 1024  # a wrapped 32-byte key is well under 100 bytes; refuse anything absurd
MAX_HEADER_SIZE = _HEAD2.size + MAX_SEALED + _CRC.size
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
         kind: int = KIND_SLOT, version: int = FORMAT_VERSION, nonce: bytes | None = None,
         provider: int = sealing.PROVIDER_DEVICE, sealed: bytes = b"") -> bytes:
    """One complete slot file: header + AES-GCM(payload) with the header as associated data. The
    device provider without a sealed key gets the original PAGS header, any other the PAG2 one."""
    nonce = nonce if nonce is not None else os.urandom(sealing.NONCE_SIZE)
    if provider == sealing.PROVIDER_DEVICE and not sealed:
        head = _HEAD.pack(MAGIC, version, kind, generation & GEN_MASK, salt, nonce, check,
                          len(payload) + sealing.TAG_SIZE)
    else:
        if len(sealed) > MAX_SEALED:
            raise ValueError("sealed store key of %d bytes exceeds %d" % (len(sealed), MAX_SEALED))
        head = _HEAD2.pack(MAGIC2, version, kind, generation & GEN_MASK, salt, nonce, check,
                           len(payload) + sealing.TAG_SIZE, provider, 0, len(sealed)) + sealed
    header = head + _CRC.pack(zlib.crc32(head))
    return header + sealing.encrypt(key, nonce, payload, header)


def _not_serializable(o: Any) -> Any:
    raise TypeError("Object of type %s is not JSON serializable" % type(o).__name__)


class _ScanContext:
    """The attributes _json.make_scanner reads from a json.JSONDecoder (its defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__
    memo: dict = {}


_scan = _json.make_scanner(_ScanContext()) if _json is not None else None


def canonical(obj: Any) -> bytes:
    """Deterministic JSON bytes: equal states give equal bytes, which is what skips unchanged saves."""
    if _json is not None:
        try:
            encode = _json.make_encoder({}, _not_serializable, _json.encode_basestring, None, ":", ",",
                                        True, False, False)
        except TypeError:  # pragma: no cover - another _json signature: json knows it
            pass
        else:
            return "".join(encode(obj, 0)).encode("utf-8")
    import json

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def loads(text: str) -> Any:
    """json.loads(text), through the C scanner when it consumes the whole text (canonical bytes)."""
    if _scan is not None and text:
        try:
            value, end = _scan(text, 0)
        except (StopIteration, ValueError, RecursionError):
            pass  # json.loads raises its own error (or recurses the same way) below
        else:
            if end == len(text):
                return value
    import json

    return json.loads(text)


def erased(blob: bytes) -> bool:
    # Missing, empty, or erased flash (all 0x00 or all 0xFF): nothing was ever stored there.
    return not blob.strip(b"\x00") or not blob.strip(b"\xff")


def result(status: str, detail: str, **kw: Any) -> dict:
    r = {"status": status, "detail": detail, "generation": None, "salt": None, "payload": None,
         "version": None, "provider": None, "sealed": b"", "hint": ""}
    r.update(kw)
    return r


def _parse_header(blob: bytes) -> dict | str:
    """The header fields of blob (magic and CRC checked), or a reason why it is not a header."""
    if len(blob) < HEADER_SIZE:
        return "truncated header (%d of %d bytes)" % (len(blob), HEADER_SIZE)
    if blob[:4] == MAGIC:
        head = blob[:_HEAD.size]
        magic, version, fkind, gen, salt, nonce, check, length = _HEAD.unpack(head)
        provider, sealed, size = sealing.PROVIDER_DEVICE, b"", HEADER_SIZE
    elif blob[:4] == MAGIC2:
        if len(blob) < _HEAD2.size + _CRC.size:
            return "truncated header (%d of at least %d bytes)" % (len(blob), _HEAD2.size + _CRC.size)
        (magic, version, fkind, gen, salt, nonce, check, length, provider, _reserved,
         n_sealed) = _HEAD2.unpack(blob[:_HEAD2.size])
        size = _HEAD2.size + n_sealed + _CRC.size
        if n_sealed > MAX_SEALED or len(blob) < size:
            return "truncated header (%d bytes, the header says %d)" % (len(blob), size)
        head = blob[:size - _CRC.size]
        sealed = head[_HEAD2.size:]
    else:
        return "not a pass-agent store file (bad magic)"
    if _CRC.unpack(blob[size - _CRC.size:size])[0] != zlib.crc32(head):
        return "header checksum mismatch"
    return {"version": version, "kind": fkind, "generation": gen, "salt": salt, "nonce": nonce,
            "check": check, "length": length, "provider": provider, "sealed": sealed, "size": size}


def _key_set(keys: Any) -> Any:
    if hasattr(keys, "key_for"):
        return keys
    return sealing.KeySet(sealing.as_sealer(keys, "unused"))


def unseal(blob: bytes, keys: Any, kind: int) -> dict:
    """Classify and decrypt one slot file. Never raises on bad bytes (nor on an unusable provider).

    keys: a sealing.KeySet, a Sealer, or a bare KeyProvider callable (device format only).
    Returns {"status": ok|empty|corrupt|foreign_device|unsupported_version|key_unavailable|
    migration_failed, "detail", "generation", "salt", "payload" (dict, migrated to FORMAT_VERSION),
    "version" (as stored), "provider" (id), "sealed" (the sealed store key), "hint"}.
    """
    if erased(blob):
        return result("empty", "empty or erased (%d bytes)" % len(blob))
    h = _parse_header(blob)
    if isinstance(h, str):
        return result("corrupt", h)
    gen, version, provider, sealed = h["generation"], h["version"], h["provider"], h["sealed"]
    size, length = h["size"], h["length"]
    if h["kind"] != kind:
        return result("corrupt", "wrong file kind %d (expected %d)" % (h["kind"], kind))
    if length != len(blob) - size or length < sealing.TAG_SIZE:
        return result("corrupt", "length mismatch (header says %d ciphertext bytes, file has %d)"
                      % (length, len(blob) - size), generation=gen)
    if version > FORMAT_VERSION or (version < FORMAT_VERSION and any(
            v not in MIGRATIONS for v in range(version, FORMAT_VERSION))):
        return result("unsupported_version", "format v%d, this agent reads v%d%s" % (
            version, FORMAT_VERSION, "" if version > FORMAT_VERSION else " and has no migration from it"),
            generation=gen, version=version, provider=provider)
    pname = sealing.PROVIDER_NAMES.get(provider, "provider %d" % provider)
    try:
        key, want = _key_set(keys).key_for(provider, h["salt"], sealed)
    except sealing.WrongKey:
        return result("foreign_device", "sealed by another %s key (another box or token)" % pname,
                      generation=gen, version=version, provider=provider)
    except sealing.KeyUnavailable as e:
        return result("key_unavailable", "sealed by %s: %s" % (pname, e), generation=gen,
                      version=version, provider=provider, hint=e.hint)
    except Exception as e:  # a provider's bug or an unexpected binding error: never crash load()
        return result("key_unavailable", "sealed by %s: the provider failed (%s)" % (pname, type(e).__name__),
                      generation=gen, version=version, provider=provider)
    if h["check"] != want:
        return result("foreign_device", "key check mismatch: written with another %s" % (
            "device identifier" if provider == sealing.PROVIDER_DEVICE else "%s key" % pname),
            generation=gen, version=version, provider=provider)
    head_end = size
    try:
        plain = sealing.decrypt(key, h["nonce"], blob[head_end:], blob[:head_end])
        payload = loads(plain.decode("utf-8"))
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
                          % (v, v + 1, type(e).__name__), generation=gen, version=version,
                          provider=provider)
    return result("ok", "generation %d" % gen, generation=gen, salt=h["salt"], payload=payload,
                  version=version, provider=provider, sealed=sealed)


def header_generation(blob: bytes) -> int | None:
    """The generation in an intact header (magic and CRC checked, nothing decrypted), else None."""
    h = _parse_header(blob)
    return None if isinstance(h, str) else h["generation"]
