"""Crash consistency of migration between key providers and of the generation anchor (issue 19).

The same crash model as tests/test_store_crash.py (SimFs: unsynced data dropped, the last write
torn, renames lost or kept), applied to the writes a first start with a new key provider makes:
re-seal into the other slot, record the generation, re-seal over the old slot, record again. Every
crash image of every prefix must load the registration (never nothing, never a rollback), and the
next start must finish the migration (both slots sealed by the new provider). A second test fails
each operation with EIO. The generation counter is the crash-modelled file anchor here (the
pkcs11 token's counter is one atomic token write; tests/test_keys_pkcs11.py checks it for real),
and the pkcs11 provider is SoftHSM2's: these tests skip where SoftHSM2 is missing.
"""

from __future__ import annotations

import os

import pytest

from agent import keys, sealing
from agent.errors import StoreError
from agent.keys.anchor import FileAnchor
from agent.store import SLOT_NAMES, Store
from tests import softhsm
from tests.test_store_crash import SimFs, crash_images, make_state

DEV = "serial:0123456789|mac:00:11:22:33:44:55"
TOTAL = {"crash_states": 0}


@pytest.fixture
def env(tmp_path):
    t = softhsm.tokens()
    d = str(tmp_path / "flash")
    anchor_dir = str(tmp_path / "counter")
    os.makedirs(d, mode=0o700)
    os.makedirs(anchor_dir, mode=0o700)
    pin = softhsm.pin_file(tmp_path, softhsm.TOKENS["pa-main"])
    from agent.keys.pkcs11 import Pkcs11Keys

    token = Pkcs11Keys(t["module"], pin, token_label="pa-main")
    device = sealing.DeviceIdKeys(DEV)
    providers = {"device": device, "pkcs11": token}

    def keyset(primary: str, fs) -> sealing.KeySet:
        return sealing.KeySet(providers[primary], list(providers.values()), anchor=FileAnchor(anchor_dir, d, fs=fs))

    yield d, keyset
    token.close()
    keys.close_all()


def store(d: str, ks: sealing.KeySet, fs) -> Store:
    s = Store(d, DEV, fs=fs, keys=ks)
    s.open()
    return s


def providers_in(fs: SimFs, d: str) -> list:
    out = []
    for n in SLOT_NAMES:
        blob = bytes(fs.now[os.path.join(d, n)].data) if os.path.join(d, n) in fs.now else b""
        out.append("device" if blob[:4] == b"PAGS" else sealing.PROVIDER_NAMES.get(blob[52]) if blob else None)
    return out


def history(d: str, keyset, old: str, states: list) -> SimFs:
    fs = SimFs()
    s = store(d, keyset(old, fs), fs)
    s.load()
    for st in states:
        s.save(st)
    s.close()
    return SimFs.from_image({p: bytes(i.data) for p, i in fs.now.items()})  # all durable


MIGRATIONS = {"device-to-pkcs11": ("device", "pkcs11"), "pkcs11-to-device": ("pkcs11", "device")}


@pytest.mark.parametrize("name", sorted(MIGRATIONS))
def test_a_crash_at_every_step_of_a_migration_keeps_the_registration(env, capsys, name):
    d, keyset = env
    old, new = MIGRATIONS[name]
    state = make_state(1, 1)
    fs = history(d, keyset, old, [make_state(1, None), state])
    assert providers_in(fs, d) == [old, old]
    fs.start()
    s = store(d, keyset(new, fs), fs)
    assert s.load() == state
    s.close()
    assert providers_in(fs, d) == [new, new]
    kinds = [op[0] for op in fs.ops]
    assert kinds.count("rename") == 4  # slot, counter, slot, counter
    explored = 0
    for k, snap in enumerate(fs.snaps):
        for files in crash_images(snap):
            img = SimFs.from_image(files)
            s = store(d, keyset(new, img), img)
            assert s.load() == state, "step %d: the registration is lost" % k  # no rollback, no None
            s.close()
            assert providers_in(img, d) == [new, new], "step %d: the next start did not finish" % k
            s = store(d, keyset(new, img), img)
            assert s.load() == state and s.stats["writes"] == 0
            s.save(make_state(1, 2))
            s.close()
            assert Store(d, DEV, fs=img, keys=keyset(new, img)).load() == make_state(1, 2)
            explored += 1
    TOTAL["crash_states"] += explored
    with capsys.disabled():
        print("\n[keys crash] %s: %d ops (%s), %d crash states explored" % (name, len(fs.ops), " ".join(kinds),
                                                                          explored))


@pytest.mark.parametrize("name", sorted(MIGRATIONS))
def test_failing_any_operation_of_a_migration_keeps_the_registration(env, name):
    d, keyset = env
    old, new = MIGRATIONS[name]
    state = make_state(2, 2)
    base = history(d, keyset, old, [make_state(2, None), state])
    fs = SimFs.from_image({p: bytes(i.data) for p, i in base.now.items()})
    fs.start()
    s = store(d, keyset(new, fs), fs)
    s.load()
    s.close()
    n_ops = len(fs.ops)
    for n in range(n_ops):
        fs = SimFs.from_image({p: bytes(i.data) for p, i in base.now.items()})
        fs.start()
        fs.fail_at = n
        s = store(d, keyset(new, fs), fs)
        assert s.load() == state  # an I/O error while re-sealing is not a reason to lose anything
        s.close()
        fs.fail_at = None
        for files in crash_images(fs.snapshot()):
            img = SimFs.from_image(files)
            assert Store(d, DEV, fs=img, keys=keyset(new, img)).load() == state
        s = store(d, keyset(new, fs), fs)  # the next start finishes
        assert s.load() == state
        s.close()
        assert providers_in(fs, d) == [new, new], n


def test_a_crash_during_a_save_never_looks_like_a_rollback(env):
    """The counter is written only after its slot is durable: every crash image of a token refresh
    loads the old or the new state, never store_rollback."""
    d, keyset = env
    old_state, new_state = make_state(3, 1), make_state(3, 2)
    fs = history(d, keyset, "pkcs11", [make_state(3, None), old_state])
    s = store(d, keyset("pkcs11", fs), fs)
    s.load()
    fs.start()
    s.save(new_state)
    s.close()
    for k, snap in enumerate(fs.snaps):
        for files in crash_images(snap):
            img = SimFs.from_image(files)
            try:
                got = Store(d, DEV, fs=img, keys=keyset("pkcs11", img)).load()
            except StoreError as e:
                pytest.fail("step %d: %s" % (k, e.code))
            assert got in ((old_state, new_state) if k < len(fs.ops) else (new_state,))
