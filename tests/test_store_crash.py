"""Crash consistency of the store over an in-memory file system that knows what is durable.

SimFs records every mutating operation of a save and snapshots the file system after each one.
For every prefix of the sequence it builds the states a power cut could leave: directory entries as
of the last fsync(dir) or with every rename/create already on disk, and each file's content with its
unsynced data dropped, or with the writes applied and the last one torn at several points. Each of
those crash images must load the old or the new state (never nothing, never a mix), must load the
new state once save() returned, and must accept the next save. A second test fails the N-th
operation with EIO for every N.
"""

from __future__ import annotations

import errno
import itertools
import os

import pytest

from agent import store as st
from agent.errors import StoreError
from agent.store import FsOps, Store

DEV = "serial:0123456789|mac:00:11:22:33:44:55"
OTHER_DEV = "serial:9876543210|mac:00:11:22:33:44:66"
SECRET = "client-secret-d41d8cd98f00"
TOTAL = {"crash_states": 0, "failure_points": 0}


def make_state(client: int, tok: int | None) -> dict:
    return {
        "client": {"client_id": "client-%d" % client, "client_secret": SECRET + str(client),
                   "client_id_issued_at": 1700000000000},
        "statement_hash": "%064x" % client,
        "registered_at": 1700000000 + client,
        "token": None if tok is None else {
            "access_token": "access-token-%d" % tok, "token_type": "bearer", "expires_in": 21600,
            "received_at": 1700000100 + tok, "expires_at": 1700021700 + tok},
    }


class Inode:
    __slots__ = ("data", "durable", "pending")

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.durable = bytes(data)
        self.pending: list[tuple[int, bytes]] = []  # writes since the last fsync, in order

    def copy(self) -> Inode:
        n = Inode()
        n.data, n.durable, n.pending = bytearray(self.data), self.durable, list(self.pending)
        return n


def _apply(base: bytes, writes: list[tuple[int, bytes]]) -> bytes:
    buf = bytearray(base)
    for off, data in writes:
        if off > len(buf):
            buf.extend(b"\x00" * (off - len(buf)))
        buf[off:off + len(data)] = data
    return bytes(buf)


class SimFs(FsOps):
    """In-memory file system: volatile directory entries and data vs what fsync made durable."""

    def __init__(self, max_write: int = 64) -> None:
        self.now: dict[str, Inode] = {}
        self.synced: dict[str, Inode] = {}
        self.handles: dict[int, list] = {}
        self.next_handle = 1
        self.max_write = max_write
        self.ops: list[tuple] = []
        self.snaps: list = []
        self.recording = False
        self.fail_at: int | None = None
        self.violations: list[str] = []

    @classmethod
    def from_image(cls, files: dict[str, bytes]) -> SimFs:
        fs = cls()
        for p, data in files.items():
            fs.now[p] = fs.synced[p] = Inode(data)
        return fs

    def start(self) -> None:
        self.recording, self.ops, self.snaps = True, [], [self.snapshot()]

    def snapshot(self):
        memo: dict[int, Inode] = {}

        def c(ino: Inode) -> Inode:
            if id(ino) not in memo:
                memo[id(ino)] = ino.copy()
            return memo[id(ino)]

        return {p: c(i) for p, i in self.now.items()}, {p: c(i) for p, i in self.synced.items()}

    def _op(self, *op) -> None:
        if not self.recording:
            return
        self.ops.append(op)
        if self.fail_at == len(self.ops) - 1:
            self.snaps.append(self.snapshot())
            raise OSError(errno.EIO, "Input/output error (injected at op %d: %s)" % (len(self.ops) - 1, op[0]))

    def _done(self) -> None:
        if self.recording:
            self.snaps.append(self.snapshot())

    def open(self, path, truncate=True):
        self._op("open", path)
        if truncate:
            ino = self.now[path] = Inode()
        else:
            if path not in self.now:
                raise FileNotFoundError(errno.ENOENT, "No such file", path)
            ino = self.now[path]
        h = self.next_handle
        self.next_handle += 1
        self.handles[h] = [path, ino, 0, False]
        self._done()
        return h

    def write(self, h, data):
        self._op("write", self.handles[h][0], len(data))
        _, ino, pos, _ = self.handles[h]
        chunk = bytes(data[:self.max_write])
        ino.data = bytearray(_apply(bytes(ino.data), [(pos, chunk)]))
        ino.pending.append((pos, chunk))
        self.handles[h][2] = pos + len(chunk)
        self._done()
        return len(chunk)

    def fsync(self, h):
        if self.handles[h][3]:
            self.violations.append("fsync retried on a descriptor whose fsync failed")
        try:
            self._op("fsync", self.handles[h][0])
        except OSError:
            self.handles[h][3] = True
            raise
        ino = self.handles[h][1]
        ino.durable, ino.pending = bytes(ino.data), []
        self._done()

    def close(self, h):
        self._op("close", self.handles[h][0])
        del self.handles[h]
        self._done()

    def rename(self, src, dst):
        self._op("rename", src, dst)
        if src not in self.now:
            raise FileNotFoundError(errno.ENOENT, "No such file", src)
        self.now[dst] = self.now.pop(src)
        self._done()

    def unlink(self, path):
        self._op("unlink", path)
        if path not in self.now:
            raise FileNotFoundError(errno.ENOENT, "No such file", path)
        del self.now[path]
        self._done()

    def fsync_dir(self, path):
        self._op("fsync_dir", path)
        for p in [p for p in self.synced if os.path.dirname(p) == path]:
            del self.synced[p]
        for p, ino in self.now.items():
            if os.path.dirname(p) == path:
                self.synced[p] = ino
        self._done()

    def listdir(self, path):
        return [os.path.basename(p) for p in self.now if os.path.dirname(p) == path]

    def read(self, path, limit=st.MAX_FILE_SIZE):
        if path not in self.now:
            raise FileNotFoundError(errno.ENOENT, "No such file", path)
        return bytes(self.now[path].data[:limit + 1])

    def size(self, path):
        if path not in self.now:
            raise FileNotFoundError(errno.ENOENT, "No such file", path)
        return len(self.now[path].data)


def _contents(ino: Inode) -> list[bytes]:
    """What a power cut can leave of one file: unsynced data dropped, or the last write torn."""
    out = [ino.durable]
    if ino.pending:
        before = _apply(ino.durable, ino.pending[:-1])
        off, last = ino.pending[-1]
        for t in sorted({0, 1, len(last) // 2, len(last) - 1, len(last)}):
            out.append(_apply(before, [(off, last[:t])]))
    return list(dict.fromkeys(out))


def crash_images(snap) -> list[dict[str, bytes]]:
    now, synced = snap
    images: dict[tuple, dict[str, bytes]] = {}
    for entries in (synced, now):  # renames/creates lost, or already on disk
        inodes = list({id(i): i for i in entries.values()}.values())
        for combo in itertools.product(*[_contents(i) for i in inodes]):
            content = {id(i): c for i, c in zip(inodes, combo)}
            files = {p: content[id(i)] for p, i in entries.items()}
            images[tuple(sorted(files.items()))] = files
    return list(images.values())


class Env:
    def __init__(self, tmp_path, mode: str) -> None:
        self.d = str(tmp_path / "flash")
        self.rd = str(tmp_path / "run")
        os.makedirs(self.d, mode=0o700, exist_ok=True)
        os.makedirs(self.rd, mode=0o700, exist_ok=True)
        self.mode = mode

    def store(self, fs: FsOps, device: str = DEV) -> Store:
        s = Store(self.d, device, token_cache=self.mode, runtime_dir=self.rd, fs=fs)
        s.open()
        return s

    def peek(self, fs: FsOps, device: str = DEV):
        """Load without taking the lock (another Store of the test still holds it)."""
        return Store(self.d, device, token_cache=self.mode, runtime_dir=self.rd, fs=fs).load()

    def load(self, fs: FsOps, device: str = DEV):
        s = self.store(fs, device)
        try:
            return s.load()
        finally:
            s.close()


def prepare(env: Env, history: list[dict], history_device: str, device: str):
    """A SimFs holding the durable result of history, and a store opened and loaded on it."""
    fs = SimFs()
    if history:
        s = env.store(fs, history_device)
        s.load()
        for h in history:
            s.save(h)
        s.close()
    fs = SimFs.from_image({p: bytes(i.data) for p, i in fs.now.items()})  # all durable
    old = env.load(fs, device)
    s = env.store(fs, device)
    s.load()
    fs.start()
    return fs, s, old


def acceptable(env: Env, old, new) -> list:
    ok = [old, new]
    if env.mode == "runtime" and new is not None:
        # The runtime token file is written after the slot: a cut in between leaves the new
        # credentials without a token (the old token is bound to the old client id and refused).
        ok.append(dict(new, token=None))
    return ok


def check_images(env: Env, snap, ok: list, device: str, recover_with: dict) -> int:
    images = crash_images(snap)
    for files in images:
        fs = SimFs.from_image(files)
        got = env.load(fs, device)
        assert got in ok, "crash image loads a state that is neither old nor new: %r" % sorted(files)
        s = env.store(fs, device)  # reboot: open cleans temp files, the next save must work
        s.load()
        s.save(recover_with)
        s.close()
        assert not [p for p in fs.now if p.endswith(".tmp")]
        want = dict(recover_with, token=None) if env.mode == "memory" else recover_with
        assert env.load(fs, device) == want
    return len(images)


SCENARIOS = {
    # name: (token_cache, history, new state, history device, loading device, first generation)
    "first-registration": ("flash", [], make_state(1, None), DEV, DEV, 1),
    "token-after-registration": ("flash", [make_state(1, None)], make_state(1, 1), DEV, DEV, 1),
    "token-refresh": ("flash", [make_state(1, 1), make_state(1, 2)], make_state(1, 3), DEV, DEV, 1),
    "re-registration": ("flash", [make_state(1, 1), make_state(1, 2)], make_state(2, None), DEV, DEV, 1),
    "generation-wrap": ("flash", [make_state(1, 1)], make_state(1, 2), DEV, DEV, 0xFFFFFFFF),
    "cloned-image": ("flash", [make_state(1, 1), make_state(1, 2)], make_state(3, None), OTHER_DEV, DEV, 1),
    "runtime-token-refresh": ("runtime", [make_state(1, 1)], make_state(1, 2), DEV, DEV, 1),
    "runtime-registration": ("runtime", [make_state(1, 1)], make_state(2, 5), DEV, DEV, 1),
    "memory-registration": ("memory", [make_state(1, None)], make_state(2, None), DEV, DEV, 1),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_prefix_of_a_save_loads_old_or_new(tmp_path, monkeypatch, capsys, name):
    mode, history, new, hdev, dev, first = SCENARIOS[name]
    monkeypatch.setattr(st, "FIRST_GENERATION", first)
    env = Env(tmp_path, mode)
    fs, s, old = prepare(env, history, hdev, dev)
    assert s.save(new) is True
    s.close()
    ops, snaps = fs.ops, fs.snaps
    assert len(snaps) == len(ops) + 1
    kinds = [op[0] for op in ops]
    assert kinds.count("rename") >= 1 and kinds[-1] == "fsync_dir"
    explored = 0
    recover = make_state(7, 7)
    for k, snap in enumerate(snaps):
        ok = [new] if k == len(ops) else acceptable(env, old, new)  # after return: only the new
        explored += check_images(env, snap, ok, dev, recover)
    TOTAL["crash_states"] += explored
    with capsys.disabled():
        print("\n[store crash] %s: %d ops (%s), %d crash states explored, %d so far in this run"
              % (name, len(ops), " ".join(kinds), explored, TOTAL["crash_states"]))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_failing_the_nth_operation_keeps_a_valid_state(tmp_path, monkeypatch, capsys, name):
    mode, history, new, hdev, dev, first = SCENARIOS[name]
    monkeypatch.setattr(st, "FIRST_GENERATION", first)
    env = Env(tmp_path, mode)
    fs, s, old = prepare(env, history, hdev, dev)
    s.save(new)
    s.close()
    n_ops = len(fs.ops)
    points = 0
    for n in range(n_ops):
        for follow_up in ("retry-new", "keep-old"):
            if follow_up == "keep-old" and old is None:
                continue
            fs, s, old2 = prepare(env, history, hdev, dev)
            assert old2 == old
            fs.fail_at = n
            with pytest.raises(StoreError) as ei:
                s.save(new)
            failed_op = fs.ops[n][0]
            assert ei.value.code == "store_io" and failed_op in str(ei.value)
            assert SECRET not in str(ei.value) and "access-token" not in str(ei.value)
            assert s.state == old, "in-memory state changed although the save failed"
            assert s.stats["failures"] == 1
            fs.fail_at = None
            # What is on the medium now, whether or not the power is then cut, is old or new.
            for files in crash_images(fs.snapshot()):
                assert env.peek(SimFs.from_image(files), dev) in acceptable(env, old, new)
            # The daemon keeps running: the next save (new descriptor) must win.
            target = new if follow_up == "retry-new" else old
            assert s.save(target) is True
            assert s.state == target
            s.close()
            assert not fs.violations, fs.violations
            assert env.load(fs, dev) == target
            for files in crash_images(fs.snapshot()):
                assert env.load(SimFs.from_image(files), dev) == target
            points += 1
    TOTAL["failure_points"] += points
    with capsys.disabled():
        print("\n[store fail-nth] %s: failed each of %d ops, %d failure runs checked" % (name, n_ops, points))


def test_a_power_cut_during_wipe_never_resurrects_an_older_state(tmp_path, capsys):
    env = Env(tmp_path, "flash")
    newest = make_state(1, 3)
    fs, s, old = prepare(env, [make_state(1, 1), make_state(1, 2), newest], DEV, DEV)
    assert old == newest
    s.wipe()
    s.close()
    explored = 0
    for snap in fs.snaps:
        for files in crash_images(snap):
            assert env.load(SimFs.from_image(files)) in (newest, None)
            explored += 1
    assert env.load(fs) is None
    TOTAL["crash_states"] += explored
    with capsys.disabled():
        print("\n[store crash] wipe: %d ops, %d crash states explored, %d so far in this run"
              % (len(fs.ops), explored, TOTAL["crash_states"]))


def test_sim_detects_a_store_that_skips_fsync(tmp_path, monkeypatch):
    """The model has teeth: without fsync(dir) the returned save is not durable."""
    env = Env(tmp_path, "flash")
    fs, s, old = prepare(env, [make_state(1, 1)], DEV, DEV)
    monkeypatch.setattr(fs, "fsync_dir", lambda path: None)
    s.save(make_state(1, 2))
    s.close()
    loads = [env.load(SimFs.from_image(f)) for f in crash_images(fs.snapshot())]
    assert old in loads  # a cut right after save() returned would lose the new state
