"""The store's generation counter kept outside the slots, in a file of another directory.

Job: remember the newest generation the store made durable, somewhere a copy of the storage
directory does not carry, so that a store replaced by an older valid copy (an old slot file put
back, a backup of the directory restored) is noticed: its newest generation is older than the
counter. With the `pkcs11` provider the counter lives in the token instead (agent/keys/pkcs11.py);
this file is the `device` provider's (and the kernel provider's) counter, used when
`[storage] anchor_dir` is set (another directory, ideally on another partition).

One small file per store, named after the store directory (`store_id`): ``<id>.gen``, 16 bytes
(magic ``PAGC``, u32 version 1, u32 generation, CRC32 of those). Written like a slot: temp file,
write, fsync, rename, fsync(dir), through the store's FsOps (so the crash enumeration covers it).

Must never: follow a symbolic link (files are opened with O_NOFOLLOW by FsOps), raise anything but
sealing.KeyUnavailable (unreachable) from read() and write(), or hold a secret (the counter is not one).
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import zlib
from typing import Any

from agent import safedir
from agent.sealing import KeyUnavailable

_MAGIC = b"PAGC"
_BODY = struct.Struct(">4sII")
_CRC = struct.Struct(">I")
SIZE = _BODY.size + _CRC.size
ANCHOR_KEY = "[storage] anchor_dir"


def store_id(directory: str) -> str:
    """A stable name for one store (one storage directory): 16 hex digits of SHA-256 of its real path."""
    return hashlib.sha256(os.path.realpath(directory).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def encode(generation: int) -> bytes:
    body = _BODY.pack(_MAGIC, 1, generation & 0xFFFFFFFF)
    return body + _CRC.pack(zlib.crc32(body))


def decode(blob: bytes) -> int | None:
    """The generation in an anchor file, or None when the bytes are not one (damaged, truncated)."""
    if len(blob) != SIZE or blob[:4] != _MAGIC:
        return None
    if _CRC.unpack(blob[_BODY.size:])[0] != zlib.crc32(blob[:_BODY.size]):
        return None
    magic, version, gen = _BODY.unpack(blob[:_BODY.size])
    return gen if version == 1 else None


class FileAnchor:
    """The generation counter of the store in `store_dir`, kept in `anchor_dir`. `fs` is the store's
    FsOps (open/write/fsync/close/rename/fsync_dir/read); None uses plain os calls (agent.store.FsOps)."""

    def __init__(self, anchor_dir: str, store_dir: str, fs: Any = None, log: Any = None) -> None:
        self.directory = anchor_dir
        self.name = store_id(store_dir) + ".gen"
        self.where = os.path.join(anchor_dir, self.name)
        self._fs = fs
        self._log = log

    @property
    def fs(self) -> Any:
        if self._fs is None:
            from agent.store import FsOps  # the store is above this module; import on use only

            self._fs = FsOps()
        return self._fs

    def read(self) -> int | None:
        try:
            blob = self.fs.read(self.where, SIZE)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise KeyUnavailable("cannot read the generation counter %s: %s" % (self.where, e.strerror or e),
                                 code="store_anchor_unavailable",
                                 hint="check %s: the directory must be readable by the agent" % ANCHOR_KEY)
        gen = decode(blob)
        if gen is None and self._log is not None:
            # Damaged: like a missing counter (someone able to write there could delete it as well).
            self._log.warning("the generation counter %s is damaged (%d bytes); rollback detection restarts"
                              " from the store's newest slot", self.where, len(blob))
        return gen

    def write(self, generation: int) -> None:
        fs = self.fs
        tmp = self.where + ".tmp"
        try:
            safedir.ensure(self.directory, 0o700, "generation counter directory", ANCHOR_KEY)
            fd = fs.open(tmp, True)
            try:
                data = encode(generation)
                off = 0
                while off < len(data):
                    n = fs.write(fd, data[off:])
                    if not n or n < 0:
                        raise OSError(errno.EIO, "short write")
                    off += n
                fs.fsync(fd)
            finally:
                fs.close(fd)
            fs.rename(tmp, self.where)
            fs.fsync_dir(self.directory)
        except safedir.UnsafeDir as e:
            raise KeyUnavailable(e.message, code="store_anchor_unavailable", hint=e.hint)
        except OSError as e:
            raise KeyUnavailable("cannot write the generation counter %s: %s" % (self.where, e.strerror or e),
                                 code="store_anchor_unavailable",
                                 hint="check %s: a writable directory the agent owns" % ANCHOR_KEY)
