"""Key providers for the credential store, chosen by `[storage] key_provider` (issue 19).

Job: build, from the [storage] configuration, the `sealing.KeySet` one store uses: the configured
provider seals new slots; the device provider (always) and the pkcs11 provider (whenever
[storage.pkcs11] is filled in) can still open slots they sealed, which is what migration between
providers needs; the generation counter for rollback detection is the token's with pkcs11, else a
file in `[storage] anchor_dir` when set. Also the configuration checks (`config_problems`) and what
`pass-agent check` reports (`describe`).

- ``device`` (default): agent/sealing.DeviceIdKeys, software.
- ``pkcs11``: agent/keys/pkcs11.py (python-pkcs11, the optional extra ``pass-agent[pkcs11]``).
- ``kernel``: agent/keys/kernel.py (Linux trusted/encrypted keys through the keyring and AF_ALG).

Must never: import agent.keys.pkcs11 or python-pkcs11 (nor agent.keys.kernel) unless the
configuration names that provider, so the default daemon loads neither; read the PIN (the provider
does, when it logs in); put a PIN or key in a problem string.
"""

from __future__ import annotations

import _thread
import os

from agent import sealing

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: the daemon builds its key set before READY=1 without typing (issue 20)
    from typing import Any

PROVIDERS = ("device", "pkcs11", "kernel")
_shared: dict[tuple, Any] = {}  # one token session per process, shared by the stores of all applications
_shared_lock = _thread.allocate_lock()  # threading.Lock() is this; threading itself waits for stage 2


def _pkcs11_configured(p: Any) -> bool:
    return bool(p is not None and p.module)


def _pkcs11_provider(p: Any) -> Any:
    from agent.keys import pkcs11

    k = ("pkcs11", p.module, p.token_label, p.slot, p.pin_file)
    with _shared_lock:
        prov = _shared.get(k)
        if prov is None:
            prov = _shared[k] = pkcs11.Pkcs11Keys(p.module, p.pin_file, token_label=p.token_label, slot=p.slot)
        return prov


def _kernel_provider(kc: Any, store_dir: str) -> Any:
    from agent.keys import kernel

    blob = kc.blob_file or os.path.join(store_dir, kernel.BLOB_NAME)
    return kernel.KernelKeys(kc.key_type, blob, master=kc.master, store_dir=store_dir)


def keyset(storage: Any, device_id: str, store_dir: str, *, fs: Any = None, log: Any = None) -> sealing.KeySet:
    """The KeySet of the store in store_dir under this [storage] configuration (a StorageConfig)."""
    if log is None:  # the daemon passes its own (agent/startup.py: logging is not imported before READY=1)
        from agent import log as agent_log

        log = agent_log.get("store")
    name = getattr(storage, "key_provider", "device") or "device"
    anchor_dir = getattr(storage, "anchor_dir", "") or ""
    file_anchor = None
    if anchor_dir:  # imported only when configured: it loads hashlib (OpenSSL), which the default start avoids
        from agent.keys.anchor import FileAnchor

        file_anchor = FileAnchor(anchor_dir, store_dir, fs=fs, log=log)
    device = sealing.DeviceIdKeys(device_id)
    readers: list = [device]
    p11 = getattr(storage, "pkcs11", None)
    if name == "pkcs11":
        from agent.keys.pkcs11 import TokenAnchor

        primary = _pkcs11_provider(p11)
        return sealing.KeySet(primary, readers, anchor=TokenAnchor(primary, store_dir))
    if _pkcs11_configured(p11):  # migrating back from pkcs11: its slots must stay readable
        readers.append(_pkcs11_provider(p11))
    if name == "kernel":
        primary = _kernel_provider(storage.kernel, store_dir)
        return sealing.KeySet(primary, readers, anchor=file_anchor)
    return sealing.KeySet(device, readers, anchor=file_anchor)


def config_problems(storage: Any, check_files: bool) -> list[str]:
    """Problems of a [storage] table (a dict of normalised values) for its key provider."""
    problems: list[str] = []
    name = storage["key_provider"]
    anchor_dir = storage["anchor_dir"]
    if anchor_dir and not os.path.isabs(anchor_dir):
        problems.append("[storage] anchor_dir: %r is not an absolute path" % anchor_dir)
    elif anchor_dir and storage.get("dir") and os.path.realpath(anchor_dir) == os.path.realpath(storage["dir"]):
        problems.append("[storage] anchor_dir: the generation counter must live outside the storage directory"
                        " (a copy of that directory would carry it along); use another directory, ideally on"
                        " another partition")
    p = storage["pkcs11"]
    if name == "pkcs11" or _pkcs11_configured(p):
        problems.extend(_pkcs11_problems(p, check_files))
    if name == "kernel":
        kc = storage["kernel"]
        if kc.key_type not in ("trusted", "encrypted"):
            problems.append('[storage.kernel] key_type: found %r, expected "trusted" or "encrypted"' % kc.key_type)
        if kc.key_type == "encrypted" and not kc.master:
            problems.append('[storage.kernel] master: an encrypted key needs its master key, e.g. "trusted:kmk"')
        if kc.blob_file and not os.path.isabs(kc.blob_file):
            problems.append("[storage.kernel] blob_file: %r is not an absolute path" % kc.blob_file)
    return problems


def _pkcs11_problems(p: Any, check_files: bool) -> list[str]:
    import importlib.util

    out: list[str] = []
    if not p.module:
        out.append("[storage.pkcs11] module: not set; give the PKCS#11 library (OP-TEE: /usr/lib/libckteec.so.0)")
    elif not os.path.isabs(p.module):
        out.append("[storage.pkcs11] module: %r is not an absolute path" % p.module)
    elif check_files and not os.path.isfile(p.module):
        out.append("[storage.pkcs11] module: file %s does not exist" % p.module)
    if bool(p.token_label) == (p.slot is not None):
        out.append("[storage.pkcs11]: set exactly one of token_label and slot")
    if not p.pin_file:
        out.append("[storage.pkcs11] pin_file: not set; write the token's user PIN to a file (chmod 600)")
    elif not os.path.isabs(p.pin_file):
        out.append("[storage.pkcs11] pin_file: %r is not an absolute path" % p.pin_file)
    elif check_files:
        from agent.keys.pkcs11 import read_pin  # standard library only; python-pkcs11 is not imported

        try:
            read_pin(p.pin_file)
        except sealing.KeyUnavailable as e:
            out.append("[storage.pkcs11] pin_file: %s; %s" % (e, e.hint))
    if check_files and importlib.util.find_spec("pkcs11") is None:
        out.append("[storage.pkcs11]: the Python package python-pkcs11 is not installed; pip install"
                   " 'pass-agent[pkcs11]'")
    return out


def describe(ks: sealing.KeySet) -> tuple[str, bool]:
    """(one line for `pass-agent check`, hardware-backed?) after making sure the provider works
    (logs in to the token; creates nothing). Raises sealing.KeyUnavailable."""
    primary = ks.primary
    probe = getattr(primary, "check", None) or getattr(primary, "ready", None)
    if probe is not None:
        probe()
    line = "key provider %s" % primary.describe()
    anchor = ks.anchor
    line += "; rollback detection: %s" % (("generation counter in %s" % anchor.where) if anchor is not None
                                          else "off (set [storage] anchor_dir)")
    return line, bool(primary.hardware)


def close_all() -> None:
    """Close the shared token sessions (the next use logs in again): tests' restarts, and shutdown."""
    with _shared_lock:
        for p in _shared.values():
            p.close()
        _shared.clear()
