"""Sealing for the credential store: key providers and AES-256-GCM, the only cryptography it uses.

Job: give the store, for each per-store salt, an AES-256 key and an 8-byte key check, and
encrypt/decrypt with AES-256-GCM. Where the key comes from is a key provider (a `Sealer`):

- ``device`` (`DeviceIdKeys`, id 0): HKDF-SHA256(device_id, salt, info "pass-agent store key v1").
  Software only: a flash image copied to another box yields another key check there, but anyone who
  knows the device identifier derives the same key. Its slots use the original header (magic PAGS),
  which every earlier agent reads.
- hardware providers (`WrappedKeys` subclasses in agent/keys/: ``pkcs11`` id 1, ``kernel`` id 2): a
  random 32-byte store key K is sealed by a key that never leaves the token or the kernel; the
  sealed form travels in the slot header (magic PAG2, which also names the provider), and the slot
  key and key check are HKDF-SHA256(K, salt, info "pass-agent store key v2 <provider>").

`KeySet` is what the store holds: the provider that seals new slots (the configured one) plus the
providers it can still open (for migration between providers), with a cache so a slot is unsealed
by the token once per start, not once per read. The key check is part of the slot header
(agent/slotformat.py): it tells "written by another device or token" from "damaged".

A provider may also keep the store's generation counter outside the slots (`anchor`, a
`GenerationAnchor`): the store uses it to notice a rollback (an older valid slot put back).

Where AES-GCM runs is a backend (`use_backend`): by default this process, through cryptography's
compiled binding (the CLI's check, reset and keys); the daemon installs its helper process
(agent/helperproc.py) so that cryptography is never loaded in the resident process. Either way the
bytes are the same (`local_encrypt`/`local_decrypt` are what the helper runs). The provider
interfaces (KeyProvider, GenerationAnchor, Sealer) exist for type checkers only: the daemon's import
of this module does not import typing.

Must never: log a key, a key check, a PIN or plaintext, or put one in an exception message; reuse a
nonce (callers pass a fresh random one per seal); import anything from the store (this module is
below it); import a hardware binding (agent/keys/ does, only when configured); import cryptography
or typing at import time.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms and ~0.5 MB in the daemon)
if TYPE_CHECKING:
    from typing import Any, Callable, Protocol

# SHA-256 from CPython's built-in module: hashlib would load the system's OpenSSL (~1 MB of PSS and
# ~6 ms at every start, docs/bench/weight.txt) for a hash the interpreter already carries.
try:
    from _sha256 import sha256 as _sha256
except ImportError:  # pragma: no cover
    try:
        from _sha2 import sha256 as _sha256  # CPython 3.12+
    except ImportError:
        from hashlib import sha256 as _sha256  # other builds

KEY_SIZE = 32
CHECK_SIZE = 8
TAG_SIZE = 16
NONCE_SIZE = 12
_HKDF_INFO = b"pass-agent store key v1"
_HKDF_INFO_V2 = b"pass-agent store key v2 "

# Header provider ids (agent/slotformat.py): frozen, a slot names the provider that sealed it.
PROVIDER_DEVICE = 0
PROVIDER_PKCS11 = 1
PROVIDER_KERNEL = 2
PROVIDER_NAMES = {PROVIDER_DEVICE: "device", PROVIDER_PKCS11: "pkcs11", PROVIDER_KERNEL: "kernel"}


if TYPE_CHECKING:  # the provider interfaces, for type checkers (mypy, pyright) only
    class KeyProvider(Protocol):
        """The original, minimal provider: salt -> (AES-256 key, 8-byte key check). Still accepted by
        Store(keys=...); it seals slots in the original format, like the device provider."""

        def __call__(self, salt: bytes) -> tuple[bytes, bytes]: ...


    class GenerationAnchor(Protocol):
        """The store's generation counter kept outside the slots (token data object, another directory).
        read(): the last generation recorded, or None when none was; write(gen) after a slot is durable.
        Both raise KeyUnavailable when the place cannot be reached."""

        where: str

        def read(self) -> int | None: ...

        def write(self, generation: int) -> None: ...


    class Sealer(Protocol):
        """A key provider for the store."""

        name: str            # "device", "pkcs11", "kernel"
        provider_id: int     # PROVIDER_* (in the slot header)
        hardware: bool       # the sealing key cannot be read by software on the box
        anchor: GenerationAnchor | None

        def new_store_key(self, salt: bytes) -> tuple[bytes, bytes, bytes]:
            """A fresh store key for this salt: (slot key, key check, sealed form for the header)."""
            ...

        def open_store_key(self, salt: bytes, sealed: bytes) -> tuple[bytes, bytes]:
            """(slot key, key check) from a header's salt and sealed form. Raises WrongKey when this
            provider's key did not seal it, KeyUnavailable when the provider cannot be used now."""
            ...

        def describe(self) -> str: ...

        def close(self) -> None: ...


class Damaged(Exception):
    """The ciphertext or its associated data does not authenticate under this key."""


class KeyUnavailable(Exception):
    """The provider cannot be used now (module missing, token absent, wrong PIN, kernel refuses).
    Carries a stable code and a hint; the message never holds a PIN or key material."""

    def __init__(self, message: str, *, code: str = "store_key_unavailable", hint: str = "") -> None:
        Exception.__init__(self, message)
        self.code = code
        self.hint = hint


class WrongKey(Exception):
    """The sealed store key was not sealed by this provider's key (another token or box)."""


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) over the built-in SHA-256 (the hmac module imports OpenSSL's _hashlib)."""
    if len(key) > 64:
        key = _sha256(key).digest()
    key = key.ljust(64, b"\0")
    return _sha256(key.translate(_OPAD) + _sha256(key.translate(_IPAD) + msg).digest()).digest()


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869): the store's key derivation, byte-identical to cryptography's HKDF
    (tests/test_sealing_light.py checks RFC 5869's vectors and cryptography's own output)."""
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF-SHA256 gives 1 to 8160 bytes, not %d" % length)
    prk = _hmac_sha256(salt or bytes(32), ikm)
    out, block, i = b"", b"", 0
    while len(out) < length:
        i += 1
        block = _hmac_sha256(prk, block + info + bytes((i,)))
        out += block
    return out[:length]


def derive_key(device_id: str, salt: bytes) -> tuple[bytes, bytes]:
    """(AES-256 key, 8-byte key check) for this device identifier and store salt."""
    okm = hkdf_sha256(device_id.encode("utf-8"), salt, _HKDF_INFO, KEY_SIZE + CHECK_SIZE)
    return okm[:KEY_SIZE], okm[KEY_SIZE:]


def derive_from_store_key(store_key: bytes, salt: bytes, provider: str) -> tuple[bytes, bytes]:
    """(slot key, key check) from a hardware provider's unsealed store key K."""
    okm = hkdf_sha256(store_key, salt, _HKDF_INFO_V2 + provider.encode("ascii"), KEY_SIZE + CHECK_SIZE)
    return okm[:KEY_SIZE], okm[KEY_SIZE:]


class DeviceIdKeys:
    """The `device` provider: keys bound to the device identifier (software), cached per salt: HKDF
    is cheap, but a store reads both slots at every load."""

    name = "device"
    provider_id = PROVIDER_DEVICE
    hardware = False

    def __init__(self, device_id: str, anchor: GenerationAnchor | None = None) -> None:
        self._device_id = device_id
        self._cache: dict[bytes, tuple[bytes, bytes]] = {}
        self.anchor = anchor

    def __call__(self, salt: bytes) -> tuple[bytes, bytes]:
        k = self._cache.get(salt)
        if k is None:
            k = self._cache[salt] = derive_key(self._device_id, salt)
        return k

    def new_store_key(self, salt: bytes) -> tuple[bytes, bytes, bytes]:
        key, check = self(salt)
        return key, check, b""

    def open_store_key(self, salt: bytes, sealed: bytes) -> tuple[bytes, bytes]:
        return self(salt)

    def describe(self) -> str:
        return "device: key derived from the device identifier (software, not hardware-backed)"

    def close(self) -> None:
        pass


class _CallableKeys:
    """Adapts a bare KeyProvider callable (the original seam) to a Sealer of the original format."""

    name = "device"
    provider_id = PROVIDER_DEVICE
    hardware = False
    anchor = None

    def __init__(self, fn: Callable[[bytes], tuple[bytes, bytes]]) -> None:
        self._fn = fn

    def new_store_key(self, salt: bytes) -> tuple[bytes, bytes, bytes]:
        key, check = self._fn(salt)
        return key, check, b""

    def open_store_key(self, salt: bytes, sealed: bytes) -> tuple[bytes, bytes]:
        return self._fn(salt)

    def describe(self) -> str:
        return "custom key provider"

    def close(self) -> None:
        pass


class WrappedKeys:
    """Base of the hardware providers: K = 32 random bytes sealed by `_seal` (the token's or the
    kernel's key does the work); slot key and key check derived from K. Subclasses implement
    _seal(K) -> sealed bytes and _unseal(sealed) -> K (raising WrongKey or KeyUnavailable)."""

    name = "hardware"
    provider_id = -1
    hardware = True
    anchor: GenerationAnchor | None = None

    def _seal(self, store_key: bytes) -> bytes:
        raise NotImplementedError

    def _unseal(self, sealed: bytes) -> bytes:
        raise NotImplementedError

    def new_store_key(self, salt: bytes) -> tuple[bytes, bytes, bytes]:
        k = os.urandom(KEY_SIZE)
        sealed = self._seal(k)
        key, check = derive_from_store_key(k, salt, self.name)
        return key, check, sealed

    def open_store_key(self, salt: bytes, sealed: bytes) -> tuple[bytes, bytes]:
        k = self._unseal(sealed)
        if len(k) != KEY_SIZE:
            raise WrongKey("the sealed store key does not open with this %s key" % self.name)
        return derive_from_store_key(k, salt, self.name)

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        pass


def as_sealer(keys: Any, device_id: str) -> Any:
    """A Sealer from what Store(keys=...) was given: None (the device provider), a Sealer, or a bare
    KeyProvider callable."""
    if keys is None:
        return DeviceIdKeys(device_id)
    if hasattr(keys, "new_store_key"):
        return keys
    if callable(keys):
        return _CallableKeys(keys)
    raise TypeError("keys must be a Sealer or a callable salt -> (key, check), not %s" % type(keys).__name__)


class KeySet:
    """The store's keys: `primary` seals new slots; every provider in `readers` (the primary
    included) may open slots. Unsealed keys are cached by (provider, salt, sealed form)."""

    def __init__(self, primary: Any, readers: list | tuple = (), anchor: GenerationAnchor | None = None) -> None:
        self.primary = primary
        self.readers: dict[int, Any] = {primary.provider_id: primary}
        for r in readers:
            self.readers.setdefault(r.provider_id, r)
        self._anchor = anchor
        self._cache: dict[tuple, tuple[bytes, bytes]] = {}

    @property
    def anchor(self) -> GenerationAnchor | None:
        """This store's generation counter: the one given, else the primary provider's (if any)."""
        return self._anchor if self._anchor is not None else getattr(self.primary, "anchor", None)

    def key_for(self, provider_id: int, salt: bytes, sealed: bytes) -> tuple[bytes, bytes]:
        """(slot key, key check) for a slot header. Raises KeyUnavailable when no configured
        provider has that id or it cannot be used now, WrongKey when another key sealed it."""
        ck = (provider_id, salt, sealed)
        k = self._cache.get(ck)
        if k is not None:
            return k
        p = self.readers.get(provider_id)
        if p is None:
            name = PROVIDER_NAMES.get(provider_id, "unknown provider %d" % provider_id)
            raise KeyUnavailable(
                "the slot was sealed by the %s key provider, which this configuration does not set up" % name,
                code="store_key_unavailable",
                hint="configure [storage] key_provider = \"%s\" (with its settings, e.g. [storage.%s]) to"
                     " read it and migrate, or run 'pass-agent reset' to discard the credentials" % (name, name))
        k = p.open_store_key(salt, sealed)
        self._cache[ck] = k
        return k

    def new(self, salt: bytes) -> tuple[bytes, bytes, bytes]:
        """A fresh store key from the primary provider: (slot key, key check, sealed form)."""
        key, check, sealed = self.primary.new_store_key(salt)
        self._cache[(self.primary.provider_id, salt, sealed)] = (key, check)
        return key, check, sealed

    def close(self) -> None:
        for p in self.readers.values():
            p.close()


_aesgcm_class: Any = None


def aesgcm() -> Any:
    """cryptography's AESGCM class, loaded at the first seal or open. Taken from the compiled binding
    when it has one (cryptography >= 42: the public class *is* that object), which skips
    cryptography's Python layers (typing, enum, re and the cipher registries: ~8 ms at start,
    docs/bench/weight.txt); older releases through the public module. Raises ImportError without
    cryptography (agent/cli.py checks before `run` starts)."""
    global _aesgcm_class
    if _aesgcm_class is None:
        try:
            from cryptography.hazmat.bindings._rust import openssl as _rust_openssl

            cls = _rust_openssl.aead.AESGCM
        except (ImportError, AttributeError):
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM as cls
        _aesgcm_class = cls
    return _aesgcm_class


_backend: Any = None


def use_backend(backend: Any) -> Any:
    """Route encrypt/decrypt through `backend` (an object with encrypt and decrypt of the same
    signatures, e.g. agent.helperproc.Helper), or back to this process with None. Returns the
    backend it replaces."""
    global _backend
    prev, _backend = _backend, backend
    return prev


def encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM ciphertext with its 16-byte tag appended (through the installed backend)."""
    b = _backend
    if b is not None:
        return b.encrypt(key, nonce, plaintext, associated)
    return local_encrypt(key, nonce, plaintext, associated)


def decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """The plaintext; raises Damaged when the tag does not authenticate ciphertext and associated data."""
    b = _backend
    if b is not None:
        return b.decrypt(key, nonce, ciphertext, associated)
    return local_decrypt(key, nonce, ciphertext, associated)


def local_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """encrypt() in this process, with cryptography."""
    return aesgcm()(key).encrypt(nonce, plaintext, associated)


def local_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """decrypt() in this process, with cryptography."""
    try:
        return aesgcm()(key).decrypt(nonce, ciphertext, associated)
    except Exception as e:
        from cryptography.exceptions import InvalidTag  # only on failure: it imports typing

        if isinstance(e, InvalidTag):
            raise Damaged("authentication tag mismatch") from None
        raise
