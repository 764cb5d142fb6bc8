"""`pass-agent run`, stage 1: everything READY=1 needs and nothing else (issue 20).

Job: bring the daemon from a bare interpreter to READY=1 with the least work and the fewest imports,
then hand over to stage 2 (agent/daemon.py), which imports the rest and builds the daemon around
what this stage made. READY=1 keeps its meaning (docs/ARCHITECTURE.md, "Start-up"): the socket is
bound and the stored state loaded, so a player gets a stored valid token at once.

Theory of operation, in order:
1. Core dumps off (RLIMIT_CORE 0, PR_SET_DUMPABLE 0), while nothing secret is in memory (right after
   the helper is forked, step 5, which comes first so that it works while this process goes on).
2. SIGTERM, SIGINT and SIGHUP are recorded, not acted on (through `_signal`: `signal` imports
   enum); stage 2 replays them once its loop runs, so a stop or reload sent right after READY=1
   is neither lost nor fatal.
3. The configuration: from the validated-configuration cache (agent/configcache.py) when its key
   matches and the box-dependent checks still pass; otherwise config.parse (tomllib + validation)
   of the same bytes, and stage 2 rewrites the cache after READY=1. A bad configuration exits 2 here,
   before store, socket or network, with the message it always had (`check` = `run`).
4. The board profile (cached with the configuration, else parsed) and the device id alone
   (boards.device_id_for): the store key derives from it. Stage 2 builds X-Device-Info with the
   same profile and checks that it finds the same id.
5. The helper process (agent/helperproc.py), forked first thing while this process is single-
   threaded and holds no secret, so it imports cryptography while steps 1-4 run (it turns its own
   core dumps off first); the store's AES-GCM is routed through it (sealing.use_backend):
   cryptography is not imported here.
6. Every application's store opened and loaded (Store.preload; the service's first load() then
   reuses that result).
7. The player socket (agent/listensock.py, as agent/server.py): taken from systemd socket
   activation, or bound here at its path, born with no looser mode than socket.mode (a stale socket
   nobody listens on is replaced, a live one or another file never). Stage 2's server adopts the fd
   and logs which of the two it was.
8. READY=1, unless a [web] endpoint or the [gateway] is configured: stage 2 binds those and sends
   READY=1 itself, so READY=1 still means every configured socket is up.
A client that connects between READY=1 and the loop waits in the listen backlog (listensock.BACKLOG,
tens of ms) and is served once stage 2 runs the loop (tests/test_startup_imports.py connects right at
READY).

Errors: the messages and exit codes of the one-stage start. An invalid configuration or board
profile: "pass-agent: invalid configuration:" on stderr, exit 2; any other failure: "cannot start:"
through the agent's log (agent/log.py is imported for that, on the failure path only), exit 2 for
an operator's `*_invalid` error, else 1. Log lines of this stage (a store warning) go through the
agent's log too; it is set up at the first line, so a start without one never imports logging.

Must never: import typing, re, tomllib, datetime, logging, json, ipaddress, urllib, threading,
cryptography or ssl when the configuration cache hits and nothing needs logging
(tests/test_startup_imports.py runs the real daemon and checks); start a thread before the
helper is forked; send READY=1 before the state is loaded and the socket bound; leave behind a
socket file it created when the start fails.
"""

from __future__ import annotations

import _signal
import os
import sys

from agent import listensock
from agent.errors import OPERATOR, AgentError, ConfigError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
READY_STATUS = "starting: stored state loaded, socket bound"
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_SIGNALS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from agent.config import Config
    from agent.notify import Notifier


def no_core_dumps() -> str | None:
    """Keep secrets out of core files: RLIMIT_CORE 0 and PR_SET_DUMPABLE 0 (also bars ptrace and
    /proc/PID/mem from other processes of the agent's user). Returns what could not be done, or None."""
    import resource

    failed = []
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as e:
        failed.append("RLIMIT_CORE 0: %s" % e)
    from agent import dumpable

    problem = dumpable.set_not_dumpable()
    if problem:
        failed.append(problem)
    return "; ".join(failed) or None


class StageLog:
    """A logger for stage 1: agent/log.py (logging, re, threading) is set up at the first line that
    passes the configured level, so a quiet start imports none of it."""

    def __init__(self, boot: Boot, name: str | None) -> None:
        self._boot = boot
        self._name = name

    def _emit(self, level: str, msg: str, *args: Any, **kw: Any) -> None:
        if _LEVELS[level] >= _LEVELS.get(self._boot.cfg.log.level, 20):
            getattr(self._boot.logger(self._name), level)(msg, *args, **kw)

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        self._emit("debug", msg, *args, **kw)

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        self._emit("info", msg, *args, **kw)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self._emit("warning", msg, *args, **kw)

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        self._emit("error", msg, *args, **kw)

    def exception(self, msg: str, *args: Any, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        self._emit("error", msg, *args, **kw)


class Boot:
    """What stage 1 made, handed to stage 2 (agent/daemon.py Daemon)."""

    def __init__(self, cfg: Config, notifier: Notifier, core_problem: str | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier
        self.core_problem = core_problem
        self.profile: dict = {}
        self.device_id = ""
        self.stores: dict = {}            # application name -> its opened, loaded Store
        self.helper: Any = None           # agent/helperproc.Helper, when that module is there
        self.listen_fd: int | None = None  # the player socket (bound here, or systemd's)
        self.bound: tuple | None = None   # (path, (st_dev, st_ino)) of the socket file this process created
        self.ready_sent = False
        self.cache: Any = None            # agent/configcache.Cache, when $STATE_DIRECTORY is set
        self.cache_entry: dict | None = None  # what stage 2 writes to the cache after READY=1 (a miss)
        self.pending: list[int] = []      # signals received before stage 2's loop (replayed there)
        self.logbuf: Any = None           # agent/log.LogBuffer, made with the first log line

    def log(self, name: str | None = None) -> StageLog:
        return StageLog(self, name)

    def logger(self, name: str | None = None) -> Any:
        """The real agent logger (agent/log.py set up on first use, with the ring buffer stage 2 keeps)."""
        from agent import log as agentlog

        if self.logbuf is None:
            self.logbuf = agentlog.LogBuffer(1000)
            agentlog.setup(self.cfg.log.level, self.logbuf)
        return agentlog.get(name)

    def release_socket(self) -> None:
        """Close the player socket, and remove its file if this process created it (and it is still
        ours: a successor may have replaced it). systemd's socket stays open: systemd owns it."""
        if self.bound is None or self.listen_fd is None:
            return
        fd, self.listen_fd = self.listen_fd, None
        try:
            os.close(fd)
        except OSError:
            pass
        listensock.unlink_if_ours(*self.bound)

    def abort(self) -> None:
        """After a failed stage 1: what Daemon.shutdown does for the parts made so far."""
        self.notifier.stopping()
        self.logger().info("shutting down")
        for st in self.stores.values():
            st.close()
        if self.helper is not None:
            self.helper.close()
        self.release_socket()


# -- the configuration --------------------------------------------------------------------------

def load_config(path: str | None, boot_cache: dict) -> tuple:
    """(Config, board profile or None) for `path`: from the cache when it may be used, else parsed and
    validated in full. Raises ConfigError as config.load does. `boot_cache` receives "cache" (the
    Cache or None) and "entry" (what to write after READY=1, on a miss)."""
    from agent import config as configmod
    from agent import configcache

    path = configmod.resolve_path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return configmod.load(path), None  # its exact error (missing, a directory, not readable)
    cdir = configcache.cache_dir()
    cache = boot_cache["cache"] = configcache.Cache(cdir) if cdir else None
    key = configcache.config_key(path, raw)
    if cache is not None:
        entry = cache.read()
        if entry is not None and entry["config"] == key:
            try:
                cfg = configmod.from_plain(entry["plain"], path)
            except (KeyError, TypeError, ValueError) as e:
                cache.problem, cfg = "is damaged (%s)" % type(e).__name__, None
            if cfg is not None and configmod.cacheable(cfg) and configmod.environment_ok(cfg):
                return cfg, _cached_profile(cfg, entry, key, boot_cache)
    cfg = configmod.parse(raw, path)
    if cache is not None and configmod.cacheable(cfg):
        boot_cache["entry"] = {"config": key, "plain": configmod.to_plain(cfg)}  # the board is added below
    return cfg, None


def _cached_profile(cfg: Config, entry: dict, key: tuple, boot_cache: dict) -> dict | None:
    """The cached board profile when the profile file's bytes are those it was made from, else None
    (the caller parses it; the cache is then rewritten with the new profile)."""
    from agent import boards, configcache

    bpath = boards.profile_path(cfg.device.board)
    try:
        with open(bpath, "rb") as f:
            braw = f.read()
    except OSError:
        braw = None
    if braw is not None and entry["board"] == (bpath, configcache.digest(braw)):
        return entry["profile"]
    boot_cache["entry"] = {"config": key, "plain": entry["plain"]}
    return None


def board_profile(cfg: Config, profile: dict | None, boot_cache: dict) -> dict:
    """The board profile: `profile` (the cache's) when given, else parsed (boards.load_profile_bytes,
    raising ConfigError as it does); a cache entry to write gets the parsed profile and its key."""
    if profile is not None:
        return profile
    from agent import boards, configcache

    profile, braw = boards.load_profile_bytes(cfg.device.board or boards.DEFAULT_BOARD)
    todo = boot_cache.get("entry")
    if todo is not None:
        boot_cache["entry"] = configcache.entry(todo["config"], todo["plain"], (profile["path"], configcache.digest(braw)),
                                                profile)
    return profile


# -- the stage itself ---------------------------------------------------------------------------

def prepare(boot: Boot, profile: dict | None, boot_cache: dict) -> None:
    """Steps 4-8 of the module docstring. Raises ConfigError, AgentError or OSError."""
    from agent import boards, keys, sealing
    from agent.storagepaths import app_dir, storage_dir
    from agent.store import Store

    cfg = boot.cfg
    boot.profile = profile = board_profile(cfg, profile, boot_cache)
    boot.device_id = boards.device_id_for(cfg.device, profile)
    if boot.helper is not None:
        boot.helper.log = boot.log("helper")
        sealing.use_backend(boot.helper)
    sdir = storage_dir(cfg, profile)
    log = boot.log("store")
    # One store per application (issue 16): "default" in the storage directory itself, so a store written
    # by a single-application agent is used in place; the others in apps/NAME below it.
    for app in cfg.apps:
        adir = app_dir(sdir, app.name)
        st = Store(adir, boot.device_id, token_cache=cfg.storage.token_cache,
                   runtime_dir=app_dir(cfg.storage.runtime_dir, app.name), log=log,
                   keys=keys.keyset(cfg.storage, boot.device_id, adir, log=log))
        boot.stores[app.name] = st
        st.open()
        st.preload()
    fds = listensock.listen_fds()
    if fds:
        boot.listen_fd = fds[0]
    else:
        path = cfg.socket.path
        boot.listen_fd, ident = listensock.bind(path, cfg.socket.mode, log=boot.log("server"))
        boot.bound = (path, ident)
    if not (cfg.web.listen or cfg.gateway.enabled):
        boot.notifier.ready(READY_STATUS)
        boot.ready_sent = True


def start_helper() -> Any:
    """The helper process (agent/helperproc.py), forked now: this process is single-threaded and holds
    no secret yet, and the child imports cryptography while stage 1 goes on, so the store's first
    decrypt does not wait for it. None in a build without the module."""
    try:
        from agent import helperproc
    except ModuleNotFoundError as e:  # pragma: no cover - a build without the helper process
        if e.name != "agent.helperproc":
            raise
        return None
    helper = helperproc.Helper()
    helper.prefork()
    return helper


def run(config_path: str | None) -> int:
    """`pass-agent run`: stage 1, then stage 2 (agent/daemon.py) until the daemon stops; the exit code."""
    # The helper first: it imports cryptography while this process does the rest (it turns its own core
    # dumps off first thing, agent/helperproc.py). Before the handlers below: it must not inherit them.
    helper = start_helper()
    core = no_core_dumps()  # nothing secret is in memory yet
    pending: list[int] = []
    for sig in _SIGNALS:  # acted on by stage 2 (Daemon.start replays them)
        _signal.signal(sig, lambda signum, _frame: pending.append(signum))
    boot_cache: dict = {"cache": None, "entry": None}
    try:
        cfg, profile = load_config(config_path, boot_cache)
    except ConfigError as e:
        print("pass-agent: invalid configuration:\n%s" % e, file=sys.stderr)
        if helper is not None:
            helper.close()
        return EXIT_USAGE
    from agent.notify import Notifier

    boot = Boot(cfg, Notifier(), core)
    boot.helper = helper
    boot.pending = pending
    boot.cache = boot_cache["cache"]
    if core:
        boot.log().warning("core dumps could not be disabled (%s); a crash could write secrets to disk", core)
    try:
        prepare(boot, profile, boot_cache)
    except ConfigError as e:
        print("pass-agent: invalid configuration:\n%s" % e, file=sys.stderr)
        boot.abort()
        return EXIT_USAGE
    except AgentError as e:
        boot.logger().error("cannot start: %s", e)
        boot.abort()
        return EXIT_USAGE if e.kind == OPERATOR and e.code.endswith("_invalid") else EXIT_FAIL
    except OSError as e:
        boot.logger().error("cannot start: %s", e)
        boot.abort()
        return EXIT_FAIL
    boot.cache_entry = boot_cache["entry"] if boot_cache["entry"] and "board" in boot_cache["entry"] else None
    from agent import daemon  # stage 2

    return daemon.serve(boot)
