"""This process's "dumpable" flag through libc's prctl: off for the daemon and its helper process.

Job: one implementation of prctl(PR_SET_DUMPABLE, 0) and prctl(PR_GET_DUMPABLE) for agent/startup.py
(the daemon, before it reads anything secret) and agent/helperproc.py (the helper, first thing after
a fork or exec: an exec resets the flag). A non-dumpable process writes no core file and cannot be
ptraced or have /proc/PID/mem read by other processes of its user.
It goes through `_ctypes`, the C module under the ctypes package, building what
ctypes.CDLL(None, use_errno=True).prctl would (an int-returning cdecl function that saves errno):
the ctypes package imports struct and more, ~1 ms of the daemon's start and ~2.5 ms of the forked
helper's, which the store's first decrypt waits for (issue 20).
Must never: import the ctypes package, or raise where prctl does not exist (not Linux): callers
report what could not be done.
"""

from __future__ import annotations

import os

PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4  # <linux/prctl.h>

_prctl: tuple | None = None


def _libc_prctl() -> tuple:
    """(libc's prctl, errno getter), built once."""
    global _prctl
    if _prctl is None:
        import _ctypes

        class CInt(_ctypes._SimpleCData):
            _type_ = "i"

        class PrctlPtr(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = CInt

        class Libc:
            _handle = _ctypes.dlopen(None, getattr(os, "RTLD_LOCAL", 0) | getattr(os, "RTLD_NOW", 2))

        _prctl = (PrctlPtr(("prctl", Libc)), _ctypes.get_errno)
    return _prctl


def set_not_dumpable() -> str | None:
    """prctl(PR_SET_DUMPABLE, 0). Returns what went wrong, or None."""
    try:
        prctl, get_errno = _libc_prctl()
        if prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            return "prctl(PR_SET_DUMPABLE, 0): %s" % os.strerror(get_errno())
    except (OSError, AttributeError, ImportError) as e:  # no libc prctl (not Linux), no _ctypes
        return "prctl(PR_SET_DUMPABLE, 0): %s" % e
    return None


def dumpable() -> int:
    """prctl(PR_GET_DUMPABLE): 0 when this process is not dumpable (-1 where prctl fails)."""
    return int(_libc_prctl()[0](PR_GET_DUMPABLE, 0, 0, 0, 0))
