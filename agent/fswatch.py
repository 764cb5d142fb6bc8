"""Wake-ups when a file is replaced: inotify on Linux (through ctypes), a slow stat poll elsewhere.

Job: call `on_change()` within moments of the file at `path` being rewritten, replaced (renamed
over, as atomic installers and package managers do), deleted or re-permissioned, and cost nothing
while nothing happens: the daemon must stay idle-is-idle, so the watch thread sleeps in poll(2) on
the inotify descriptor and a pipe (the stop signal), with no timeout.

What is watched: the file's directory (a watch on the file itself would be lost when the file is
replaced by a rename), and the directory of its resolved target when the path is a symlink.
Events for other names in those directories are ignored. IN_CREATE is deliberately not watched:
a writer that creates the file then writes it is seen at IN_CLOSE_WRITE, not half-written.

Fallback: where inotify cannot be used (not Linux, no libc symbol, inotify limits reached, or the
directory does not exist yet, e.g. a partition not mounted), the thread stats the file every
`fallback_interval` seconds (5 s: a replaced statement is still noticed within seconds, at a
cost of one wake-up per interval) and tries inotify again each time.

Must never: read the file (the caller does, under its own lock), raise out of its thread, or keep
a descriptor open after `stop()`.
"""

from __future__ import annotations

import os
import select
import struct
import sys
import threading
from typing import Callable

IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x4, 0x8, 0x40, 0x80
IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x200, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
MASK = IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
_DIR_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # here, not at import: only a watch that starts needs it

        # The process's own symbols (libc among them, glibc or musl): ctypes.util.find_library("c")
        # would run ldconfig in a subprocess at every start (~15 ms, docs/bench/weight.txt).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        return libc
    except (ImportError, OSError, AttributeError):  # no ctypes in the image: the stat poll
        return None


def _sig(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)


class FileWatch:
    """Calls `on_change()` from its own thread when the file at `path` may have changed."""

    def __init__(self, path: str, on_change: Callable[[], None], fallback_interval: float = 5.0) -> None:
        self.path = path
        self.on_change = on_change
        self.fallback_interval = fallback_interval
        self.mode = "none"  # "inotify" or "poll" once running (status, tests)
        self._libc = _libc()
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._retarget = False
        self._last: tuple | None = None

    def start(self) -> FileWatch:
        self._last = _sig(self.path)  # taken here, not in the thread: a change right after start() counts
        self._thread = threading.Thread(target=self._run, name="statement-watch", daemon=True)
        self._thread.start()
        return self

    def set_path(self, path: str) -> None:
        """Watch another file from now on (configuration reload)."""
        if path != self.path:
            self.path = path
            self._last = _sig(path)
            self._retarget = True
            self._poke()

    def stop(self, timeout: float = 1.0) -> None:
        self._stopping = True
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout)
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _poke(self) -> None:
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

    # ------------------------------------------------------------------ thread
    def _notify(self) -> None:
        try:
            self.on_change()
        except Exception:  # the watch must outlive a failing callback
            pass

    def _open(self) -> tuple[int, set] | None:
        """An inotify descriptor watching the file's directories, and the names that matter."""
        if self._libc is None:
            return None
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return None
        paths = [os.path.abspath(self.path)]
        real = os.path.realpath(self.path)
        if real != paths[0]:
            paths.append(real)
        names = set()
        for p in paths:
            d, name = os.path.split(p)
            names.add(name.encode("utf-8", "surrogateescape"))
            if self._libc.inotify_add_watch(fd, d.encode("utf-8", "surrogateescape"), MASK) < 0:
                os.close(fd)
                return None
        return fd, names

    def _run(self) -> None:
        while not self._stopping:
            self._retarget = False
            opened = self._open()
            if opened is None:
                self.mode = "poll"
                self._poll_once()
                continue
            self.mode = "inotify"
            fd, names = opened
            try:
                self._watch(fd, names)
            finally:
                os.close(fd)

    def _drain_stop(self) -> None:
        try:
            os.read(self._stop_r, 64)
        except OSError:
            pass

    def _poll_once(self) -> None:
        r, _, _ = select.select([self._stop_r], [], [], self.fallback_interval)
        if r:
            self._drain_stop()
        now = _sig(self.path)
        if not self._stopping and now != self._last:
            self._last = now
            self._notify()

    def _watch(self, fd: int, names: set) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        # The file may have changed between the caller's last read and the watch being set up.
        self._notify()
        while not self._stopping and not self._retarget:
            ready = {f for f, _ in poller.poll()}
            if self._stop_r in ready:
                self._drain_stop()
                continue
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            hit, gone = False, False
            off = 0
            while off + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
                name = data[off + _EVENT.size: off + _EVENT.size + length].rstrip(b"\0")
                off += _EVENT.size + length
                if mask & (_DIR_GONE | IN_Q_OVERFLOW):
                    hit = True
                    gone = gone or bool(mask & _DIR_GONE)
                elif name in names:
                    hit = True
            if hit:
                self._notify()
            if gone:  # the directory went away: set the watch up again (or fall back to polling)
                return
