"""The pkcs11 key provider against a real PKCS#11 module, SoftHSM2 (issue 19): the first
registration sealed by the token, a restart, migration device -> pkcs11 and back, a missing token
and a wrong PIN (a clear error, nothing lost), another token (a cloned box) and rollback detected
with the counter kept in the token. Skipped, with the reason, where SoftHSM2 is not installed."""

from __future__ import annotations

import itertools
import os
import shutil

import pytest

from agent import config, keys, sealing
from agent.errors import StoreError
from agent.store import SLOT_NAMES, Store
from tests import softhsm

DEV = "serial:0123456789|mac:00:11:22:33:44:55"
SECRET = "client-secret-7f3a9c"
A, B = SLOT_NAMES
_N = itertools.count()


def make_state(n: int, tok: int | None = None) -> dict:
    return {"client": {"client_id": "client-%d" % n, "client_secret": SECRET + str(n), "client_id_issued_at": 1},
            "statement_hash": "%064x" % n, "registered_at": 1700000000 + n,
            "token": None if tok is None else {"access_token": "access-token-%d" % tok, "token_type": "bearer",
                                               "expires_in": 21600, "received_at": 1, "expires_at": 2}}


@pytest.fixture
def hsm(tmp_path):
    t = softhsm.tokens()
    yield t
    keys.close_all()


def storage(tmp_path, provider: str = "pkcs11", *, label: str = "pa-main", pin: str | None = None,
            pkcs11: bool = True, anchor_dir: str = "", slot: int | None = None) -> config.StorageConfig:
    p11 = config.Pkcs11Config()
    if pkcs11:
        pf = softhsm.pin_file(tmp_path, pin if pin is not None else softhsm.TOKENS.get(label, "1234"),
                              name="pin-%s-%d" % (label, next(_N)))
        p11 = config.Pkcs11Config(module=softhsm.module(), token_label="" if slot is not None else label,
                                  slot=slot, pin_file=pf)
    return config.StorageConfig(dir=str(tmp_path / "store"), key_provider=provider, anchor_dir=anchor_dir, pkcs11=p11)


def opened(st: config.StorageConfig) -> Store:
    s = Store(st.dir, DEV, keys=keys.keyset(st, DEV, st.dir))
    s.open()
    return s


def peek(st: config.StorageConfig) -> Store:
    """A store that loads without taking the writer lock (and therefore never writes)."""
    return Store(st.dir, DEV, keys=keys.keyset(st, DEV, st.dir))


def slot_bytes(d: str) -> dict:
    out = {}
    for n in SLOT_NAMES:
        p = os.path.join(d, n)
        out[n] = open(p, "rb").read() if os.path.exists(p) else None
    return out


def provider_of(blob: bytes) -> str:
    return "device" if blob[:4] == b"PAGS" else sealing.PROVIDER_NAMES[blob[52]]


def test_the_first_registration_is_sealed_by_the_token_and_survives_a_restart(tmp_path, hsm):
    st = storage(tmp_path)
    s = opened(st)
    assert s.load() is None and s.problem == "empty"
    assert s.key_provider == "pkcs11" and s.hardware_backed
    s.save(make_state(1, 1))
    s.close()
    raw = slot_bytes(st.dir)
    written = [b for b in raw.values() if b]
    assert len(written) == 1 and provider_of(written[0]) == "pkcs11"
    assert SECRET.encode() not in written[0] and b"access-token" not in written[0]
    # The device key alone does not open it: a slot the token sealed is not readable without the token.
    with pytest.raises(StoreError) as ei:
        Store(st.dir, DEV).load()
    assert ei.value.code == "store_key_unavailable" and "pkcs11" in str(ei.value)
    # Restart: a new session (the token logs in again) reads the same state.
    keys.close_all()
    s2 = opened(st)
    assert s2.load() == make_state(1, 1) and s2.problem is None
    s2.save(make_state(1, 2))  # a token refresh: same sealed store key, no new wrap
    s2.close()
    keys.close_all()
    assert opened(st).load() == make_state(1, 2)
    keys.close_all()
    # The wrapping key is in the token, sensitive and never extractable.
    import pkcs11

    lib = pkcs11.lib(softhsm.module())
    with lib.get_token(token_label="pa-main").open(user_pin="1234") as sess:
        k = sess.get_key(label="pass-agent store wrap key", key_type=pkcs11.KeyType.AES)
        assert k[pkcs11.Attribute.SENSITIVE] and not k[pkcs11.Attribute.EXTRACTABLE]
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            k[pkcs11.Attribute.VALUE]


def test_a_token_chosen_by_slot_id_works_too(tmp_path, hsm):
    import pkcs11

    slot = next(s.slot_id for s in pkcs11.lib(softhsm.module()).get_slots(token_present=True)
                if s.get_token().label == "pa-main")
    st = storage(tmp_path, slot=slot, pin="1234")
    s = opened(st)
    s.load()
    s.save(make_state(2))
    s.close()
    keys.close_all()
    assert opened(storage(tmp_path)).load() == make_state(2)  # the same token by label


def test_migration_device_to_pkcs11_and_back_keeps_the_registration(tmp_path, hsm):
    dev = storage(tmp_path, "device", pkcs11=False)
    s = opened(dev)
    s.load()
    s.save(make_state(1, None))
    s.save(make_state(1, 1))  # both slots written by the device provider
    s.close()
    assert {provider_of(b) for b in slot_bytes(dev.dir).values()} == {"device"}
    # First start with pkcs11: the same registration, re-sealed by the token into both slots.
    p11 = storage(tmp_path, "pkcs11")
    s = opened(p11)
    assert s.load() == make_state(1, 1)
    s.close()
    raw = slot_bytes(p11.dir)
    assert {provider_of(b) for b in raw.values()} == {"pkcs11"}
    keys.close_all()
    s = opened(p11)
    assert s.load() == make_state(1, 1) and s.stats["writes"] == 0  # nothing left to re-seal
    s.close()
    assert slot_bytes(p11.dir) == raw
    # And back: device primary, the token still configured so its slots can be read once.
    back = storage(tmp_path, "device")
    s = opened(back)
    assert s.load() == make_state(1, 1)
    s.close()
    assert {provider_of(b) for b in slot_bytes(back.dir).values()} == {"device"}
    keys.close_all()
    assert opened(storage(tmp_path, "device", pkcs11=False)).load() == make_state(1, 1)


def test_a_missing_token_is_a_clear_error_and_loses_nothing(tmp_path, hsm):
    st = storage(tmp_path)
    s = opened(st)
    s.load()
    s.save(make_state(3, 3))
    s.close()
    before = slot_bytes(st.dir)
    keys.close_all()
    gone = storage(tmp_path, label="pa-unplugged", pin="1234")
    s = opened(gone)
    with pytest.raises(StoreError) as ei:
        s.load()
    e = ei.value
    assert e.code == "store_key_token_missing" and "pa-unplugged" in str(e) and "kept" in e.hint
    assert s.problem == "key_unavailable"
    with pytest.raises(StoreError):  # a save does not go around it
        s.save(make_state(4))
    s.close()
    assert slot_bytes(st.dir) == before
    keys.close_all()
    assert opened(st).load() == make_state(3, 3)


def test_a_wrong_pin_is_a_clear_error_and_loses_nothing(tmp_path, hsm):
    st = storage(tmp_path)
    s = opened(st)
    s.load()
    s.save(make_state(5, 5))
    s.close()
    before = slot_bytes(st.dir)
    keys.close_all()
    wrong = storage(tmp_path, pin="999999")
    s = opened(wrong)
    with pytest.raises(StoreError) as ei:
        s.load()
    s.close()
    e = ei.value
    assert e.code == "store_key_pin" and wrong.pkcs11.pin_file in str(e)
    assert "999999" not in str(e) + e.hint and "1234" not in str(e) + e.hint
    assert slot_bytes(st.dir) == before
    keys.close_all()
    assert opened(st).load() == make_state(5, 5)


def test_a_pin_file_others_can_read_or_a_link_is_refused(tmp_path, hsm):
    st = storage(tmp_path)
    os.chmod(st.pkcs11.pin_file, 0o644)
    with pytest.raises(StoreError) as ei:
        peek(st).load()
    assert ei.value.code == "store_key_pin" and "chmod 600" in ei.value.hint and "0644" in str(ei.value)
    keys.close_all()
    os.chmod(st.pkcs11.pin_file, 0o600)
    link = str(tmp_path / "pin-link")
    os.symlink(st.pkcs11.pin_file, link)
    linked = config.StorageConfig(dir=st.dir, key_provider="pkcs11", pkcs11=config.Pkcs11Config(
        module=st.pkcs11.module, token_label="pa-main", pin_file=link))
    with pytest.raises(StoreError) as ei:
        peek(linked).load()
    assert "symbolic link" in str(ei.value)


def test_another_token_sees_a_copied_store_as_another_devices(tmp_path, hsm):
    st = storage(tmp_path)
    s = opened(st)
    s.load()
    s.save(make_state(6))
    s.close()
    clone = tmp_path / "clone"
    shutil.copytree(st.dir, str(clone))
    other = storage(tmp_path, label="pa-other")
    other = config.StorageConfig(dir=str(clone), key_provider="pkcs11", pkcs11=other.pkcs11)
    s = opened(other)
    assert s.load() is None and s.problem == "foreign_device"
    assert "another box or token" in s.slots[A]["detail"] + s.slots[B]["detail"]


def test_rollback_to_an_older_copy_is_detected_with_the_counter_in_the_token(tmp_path, hsm):
    st = storage(tmp_path)
    s = opened(st)
    s.load()
    s.save(make_state(7, 1))
    s.save(make_state(7, 2))
    old = slot_bytes(st.dir)  # a copy of the store at generation 2
    s.save(make_state(7, 3))
    s.save(make_state(8, None))  # re-registration: the old credentials were replaced
    s.close()
    for n, b in old.items():  # put the old copy back
        with open(os.path.join(st.dir, n), "wb") as f:
            f.write(b)
    keys.close_all()
    s = opened(st)
    with pytest.raises(StoreError) as ei:
        s.load()
    e = ei.value
    assert e.code == "store_rollback" and s.problem == "rollback"
    assert "generation 2" in str(e) and "says 4" in str(e) and "pass-agent reset" in e.hint
    with pytest.raises(StoreError):
        s.save(make_state(9))  # nothing is written over the evidence
    assert slot_bytes(st.dir) == old
    # The operator keeps the restored copy on purpose: the counter follows it, the store loads.
    assert s.accept_rollback() == 2
    assert s.load() == make_state(7, 2)
    s.close()


def test_a_reset_store_starts_above_the_counter(tmp_path, hsm):
    st = storage(tmp_path)
    s = opened(st)
    s.load()
    for i in range(3):
        s.save(make_state(10, i))
    s.wipe()
    assert s.load() is None
    s.save(make_state(11))
    assert s.stats["generation"] == 4  # not 1: a later copy of the old store still counts as a rollback
    s.close()
    keys.close_all()
    assert opened(st).load() == make_state(11)


def test_reset_describes_and_removes_a_token_sealed_store(tmp_path, hsm):
    import io

    from agent.commands import reset_command

    st = storage(tmp_path)
    s = opened(st)
    s.load()
    s.save(make_state(12, 1))
    s.close()
    keys.close_all()
    # Without the provider the store is still removable, but reset cannot say what it holds.
    out = io.StringIO()
    assert reset_command(st.dir, DEV, False, io.StringIO("no\n"), out, runtime_dir=str(tmp_path / "run")) == 1
    assert "key_unavailable" in out.getvalue()
    # With the configured provider (what `pass-agent reset` passes) it names the client and removes it.
    out = io.StringIO()
    rc = reset_command(st.dir, DEV, False, io.StringIO("yes\n"), out, runtime_dir=str(tmp_path / "run"),
                       keys=keys.keyset(st, DEV, st.dir))
    assert rc == 0, out.getvalue()
    assert "client id client-1…" in out.getvalue() and "key_unavailable" not in out.getvalue()
    assert SECRET not in out.getvalue()
    assert not [n for n in os.listdir(st.dir) if n in SLOT_NAMES]
