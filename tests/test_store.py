"""Credential store: round trips, wear rules, token_cache modes, lock, permissions, clone, wipe, reset.

Real files in tmp dirs; a recording FsOps wraps the real one where the exact operations matter.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import stat

import pytest

from agent import commands
from agent import store as st
from agent.errors import StoreError
from agent.store import RUNTIME_SUBDIR, SLOT_NAMES, TOKEN_NAME, FsOps, Store

SECRET = "s3cr3t-client-secret-0f9e8d"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjMSJ9.c2lnbmF0dXJlLXZhbHVl"


def make_state(n: int = 0, client_id: str = "client-1", token: bool = True) -> dict:
    return {
        "client": {"client_id": client_id, "client_secret": SECRET, "client_id_issued_at": 1700000000,
                   "grant_types": ["client_credentials"]},
        "statement_hash": "ab" * 32,
        "registered_at": 1700000000.5,
        "token": {"access_token": TOKEN + str(n), "token_type": "bearer", "expires_in": 21600,
                  "received_at": 1700000100.0 + n, "expires_at": 1700021700.0 + n} if token else None,
    }


class Recorder(FsOps):
    """Real file operations, logged as (op, path) tuples."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []
        self._paths: dict = {}

    def open(self, path, truncate=True):
        fd = super().open(path, truncate)
        self._paths[fd] = path
        self.ops.append(("open", path, truncate))
        return fd

    def write(self, fd, data):
        n = super().write(fd, data)
        self.ops.append(("write", self._paths[fd], bytes(data[:n])))
        return n

    def fsync(self, fd):
        super().fsync(fd)
        self.ops.append(("fsync", self._paths[fd]))

    def close(self, fd):
        super().close(fd)
        self.ops.append(("close", self._paths.pop(fd)))

    def rename(self, src, dst):
        super().rename(src, dst)
        self.ops.append(("rename", src, dst))

    def unlink(self, path):
        super().unlink(path)
        self.ops.append(("unlink", path))

    def fsync_dir(self, path):
        super().fsync_dir(path)
        self.ops.append(("fsync_dir", path))


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append("%s %s" % (record.levelname, record.getMessage()))


@pytest.fixture
def logs():
    logger = logging.getLogger("test.store.%d" % id(object()))
    logger.propagate = False
    h = ListHandler()
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    h.logger = logger
    yield h
    logger.removeHandler(h)


@pytest.fixture
def paths(tmp_path):
    return str(tmp_path / "var" / "lib" / "pass-agent"), str(tmp_path / "run" / "pass-agent")


def opened(directory, device="dev-A", **kw) -> Store:
    s = Store(directory, device, **kw)
    s.open()
    return s


def slot_bytes(directory) -> dict:
    out = {}
    for n in SLOT_NAMES:
        p = os.path.join(directory, n)
        out[n] = open(p, "rb").read() if os.path.exists(p) else None
    return out


def test_round_trip_modes_and_permissions(paths):
    d, rd = paths
    s = opened(d, runtime_dir=rd)
    assert s.load() is None and s.problem == "empty"
    assert s.save(make_state()) is True
    s.close()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for n in os.listdir(d):
        assert stat.S_IMODE(os.stat(os.path.join(d, n)).st_mode) == 0o600, n
    s2 = opened(d, runtime_dir=rd)
    assert s2.load() == make_state() and s2.problem is None
    s2.close()
    # Nothing readable on flash: neither the secret nor the token appear in any file.
    for n in os.listdir(d):
        raw = open(os.path.join(d, n), "rb").read()
        assert SECRET.encode() not in raw and b"client-1" not in raw and TOKEN.encode() not in raw


def test_existing_directory_keeps_its_mode_and_group_write_is_reported(paths, logs):
    d, rd = paths
    os.makedirs(d)
    os.chmod(d, 0o775)
    s = opened(d, log=logs.logger)
    s.close()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o775  # never repaired behind the operator's back
    assert any("WARNING" in line and "group-writable" in line and "chmod g-w " + d in line for line in logs.lines)


def test_unchanged_save_writes_nothing(paths):
    d, _ = paths
    rec = Recorder()
    s = opened(d, fs=rec)
    s.load()
    assert s.save(make_state()) is True
    rec.ops.clear()
    assert s.save(make_state()) is False
    assert rec.ops == []
    assert s.stats["skipped_unchanged"] == 1 and s.stats["writes"] == 1 and s.stats["saves"] == 2
    s.close()


def test_flash_token_refresh_writes_exactly_one_slot_the_older_one(paths):
    d, _ = paths
    rec = Recorder()
    s = opened(d, fs=rec)
    s.load()
    s.save(make_state(0))
    expected_target = [SLOT_NAMES[1], SLOT_NAMES[0], SLOT_NAMES[1], SLOT_NAMES[0]]
    for i, target in enumerate(expected_target, start=1):
        before = slot_bytes(d)
        rec.ops.clear()
        assert s.save(make_state(i)) is True
        renames = [op for op in rec.ops if op[0] == "rename"]
        assert renames == [("rename", os.path.join(d, target + ".tmp"), os.path.join(d, target))]
        # The op sequence is exactly: open temp, write(s), fsync, close, rename, fsync(dir).
        kinds = [op[0] for op in rec.ops]
        assert kinds[0] == "open" and kinds[-4:] == ["fsync", "close", "rename", "fsync_dir"]
        after = slot_bytes(d)
        untouched = [n for n in SLOT_NAMES if n != target][0]
        assert after[untouched] == before[untouched]
        assert s.stats["generation"] == i + 1
    s.close()
    s2 = opened(d)
    assert s2.load() == make_state(4)
    s2.close()


def test_runtime_token_cache_keeps_flash_untouched_on_refresh(paths):
    d, rd = paths
    rec = Recorder()
    s = opened(d, token_cache="runtime", runtime_dir=rd, fs=rec)
    s.load()
    assert s.save(make_state(0)) is True
    assert os.path.exists(os.path.join(rd, RUNTIME_SUBDIR, TOKEN_NAME))
    assert stat.S_IMODE(os.stat(os.path.join(rd, RUNTIME_SUBDIR, TOKEN_NAME)).st_mode) == 0o600
    flash_bytes = s.stats["bytes_written"]
    rec.ops.clear()
    assert s.save(make_state(1)) is True  # the runtime file changed
    assert rec.ops and all(not str(op[1]).startswith(d) for op in rec.ops), rec.ops
    assert s.stats["bytes_written"] == flash_bytes and s.stats["writes"] == 1
    assert s.stats["runtime_writes"] == 2
    assert s.save(make_state(1)) is False
    s.close()
    s2 = opened(d, token_cache="runtime", runtime_dir=rd)
    assert s2.load() == make_state(1)
    # A token bound to other credentials is never handed out after a re-registration.
    new_client = make_state(2, client_id="client-2", token=False)
    s2.save(new_client)
    assert not os.path.exists(os.path.join(rd, RUNTIME_SUBDIR, TOKEN_NAME))  # token None: the stale token is removed
    s2.close()
    s3 = opened(d, token_cache="runtime", runtime_dir=rd)
    assert s3.load()["token"] is None
    s3.close()


def test_runtime_token_of_other_client_is_ignored(paths):
    d, rd = paths
    s = opened(d, token_cache="runtime", runtime_dir=rd)
    s.load()
    s.save(make_state(0))
    s.close()
    saved = open(os.path.join(rd, RUNTIME_SUBDIR, TOKEN_NAME), "rb").read()
    s = opened(d, token_cache="runtime", runtime_dir=rd)
    s.load()
    s.save(make_state(0, client_id="client-2", token=False))
    s.close()
    with open(os.path.join(rd, RUNTIME_SUBDIR, TOKEN_NAME), "wb") as f:  # a stale token file reappears
        f.write(saved)
    s = opened(d, token_cache="runtime", runtime_dir=rd)
    assert s.load()["token"] is None
    s.close()


def test_memory_token_cache_never_writes_the_token(paths):
    d, rd = paths
    rec = Recorder()
    s = opened(d, token_cache="memory", runtime_dir=rd, fs=rec)
    s.load()
    assert s.save(make_state(0)) is True
    rec.ops.clear()
    for i in range(1, 4):
        assert s.save(make_state(i)) is False
    assert rec.ops == [] and s.stats["writes"] == 1 and not os.path.exists(rd)
    s.close()
    s2 = opened(d, token_cache="memory")
    assert s2.load() == make_state(0, token=False)
    s2.close()
    s3 = opened(d, token_cache="flash")  # the slot really holds no token
    assert s3.load()["token"] is None
    s3.close()


def test_lock_refuses_a_second_writer(paths):
    d, _ = paths
    a = opened(d)
    b = Store(d, "dev-A")
    with pytest.raises(StoreError) as ei:
        b.open()
    assert ei.value.code == "store_locked"
    assert os.path.join(d, "lock") in str(ei.value)
    a.close()
    b.open()
    b.close()


def test_save_requires_open_and_json_state(paths):
    d, _ = paths
    s = Store(d, "dev-A")
    with pytest.raises(StoreError) as ei:
        s.save(make_state())
    assert ei.value.code == "store_not_open"
    s.open()
    bad = make_state()
    bad["client"]["weird"] = object()
    with pytest.raises(StoreError) as ei:
        s.save(bad)
    assert ei.value.code == "store_bad_state" and SECRET not in str(ei.value)
    assert s.stats["writes"] == 0
    s.close()


def test_leftover_temp_files_are_cleaned_at_open(paths):
    d, rd = paths
    s = opened(d, token_cache="runtime", runtime_dir=rd)
    s.load()
    s.save(make_state())
    s.close()
    td = os.path.join(rd, RUNTIME_SUBDIR)
    for directory, name in ((d, "slot-b.bin.tmp"), (td, "token.bin.tmp")):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(b"half a slot")
    s = opened(d, token_cache="runtime", runtime_dir=rd)
    assert not [n for n in os.listdir(d) + os.listdir(td) if n.endswith(".tmp")]
    assert s.load() == make_state()
    s.close()


def test_load_never_raises_when_reads_fail(paths, logs):
    d, _ = paths

    class BrokenReads(FsOps):
        def read(self, path, limit=st.MAX_FILE_SIZE):
            raise OSError(5, "Input/output error")

    s = opened(d)
    s.load()
    s.save(make_state())
    s.close()
    b = opened(d, fs=BrokenReads(), log=logs.logger)
    assert b.load() is None and b.problem == "corrupt"
    assert "Input/output error" in b.problem_detail
    b.close()


def test_clone_to_another_device_is_refused_and_kept_until_a_new_save(tmp_path, logs):
    # Two fixture device roots; the flash image of box A is copied onto box B.
    a_dir = str(tmp_path / "boxA" / "var" / "lib" / "pass-agent")
    b_dir = str(tmp_path / "boxB" / "var" / "lib" / "pass-agent")
    a = opened(a_dir, device="serial:A-0001|mac:00:11:22:33:44:55")
    a.load()
    a.save(make_state(0))
    a.save(make_state(1))
    a.close()
    shutil.copytree(a_dir, b_dir)
    foreign = slot_bytes(b_dir)
    b = opened(b_dir, device="serial:B-0002|mac:00:11:22:33:44:66", log=logs.logger)
    assert b.load() is None
    assert b.problem == "foreign_device"
    assert "another device" in b.problem_detail and "registers afresh" in b.problem_detail
    assert any(line.startswith("WARNING") and "another device" in line for line in logs.lines)
    assert slot_bytes(b_dir) == foreign  # loading destroys nothing
    b.close()
    b = opened(b_dir, device="serial:B-0002|mac:00:11:22:33:44:66", log=logs.logger)
    assert b.load() is None and slot_bytes(b_dir) == foreign
    fresh = make_state(0, client_id="client-of-B")  # the fresh registration
    assert b.save(fresh) is True
    now = slot_bytes(b_dir)
    assert sum(now[n] != foreign[n] for n in SLOT_NAMES) == 1  # one foreign slot is still there
    b.close()
    b = opened(b_dir, device="serial:B-0002|mac:00:11:22:33:44:66", log=logs.logger)
    assert b.load() == fresh and b.problem is None
    b.save(make_state(1, client_id="client-of-B"))
    assert all(slot_bytes(b_dir)[n] != foreign[n] for n in SLOT_NAMES)
    b.close()
    a = opened(a_dir, device="serial:A-0001|mac:00:11:22:33:44:55")
    assert a.load() == make_state(1)  # the original box is unaffected
    a.close()


@pytest.mark.parametrize("foreign_slot", [0, 1])
@pytest.mark.parametrize("other", ["missing", "corrupt"])
def test_first_save_without_a_current_slot_keeps_the_foreign_one(tmp_path, foreign_slot, other):
    """Issue 21: with no current slot, the first save must overwrite the empty or corrupt slot, never the
    one that belongs to another device (the cloned image's owner may still need it restored)."""
    a_dir, b_dir = str(tmp_path / "a"), str(tmp_path / "b")
    a = opened(a_dir, device="serial:A-0001")
    a.load()
    a.save(make_state(0))
    a.save(make_state(1))  # both slots written by A
    a.close()
    shutil.copytree(a_dir, b_dir)
    keep, spare = SLOT_NAMES[foreign_slot], SLOT_NAMES[1 - foreign_slot]
    os.unlink(os.path.join(b_dir, spare))
    if other == "corrupt":
        with open(os.path.join(b_dir, spare), "wb") as f:
            f.write(b"\x00garbage" * 20)
    foreign = slot_bytes(b_dir)[keep]
    b = opened(b_dir, device="serial:B-0002")
    assert b.load() is None and b.slots[keep]["status"] == "foreign_device"
    assert b.slots[spare]["status"] == ("empty" if other == "missing" else "corrupt")
    assert b.save(make_state(0, client_id="client-of-B")) is True
    assert slot_bytes(b_dir)[keep] == foreign  # the foreign slot is untouched...
    b.close()
    b = opened(b_dir, device="serial:B-0002")
    assert b.load() == make_state(0, client_id="client-of-B")  # ...and B's credentials are in the other one
    assert b.slots[keep]["status"] == "foreign_device"
    b.close()


def test_store_never_reads_a_slot_through_a_symlink(tmp_path):
    """A slot replaced by a link to a valid slot elsewhere (same device) is unreadable, not loaded."""
    src, d = str(tmp_path / "src"), str(tmp_path / "store")
    a = opened(src)
    a.load()
    a.save(make_state(3))
    a.close()
    os.makedirs(d, mode=0o700)
    os.symlink(os.path.join(src, SLOT_NAMES[0]), os.path.join(d, SLOT_NAMES[0]))
    b = opened(d)
    assert b.load() is None
    assert b.slots[SLOT_NAMES[0]]["status"] == "corrupt" and "unreadable" in b.slots[SLOT_NAMES[0]]["detail"]
    b.close()


@pytest.mark.parametrize("op", ["open", "open_existing", "read", "fsync_dir"])
def test_fsops_never_follow_a_symlink(tmp_path, op):
    """The real file layer opens every path with O_NOFOLLOW: a link planted after the store's checks
    (between its cleanup and its write) is refused, and the link's target is untouched."""
    victim = tmp_path / ("victim-dir" if op == "fsync_dir" else "victim")
    if op == "fsync_dir":
        victim.mkdir()
    else:
        victim.write_bytes(b"precious")
    link = str(tmp_path / "link")
    os.symlink(str(victim), link)
    fs = FsOps()
    with pytest.raises(OSError) as ei:
        if op == "open":
            fs.open(link)
        elif op == "open_existing":
            fs.open(link, truncate=False)
        elif op == "read":
            fs.read(link)
        else:
            fs.fsync_dir(link)
    assert ei.value.errno in (errno.ELOOP, errno.ENOTDIR)
    if op != "fsync_dir":
        assert victim.read_bytes() == b"precious"


def test_wipe_overwrites_then_unlinks(paths):
    d, rd = paths
    rec = Recorder()
    s = opened(d, token_cache="runtime", runtime_dir=rd, fs=rec)
    s.load()
    s.save(make_state(0, client_id="c"))
    s.save(make_state(1, client_id="c2"))
    sizes = {n: os.path.getsize(os.path.join(d, n)) for n in SLOT_NAMES}
    rec.ops.clear()
    s.wipe()
    assert not set(os.listdir(d)) & set(SLOT_NAMES) and not os.path.exists(os.path.join(rd, RUNTIME_SUBDIR, TOKEN_NAME))
    for n in SLOT_NAMES:
        p = os.path.join(d, n)
        mine = [op for op in rec.ops if op[1] == p]
        assert [op[0] for op in mine] == ["open", "write", "fsync", "close", "unlink"]
        assert mine[0][2] is False  # opened in place, not truncated
        assert mine[1][2] == b"\x00" * sizes[n]
    assert ("fsync_dir", d) in rec.ops
    assert s.problem == "empty" and s.load() is None
    s.close()


def test_wipe_dir_respects_the_lock(paths):
    d, rd = paths
    s = opened(d)
    s.load()
    s.save(make_state())
    with pytest.raises(StoreError) as ei:
        st.wipe_dir(d, runtime_dir=rd)
    assert ei.value.code == "store_locked"
    s.close()
    removed = st.wipe_dir(d, runtime_dir=rd)
    assert sorted(os.path.basename(p) for p in removed) == ["slot-a.bin"]
    assert st.wipe_dir(str(os.path.join(d, "missing"))) == []


def test_reset_command_confirms_then_removes(paths):
    d, rd = paths
    s = opened(d, runtime_dir=rd)
    s.load()
    s.save(make_state())
    s.close()
    out = io.StringIO()
    assert commands.reset_command(d, "dev-A", False, io.StringIO("no\n"), out, runtime_dir=rd) == 1
    assert "cancelled" in out.getvalue() and os.path.exists(os.path.join(d, "slot-a.bin"))
    assert "holds client credentials for this device" in out.getvalue()
    out = io.StringIO()
    assert commands.reset_command(d, "dev-A", False, io.StringIO("yes\n"), out, runtime_dir=rd) == 0
    assert "removed" in out.getvalue() and not os.path.exists(os.path.join(d, "slot-a.bin"))
    out = io.StringIO()
    assert commands.reset_command(d, "dev-A", False, io.StringIO(""), out, runtime_dir=rd) == 0
    assert "nothing to reset" in out.getvalue()
    assert SECRET not in out.getvalue() and TOKEN not in out.getvalue()


def test_reset_command_assume_yes_and_locked(paths):
    d, rd = paths
    s = opened(d, runtime_dir=rd)
    s.load()
    s.save(make_state())
    out = io.StringIO()
    assert commands.reset_command(d, "dev-A", True, io.StringIO(""), out, runtime_dir=rd) == 1
    assert "held by another process" in out.getvalue()
    s.close()
    out = io.StringIO()
    assert commands.reset_command(d, "other-device", True, io.StringIO(""), out, runtime_dir=rd) == 0
    assert "no usable credentials (foreign_device)" in out.getvalue()
    assert not os.path.exists(os.path.join(d, "slot-a.bin"))


def test_bad_token_cache_is_a_config_error(paths):
    with pytest.raises(StoreError) as ei:
        Store(paths[0], "dev", token_cache="disk")
    assert "storage.token_cache" in str(ei.value) and ei.value.kind == "operator"


def test_benchmark_figures_hold(tmp_path):
    """tools/bench_store.py: one slot per flash refresh, none with runtime, unchanged saves skipped."""
    from tools import bench_store

    naive = bench_store.run("naive", str(tmp_path), 3, 3)
    flash = bench_store.run("flash", str(tmp_path), 3, 3)
    runtime = bench_store.run("runtime", str(tmp_path), 3, 3)
    assert flash["refresh"]["flash_files"] == 1 and flash["refresh"]["flash_fsyncs"] == 2
    assert 0 < flash["refresh"]["flash_bytes"] < naive["refresh"]["flash_bytes"]
    assert runtime["refresh"]["flash_bytes"] == 0 and runtime["refresh"]["ram_files"] == 1
    assert flash["skipped_unchanged"] == 3 and naive["skipped_unchanged"] == 0
    assert flash["unchanged"]["flash_bytes"] == 0


def test_a_key_provider_replaces_the_device_id_derivation(paths):
    """The seam for hardware keys: whatever provider sealed the slots must open them; the default
    device-id provider sees them as another device's, never as damage."""
    d, rd = paths
    seen = []

    def fixed_keys(salt: bytes) -> tuple:
        seen.append(salt)
        return b"k" * 32, b"c" * 8

    s = opened(d, runtime_dir=rd, keys=fixed_keys)
    s.load()
    s.save(make_state())
    s.close()
    assert seen and all(len(x) == 16 for x in seen)
    assert Store(d, "dev-A", keys=fixed_keys).load() == make_state()
    other = Store(d, "dev-A")
    assert other.load() is None and other.problem == "foreign_device"


# -- canonical JSON without the json package (issue 20: the store opens before READY=1) -----------------
_JSON_CASES = [{}, {"b": 1, "a": [1, 2.5, None, True, False, "\u00e9\u2028\"\\\x00\x1f"]}, {"z": {"y": {"x": -0.0}}},
               {"big": 10 ** 30, "f": 1e300, "third": 1 / 3, "neg": -7}, [], ["x", {"k": []}], "s", 3, None]


def test_canonical_bytes_are_json_dumps_bytes_exactly():
    import json

    from agent import slotformat

    for obj in _JSON_CASES:
        want = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        assert slotformat.canonical(obj) == want.encode("utf-8"), obj
    for bad, exc in (([float("nan")], ValueError), ({"a": object()}, TypeError), ({"a": float("inf")}, ValueError)):
        with pytest.raises(exc):
            slotformat.canonical(bad)


@pytest.mark.parametrize("text", [
    "{}", ' {"a":1}', '{"a": 1} ', "", "{", "[1,]", '"\\ud800"', "1 2", "NaN", "-Infinity", '{"a":[1,{"b":null}]}',
    "\u00e9", '"\u00e9"', "[" * 50 + "]" * 50])
def test_loads_accepts_and_rejects_exactly_what_json_loads_does(text):
    import json

    from agent import slotformat

    def outcome(fn):
        try:
            return ("ok", repr(fn(text)))
        except ValueError as e:
            return ("ValueError", type(e).__name__)

    assert outcome(slotformat.loads) == outcome(json.loads)
    for obj in _JSON_CASES:
        assert slotformat.loads(slotformat.canonical(obj).decode("utf-8")) == obj


def test_preload_serves_the_next_load_once_without_reading_the_slots_again(tmp_path):
    # The daemon's first stage loads the stores before READY=1 (issue 20); the service's load() right after
    # must not read and decrypt every slot a second time, and nothing later may be served from that copy.
    d = str(tmp_path / "s")
    with Store(d, "dev-1") as s:
        s.save(make_state(1))
    s = Store(d, "dev-1")
    s.open()
    first = s.preload()
    assert first["token"]["access_token"] == TOKEN + "1"
    for name in SLOT_NAMES:  # damage both slots: a real read now finds nothing valid
        p = os.path.join(d, name)
        if os.path.exists(p):
            with open(p, "r+b") as f:
                f.seek(60)
                f.write(b"\xff" * 8)
    assert s.load() is first  # the preloaded result, once
    assert s.load() is None and s.problem == "corrupt"  # then the slots as they are
    s.close()


def test_a_save_after_preload_makes_the_next_load_read_again(tmp_path):
    d = str(tmp_path / "s")
    with Store(d, "dev-1") as s:
        s.save(make_state(1))
    with Store(d, "dev-1") as s:
        s.preload()
        s.save(make_state(2))
        assert s.load()["token"]["access_token"] == TOKEN + "2"
