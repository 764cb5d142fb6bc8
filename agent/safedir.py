"""The directories the agent keeps files in: created with explicit modes, refused when unsafe.

Job: make a directory (and any missing parents) exist with the modes the agent chooses whatever the
process umask, and vet it before any file is opened in it: a symbolic link, a directory owned by
neither the agent's uid nor root, or a world-writable directory lets another user redirect or
replace what the agent writes, so it is refused with a message that names the path and the fix.
Used by the credential store (storage dir, runtime token dir) and by `pass-agent check`.

Must never: chmod or chown a directory that already existed (an operator's choice is reported, not
silently repaired), follow a symbolic link at the directory being vetted (links among its parents,
such as /var/run -> /run, are the system's business), or import anything the standard library
does not have (check.py uses it without the store's cryptography).
"""

from __future__ import annotations

import os
import stat

PARENT_MODE = 0o755  # missing parents: traversable, so a socket or file below stays reachable


class UnsafeDir(ValueError):
    """A directory the agent must not use. `message` names the path and what is wrong, `hint` (also
    `fix`, as `pass-agent check` reads it) the command that fixes it."""

    def __init__(self, message: str, hint: str) -> None:
        ValueError.__init__(self, message)
        self.message = message
        self.hint = self.fix = hint


def problem(path: str, what: str, key: str, uid: int | None = None) -> UnsafeDir | None:
    """Why `path` is unsafe for the agent (uid, default the effective uid), or None when it is safe
    or does not exist. Never follows a link at `path` itself."""
    uid = os.geteuid() if uid is None else uid
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # missing (a file among the parents: ensure() says so)
        return None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.path.realpath(path)
        except OSError:
            target = "?"
        return UnsafeDir("%s %s is a symbolic link (to %s); the agent does not follow links for its own"
                         " directories" % (what, path, target),
                         "set %s to the real directory (%s), or replace the link with a directory" % (key, target))
    if not stat.S_ISDIR(st.st_mode):
        return UnsafeDir("%s %s exists and is not a directory" % (what, path),
                         "remove it, or set %s to another path" % key)
    if st.st_uid not in (uid, 0):
        return UnsafeDir("%s %s is owned by uid %d, not by the agent's uid %d or root; another user could"
                         " replace its files" % (what, path, st.st_uid, uid),
                         "chown %d %s (or set %s to a directory of the agent's user)" % (uid, path, key))
    if st.st_mode & stat.S_IWOTH:
        return UnsafeDir("%s %s is world-writable (mode %04o); any local user could replace its files"
                         % (what, path, stat.S_IMODE(st.st_mode)),
                         "chmod o-w %s (0700 for the storage directory), or set %s elsewhere" % (path, key))
    return None


def ensure(path: str, mode: int, what: str, key: str, parent_mode: int = PARENT_MODE) -> bool:
    """Create `path` with exactly `mode` (missing parents with `parent_mode`), then vet it.

    Returns True when `path` was created now. Raises UnsafeDir (see problem()) or OSError from
    mkdir/chmod (EROFS, EACCES...), which the caller turns into its own error. An existing
    directory keeps its mode.
    """
    path = os.path.abspath(path)
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    created = False
    for p in reversed(missing):
        m = mode if p == path else parent_mode
        try:
            os.mkdir(p, m)
        except FileExistsError:  # another process made it meanwhile: vetted below like any existing one
            continue
        os.chmod(p, m)  # mkdir's mode is filtered by the umask; this directory is ours, just made
        created = created or p == path
    bad = problem(path, what, key)
    if bad is not None:
        raise bad
    return created
