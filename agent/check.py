"""The checks behind `pass-agent check` (agent/commands.py prints them): the environment a valid
configuration needs, one result per check.

With `--as-user USER` (root only) the environment checks run in a child process that has dropped to
USER's uid, gid and groups, so file permissions are tested as the service sees them. Must never:
change anything on the box, or print a secret.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import TYPE_CHECKING, Any, Callable

from agent.errors import AgentError

if TYPE_CHECKING:
    from agent.config import Config

# 2024-01-01: a wall clock before this is certainly wrong (no RTC, NTP not synced yet).
PLAUSIBLE_EPOCH = 1704067200


def _b64url_json(part: str) -> dict:
    data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def check_statement(path: str) -> str:
    with open(path, "rb") as f:
        text = f.read(65536).decode("utf-8", "replace").strip()
    parts = text.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT: expected 3 dot-separated parts, found %d" % len(parts))
    header, payload = _b64url_json(parts[0]), _b64url_json(parts[1])
    if header.get("alg") != "RS256":
        raise ValueError("JWT alg is %r, Adobe software statements use RS256" % header.get("alg"))
    if not payload.get("sub"):
        raise ValueError("JWT payload has no 'sub' (registered application id)")
    return "RS256 JWT for registered application %s, issuer %s" % (str(payload.get("sub"))[:40], payload.get("iss"))


def _nearest(path: str) -> str:
    probe = path
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return probe


class _Problem(ValueError):
    def __init__(self, message: str, fix: str) -> None:
        ValueError.__init__(self, message)
        self.fix = fix


def _agent_dir(path: str, what: str, key: str) -> str:
    """A directory the store writes (storage, runtime token): safe (agent/safedir.py), writable, and
    on a file system mounted read-write."""
    from agent import safedir

    bad = safedir.problem(path, what, key)
    if bad is not None:
        raise bad
    probe = _nearest(path)
    if os.path.isdir(probe) and os.statvfs(probe).f_flag & getattr(os, "ST_RDONLY", 1):
        raise _Problem("%s %s is on a read-only file system: the agent starts and serves the stored credentials"
                       " but cannot save new ones (degraded store)" % (what, path),
                       "check the flash (dmesg), repair it (fsck) and remount it read-write")
    return _dir_usable(path, what)


def _dir_usable(path: str, what: str) -> str:
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise NotADirectoryError("%s %s: %s exists and is not a directory" % (what, path, probe))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError("%s %s: %s is not writable by uid %d" % (what, path, probe, os.getuid()))
    return "%s %s is usable%s" % (what, path, "" if probe == path else " (will be created)")


def run_checks(cfg: Config) -> list[tuple[str, bool, str, str]]:
    """(name, ok, detail, fix hint) for every environment check."""
    from agent import boards
    from agent.storagepaths import storage_dir

    results: list[tuple[str, bool, str, str]] = []

    def check(name: str, fn: Callable[[], str], hint: str) -> None:
        try:
            results.append((name, True, fn(), ""))
        except (AgentError, OSError, ValueError, UnicodeError) as e:
            results.append((name, False, str(e), getattr(e, "fix", None) or hint))

    several = len(cfg.apps) > 1 or bool(cfg.app)
    for app in cfg.apps:  # each registered application's statement (issue 16)
        where = "the [[app]] %r table's software_statement" % app.name if cfg.app else "[adobe] software_statement"
        check("statement" + (" " + app.name if several else ""), lambda a=app: check_statement(a.software_statement),
              "download the software statement from the Adobe Pass TVE Dashboard to " + where)
    profile: dict = {}

    def board() -> str:
        profile.update(boards.load_profile(cfg.device.board))
        return "board profile %r loaded" % cfg.device.board

    check("board", board, "set [device] board to one of: " + ", ".join(boards.list_boards()))

    def identity() -> str:
        ident = boards.identify_for(cfg.device)
        boards.check_required(ident)  # a required field left Unknown: Adobe sees an unknown platform
        f = ident["fields"]
        w = ident.get("warnings") or []
        return "X-Device-Info: %s %s, %s %s, %s%s" % (f.get("manufacturer", "?"), f.get("model"), f.get("osName"),
                                                     f.get("osVersion"), f.get("connectionType"),
                                                     (" (%d warnings: %s)" % (len(w), "; ".join(w))) if w else "")

    check("device-info", identity, "fix [device] root/board or add [device.overrides]")
    from agent.storagepaths import app_storage_dir

    for app in cfg.apps:  # one store per application: "default" in the storage dir, the others in apps/NAME
        check("storage" + (" " + app.name if several else ""),
              lambda a=app: _agent_dir(app_storage_dir(storage_dir(cfg, profile), a.name), "storage dir", "[storage] dir"),
              "create the directory or set [storage] dir to a persistent, writable path")
    if cfg.storage.token_cache == "runtime":
        check("runtime", lambda: _agent_dir(os.path.join(cfg.storage.runtime_dir, "token"),
                                            "runtime token dir", "[storage] runtime_dir"),
              "set [storage] runtime_dir to a tmpfs directory the agent can write (systemd: RuntimeDirectory=)")
    def key_provider() -> str:
        # Which provider seals the store key and whether it works now (logs in to a token; creates nothing).
        from agent import keys, sealing

        ks = keys.keyset(cfg.storage, boards.identify_for(cfg.device)["device_id"], storage_dir(cfg, profile))
        try:
            line, hardware = keys.describe(ks)
        except sealing.KeyUnavailable as e:
            raise _Problem(str(e), e.hint or "check [storage] key_provider and its settings (docs/SECURITY.md)")
        finally:
            keys.close_all()
        return "%s; hardware-backed: %s" % (line, "yes" if hardware else "no")

    check("keys", key_provider, "check [storage] key_provider and its settings (docs/SECURITY.md)")
    check("socket", lambda: _dir_usable(os.path.dirname(cfg.socket.path), "socket dir"),
          "set [socket] path to a writable runtime directory such as /run/pass-agent/agent.sock")

    def clock() -> str:
        now = time.time()
        if now < PLAUSIBLE_EPOCH:
            raise ValueError("the wall clock says %s, which is before 2024" % time.strftime("%Y-%m-%d", time.gmtime(now)))
        return "wall clock %s UTC" % time.strftime("%Y-%m-%d %H:%M", time.gmtime(now))

    check("clock", clock, "enable NTP (systemd-timesyncd) and order the agent After=time-sync.target")
    ca_file = cfg.adobe.ca_file
    if ca_file:
        def ca() -> str:
            import ssl

            ssl.create_default_context(cafile=ca_file)
            return "CA file %s loads" % ca_file

        check("ca_file", ca, "set [adobe] ca_file to a PEM bundle, or remove it to use the system CAs")
    return results


def fork_as(uid: int, gid: int, groups: Callable[[], list], fn: Callable[[], Any]) -> Any:
    """fn() in a forked child running as uid/gid with the supplementary `groups()` (asked in the child);
    its result through JSON, or None when the child failed (it always _exits, never returns here)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to the user, run fn, report, always _exit
        code = 0
        try:
            os.close(r)
            os.setgroups(groups())
            os.setgid(gid)
            os.setuid(uid)
            data = json.dumps(fn()).encode("utf-8")
            while data:
                data = data[os.write(w, data):]
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not chunks:
        return None
    return json.loads(b"".join(chunks))


def _as_user(user: str, fn: Callable[[], list]) -> list:
    """fn() in a forked child running as `user` (uid, gid, supplementary groups); its JSON result."""
    import pwd

    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise _Problem("no user %r on this system" % user, "pass the service's user (systemd: User=)")
    if os.geteuid() != 0 and pw.pw_uid != os.geteuid():
        raise _Problem("checking as user %s needs root (this is uid %d)" % (pw.pw_name, os.geteuid()),
                       "run pass-agent check --as-user as root")
    res = fork_as(pw.pw_uid, pw.pw_gid, lambda: os.getgrouplist(pw.pw_name, pw.pw_gid), fn)
    if res is None:
        raise _Problem("the checks as user %s did not complete" % pw.pw_name, "run them as root to see why")
    return [tuple(x) for x in res] + [("user", True, "checked as user %s (uid %d, gid %d)"
                                       % (pw.pw_name, pw.pw_uid, pw.pw_gid), "")]


def run(cfg: Config, as_user: str | None = None) -> list:
    """Every environment check of a valid configuration, as (name, ok, detail, fix) tuples; with
    as_user (root only), run in a child process that has dropped to that user."""
    if not as_user:
        return run_checks(cfg)
    # Everything run_checks imports lazily is imported now: the user may not read this Python's files.
    import ssl  # noqa: F401

    from agent import boards, deviceinfo, keys, safedir, sealing, service  # noqa: F401
    from agent.keys import anchor  # noqa: F401 - keys.keyset imports it on use

    if cfg.storage.key_provider == "pkcs11" or cfg.storage.pkcs11.module:
        try:
            import pkcs11  # noqa: F401

            from agent.keys import pkcs11 as _p11  # noqa: F401
        except ImportError:  # the check itself reports the missing package
            pass

    try:
        return _as_user(as_user, lambda: run_checks(cfg))
    except _Problem as e:
        return [("user", False, str(e), e.fix)]

