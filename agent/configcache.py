"""The validated-configuration cache: `pass-agent run` reaches READY=1 without tomllib (issue 20).

Job: after a configuration file validated, keep a compiled form of it in the agent's state
directory: the validated values (agent/config.py to_plain) and the validated board profile the
first stage needs (agent/boards.py), as a marshal. The next start uses it only when everything it
was made from is unchanged; otherwise the file is parsed and validated in full (tomllib) and the
cache rewritten. Parsing TOML is ~6 ms of imports (tomllib, re, datetime, string) on every start.

What the key holds, and why (a hit must give exactly what the full path would):
- sha256 of the configuration file's bytes (the bytes validate() reads; both come from one read),
  and the file's absolute path: relative paths in the file are resolved against its directory;
- the agent's version and the Python version (sys.version, the bytecode tag): the validation code
  and marshal's format;
- the board profile: its resolved path ($PASS_AGENT_BOARD_DIR, the packaged profiles) and sha256
  of its bytes, read again on every start (one small file: cheap). A mismatch reparses only the
  profile.
What validation depends on besides the bytes is re-checked on every hit (config.environment_ok,
cheap: no import): groups named by allow_groups exist, software statements and ca_file exist and
are readable, pyserial is installed when a console port is set. A file with a [web] endpoint, the
[gateway] or a key provider other than "device" (or an anchor_dir) checks packages and files of
its own: it is never cached (config.cacheable) and always validated in full, as before the cache.
A developer who edits agent/config.py without changing the version gets a cache made by the old
code: the version is what a box's install changes; `rm` the file (docs/OPERATIONS.md).

Where: the directory of $STATE_DIRECTORY (set by systemd from the unit's StateDirectory=pass-agent:
/var/lib/pass-agent, 0700, the agent's user), file `config.cache`. Without $STATE_DIRECTORY (a
shell, the tests) there is no cache and every start validates in full. The directory is vetted
with agent/safedir.py's rules (no symlink, owned by the agent's uid or root, not world-writable)
and must exist; the file is opened with O_NOFOLLOW and used only if it is a regular file owned by
the agent's uid, not writable by group or others, at most MAX_SIZE bytes, its checksum and marshal
intact and its key equal. Anything else is ignored (`problem` says why; the daemon logs it once,
after READY=1) and never fatal: the start takes the full path and rewrites the file.
Written after READY=1 (agent/daemon.py, stage 2), only on a miss: a temp file (O_CREAT|O_EXCL|
O_NOFOLLOW, 0600), written, fsynced and renamed over the old one, so a reader sees the old or the
new file and never a torn one (a torn one fails its checksum anyway).

Must never: use a cache it did not verify, fail or delay a start because of the cache, follow a
symbolic link, write outside a vetted directory, or import tomllib, typing, re or logging.
"""

from __future__ import annotations

import marshal
import os
import stat
import sys

import agent
from agent import safedir

try:  # CPython's built-in SHA-256: hashlib would load OpenSSL for one digest
    from _sha256 import sha256
except ImportError:  # pragma: no cover - other builds
    try:
        from _sha2 import sha256  # CPython 3.12+
    except ImportError:
        from hashlib import sha256

FILENAME = "config.cache"
MAGIC = b"PACC1\n"
MAX_SIZE = 256 * 1024
ENV_DIR = "STATE_DIRECTORY"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def digest(data: bytes) -> str:
    return sha256(data).hexdigest()


def cache_dir(env: dict | None = None) -> str | None:
    """The directory of the cache: the first of $STATE_DIRECTORY's paths, or None (no cache)."""
    value = (os.environ if env is None else env).get(ENV_DIR) or ""
    first = value.split(":")[0]
    return first if first and os.path.isabs(first) else None


def config_key(path: str, raw: bytes) -> tuple:
    """What a cached configuration must have been made from (see the module docstring)."""
    return (os.path.abspath(path), digest(raw), agent.__version__, sys.version,
            getattr(sys.implementation, "cache_tag", None))


class Cache:
    """The cache file of one directory: read() once at start, write() after READY=1 on a miss."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, FILENAME)
        self.problem: str | None = None  # why the file was not used (logged once by the daemon)

    def read(self) -> dict | None:
        """The cached entry, or None (self.problem says why when a file was there but not used)."""
        bad = safedir.problem(self.directory, "state directory", "$" + ENV_DIR)
        if bad is not None:
            self.problem = bad.message
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as e:  # ELOOP: a symbolic link; EACCES...
            self.problem = "cannot be opened (%s)" % (e.strerror or e)
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.problem = "is not a regular file"
                return None
            if st.st_uid != os.geteuid():
                self.problem = "is owned by uid %d, not by the agent's uid %d" % (st.st_uid, os.geteuid())
                return None
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                self.problem = "is writable by group or others (mode %04o)" % stat.S_IMODE(st.st_mode)
                return None
            if st.st_size > MAX_SIZE:
                self.problem = "is %d bytes, more than a cache can be (%d)" % (st.st_size, MAX_SIZE)
                return None
            blob = os.read(fd, MAX_SIZE + 1)
        except OSError as e:
            self.problem = "cannot be read (%s)" % (e.strerror or e)
            return None
        finally:
            os.close(fd)
        head = len(MAGIC) + 64
        if blob[:len(MAGIC)] != MAGIC or len(blob) < head or blob[len(MAGIC):head] != digest(blob[head:]).encode():
            self.problem = "is damaged (wrong magic or checksum)"
            return None
        try:
            entry = marshal.loads(blob[head:])
        except (EOFError, ValueError, TypeError) as e:
            self.problem = "is damaged (%s)" % type(e).__name__
            return None
        if not (isinstance(entry, dict) and isinstance(entry.get("config"), tuple)
                and isinstance(entry.get("plain"), dict) and isinstance(entry.get("board"), tuple)
                and isinstance(entry.get("profile"), dict)):
            self.problem = "is damaged (unexpected content)"
            return None
        return entry

    def write(self, entry: dict) -> str | None:
        """Replace the file with `entry`; returns why it could not (never raises)."""
        try:
            body = marshal.dumps(entry)
        except ValueError as e:  # a value marshal cannot hold: nothing to cache
            return "the configuration cannot be cached (%s)" % e
        bad = safedir.problem(self.directory, "state directory", "$" + ENV_DIR)
        if bad is not None:
            return bad.message
        tmp = "%s.%d.tmp" % (self.path, os.getpid())
        try:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _NOFOLLOW, 0o600)
            try:
                data = MAGIC + digest(body).encode() + body
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return "cannot write %s: %s" % (self.path, e.strerror or e)
        return None


def entry(cfg_key: tuple, plain: dict, board_key: tuple, profile: dict) -> dict:
    return {"config": cfg_key, "plain": plain, "board": board_key, "profile": profile}
