"""The `kernel` key provider: a Linux trusted (or encrypted) key in the kernel keyring seals the store key.

Job: on a box whose kernel offers trusted keys (sealed by a TPM, a TEE or CAAM; CONFIG_TRUSTED_KEYS)
or encrypted keys under a trusted master key (CONFIG_ENCRYPTED_KEYS), derive the store key from a
kernel key whose plaintext user space never sees:

- The kernel key: ``add_key("trusted", "pass-agent:<store id>", "new 32")`` (or ``"encrypted"``,
  ``"new default <master> 32"``) into this process's keyring on first use; its sealed blob, which
  only this box's TPM/TEE can load again (``keyctl read``), is kept in `blob_file` (default
  ``<storage dir>/kernel-key.blob``, written atomically before the key seals anything). Later
  starts load it with ``"load <blob>"``.
- The store key: K = HMAC-SHA256(kernel key, "pass-agent store key" || nonce), computed by the
  kernel through AF_ALG with the key given by its serial (ALG_SET_KEY_BY_KEY_SERIAL, Linux 6.2+);
  sealed form in the slot header = version byte 1 || the 16-byte random nonce. Another box (or a
  lost blob) gives another K, hence another key check: foreign_device, never a wrong state.
- System calls through ctypes (add_key, keyctl) and the socket module (AF_ALG): no keyutils needed.

Where the kernel lacks any of this (no trusted-key source: add_key fails with ENODEV; no AF_ALG or
no key-by-serial) `unavailable()` says why, the provider refuses with store_key_unavailable, and
the tests skip cleanly. `KernelOps` is the seam: tests run the provider's logic over a software
stand-in and the real kernel path where the kernel has it.

Must never: read or log the kernel key's plaintext (it cannot), log the blob, or seal with a key
whose blob is not yet durable (a restart would then have lost the key).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
from typing import Any

from agent import sealing
from agent.keys.anchor import store_id

BLOB_NAME = "kernel-key.blob"
_SEALED_VERSION = 1
_NONCE = 16
_LABEL = b"pass-agent store key"
KEY_SPEC_PROCESS_KEYRING = -2
KEYCTL_READ = 11
SOL_ALG = 279
ALG_SET_KEY_BY_KEY_SERIAL = 7
_SYS = {"x86_64": (248, 250), "aarch64": (217, 219), "armv7l": (309, 311), "armv6l": (309, 311),
        "riscv64": (217, 219), "i686": (286, 288), "mips": (4280, 4282)}  # (add_key, keyctl)


class KernelOps:
    """The kernel calls the provider makes (replaced by a software stand-in in tests)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._nr = _SYS.get(os.uname().machine)

    def add_key(self, key_type: str, description: str, payload: bytes) -> int:
        if self._nr is None:
            raise OSError(errno.ENOSYS, "add_key: unknown system call number on %s" % os.uname().machine)
        r = self._libc.syscall(self._nr[0], key_type.encode(), description.encode(), payload,
                               ctypes.c_size_t(len(payload)), ctypes.c_int(KEY_SPEC_PROCESS_KEYRING))
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return int(r)

    def read(self, serial: int) -> bytes:
        buf = ctypes.create_string_buffer(8192)
        r = self._libc.syscall(self._nr[1], KEYCTL_READ, ctypes.c_int(serial), buf, ctypes.c_size_t(len(buf)))
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return buf.raw[:min(int(r), len(buf))]

    def hmac_sha256(self, serial: int, data: bytes) -> bytes:
        with socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0) as s:
            s.bind(("hash", "hmac(sha256)"))
            s.setsockopt(SOL_ALG, ALG_SET_KEY_BY_KEY_SERIAL, struct.pack("=i", serial))
            op, _ = s.accept()
            with op:
                op.sendall(data)
                return op.recv(32)


def unavailable(ops: KernelOps | None = None, key_type: str = "trusted") -> str | None:
    """Why this kernel cannot serve the provider (None when it can): probes AF_ALG key-by-serial
    with a throwaway user key, and the trusted-key source with ENODEV from a 'new' request."""
    try:
        ops = ops or KernelOps()
        serial = ops.add_key("user", "pass-agent:probe", os.urandom(32))
    except (OSError, AttributeError) as e:
        return "the kernel keyring is not usable here (add_key: %s)" % (getattr(e, "strerror", None) or e)
    try:
        ops.hmac_sha256(serial, b"probe")
    except (OSError, AttributeError) as e:
        return "the kernel has no AF_ALG hmac(sha256) with keys by serial (Linux 6.2+, CONFIG_CRYPTO_USER_API_HASH):" \
               " %s" % (getattr(e, "strerror", None) or e)
    if key_type == "trusted":
        try:
            ops.add_key("trusted", "pass-agent:probe-trusted", b"new 32")
        except OSError as e:
            return "the kernel has no trusted-key source (TPM, TEE or CAAM): add_key trusted: %s" % e.strerror
    return None


class KernelKeys:
    """The kernel provider of one store (its own kernel key and blob file)."""

    name = "kernel"
    provider_id = sealing.PROVIDER_KERNEL
    anchor = None

    def __init__(self, key_type: str, blob_file: str, *, master: str = "", store_dir: str = "",
                 ops: Any = None) -> None:
        self.key_type = key_type
        self.master = master
        self.blob_file = blob_file
        self.description = "pass-agent:" + (store_id(store_dir) if store_dir else "store")
        self.hardware = key_type == "trusted" or master.startswith("trusted:")
        self._ops = ops
        self._serial: int | None = None
        self._lock = threading.Lock()

    def _fail(self, what: str, e: OSError) -> sealing.KeyUnavailable:
        return sealing.KeyUnavailable("the kernel %s key %s: %s failed: %s" % (
            self.key_type, self.description, what, e.strerror or e), hint=(
            "this kernel needs %s keys (a TPM, TEE or CAAM for trusted keys) and AF_ALG with keys by serial"
            " (Linux 6.2+); otherwise use key_provider = \"pkcs11\" or \"device\"" % self.key_type))

    def ready(self) -> None:
        with self._lock:
            self._key()

    def check(self) -> None:
        """For `pass-agent check`: load the existing blob, or probe that the kernel could make one
        (throwaway keys in this process's keyring only); never writes the blob file."""
        if os.path.exists(self.blob_file):
            self.ready()
            return
        why = unavailable(self._ops, self.key_type)
        if why:
            raise sealing.KeyUnavailable(why, hint="this kernel cannot seal the store key; use key_provider ="
                                                   " \"pkcs11\" (a TEE's PKCS#11 module) or \"device\"")

    def _key(self) -> int:
        if self._serial is not None:
            return self._serial
        ops = self._ops = self._ops or KernelOps()
        try:
            with open(self.blob_file, "rb") as f:
                blob = f.read(16384).strip()
        except FileNotFoundError:
            blob = None
        except OSError as e:
            raise self._fail("reading the blob %s" % self.blob_file, e)
        if blob is not None:
            try:
                self._serial = ops.add_key(self.key_type, self.description, b"load " + blob)
            except OSError as e:
                raise self._fail("loading the blob %s" % self.blob_file, e)
            return self._serial
        new = b"new 32" if self.key_type == "trusted" else b"new default %s 32" % self.master.encode()
        try:
            serial = ops.add_key(self.key_type, self.description, new)
            blob = ops.read(serial)
        except OSError as e:
            raise self._fail("creating the key", e)
        tmp = self.blob_file + ".tmp"
        try:  # durable before the key seals anything: a restart must find it again
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0),
                         0o600)
            try:
                os.write(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.blob_file)
            dfd = os.open(os.path.dirname(self.blob_file) or ".", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            raise self._fail("saving the blob %s" % self.blob_file, e)
        self._serial = serial
        return serial

    def _derive(self, nonce: bytes) -> bytes:
        with self._lock:
            serial = self._key()
            try:
                return self._ops.hmac_sha256(serial, _LABEL + nonce)
            except OSError as e:
                raise self._fail("AF_ALG hmac(sha256)", e)

    def new_store_key(self, salt: bytes) -> tuple[bytes, bytes, bytes]:
        nonce = os.urandom(_NONCE)
        key, check = sealing.derive_from_store_key(self._derive(nonce), salt, self.name)
        return key, check, bytes([_SEALED_VERSION]) + nonce

    def open_store_key(self, salt: bytes, sealed: bytes) -> tuple[bytes, bytes]:
        if len(sealed) != 1 + _NONCE or sealed[0] != _SEALED_VERSION:
            raise sealing.WrongKey("not a sealed key of the kernel provider")
        return sealing.derive_from_store_key(self._derive(sealed[1:]), salt, self.name)

    def describe(self) -> str:
        return "kernel: %s key %s, blob %s (%s)" % (
            self.key_type, self.description, self.blob_file,
            "hardware-backed: sealed by the TPM/TEE" if self.hardware else "NOT hardware-backed: user master key")

    def close(self) -> None:
        pass

