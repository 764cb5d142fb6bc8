"""The `pkcs11` key provider: an AES key that never leaves a PKCS#11 token seals the store key.

Job: on a box with a TEE (OP-TEE's PKCS#11 trusted application through /usr/lib/libckteec.so.0), a
secure element or an HSM, and with SoftHSM2 in tests, keep the store's key sealed by a token key:

- The wrapping key: AES-256, generated in the token on first use (C_GenerateKey, CKM_AES_KEY_GEN),
  label ``pass-agent store wrap key``, CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, not CKA_EXTRACTABLE:
  the token never hands it out. It seals each store's random 32-byte key K with CKM_AES_CBC_PAD
  (the mechanism every token we target has, OP-TEE included): sealed form = version byte 1 ||
  IV (16) || ciphertext (48), kept in the slot header (agent/slotformat.py, PAG2). The slot key and
  key check are derived from K (agent/sealing.py), so the header, the sealed K included, is
  authenticated by the slot's AES-GCM tag; another token's key yields another key check
  (foreign_device), never a silently wrong state.
- The generation counter (rollback detection): a CKO_DATA object per store, CKA_TOKEN and
  CKA_PRIVATE, label ``pass-agent generation <store id>``, CKA_VALUE = u32 big-endian. Updated by
  creating the new object and then destroying the older ones (tokens such as SoftHSM2 refuse to
  change a data object's value in place): a cut in between leaves two, and the newer value wins.
- The PIN comes from `pin_file` (one line), checked first: a regular file, not a symbolic link,
  owned by the agent's user or root, no access for others and no write access for the group.

python-pkcs11 (the optional extra ``pass-agent[pkcs11]``) is imported on first use, and this module
only when the configuration names the provider: the default daemon imports neither.

Must never: log, print or put in an exception the PIN or key material; try a login when the token
says the next wrong PIN locks it (a restart loop with a wrong pin_file would brick the token);
create or change anything in the token from `check` (ready() only logs in); leave a session's
error unconverted (every binding error becomes sealing.KeyUnavailable or sealing.WrongKey).
"""

from __future__ import annotations

import os
import stat
import struct
import threading
from typing import Any

from agent import sealing
from agent.keys.anchor import store_id

WRAP_LABEL = "pass-agent store wrap key"
COUNTER_LABEL = "pass-agent generation "
APPLICATION = "pass-agent"
MODULE_OPTEE = "/usr/lib/libckteec.so.0"
_SEALED_VERSION = 1
_IV = 16
MAX_PIN = 256
KEY = "[storage.pkcs11]"

_libs: dict[str, Any] = {}  # python-pkcs11 initialises a module once per process
_libs_lock = threading.Lock()


def _pkcs11() -> Any:
    try:
        import pkcs11
        import pkcs11.exceptions  # noqa: F401 - the names below
    except ImportError:
        raise sealing.KeyUnavailable(
            "the pkcs11 key provider needs the Python package python-pkcs11, which is not installed",
            code="store_key_unavailable", hint="pip install 'pass-agent[pkcs11]' (or python-pkcs11>=0.7)")
    return pkcs11


def read_pin(path: str) -> str:
    """The PIN in path, after checking the file is private to the agent. Raises KeyUnavailable
    naming the file and the fix (never the PIN)."""
    if not path:
        raise sealing.KeyUnavailable("%s pin_file is not set" % KEY, code="store_key_pin",
                                     hint="write the token's user PIN to a file (chmod 600) and set pin_file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        what = "is a symbolic link (refused)" if e.errno == 40 else "cannot be opened: %s" % e.strerror
        raise sealing.KeyUnavailable("the PIN file %s %s" % (path, what), code="store_key_pin",
                                     hint="point %s pin_file at a regular file readable by the agent" % KEY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise sealing.KeyUnavailable("the PIN file %s is not a regular file" % path, code="store_key_pin",
                                         hint="point %s pin_file at a regular file" % KEY)
        if st.st_uid not in (os.geteuid(), 0):
            raise sealing.KeyUnavailable("the PIN file %s is owned by uid %d, neither the agent's nor root"
                                         % (path, st.st_uid), code="store_key_pin",
                                         hint="chown root %s (or the agent's user)" % path)
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o027:
            raise sealing.KeyUnavailable("the PIN file %s has mode %04o: others may read it or the group may"
                                         " change it" % (path, mode), code="store_key_pin",
                                         hint="chmod 600 %s (or 640 with the agent's group)" % path)
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(MAX_PIN + 1)
    finally:
        os.close(fd)
    pin = raw.decode("utf-8", "replace").rstrip("\r\n")
    if not pin or len(raw) > MAX_PIN or "\n" in pin:
        raise sealing.KeyUnavailable("the PIN file %s does not hold one PIN line (%d bytes)" % (path, len(raw)),
                                     code="store_key_pin", hint="write the PIN alone on one line to %s" % path)
    return pin


class Pkcs11Keys(sealing.WrappedKeys):
    """The pkcs11 provider for the stores of one process (one token session, opened on first use)."""

    name = "pkcs11"
    provider_id = sealing.PROVIDER_PKCS11
    hardware = True

    def __init__(self, module: str, pin_file: str, *, token_label: str = "", slot: int | None = None,
                 store_dir: str | None = None) -> None:
        self.module = module
        self.token_label = token_label
        self.slot = slot
        self.pin_file = pin_file
        self._session: Any = None
        self._lock = threading.RLock()
        self.anchor = TokenAnchor(self, store_dir) if store_dir else None

    def where(self) -> str:
        return "%s token %s" % (self.module, repr(self.token_label) if self.token_label else "in slot %s" % self.slot)

    # -- the session ------------------------------------------------------------------------
    def _lib(self, p: Any) -> Any:
        with _libs_lock:
            lib = _libs.get(self.module)
            if lib is None:
                if not os.path.isfile(self.module):
                    raise sealing.KeyUnavailable("the PKCS#11 module %s does not exist" % self.module,
                                                 hint="set %s module to the token's library (OP-TEE: %s; SoftHSM2:"
                                                      " /usr/lib/softhsm/libsofthsm2.so)" % (KEY, MODULE_OPTEE))
                try:
                    lib = _libs[self.module] = p.lib(self.module)
                except Exception as e:
                    raise sealing.KeyUnavailable("the PKCS#11 module %s cannot be loaded (%s)" % (
                        self.module, type(e).__name__), hint="check %s module and the TEE supplicant"
                        " (tee-supplicant) on the box" % KEY)
            return lib

    def _token(self, p: Any, lib: Any) -> Any:
        try:
            if self.token_label:
                return lib.get_token(token_label=self.token_label)
            for s in lib.get_slots(token_present=True):
                if s.slot_id == self.slot:
                    return s.get_token()
            raise p.exceptions.NoSuchToken()
        except (p.exceptions.NoSuchToken, p.exceptions.TokenNotPresent, p.exceptions.TokenNotRecognised,
                p.exceptions.SlotIDInvalid):
            raise sealing.KeyUnavailable("no PKCS#11 token %s is present in %s" % (
                ("labelled %r" % self.token_label) if self.token_label else "in slot %s" % self.slot, self.module),
                code="store_key_token_missing",
                hint="check that the token exists (pkcs11-tool --module %s --list-slots) and %s token_label"
                     " or slot; the stored credentials are kept" % (self.module, KEY))
        except p.exceptions.PKCS11Error as e:
            raise sealing.KeyUnavailable("the PKCS#11 module %s cannot list its tokens (%s)" % (
                self.module, type(e).__name__), hint="check the token and the TEE supplicant")

    def _open(self) -> Any:
        if self._session is not None:
            return self._session
        p = _pkcs11()
        lib = self._lib(p)
        token = self._token(p, lib)
        flags = int(getattr(token, "flags", 0))
        if flags & int(p.TokenFlag.USER_PIN_LOCKED):
            raise sealing.KeyUnavailable("the user PIN of %s is locked" % self.where(), code="store_key_pin",
                                         hint="unlock it with the SO PIN (pkcs11-tool --init-pin --login"
                                              " --login-type so); the stored credentials are kept")
        if flags & int(p.TokenFlag.USER_PIN_FINAL_TRY):
            raise sealing.KeyUnavailable("the next wrong user PIN locks %s: the agent does not spend the last"
                                         " try" % self.where(), code="store_key_pin",
                                         hint="check %s pin_file, then log in once by hand (pkcs11-tool"
                                              " --login --test) to reset the counter" % KEY)
        pin = read_pin(self.pin_file)
        try:
            try:
                self._session = token.open(user_pin=pin, rw=True)
            except p.exceptions.UserAlreadyLoggedIn:  # login is per process: another session of ours did it
                self._session = token.open(rw=True)
        except (p.exceptions.PinIncorrect, p.exceptions.PinInvalid, p.exceptions.PinLenRange):
            raise sealing.KeyUnavailable("the PIN in %s is not the user PIN of %s" % (self.pin_file, self.where()),
                                         code="store_key_pin",
                                         hint="write the token's user PIN to %s; the stored credentials are"
                                              " kept (a few more wrong tries lock the token)" % self.pin_file)
        except p.exceptions.PinLocked:
            raise sealing.KeyUnavailable("the user PIN of %s is locked" % self.where(), code="store_key_pin",
                                         hint="unlock it with the SO PIN; the stored credentials are kept")
        except p.exceptions.PKCS11Error as e:
            raise sealing.KeyUnavailable("cannot open a session on %s (%s)" % (self.where(), type(e).__name__),
                                         hint="check the token (pkcs11-tool --list-slots)")
        finally:
            del pin
        return self._session

    def _call(self, fn: Any) -> Any:
        """Run fn(session, pkcs11) under the lock; a binding error drops the session (reopened next
        time, e.g. after the TEE supplicant restarted) and becomes KeyUnavailable."""
        with self._lock:
            s = self._open()
            p = _pkcs11()
            try:
                return fn(s, p)
            except (sealing.WrongKey, sealing.KeyUnavailable):
                raise
            except p.exceptions.PKCS11Error as e:
                self._drop()
                raise sealing.KeyUnavailable("the PKCS#11 token %s failed (%s)" % (self.where(), type(e).__name__),
                                             hint="check the token; the stored credentials are kept")

    def _drop(self) -> None:
        s, self._session = self._session, None
        if s is not None:
            try:
                s.close()
            except Exception:  # the session is gone anyway
                pass

    def ready(self) -> None:
        """Log in (nothing is created or changed). Raises KeyUnavailable."""
        with self._lock:
            self._open()

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- the wrapping key -------------------------------------------------------------------
    def _wrap_key(self, s: Any, p: Any, create: bool) -> Any:
        try:
            return s.get_key(object_class=p.ObjectClass.SECRET_KEY, key_type=p.KeyType.AES, label=WRAP_LABEL)
        except p.exceptions.NoSuchKey:
            if not create:
                raise sealing.WrongKey("the token holds no %r" % WRAP_LABEL)
        except p.exceptions.MultipleObjectsReturned:
            raise sealing.KeyUnavailable("the token %s holds several keys labelled %r" % (self.where(), WRAP_LABEL),
                                         hint="remove the extra ones (pkcs11-tool --list-objects)")
        A = p.Attribute
        return s.generate_key(p.KeyType.AES, 256, label=WRAP_LABEL, store=True, template={
            A.TOKEN: True, A.PRIVATE: True, A.SENSITIVE: True, A.EXTRACTABLE: False, A.ENCRYPT: True,
            A.DECRYPT: True, A.WRAP: False, A.UNWRAP: False})

    def has_wrap_key(self) -> bool:
        def probe(s: Any, p: Any) -> bool:
            try:
                self._wrap_key(s, p, create=False)
                return True
            except sealing.WrongKey:
                return False

        return self._call(probe)

    def _seal(self, store_key: bytes) -> bytes:
        def seal(s: Any, p: Any) -> bytes:
            key = self._wrap_key(s, p, create=True)
            iv = os.urandom(_IV)
            return bytes([_SEALED_VERSION]) + iv + key.encrypt(store_key, mechanism=p.Mechanism.AES_CBC_PAD,
                                                               mechanism_param=iv)

        return self._call(seal)

    def _unseal(self, sealed: bytes) -> bytes:
        if len(sealed) < 1 + _IV + 16 or sealed[0] != _SEALED_VERSION:
            raise sealing.WrongKey("not a sealed key of this provider")

        def unseal(s: Any, p: Any) -> bytes:
            key = self._wrap_key(s, p, create=False)
            try:
                return bytes(key.decrypt(sealed[1 + _IV:], mechanism=p.Mechanism.AES_CBC_PAD,
                                         mechanism_param=sealed[1:1 + _IV]))
            except (p.exceptions.EncryptedDataInvalid, p.exceptions.EncryptedDataLenRange):
                raise sealing.WrongKey("the sealed key does not open with this token's key")

        return self._call(unseal)

    def describe(self) -> str:
        return "pkcs11: AES-256 key in %s (hardware-backed: the key never leaves the token)" % self.where()


class TokenAnchor:
    """The generation counter of one store as a CKO_DATA object in the token."""

    def __init__(self, keys: Pkcs11Keys, store_dir: str) -> None:
        self.keys = keys
        self.label = COUNTER_LABEL + store_id(store_dir)
        self.where = "token data object %r" % self.label

    def _objects(self, s: Any, p: Any) -> list:
        return list(s.get_objects({p.Attribute.CLASS: p.ObjectClass.DATA, p.Attribute.LABEL: self.label}))

    @staticmethod
    def _value(o: Any, p: Any) -> int | None:
        v = bytes(o[p.Attribute.VALUE])
        return struct.unpack(">I", v)[0] if len(v) == 4 else None

    def _newest(self, objs: list, p: Any) -> tuple[int | None, Any]:
        best, best_obj = None, None
        for o in objs:
            v = self._value(o, p)
            if v is not None and (best is None or 0 < ((v - best) & 0xFFFFFFFF) < 0x80000000):
                best, best_obj = v, o
        return best, best_obj

    def read(self) -> int | None:
        return self.keys._call(lambda s, p: self._newest(self._objects(s, p), p)[0])

    def write(self, generation: int) -> None:
        def write(s: Any, p: Any) -> None:
            old = self._objects(s, p)
            A = p.Attribute
            s.create_object({A.CLASS: p.ObjectClass.DATA, A.TOKEN: True, A.PRIVATE: True, A.LABEL: self.label,
                             A.APPLICATION: APPLICATION, A.VALUE: struct.pack(">I", generation & 0xFFFFFFFF)})
            for o in old:  # after the new one exists: a cut in between leaves both, the newer wins
                o.destroy()

        self.keys._call(write)
