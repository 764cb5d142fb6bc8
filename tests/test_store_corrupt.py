"""Corrupt, erased, swapped, tampered, foreign-format and wrapped slots: the other slot is used, or,
when both are bad, load() returns None with a reason (the agent then registers afresh). Never raises.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from agent import commands
from agent import slotformat as sf
from agent import store as st
from agent.errors import OPERATOR, StoreError
from agent.sealing import derive_key
from agent.store import SLOT_NAMES, Store

A, B = SLOT_NAMES
DEV = "serial:0123456789|mac:00:11:22:33:44:55"


def make_state(n: int) -> dict:
    return {
        "client": {"client_id": "client-1", "client_secret": "secret-%d" % n, "client_id_issued_at": 17},
        "statement_hash": "cd" * 32,
        "registered_at": 1700000000,
        "token": {"access_token": "tok-%d" % n, "token_type": "bearer", "expires_in": 21600,
                  "received_at": 1700000000 + n, "expires_at": 1700021600 + n},
    }


class Quiet(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def two_slots(tmp_path):
    """A store with slot-a = generation 1 (state 1) and slot-b = generation 2 (state 2)."""
    d = str(tmp_path / "store")
    s = Store(d, DEV)
    s.open()
    s.load()
    s.save(make_state(1))
    s.save(make_state(2))
    s.close()
    raw = {n: open(os.path.join(d, n), "rb").read() for n in SLOT_NAMES}
    logger = logging.getLogger("test.store.corrupt")
    logger.propagate = False
    h = Quiet()
    logger.handlers[:] = [h]
    reader = Store(d, DEV, log=logger)  # one reader: HKDF results are cached per salt
    return d, raw, reader, h


def put(d: str, name: str, data: bytes) -> None:
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def test_every_single_bit_flip_of_either_slot(two_slots):
    d, raw, reader, _ = two_slots
    checked = 0
    for victim, survivor_state in ((B, make_state(1)), (A, make_state(2))):
        good = raw[victim]
        for i in range(len(good) * 8):
            bad = bytearray(good)
            bad[i // 8] ^= 1 << (i % 8)
            put(d, victim, bytes(bad))
            assert reader.load() == survivor_state, (victim, i)
            assert reader.problem is None and reader.slots[victim]["status"] == "corrupt"
            checked += 1
        put(d, victim, good)
    assert checked == 8 * (len(raw[A]) + len(raw[B]))


def test_both_slots_flipped_means_no_state_and_a_logged_reason(two_slots):
    d, raw, reader, logs = two_slots
    for i in range(0, len(raw[A]) * 8, 7):  # a spread of positions, both slots at once
        for n in SLOT_NAMES:
            bad = bytearray(raw[n])
            bad[i // 8] ^= 1 << (i % 8)
            put(d, n, bytes(bad))
        assert reader.load() is None and reader.problem == "corrupt", i
    assert "unreadable" in reader.problem_detail and "registers afresh" in reader.problem_detail
    assert any("unreadable" in line for line in logs.lines)


def test_every_truncation_length(two_slots):
    d, raw, reader, _ = two_slots
    for victim, survivor_state in ((B, make_state(1)), (A, make_state(2))):
        for n in range(len(raw[victim])):
            put(d, victim, raw[victim][:n])
            assert reader.load() == survivor_state, (victim, n)
        put(d, victim, raw[victim])
    for n in range(len(raw[A])):
        put(d, A, raw[A][:n])
        put(d, B, raw[B][:n])
        assert reader.load() is None and reader.problem in ("corrupt", "empty"), n
    # Extra bytes after a valid slot are damage too.
    put(d, A, raw[A])
    put(d, B, raw[B] + b"\x00")
    assert reader.load() == make_state(1)


@pytest.mark.parametrize("fill", [b"\x00", b"\xff"])
def test_erased_flash(two_slots, fill):
    d, raw, reader, _ = two_slots
    for size in (len(raw[B]), 4096, 0):
        put(d, B, fill * size)
        assert reader.load() == make_state(1)
        assert reader.slots[B]["status"] == "empty"
        put(d, A, fill * size)
        assert reader.load() is None and reader.problem == "empty"
        put(d, A, raw[A])


def test_swapped_slots_still_give_the_newest_and_saving_keeps_it(two_slots):
    d, raw, reader, _ = two_slots
    put(d, A, raw[B])
    put(d, B, raw[A])
    assert reader.load() == make_state(2)
    w = Store(d, DEV)
    w.open()
    w.load()
    w.save(make_state(3))
    assert open(os.path.join(d, A), "rb").read() == raw[B]  # the current (swapped) slot untouched
    w.close()
    assert reader.load() == make_state(3) and reader.stats["generation"] == 3


def test_header_is_authenticated(two_slots):
    """A rolled-forward generation with a recomputed CRC (an attacker or a bad tool) is refused."""
    d, raw, reader, _ = two_slots
    head = bytearray(raw[A][:sf._HEAD.size])
    struct.pack_into(">I", head, 8, 99)  # generation field
    forged = bytes(head) + struct.pack(">I", zlib.crc32(bytes(head))) + raw[A][sf.HEADER_SIZE:]
    put(d, A, forged)
    assert reader.load() == make_state(2)
    assert reader.slots[A]["status"] == "corrupt" and "tag" in reader.slots[A]["detail"]


def test_token_file_is_not_accepted_as_a_slot(tmp_path):
    d, rd = str(tmp_path / "s"), str(tmp_path / "run")
    s = Store(d, DEV, token_cache="runtime", runtime_dir=rd)
    s.open()
    s.load()
    s.save(make_state(1))
    s.close()
    put(d, B, open(os.path.join(rd, st.RUNTIME_SUBDIR, st.TOKEN_NAME), "rb").read())
    r = Store(d, DEV, token_cache="runtime", runtime_dir=rd)
    st_ = make_state(1)
    assert r.load() == st_ and "kind" in r.slots[B]["detail"]


def test_corrupt_runtime_token_only_loses_the_token(tmp_path):
    d, rd = str(tmp_path / "s"), str(tmp_path / "run")
    s = Store(d, DEV, token_cache="runtime", runtime_dir=rd)
    s.open()
    s.load()
    s.save(make_state(1))
    s.close()
    p = os.path.join(rd, st.RUNTIME_SUBDIR, st.TOKEN_NAME)
    good = open(p, "rb").read()
    r = Store(d, DEV, token_cache="runtime", runtime_dir=rd)
    for i in range(0, len(good) * 8, 5):
        bad = bytearray(good)
        bad[i // 8] ^= 1 << (i % 8)
        put(os.path.join(rd, st.RUNTIME_SUBDIR), st.TOKEN_NAME, bytes(bad))
        got = r.load()
        assert got["token"] is None and got["client"] == make_state(1)["client"], i


def test_generation_comparison_wraps():
    assert sf.gen_newer(1, 0) and not sf.gen_newer(0, 1)
    assert sf.gen_newer(0, 0xFFFFFFFF) and not sf.gen_newer(0xFFFFFFFF, 0)
    assert sf.gen_newer(5, 0xFFFFFFF0)
    assert not sf.gen_newer(7, 7)
    assert sf.gen_newer(0x7FFFFFFF, 0) and not sf.gen_newer(0x80000000, 0)


def test_generation_wrap_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "FIRST_GENERATION", 0xFFFFFFFE)
    d = str(tmp_path / "s")
    s = Store(d, DEV)
    s.open()
    s.load()
    seen = []
    for i in range(5):
        s.save(make_state(i))
        seen.append(s.stats["generation"])
        r = Store(d, DEV)
        assert r.load() == make_state(i), (i, r.slots)
    s.close()
    assert seen == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 2]


def test_newer_format_is_unsupported_but_kept(two_slots):
    d, raw, reader, _ = two_slots
    salt = raw[A][16:32]
    key, check = derive_key(DEV, salt)
    future = sf.seal(key, check, salt, 3, sf.canonical(make_state(9)), version=sf.FORMAT_VERSION + 1)
    put(d, B, future)
    assert reader.load() == make_state(1) and reader.slots[B]["status"] == "unsupported_version"
    put(d, A, future)
    assert reader.load() is None and reader.problem == "unsupported_version"
    assert "downgraded" in reader.problem_detail
    assert open(os.path.join(d, A), "rb").read() == future


def test_v0_slot_is_migrated(tmp_path, monkeypatch):
    """A synthetic version-0 slot (flat layout) upgrades through MIGRATIONS and is rewritten as v1."""
    d = str(tmp_path / "s")
    os.makedirs(d, mode=0o700)
    salt = os.urandom(16)
    key, check = derive_key(DEV, salt)
    v0 = {"client_id": "client-1", "client_secret": "secret-0", "statement_hash": "cd" * 32,
          "registered": 1700000000}
    put(d, A, sf.seal(key, check, salt, 4, sf.canonical(v0), version=0))
    r = Store(d, DEV)
    assert r.load() is None and r.problem == "unsupported_version"  # no migration: refused, kept

    def v0_to_v1(p: dict) -> dict:
        return {"client": {"client_id": p["client_id"], "client_secret": p["client_secret"]},
                "statement_hash": p["statement_hash"], "registered_at": p["registered"], "token": None}

    monkeypatch.setitem(sf.MIGRATIONS, 0, v0_to_v1)
    s = Store(d, DEV)
    s.open()
    state = s.load()
    assert state == v0_to_v1(v0) and s.problem is None
    assert s.save(state) is True  # same state, but the slot must be rewritten in the current format
    assert s.save(state) is False
    s.close()
    monkeypatch.delitem(sf.MIGRATIONS, 0)
    r = Store(d, DEV)
    assert r.load() == state and r.slots[B]["generation"] == 5


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=hs.binary(max_size=600), keep_header=hs.booleans())
def test_arbitrary_bytes_never_crash_load(two_slots, junk, keep_header):
    d, raw, reader, _ = two_slots
    blob = raw[B][:sf.HEADER_SIZE] + junk if keep_header else junk
    put(d, B, blob)
    assert reader.load() == make_state(1)
    put(d, A, junk)
    assert reader.load() is None and reader.problem in ("corrupt", "empty")
    put(d, A, raw[A])


def _v0_slot(d: str, name: str, gen: int, salt: bytes | None = None) -> bytes:
    """A synthetic version-0 slot (flat layout) at generation gen; returns its bytes."""
    os.makedirs(d, mode=0o700, exist_ok=True)
    salt = salt or os.urandom(16)
    key, check = derive_key(DEV, salt)
    v0 = {"client_id": "client-1", "client_secret": "secret-v0-abcdef", "registered": 1700000000}
    blob = sf.seal(key, check, salt, gen, sf.canonical(v0), version=0)
    put(d, name, blob)
    return blob


def _broken_migration(p: dict) -> dict:
    return {"client": {"client_id": p["no_such_field"]}}  # a bug in our own code: KeyError


def test_failing_migration_is_not_corrupt_and_the_slot_is_kept(tmp_path, monkeypatch):
    """A migration that raises is a bug in this agent, not damaged data: load() refuses with
    store_migration_failed (the daemon then does not start, so it never registers afresh and logs
    nobody out), the slot is never overwritten, and a fixed migration reads it again."""
    d = str(tmp_path / "s")
    blob = _v0_slot(d, A, 4)
    monkeypatch.setitem(sf.MIGRATIONS, 0, _broken_migration)
    s = Store(d, DEV)
    s.open()
    with pytest.raises(StoreError) as ei:
        s.load()
    e = ei.value
    assert e.code == "store_migration_failed" and e.kind == OPERATOR
    assert "KeyError" in str(e) and "secret-v0" not in str(e) and "reset" in (e.hint or "")
    assert s.problem == "migration_failed" and s.slots[A]["status"] == "migration_failed"
    with pytest.raises(StoreError) as ei:
        s.save(make_state(1))  # refuse to overwrite: the slot holds the only copy of the credentials
    assert ei.value.code == "store_migration_failed"
    s.close()
    assert open(os.path.join(d, A), "rb").read() == blob and not os.path.exists(os.path.join(d, B))
    monkeypatch.setitem(sf.MIGRATIONS, 0, lambda p: {"client": {"client_id": p["client_id"]}})
    assert Store(d, DEV).load() == {"client": {"client_id": "client-1"}, "token": None}


def test_failing_migration_of_an_older_slot_is_only_a_warning(two_slots, monkeypatch):
    """The newest valid slot wins as always: an older slot whose migration fails holds nothing the
    agent needs (the next save overwrites it); a newer one blocks the load."""
    d, raw, reader, h = two_slots
    salt = raw[A][16:32]
    _v0_slot(d, A, 0, salt)  # generation 0 < 2 (slot-b)
    monkeypatch.setitem(sf.MIGRATIONS, 0, _broken_migration)
    assert reader.load() == make_state(2) and reader.slots[A]["status"] == "migration_failed"
    assert reader.problem is None and any("migration" in line for line in h.lines)
    _v0_slot(d, A, 3, salt)  # generation 3 > 2: newer than the valid slot
    with pytest.raises(StoreError) as ei:
        reader.load()
    assert ei.value.code == "store_migration_failed" and reader.problem == "migration_failed"


def test_reset_removes_a_store_whose_migration_fails(tmp_path, monkeypatch):
    """The operator's way out stays open: reset says what the store holds and removes it."""
    import io

    d = str(tmp_path / "s")
    _v0_slot(d, A, 4)
    monkeypatch.setitem(sf.MIGRATIONS, 0, _broken_migration)
    out = io.StringIO()
    assert commands.reset_command(d, DEV, True, io.StringIO(""), out, runtime_dir=str(tmp_path / "rt")) == 0
    assert "no usable credentials (migration_failed)" in out.getvalue()
    assert not os.path.exists(os.path.join(d, A))
