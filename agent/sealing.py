"""Sealing for the credential store: key providers and AES-256-GCM, the only cryptography it uses.

Job: give the store, for each per-store salt, an AES-256 key and an 8-byte key check (a
`KeyProvider`), and encrypt/decrypt with AES-256-GCM. The key provider is the seam for where the
key comes from: `DeviceIdKeys` derives it in software, HKDF-SHA256(device_id, salt, info "pass-agent
store key v1"), so a flash image copied to another box yields another key check there; a
hardware-backed provider (a TEE or a SoC key ladder that never lets the key leave the chip) will
be another class with the same call. The key check is part of the slot header (agent/slotformat.py):
it tells "written by another device" from "damaged" without a decryption attempt.

Must never: log a key, a key check or plaintext, or put one in an exception message; reuse a nonce
(callers pass a fresh random one per seal); import anything from the store (this module is below it).
"""

from __future__ import annotations

from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32
CHECK_SIZE = 8
TAG_SIZE = 16
NONCE_SIZE = 12
_HKDF_INFO = b"pass-agent store key v1"


class KeyProvider(Protocol):
    """Where the store's keys come from: salt -> (AES-256 key, 8-byte key check)."""

    def __call__(self, salt: bytes) -> tuple[bytes, bytes]: ...


class Damaged(Exception):
    """The ciphertext or its associated data does not authenticate under this key."""


def derive_key(device_id: str, salt: bytes) -> tuple[bytes, bytes]:
    """(AES-256 key, 8-byte key check) for this device identifier and store salt."""
    okm = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE + CHECK_SIZE, salt=salt, info=_HKDF_INFO).derive(
        device_id.encode("utf-8"))
    return okm[:KEY_SIZE], okm[KEY_SIZE:]


class DeviceIdKeys:
    """KeyProvider bound to the device identifier (software keys), cached per salt: HKDF is cheap,
    but a store reads both slots at every load."""

    def __init__(self, device_id: str) -> None:
        self._device_id = device_id
        self._cache: dict[bytes, tuple[bytes, bytes]] = {}

    def __call__(self, salt: bytes) -> tuple[bytes, bytes]:
        k = self._cache.get(salt)
        if k is None:
            k = self._cache[salt] = derive_key(self._device_id, salt)
        return k


def encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM ciphertext with its 16-byte tag appended."""
    return AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """The plaintext; raises Damaged when the tag does not authenticate ciphertext and associated data."""
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated)
    except InvalidTag:
        raise Damaged("authentication tag mismatch") from None
