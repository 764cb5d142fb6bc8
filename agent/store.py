"""Flash-safe credential store: A/B slots, encrypted and bound to this device, crash-consistent.

Job: persist the agent's state (client credentials, software-statement hash, optionally the access
token) so that every power cut leaves the previous or the new state readable, a flash image copied
to another box is useless there, and flash is written only when bytes change.

Theory of operation (read this first)
- Two slot files, ``slot-a.bin`` and ``slot-b.bin``. Each holds one complete state, sealed in the
  format of agent/slotformat.py (56-byte header, AES-256-GCM of canonical JSON, payload migrations)
  with a key from a key provider of agent/sealing.py. This module decides what to do with each
  slot's status; it never parses or encrypts bytes itself.
- A save writes only the slot that does not hold the current state: temp file, write, fsync(file),
  rename over the slot, fsync(dir). The current slot is never opened for writing, so a crash at any
  point leaves it readable. Load takes the valid slot with the newest generation; generations are
  u32 compared with serial-number arithmetic (RFC 1982), so the counter may wrap.
- Key and key check come from the key provider, by default HKDF-SHA256(device_id, salt = random
  per-store salt kept in the header) (agent/sealing.py). Another device derives another key check,
  so its slots are classified ``foreign_device`` (a cloned image), not ``corrupt``; they are left
  alone until a new state is saved over them.
- token_cache: ``flash`` keeps the token in the slot; ``runtime`` keeps it in ``token/token.bin``
  under runtime_dir (tmpfs; same format, kind 2, bound to the client id); ``memory`` never writes it.
  A token refresh therefore rewrites one slot (flash) or no slot at all (runtime, memory). The token
  gets its own 0700 directory because runtime_dir is by default the socket's directory, whose mode
  (0755) lets the player reach the socket: the store never changes the mode of a directory it did
  not create.
- Directories (agent/safedir.py): a symlinked, foreign-owned or world-writable storage or token
  directory is refused; missing ones are created with explicit modes whatever the umask. Every
  file (lock, slots, temp files, token) is opened with O_NOFOLLOW|O_CLOEXEC.
- One writer: an exclusive flock on ``lock``. On a read-only file system (eMMC remounted after
  errors) the store opens read-only: it serves what is stored, refuses saves that need a slot
  write (``store_read_only``; the caller keeps the state in memory) and reports ``problem`` =
  ``read_only``. It takes the lock through a read-only descriptor when the lock file exists; when
  it does not, it runs without the lock, which is safe because nobody can write to that file
  system, and it takes the lock before its first write if the file system becomes writable again.
- A failing migration is not damaged data: the slot's bytes are authentic and a fixed agent reads
  them. When it hits the newest slot, load() and save() raise ``store_migration_failed`` (the
  daemon does not start) instead of registering afresh and overwriting the only copy.
- Key providers (agent/sealing.py, agent/keys/): a `KeySet` whose primary provider seals every new
  slot and whose readers open slots sealed by others. A provider that cannot be used now (token
  missing, wrong PIN) is not damaged data either: when it is needed for the newest slot, or to seal
  at all, load() raises ``store_key_unavailable`` and the slots stay untouched.
- Migration between providers: when load() finds the newest valid slot (or the other valid one)
  sealed by another provider than the primary, it re-seals the same state with the primary: first
  into the other slot (the old one stays until the new one is durable), then over the old one, so
  no copy sealed by the old provider remains. A crash at any step leaves a readable slot, and the
  next start finishes the job (tests/test_keys_migration.py enumerates every step).
- Rollback detection: when the primary provider has an anchor (the generation counter kept outside
  the slots: a token data object, a file in another directory), every durable slot write records
  its generation there afterwards. A newest valid slot older than the counter is a store replaced
  by an older copy: load() raises ``store_rollback`` (needs the operator, docs/SECURITY.md) and
  writes nothing. New generations always start above the counter, so a reset never looks like a
  rollback later.

Must never: write both slots in one save, rewrite unchanged bytes, retry an fsync on the same
descriptor, change its in-memory state before a save succeeded, raise from load() on bad data, report
a failing migration or an unusable key provider as corrupt data, remove the last slot a provider
can read before a re-sealed one is durable, record a generation in the anchor before its slot is
durable, or put a secret (client secret, access token, key, PIN) in a log line or an exception message.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from agent import safedir, sealing
from agent.errors import FATAL, OPERATOR, StoreError
from agent.slotformat import (
    FIRST_GENERATION,
    FORMAT_VERSION,
    GEN_MASK,
    KIND_SLOT,
    KIND_TOKEN,
    MAX_HEADER_SIZE,
    SALT_SIZE,
    canonical,
    gen_newer,
    header_generation,
    loads,
    result,
    seal,
    unseal,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: the daemon opens its stores before READY=1 without typing or logging
    import logging
    from typing import Any

SLOT_NAMES = ("slot-a.bin", "slot-b.bin")
TOKEN_NAME = "token.bin"
RUNTIME_SUBDIR = "token"  # runtime_dir/token/token.bin: never the socket directory's mode
LOCK_NAME = "lock"
TMP_SUFFIX = ".tmp"
DEFAULT_RUNTIME_DIR = "/run/pass-agent"
TOKEN_CACHES = ("flash", "runtime", "memory")
MAX_FILE_SIZE = 1 << 20  # a slot is a few hundred bytes; never read a runaway file into memory
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
STORE_KEY = "[storage] dir"
RUNTIME_KEY = "[storage] runtime_dir"

# Which problem wins when no slot is valid, and which slot a save overwrites first (lowest rank).
# (migration_failed: load() refuses to go on, see Store.load; ranked to be kept longest all the same.)
_RANK = {"empty": 0, "corrupt": 1, "unsupported_version": 2, "foreign_device": 3, "migration_failed": 4,
         "key_unavailable": 5, "ok": 6}


class FsOps:
    """The file-system operations the store performs, one method each, so tests can record the
    exact sequence, fail the N-th call, or replace the whole layer with a crash model.

    Handles returned by open() are opaque to the store. Errors are raised as OSError.
    """

    def open(self, path: str, truncate: bool = True) -> Any:
        """truncate=True: create or truncate for writing, mode 0600. False: open an existing file
        for in-place overwrite (wipe)."""
        flags = os.O_WRONLY | os.O_CLOEXEC | _NOFOLLOW
        if truncate:
            flags |= os.O_CREAT | os.O_TRUNC
        fd = os.open(path, flags, 0o600)
        return fd

    def write(self, fd: Any, data: bytes) -> int:
        return os.write(fd, data)

    def fsync(self, fd: Any) -> None:
        os.fsync(fd)

    def close(self, fd: Any) -> None:
        os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def read(self, path: str, limit: int = MAX_FILE_SIZE) -> bytes:
        """Whole file (at most limit+1 bytes); FileNotFoundError when missing."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            return f.read(limit + 1)

    def size(self, path: str) -> int:
        return os.lstat(path).st_size


def _unsafe(e: safedir.UnsafeDir) -> StoreError:
    return StoreError(e.message, code="store_dir_unsafe", kind=OPERATOR, hint=e.hint)


def _ensure_dir(path: str, mode: int, what: str, key: str, log: logging.Logger) -> None:
    """Create path (explicit modes whatever the umask) or vet the existing one; never chmod it.

    Raises StoreError store_dir_unsafe (symlink, foreign owner, world-writable) or store_dir;
    OSError EROFS passes through so open() can fall back to read-only."""
    try:
        safedir.ensure(path, mode, what, key)
    except safedir.UnsafeDir as e:
        raise _unsafe(e)
    except OSError as e:
        if e.errno == errno.EROFS:
            raise
        raise StoreError("cannot create the %s %s: %s" % (what, path, e.strerror), code="store_dir",
                         kind=OPERATOR, hint="check %s in the config and that it is writable by the agent" % key)
    st = os.lstat(path)
    if st.st_mode & stat.S_IWGRP:
        log.warning("%s %s is group-writable (mode %04o): members of its group could replace the agent's"
                    " files; chmod g-w %s", what, path, stat.S_IMODE(st.st_mode), path)


def _take_lock(directory: str, read_only_ok: bool = False) -> int | None:
    """Exclusive flock on directory/lock, opened with O_NOFOLLOW. With read_only_ok, a read-only file
    system gives the lock through a read-only descriptor, or None when the file cannot exist
    (nobody can write there either); without it, EROFS is an error like any other."""
    path = os.path.join(directory, LOCK_NAME)
    flags = os.O_CLOEXEC | _NOFOLLOW
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreError("the store lock file %s is a symbolic link; the agent never follows links in"
                             " its storage directory" % path, code="store_dir_unsafe", kind=OPERATOR,
                             hint="remove the link (rm %s); the agent creates the lock file itself" % path)
        if e.errno != errno.EROFS or not read_only_ok:
            raise StoreError("cannot open the store lock file %s: %s" % (path, e.strerror),
                             code="store_read_only" if e.errno == errno.EROFS else "store_dir", kind=OPERATOR,
                             hint="check that %s is writable by the agent" % STORE_KEY)
        try:
            fd = os.open(path, os.O_RDONLY | flags)
        except FileNotFoundError:
            return None
        except OSError as e2:
            raise StoreError("cannot open the store lock file %s: %s" % (path, e2.strerror),
                             code="store_dir", kind=OPERATOR, hint="check %s" % STORE_KEY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreError("the credential store lock %s is held by another process" % path,
                             code="store_locked", kind=OPERATOR,
                             hint="another pass-agent (the daemon or a CLI command) is using the store;"
                                  " stop it (systemctl stop pass-agent) or wait, then retry")
        raise StoreError("cannot lock %s: %s" % (path, e.strerror), code="store_dir", kind=OPERATOR)
    return fd


def _writable(directory: str) -> bool:
    """True when the file system of directory accepts writes now (probe: open the lock file rw)."""
    try:
        os.close(os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CLOEXEC | _NOFOLLOW))
        return True
    except OSError:
        return False


def _io_error(what: str, path: str, e: OSError) -> StoreError:
    return StoreError("cannot save the credential store: %s of %s failed: %s; the previous state is"
                      " kept" % (what, path, e.strerror or e), code="store_io",
                      hint="check the flash/filesystem (dmesg, free space); the agent retries later")


def _write_atomic(fs: FsOps, directory: str, name: str, data: bytes, counts: dict) -> None:
    """temp -> write -> fsync(file) -> rename -> fsync(dir). Raises StoreError naming the failed step.

    counts["bytes"], counts["fsyncs"] are incremented as data reaches the file system.
    The first failed fsync fails the save: the descriptor is closed, never fsynced again.
    """
    tmp = os.path.join(directory, name + TMP_SUFFIX)
    path = os.path.join(directory, name)
    step, target = "open", tmp
    fd = None
    try:
        fd = fs.open(tmp, True)
        step = "write"
        view = memoryview(data)
        off = 0
        while off < len(data):
            n = fs.write(fd, view[off:])
            if not n or n < 0:
                raise OSError(errno.EIO, "write returned %r" % (n,))
            off += n
            counts["bytes"] += n
        step = "fsync"
        fs.fsync(fd)
        counts["fsyncs"] += 1
        step = "close"
        h, fd = fd, None
        fs.close(h)
        step = "rename"
        fs.rename(tmp, path)
        step, target = "fsync", directory
        fs.fsync_dir(directory)
        counts["fsyncs"] += 1
    except OSError as e:
        if fd is not None:
            try:
                fs.close(fd)
            except OSError:
                pass
        if step != "fsync" or target != directory:
            try:  # the temp file is garbage now; open() would clean it anyway
                fs.unlink(tmp)
            except OSError:
                pass
        raise _io_error(step, target, e) from e


def _wipe_files(fs: FsOps, directory: str, names: list[str], counts: dict) -> list[str]:
    """Overwrite each existing file with zeros, fsync, unlink; then fsync the directory once."""
    removed: list[str] = []
    errors: list[str] = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            size = fs.size(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            errors.append("%s: %s" % (path, e.strerror))
            continue
        try:
            fd = fs.open(path, False)
            try:
                zeros = b"\x00" * min(size, MAX_FILE_SIZE)
                off = 0
                while off < len(zeros):
                    n = fs.write(fd, zeros[off:])
                    if not n or n < 0:
                        raise OSError(errno.EIO, "short write")
                    off += n
                    counts["bytes"] += n
                fs.fsync(fd)
                counts["fsyncs"] += 1
            finally:
                fs.close(fd)
        except OSError as e:  # still unlink: removal matters more than the overwrite
            errors.append("overwrite %s: %s" % (path, e.strerror))
        try:
            fs.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            errors.append("unlink %s: %s" % (path, e.strerror))
    if removed:
        try:
            fs.fsync_dir(directory)
            counts["fsyncs"] += 1
        except OSError as e:
            errors.append("fsync %s: %s" % (directory, e.strerror))
    if errors:
        raise StoreError("wiping the credential store failed: " + "; ".join(errors), code="store_io",
                         kind=OPERATOR, hint="check the file system and permissions, then run reset again")
    return removed


def _store_names(fs: FsOps, directory: str, base: tuple[str, ...]) -> list[str]:
    try:
        extra = sorted(n for n in fs.listdir(directory) if n.endswith(TMP_SUFFIX))
    except FileNotFoundError:
        return []
    return extra + list(base)  # garbage first, the slots (current one last) after


def _newest_last(fs: FsOps, directory: str) -> tuple[str, ...]:
    """Slot names ordered by the generation in their (unencrypted) headers, newest last."""
    gens = {}
    for n in SLOT_NAMES:
        try:
            blob = fs.read(os.path.join(directory, n), MAX_HEADER_SIZE)
        except OSError:
            continue
        g = header_generation(blob)
        if g is not None:
            gens[n] = g
    a, b = SLOT_NAMES
    if a in gens and (b not in gens or gen_newer(gens[a], gens[b])):
        return (b, a)
    return (a, b)


class Store:
    """The credential store of one storage directory. See the module docstring."""

    def __init__(self, directory: str, device_id: str, *, token_cache: str = "flash",
                 runtime_dir: str | None = None, fs: FsOps | None = None, log=None,
                 keys: Any = None) -> None:
        """keys: None (the device provider), a sealing.KeySet, a Sealer, or a bare KeyProvider
        callable (salt -> (key, check), the original seam)."""
        if token_cache not in TOKEN_CACHES:
            raise StoreError("storage.token_cache is %r; expected one of %s" % (token_cache, TOKEN_CACHES),
                             code="config_invalid", kind=OPERATOR)
        if not isinstance(device_id, str) or not device_id:
            raise StoreError("the store needs a non-empty device identifier to derive its key",
                             code="store_no_device_id", kind=FATAL)
        self.directory = directory
        self.token_cache = token_cache
        self.runtime_dir = runtime_dir or DEFAULT_RUNTIME_DIR
        self.token_dir = os.path.join(self.runtime_dir, RUNTIME_SUBDIR)
        self.fs = fs or FsOps()
        if log is None:
            from agent import log as agent_log  # the daemon passes its own (agent/startup.py)

            log = agent_log.get("store")
        self.log = log
        self._keys = keys if isinstance(keys, sealing.KeySet) else sealing.KeySet(sealing.as_sealer(keys, device_id))
        self._lock_fd: int | None = None
        self._loaded = False
        self._preloaded: tuple | None = None  # (state,) from preload(), for the next load() only
        self._cur: dict | None = None      # {"slot", "gen", "payload" (bytes|None), "salt", "provider", "sealed"}
        self._rt: bytes | None = None      # runtime token payload as on tmpfs (None: unknown/absent)
        self._rt_known = False
        self._dirty = False                # a failed save may have left newer bytes: never skip
        self._max_gen: int | None = None   # newest generation seen in any readable header
        self._salt = os.urandom(SALT_SIZE)  # used only when no valid slot exists yet
        self._open = False
        self.state: dict | None = None
        self._problem: str | None = None   # what load() found in the slots
        self._problem_detail = ""
        self._read_only_detail = ""        # set while the storage file system refuses writes
        self.slots: dict[str, dict] = {}
        self.anchor_generation: int | None = None  # what the anchor said at load / after the last write
        self.stats = {"saves": 0, "writes": 0, "skipped_unchanged": 0, "bytes_written": 0,
                      "fsyncs": 0, "generation": 0, "failures": 0, "runtime_writes": 0,
                      "runtime_bytes_written": 0, "read_only": False}
        self.stats_keys = {"reseals": 0, "anchor_failures": 0}

    @property
    def key_provider(self) -> str:
        """The provider that seals new slots ("device", "pkcs11", "kernel")."""
        return self._keys.primary.name

    @property
    def hardware_backed(self) -> bool:
        return bool(getattr(self._keys.primary, "hardware", False))

    # A slot problem (empty, corrupt, foreign_device...) wins; a readable store on a read-only file
    # system reports read_only, so agent.status and the console show the degraded store.
    @property
    def problem(self) -> str | None:
        return self._problem or ("read_only" if self._read_only_detail else None)

    @problem.setter
    def problem(self, value: str | None) -> None:
        self._problem = value

    @property
    def problem_detail(self) -> str:
        return "; ".join(d for d in (self._problem_detail, self._read_only_detail) if d)

    @problem_detail.setter
    def problem_detail(self, value: str) -> None:
        self._problem_detail = value

    @property
    def read_only(self) -> bool:
        return bool(self._read_only_detail)

    def _set_read_only(self, why: str) -> None:
        if not self._read_only_detail:
            self._read_only_detail = (
                "the storage directory %s is on a read-only file system (%s): the stored credentials are"
                " served, new credentials and tokens are kept in memory only until it is writable again"
                % (self.directory, why))
            self.log.warning("%s; check the flash (dmesg), repair it (fsck) and remount it read-write",
                             self._read_only_detail)
        self.stats["read_only"] = True

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        """Vet or create the storage directory and take the writer lock. On a read-only file system
        the store opens read-only (see the module docstring) instead of failing."""
        if self._open:
            return
        try:
            _ensure_dir(self.directory, 0o700, "storage directory", STORE_KEY, self.log)
        except OSError as e:  # EROFS only: the directory is missing and cannot be created
            self._set_read_only(e.strerror or "EROFS")
            self._open = True
            return
        self._lock_fd = _take_lock(self.directory, read_only_ok=True)
        self._open = True
        if not _writable(self.directory):
            self._set_read_only("the lock file cannot be opened for writing")
            return
        self._clean_temp(self.directory)
        if self.token_cache == "runtime" and os.path.isdir(self.token_dir):
            self._clean_temp(self.token_dir)

    def _reopen_rw(self) -> None:
        """Before a write in read-only mode: become the writer again if the file system allows it."""
        if not os.path.isdir(self.directory) or self._lock_fd is None:
            try:
                _ensure_dir(self.directory, 0o700, "storage directory", STORE_KEY, self.log)
                fd = _take_lock(self.directory)
            except (OSError, StoreError) as e:
                raise StoreError("cannot save the credential store: %s; the new state is kept in memory"
                                 % (getattr(e, "strerror", None) or e), code="store_read_only", kind=OPERATOR,
                                 hint="check the flash (dmesg), repair it (fsck) and remount it read-write")
            self._lock_fd = fd
            self.load()  # nobody held the lock meanwhile: see what is on disk before writing over it
        elif not _writable(self.directory):
            raise StoreError("cannot save the credential store: %s is on a read-only file system; the new"
                             " state is kept in memory" % self.directory, code="store_read_only",
                             kind=OPERATOR, hint="check the flash (dmesg), repair it (fsck) and remount it"
                                                 " read-write; the agent saves again at the next change")
        self._read_only_detail = ""
        self.stats["read_only"] = False
        self.log.info("the storage directory %s is writable again", self.directory)

    def close(self) -> None:
        self._open = False
        self._preloaded = None
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> Store:
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _clean_temp(self, directory: str) -> None:
        try:
            names = [n for n in self.fs.listdir(directory) if n.endswith(TMP_SUFFIX)]
            for n in names:
                self.fs.unlink(os.path.join(directory, n))
            if names:
                self.fs.fsync_dir(directory)
                self.log.info("removed %d leftover temp file(s) in %s (interrupted save)", len(names),
                              directory)
        except OSError as e:
            self.log.warning("cannot clean temp files in %s: %s", directory, e.strerror)

    # -- reading ---------------------------------------------------------------------------
    def _read(self, directory: str, name: str, kind: int) -> dict:
        path = os.path.join(directory, name)
        try:
            blob = self.fs.read(path)
        except FileNotFoundError:
            return result("empty", "missing")
        except OSError as e:
            return result("corrupt", "unreadable (%s)" % (e.strerror or e))
        if len(blob) > MAX_FILE_SIZE:
            return result("corrupt", "larger than %d bytes" % MAX_FILE_SIZE)
        return unseal(blob, self._keys, kind)

    def preload(self) -> dict | None:
        """load(), for the daemon's first stage (agent/startup.py: the state is loaded before READY=1);
        the next load() call (the service's, right after) returns this result instead of reading and
        decrypting the slots a second time. Raises what load() raises."""
        state = self.load()
        self._preloaded = (state,)
        return state

    def load(self) -> dict | None:
        """The newest valid state, or None with self.problem saying why. Never raises on bad data;
        raises StoreError store_migration_failed when a migration fails on the newest slot (a bug in
        this agent, not bad data: see _refuse_failed_migration)."""
        if self._preloaded is not None:  # preload() just did it: nothing ran in between
            state, self._preloaded = self._preloaded[0], None
            return state
        res = {n: self._read(self.directory, n, KIND_SLOT) for n in SLOT_NAMES}
        self.slots = {n: {"status": r["status"], "detail": r["detail"], "generation": r["generation"],
                          "provider": r["provider"]} for n, r in res.items()}
        self._loaded = True
        self._max_gen = None
        for r in res.values():
            g = r["generation"]
            if g is not None and (self._max_gen is None or gen_newer(g, self._max_gen)):
                self._max_gen = g
        best = None
        for n in SLOT_NAMES:
            r = res[n]
            if r["status"] == "ok" and (best is None or gen_newer(r["generation"], res[best]["generation"])):
                best = n
        self._rt, self._rt_known = None, False
        self._refuse_failed_migration(res, best)
        self._refuse_unavailable_key(res, best)
        self._check_anchor(res, best)
        if best is None:
            self._cur = None
            self.state = None
            self.stats["generation"] = 0
            self._set_problem(res)
            return None
        r = res[best]
        payload = r["payload"]
        migrated = r["version"] != FORMAT_VERSION
        self._cur = {"slot": best, "gen": r["generation"], "salt": r["salt"],
                     "payload": None if migrated else canonical(payload), "provider": r["provider"],
                     "sealed": r["sealed"]}
        self._dirty = False
        self.stats["generation"] = r["generation"]
        self.problem, self.problem_detail = None, ""
        for n in SLOT_NAMES:
            if n != best and res[n]["status"] not in ("ok", "empty"):
                self.log.warning("store slot %s is %s (%s); using %s (generation %d); the next save"
                                 " rewrites it", os.path.join(self.directory, n), res[n]["status"],
                                 res[n]["detail"], best, r["generation"])
        if migrated:
            self.log.info("store slot %s migrated from format v%d to v%d; the next save rewrites it",
                          best, r["version"], FORMAT_VERSION)
        state = dict(payload)
        slot_token = state.pop("token", None)
        if self.token_cache == "flash":
            state["token"] = slot_token
        elif self.token_cache == "runtime":
            state["token"] = self._load_runtime_token(state) or slot_token
        else:
            state["token"] = None
        self.state = loads(canonical(state).decode("utf-8"))
        self._reseal(res, best, payload)
        return state

    def _key_error(self, what: str, e: sealing.KeyUnavailable) -> StoreError:
        self._cur, self.state, self._loaded = None, None, False  # save() loads again, and refuses again
        self.problem = "key_unavailable"
        self.problem_detail = "%s: %s; the stored slots are kept untouched" % (what, e)
        return StoreError(self.problem_detail, code=e.code, kind=OPERATOR,
                          hint=e.hint or "check [storage] key_provider and its settings ('pass-agent check')")

    def _refuse_unavailable_key(self, res: dict, best: str | None) -> None:
        """The primary provider must be usable (it seals every save), and so must the provider of
        any slot newer than the best readable one: going on would register afresh and later
        overwrite credentials a working token still opens."""
        ready = getattr(self._keys.primary, "ready", None)
        if ready is not None:
            try:
                ready()
            except sealing.KeyUnavailable as e:
                raise self._key_error("the %s key provider of the credential store in %s cannot be used"
                                      % (self._keys.primary.name, self.directory), e)
        best_gen = res[best]["generation"] if best is not None else None
        for n in SLOT_NAMES:
            r = res[n]
            if r["status"] == "key_unavailable" and (best_gen is None or gen_newer(r["generation"], best_gen)):
                raise self._key_error("the credential store slot %s (generation %d) cannot be opened"
                                      % (os.path.join(self.directory, n), r["generation"]),
                                      sealing.KeyUnavailable(r["detail"], hint=r["hint"]))

    def _check_anchor(self, res: dict, best: str | None) -> None:
        """Rollback detection: the newest valid slot must not be older than the generation counter
        kept outside the slots. New generations start above the counter in any case."""
        anchor = self._keys.anchor
        self.anchor_generation = None
        if anchor is None:
            return
        try:
            a = anchor.read()
        except sealing.KeyUnavailable as e:
            raise self._key_error("the generation counter of the credential store in %s cannot be read"
                                  % self.directory, e)
        self.anchor_generation = a
        if a is None:
            return
        if self._max_gen is None or gen_newer(a, self._max_gen):
            self._max_gen = a
        if best is None or not gen_newer(a, res[best]["generation"]):
            return
        g = res[best]["generation"]
        self._cur, self.state, self._loaded = None, None, False  # save() loads again, and refuses again
        self.problem = "rollback"
        self.problem_detail = (
            "the credential store in %s was rolled back: its newest valid slot has generation %d but the"
            " generation counter (%s) says %d was written; an older copy of the store was put back, or"
            " the newest slot was deleted or damaged. The agent does not use these credentials and"
            " writes nothing" % (self.directory, g, anchor.where, a))
        self.log.error("%s", self.problem_detail)
        raise StoreError(self.problem_detail, code="store_rollback", kind=OPERATOR,
                         hint="find out who replaced the store (docs/SECURITY.md, Rollback); then either"
                              " 'pass-agent reset' (discard these credentials, register afresh) or, to keep"
                              " the restored copy on purpose, 'python3 -m agent.keys accept-rollback'")

    def accept_rollback(self) -> int | None:
        """Operator decision after store_rollback: keep the restored copy. Records the newest valid
        slot's generation as the counter (the next saves go above the old counter anyway).
        Returns that generation, or None when no slot is valid (nothing to accept)."""
        self._preloaded = None
        anchor = self._keys.anchor
        res = {n: self._read(self.directory, n, KIND_SLOT) for n in SLOT_NAMES}
        gens = [r["generation"] for r in res.values() if r["status"] == "ok"]
        if anchor is None or not gens:
            return None
        best = gens[0] if len(gens) == 1 or gen_newer(gens[0], gens[1]) else gens[1]
        try:
            anchor.write(best)
        except sealing.KeyUnavailable as e:
            raise self._key_error("cannot write the generation counter of %s" % self.directory, e)
        self.log.warning("rollback of the credential store in %s accepted by the operator: the generation"
                         " counter now says %d", self.directory, best)
        self._loaded = False
        return best

    def _reseal(self, res: dict, best: str, payload: dict) -> None:
        """Migration between providers: re-seal the loaded state with the primary provider, first into
        the other slot (the old one stays until the new one is durable), then over the old one."""
        primary = self._keys.primary.provider_id
        other = SLOT_NAMES[1] if best == SLOT_NAMES[0] else SLOT_NAMES[0]
        writes = 2 if res[best]["provider"] != primary else (
            1 if res[other]["status"] == "ok" and res[other]["provider"] != primary else 0)
        if not writes or not self._open or self._lock_fd is None or self.read_only:
            return
        old = sealing.PROVIDER_NAMES.get(res[best if writes == 2 else other]["provider"], "?")
        self.log.warning("re-sealing the credential store in %s with the %s key provider (a slot is sealed"
                         " by %s); the old slot is replaced once the new one is durable", self.directory,
                         self._keys.primary.name, old)
        data = canonical(payload)
        try:
            for _ in range(writes):
                self._write_slot(data)
        except StoreError as e:
            self.log.warning("re-sealing the credential store in %s failed: %s; the stored slots stay in use"
                             " and the agent re-seals at the next save or start", self.directory, e)
            return
        self.stats_keys["reseals"] += 1
        self._cur["payload"] = None if res[best]["version"] != FORMAT_VERSION else data
        self._rt, self._rt_known = None, False  # the runtime token is re-sealed at the next save

    def _refuse_failed_migration(self, res: dict, best: str | None) -> None:
        """A slot newer than the best valid one whose migration failed holds authentic credentials
        this agent cannot read because of a bug in its own code. Going on would register afresh
        (logging every user out) and later overwrite the only copy: refuse to load and to save
        until an operator installs a fixed agent (or resets the store on purpose)."""
        failed = [n for n in SLOT_NAMES if res[n]["status"] == "migration_failed"
                  and (best is None or gen_newer(res[n]["generation"], res[best]["generation"]))]
        if not failed:
            return
        n = failed[0]
        self._cur, self.state, self._loaded = None, None, False  # save() loads again, and refuses again
        self.problem = "migration_failed"
        self.problem_detail = (
            "the credential store slot %s (generation %d) holds credentials this agent version cannot"
            " upgrade: %s; this is a bug in pass-agent, not damaged data, and the slot is kept untouched"
            % (os.path.join(self.directory, n), res[n]["generation"], res[n]["detail"]))
        raise StoreError(self.problem_detail, code="store_migration_failed", kind=OPERATOR,
                         hint="install a pass-agent version that reads format v%d (or the previous one);"
                              " 'pass-agent reset' discards the credentials instead, which registers"
                              " afresh and logs the box's users out" % res[n]["version"])

    def _load_runtime_token(self, state: dict) -> dict | None:
        r = self._read(self.token_dir, TOKEN_NAME, KIND_TOKEN)
        if r["status"] == "empty":
            self._rt_known = r["detail"] == "missing"
            return None
        if r["status"] != "ok":
            self.log.info("runtime token %s ignored: %s (%s); a new token will be fetched",
                          os.path.join(self.token_dir, TOKEN_NAME), r["status"], r["detail"])
            return None
        p = r["payload"]
        client = state.get("client") if isinstance(state.get("client"), dict) else {}
        if p.get("client_id") != client.get("client_id") or not isinstance(p.get("token"), dict):
            self.log.info("runtime token %s belongs to other client credentials; ignored",
                          os.path.join(self.token_dir, TOKEN_NAME))
            return None
        if r["version"] == FORMAT_VERSION:
            self._rt, self._rt_known = canonical(p), True
        return p["token"]

    def _set_problem(self, res: dict) -> None:
        worst = max((r["status"] for r in res.values()), key=lambda s: _RANK[s] if s != "ok" else -1)
        why = "; ".join("%s: %s" % (n, res[n]["detail"]) for n in SLOT_NAMES)
        d = self.directory
        self.problem = worst
        if worst == "empty":
            self.problem_detail = ("no credentials stored in %s (first start or after reset); the agent"
                                   " registers afresh" % d)
            self.log.info("%s", self.problem_detail)
            return
        if worst == "foreign_device":
            self.problem_detail = (
                "the credential store in %s belongs to another device (cloned flash image?) and cannot"
                " be decrypted with this box's key (%s); the agent registers afresh and keeps the foreign"
                " slots until new credentials are saved" % (d, why))
        elif worst == "unsupported_version":
            self.problem_detail = (
                "the credential store in %s has a format this agent cannot read (%s); was the firmware"
                " downgraded? The agent registers afresh; the slots are kept until new credentials are"
                " saved" % (d, why))
        else:
            self.problem_detail = ("both slots of the credential store in %s are unreadable (%s); the"
                                   " agent registers afresh" % (d, why))
        self.log.warning("%s", self.problem_detail)

    # -- writing ---------------------------------------------------------------------------
    def _target(self) -> str:
        if self._cur is not None:
            return SLOT_NAMES[1] if self._cur["slot"] == SLOT_NAMES[0] else SLOT_NAMES[0]
        # Overwrite an empty or corrupt slot before a foreign or newer-format one (kept longest).
        return min(SLOT_NAMES, key=lambda n: _RANK[self.slots.get(n, {}).get("status", "empty")])

    def save(self, state: dict) -> bool:
        """Persist state. True if bytes were written (flash slot or runtime token file), False if
        nothing changed. Raises StoreError on I/O failure (store_read_only when the slot cannot be
        written on a read-only file system); the previous state then stays current."""
        self._preloaded = None  # a later load() reads what this save left
        if not self._open:
            raise StoreError("save() on the credential store %s before open()" % self.directory,
                             code="store_not_open", kind=FATAL, hint="call Store.open() first")
        if not self._loaded:
            self.load()
        self.stats["saves"] += 1
        token = state.get("token")
        slot_obj = {k: v for k, v in state.items() if k != "token"}
        if self.token_cache == "flash":
            slot_obj["token"] = token
        client = state.get("client") if isinstance(state.get("client"), dict) else {}
        try:
            payload = canonical(slot_obj)
            rt_payload = canonical({"client_id": client.get("client_id"), "token": token}) \
                if self.token_cache == "runtime" and token is not None else None
        except (TypeError, ValueError) as e:
            raise StoreError("the state given to the credential store is not JSON data (%s)"
                             % type(e).__name__, code="store_bad_state", kind=FATAL)
        wrote = False
        if self._dirty or self._cur is None or self._cur["payload"] != payload:
            if self.read_only:
                try:
                    self._reopen_rw()
                except StoreError:
                    self.stats["failures"] += 1
                    raise
            self._write_slot(payload)
            wrote = True
        if self.token_cache == "runtime":
            wrote = self._write_runtime(rt_payload) or wrote
        if not wrote:
            self.stats["skipped_unchanged"] += 1
        self.state = loads(canonical(state).decode("utf-8"))
        return wrote

    def _write_slot(self, payload: bytes) -> None:
        target = self._target()
        primary = self._keys.primary.provider_id
        if self._cur is not None:
            gen = (self._cur["gen"] + 1) & GEN_MASK
        else:
            gen = ((self._max_gen + 1) & GEN_MASK) if self._max_gen is not None else FIRST_GENERATION
        if self._max_gen is not None and not gen_newer(gen, self._max_gen):
            gen = (self._max_gen + 1) & GEN_MASK  # above every header seen and the anchor
        try:
            if self._cur is not None and self._cur["provider"] == primary:
                salt, sealed = self._cur["salt"], self._cur["sealed"]
                key, check = self._keys.key_for(primary, salt, sealed)
            else:  # the first slot, or the first one sealed by a new provider: a fresh store key
                salt = self._salt if self._cur is None else os.urandom(SALT_SIZE)
                key, check, sealed = self._keys.new(salt)
        except (sealing.KeyUnavailable, sealing.WrongKey) as e:
            self.stats["failures"] += 1
            raise StoreError("cannot save the credential store in %s: the %s key provider failed: %s; the"
                             " previous state is kept" % (self.directory, self._keys.primary.name, e),
                             code=getattr(e, "code", "store_key_unavailable"), kind=OPERATOR,
                             hint=getattr(e, "hint", "") or "check [storage] key_provider ('pass-agent check')")
        blob = seal(key, check, salt, gen, payload, provider=primary, sealed=sealed)
        counts = {"bytes": 0, "fsyncs": 0}
        try:
            _write_atomic(self.fs, self.directory, target, blob, counts)
        except StoreError as e:
            self.stats["failures"] += 1
            self._dirty = True
            if getattr(e.__cause__, "errno", None) == errno.EROFS:
                self._set_read_only("a save failed: %s" % e.__cause__.strerror)
            if self._max_gen is None or gen_newer(gen, self._max_gen):
                self._max_gen = gen  # the failed slot may hold gen: the next attempt must outrank it
            raise
        finally:
            self.stats["bytes_written"] += counts["bytes"]
            self.stats["fsyncs"] += counts["fsyncs"]
        self.stats["writes"] += 1
        self.stats["generation"] = gen
        self._cur = {"slot": target, "gen": gen, "salt": salt, "payload": payload, "provider": primary,
                     "sealed": sealed}
        self._max_gen = gen
        self._dirty = False
        self.slots[target] = {"status": "ok", "detail": "generation %d" % gen, "generation": gen,
                              "provider": primary}
        self.problem, self.problem_detail = None, ""
        self._record_generation(gen)

    def _record_generation(self, gen: int) -> None:
        """After a slot is durable (never before): the anchor says gen. A failure leaves the counter
        behind, which load() accepts; it weakens rollback detection until the next write, so it is
        reported loudly but does not fail the save (the credentials are safely on flash)."""
        anchor = self._keys.anchor
        if anchor is None:
            return
        try:
            anchor.write(gen)
            self.anchor_generation = gen
        except sealing.KeyUnavailable as e:
            self.stats_keys["anchor_failures"] += 1
            self.log.error("the generation counter %s was not updated to %d: %s; rollback detection is"
                           " weaker until the next save", anchor.where, gen, e)

    def _write_runtime(self, rt_payload: bytes | None) -> bool:
        path = os.path.join(self.token_dir, TOKEN_NAME)
        if rt_payload is None:
            if self._rt_known and self._rt is None:
                return False
            try:
                self.fs.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise _io_error("unlink", path, e)
            self._rt, self._rt_known = None, True
            return False
        if self._rt_known and self._rt == rt_payload:
            return False
        try:  # runtime_dir keeps its mode (it may hold the player's socket); token/ is ours, 0700
            _ensure_dir(self.token_dir, 0o700, "runtime token directory", RUNTIME_KEY, self.log)
        except OSError as e:
            raise _io_error("mkdir", self.token_dir, e) from e
        try:
            if self._cur is not None and self._cur["provider"] == self._keys.primary.provider_id:
                salt, sealed = self._cur["salt"], self._cur["sealed"]
                key, check = self._keys.key_for(self._cur["provider"], salt, sealed)
            else:
                salt = self._cur["salt"] if self._cur else self._salt
                key, check, sealed = self._keys.new(salt)
        except (sealing.KeyUnavailable, sealing.WrongKey) as e:
            self.stats["failures"] += 1
            raise StoreError("cannot save the runtime token: the %s key provider failed: %s"
                             % (self._keys.primary.name, e), code="store_key_unavailable", kind=OPERATOR,
                             hint=getattr(e, "hint", "") or "check [storage] key_provider")
        blob = seal(key, check, salt, self._cur["gen"] if self._cur else 0, rt_payload, kind=KIND_TOKEN,
                    provider=self._keys.primary.provider_id, sealed=sealed)
        counts = {"bytes": 0, "fsyncs": 0}
        self._rt_known = False  # unknown until the write below completes
        try:
            _write_atomic(self.fs, self.token_dir, TOKEN_NAME, blob, counts)
        except StoreError:
            self.stats["failures"] += 1
            raise
        finally:
            self.stats["runtime_bytes_written"] += counts["bytes"]
        self.stats["runtime_writes"] += 1
        self._rt, self._rt_known = rt_payload, True
        return True

    def wipe(self) -> None:
        """Overwrite both slots (and temp files, and the runtime token) with zeros, fsync, unlink."""
        self._preloaded = None
        if not self._open:
            raise StoreError("wipe() on the credential store %s before open()" % self.directory,
                             code="store_not_open", kind=FATAL, hint="call Store.open() first")
        counts = {"bytes": 0, "fsyncs": 0}
        # The newest slot goes last: a power cut mid-wipe must not resurrect an older state.
        order = _newest_last(self.fs, self.directory)
        try:
            _wipe_files(self.fs, self.directory, _store_names(self.fs, self.directory, order), counts)
            _wipe_runtime(self.fs, self.runtime_dir, counts)
        finally:
            self.stats["bytes_written"] += counts["bytes"]
            self.stats["fsyncs"] += counts["fsyncs"]
            self._cur, self._rt, self._rt_known, self._max_gen = None, None, False, None
            self._dirty, self._loaded = False, False
            self.state = None
            self.slots = {}
            self.stats["generation"] = 0
        self.problem, self.problem_detail = "empty", "the credential store in %s was wiped" % self.directory
        self.log.warning("credential store in %s wiped: the agent must register again", self.directory)


def _wipe_runtime(fs: FsOps, runtime_dir: str, counts: dict) -> list[str]:
    """The runtime token: runtime_dir/token/token.bin, and runtime_dir/token.bin where versions before
    the token directory kept it (a tmpfs survives an upgrade without a reboot)."""
    removed: list[str] = []
    token_dir = os.path.join(runtime_dir, RUNTIME_SUBDIR)
    if os.path.isdir(token_dir) and not os.path.islink(token_dir):
        removed += _wipe_files(fs, token_dir, _store_names(fs, token_dir, (TOKEN_NAME,)), counts)
    if os.path.isdir(runtime_dir):
        removed += _wipe_files(fs, runtime_dir, [TOKEN_NAME], counts)
    return removed


def wipe_dir(directory: str, runtime_dir: str | None = None, fs: FsOps | None = None) -> list[str]:
    """Remove the credential store of directory (overwrite with zeros, fsync, unlink) without the
    device key. Takes the writer lock; raises StoreError "store_locked" while the daemon runs.
    Returns the paths removed."""
    fs = fs or FsOps()
    bad = safedir.problem(directory, "storage directory", STORE_KEY)
    if bad is not None:
        raise _unsafe(bad)
    if not os.path.isdir(directory):
        return []
    fd = _take_lock(directory)
    try:
        counts = {"bytes": 0, "fsyncs": 0}
        removed = _wipe_files(fs, directory, _store_names(fs, directory, _newest_last(fs, directory)), counts)
        removed += _wipe_runtime(fs, runtime_dir or DEFAULT_RUNTIME_DIR, counts)
        return removed
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
