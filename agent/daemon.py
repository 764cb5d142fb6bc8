"""`pass-agent run`: wires config, identity, store, service, socket server and console into one process.

Start-up order matters: the stored state is loaded and the socket bound before READY=1, so a
player can get a stored valid token at once with the network down. The main thread runs the
event loop (socket server, signals, watchdog); the service's worker thread talks to Adobe; the
console has its own thread.

Must never: exit on an upstream failure, drop the token or connections on SIGHUP, or wake up
periodically when idle (only the watchdog, when systemd asked for one, and the scheduled refresh).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from agent import config as configmod
from agent import log as agentlog
from agent.errors import AgentError, ConfigError
from agent.notify import Notifier

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
PR_SET_DUMPABLE = 4  # <linux/prctl.h>


class Daemon:
    def __init__(self, cfg: configmod.Config, *, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.logbuf = agentlog.LogBuffer(1000)
        self.log = agentlog.setup(cfg.log.level, self.logbuf)
        self.loop: Any = None
        self.server: Any = None
        self.web: Any = None  # the optional web endpoint (agent/web), only with [web] listen
        self.gateway: Any = None  # the optional REST API v2 gateway (agent/gateway), only with [gateway] enabled
        self.console: Any = None
        self.service: Any = None
        self.store: Any = None  # the first application's store (single-application code, tests)
        self.stores: dict = {}  # application name -> its Store
        self.helper: Any = None  # agent/helperproc.Helper: TLS and AES-GCM in a short-lived child
        self._last_status = ""

    def start(self) -> None:
        from agent import boards
        from agent.loop import Loop
        from agent.server import Server, listen_fds_from_env
        from agent.service import Service, app_runtime_dir, app_storage_dir, storage_dir
        from agent.store import Store

        cfg = self.cfg
        identity = boards.identify_for(cfg.device)
        profile = identity["board"]  # identify_for loaded it: do not parse the board file twice at start
        for w in identity.get("warnings", []):
            self.log.warning("device info: %s", w)
        sdir = storage_dir(cfg, profile)
        # One store per application (issue 16): "default" in the storage directory itself, so a store
        # written by a single-application agent is used in place; the others in apps/NAME below it.
        from agent import helperproc, keys, sealing  # keys: pkcs11/kernel load only when configured

        # TLS and AES-GCM run in a short-lived helper process (agent/helperproc.py): ssl and
        # cryptography are never loaded here. Installed before the stores open: their first decrypt uses it.
        self.helper = helperproc.Helper(log=agentlog.get("helper"))
        sealing.use_backend(self.helper)
        for app in cfg.apps:
            adir = app_storage_dir(sdir, app.name)
            st = Store(adir, identity["device_id"], token_cache=cfg.storage.token_cache,
                       runtime_dir=app_runtime_dir(cfg.storage.runtime_dir, app.name), log=agentlog.get("store"),
                       keys=keys.keyset(cfg.storage, identity["device_id"], adir, log=agentlog.get("store")))
            self.stores[app.name] = st
            st.open()
        self.store = self.stores[cfg.apps[0].name]
        self.service = Service(cfg, identity=identity, stores=self.stores, logbuf=self.logbuf, send=self.helper.send)
        self.loop = Loop()
        fds = listen_fds_from_env()
        s = cfg.socket
        self.server = Server(self.service, self.loop, s.path, mode=s.mode, allow_uids=s.allow_uids,
                             allow_gids=configmod.allowed_gids(cfg), apps=self._acls(cfg),
                             max_connections=s.max_connections,
                             max_per_uid=s.max_per_uid,
                             idle_timeout=s.idle_timeout, listen_fd=fds[0] if fds else None,
                             log=agentlog.get("server"))
        self.server.start()
        if cfg.web.listen:  # imported only when configured: h11 and wsproto are the optional extra [web]
            from agent.web.server import WebServer

            self.web = WebServer(self.service, self.loop, cfg.web, log=agentlog.get("web"))
            self.web.start()
        if cfg.gateway.enabled:  # imported only when configured: h11 is the optional extra [gateway]
            from agent.gateway.server import GatewayServer, rpc_line

            self.gateway = GatewayServer(self.service, self.loop, cfg, acls=configmod.app_acls(cfg),
                                         log=agentlog.get("gateway"))
            self.gateway.start()
            gw = self.gateway.gateway
            # JSON-RPC api.call on the player socket: the same Gateway.handle as the HTTP socket.
            self.server.dispatcher.api_call = lambda req_id, params, app, uid, deliver: gw.rpc_call(
                params, app, uid, lambda reply: deliver(rpc_line(req_id, reply)))
        self.service.add_listener(lambda: self.loop.call_soon_threadsafe(self._update_status))
        self.service.start()
        self._start_console(cfg)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.loop.call_soon_threadsafe(self.loop.stop))
        signal.signal(signal.SIGHUP, lambda *_: self.loop.call_soon_threadsafe(self.reload))
        if self.notifier.watchdog_interval:
            self._watchdog()
        self.log.info("pass-agent %s serving on %s (board %s, store %s); %s", self.service.version, s.path,
                      cfg.device.board, sdir, self.service.status_line())
        from agent import clock

        # Which clock schedules refreshes and timers, and what a suspend does to them (docs/ARCHITECTURE.md).
        self.log.info("time: %s", clock.SOURCE)
        self._last_status = self.service.status_line()
        self.notifier.ready(self._last_status)

    @staticmethod
    def _acls(cfg: configmod.Config) -> dict | None:
        """Per-application socket lists with [[app]] tables; None for a single-application file (its
        [socket] lists decide, as they always did)."""
        return configmod.app_acls(cfg) if cfg.app else None

    def _start_console(self, cfg: configmod.Config) -> None:
        c = cfg.console
        if self.console is not None:
            self.console.reconfigure(c.port, c.baudrate, c.password_hash or None, c.dumb, idle_lock=c.idle_lock)
            return
        if not c.port:
            return
        from agent.serialconsole import SerialConsole

        self.console = SerialConsole(self.service, c.port, baudrate=c.baudrate,
                                     password_hash=c.password_hash or None, dumb=c.dumb,
                                     idle_lock=c.idle_lock, log=agentlog.get("console"))
        self.console.start()

    def _watchdog(self) -> None:
        self.notifier.watchdog()
        self.loop.call_later(self.notifier.watchdog_interval, self._watchdog)

    def _update_status(self) -> None:
        line = self.service.status_line()
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

    def reload(self) -> None:
        """SIGHUP: re-read the config; apply log level, allow-lists, console, refresh tuning.
        A bad new configuration is reported and not applied."""
        path = self.cfg.path
        self.notifier.reloading()
        try:
            new = configmod.load(path)
        except ConfigError as e:
            self.log.error("reload: the new configuration is invalid and was NOT applied:\n%s", e)
            self.notifier.ready("reload rejected: invalid configuration; " + self.service.status_line())
            return
        # [adobe] and [refresh] apply through service.reload; identity and store are built once at start.
        restart = [t for t in ("device", "storage") if getattr(new, t) != getattr(self.cfg, t)]
        if (new.web.listen, new.web.securityagent) != (self.cfg.web.listen, self.cfg.web.securityagent):
            restart.append("web")
        if new.gateway != self.cfg.gateway:  # the gateway's socket, limits and upstream are set at start
            restart.append("gateway")
        self.log.info("configuration reloaded from %s%s", path,
                      "; changes in [%s] need a restart to take effect" % "], [".join(restart) if restart else "")
        agentlog.setup(new.log.level, self.logbuf)
        acls = self._acls(new)
        if acls is not None:  # applications added by the reload are served only after a restart
            acls = {name: acl for name, acl in acls.items() if name in self.service.apps()}
        self.server.set_acl(new.socket.allow_uids, configmod.allowed_gids(new), apps=acls)
        if self.web is not None:
            self.web.reload(new.web)
        if self.gateway is not None:
            self.gateway.set_acl({n: acl for n, acl in configmod.app_acls(new).items() if n in self.service.apps()})

        try:
            self._start_console(new)
        except Exception as e:  # a console problem must not stop the token service
            self.log.error("reload: console not reconfigured: %s", e)
        changed = self.service.reload(new)
        if changed:
            self.log.warning("reload: applications added or removed (%s) need a restart to take effect",
                             ", ".join(changed))
        self.cfg = new
        self.notifier.ready(self.service.status_line())

    def run(self) -> int:
        self.loop.run()
        self.shutdown()
        return EXIT_OK

    def shutdown(self) -> None:
        self.notifier.stopping()
        self.log.info("shutting down")
        for part in (self.console, self.web, self.gateway, self.server):
            if part is not None:
                try:
                    part.stop() if part is self.console else part.close()
                except Exception as e:
                    self.log.debug("shutdown: %s", e)
        if self.service is not None:
            self.service.stop(0.5)
        for st in self.stores.values():
            st.close()
        if self.helper is not None:
            self.helper.close()
        if self.loop is not None:
            self.loop.close()


def no_core_dumps() -> str | None:
    """Keep secrets out of core files: RLIMIT_CORE 0 and PR_SET_DUMPABLE 0 (also bars ptrace and
    /proc/PID/mem from other processes of the agent's user). Returns what could not be done, or None."""
    import resource

    failed = []
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as e:
        failed.append("RLIMIT_CORE 0: %s" % e)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            failed.append("prctl(PR_SET_DUMPABLE, 0): %s" % os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as e:  # no libc prctl (not Linux)
        failed.append("prctl(PR_SET_DUMPABLE, 0): %s" % e)
    return "; ".join(failed) or None


def run(config_path: str | None) -> int:
    core = no_core_dumps()  # first: nothing secret is in memory yet
    try:
        cfg = configmod.load(config_path)
    except ConfigError as e:
        print("pass-agent: invalid configuration:\n%s" % e, file=sys.stderr)
        return EXIT_USAGE
    d = Daemon(cfg)
    if core:
        d.log.warning("core dumps could not be disabled (%s); a crash could write secrets to disk", core)
    try:
        d.start()
    except ConfigError as e:
        print("pass-agent: invalid configuration:\n%s" % e, file=sys.stderr)
        d.shutdown()
        return EXIT_USAGE
    except AgentError as e:
        d.log.error("cannot start: %s", e)
        d.shutdown()
        return EXIT_USAGE if e.kind == "operator" and e.code.endswith("_invalid") else EXIT_FAIL
    except OSError as e:
        d.log.error("cannot start: %s", e)
        d.shutdown()
        return EXIT_FAIL
    return d.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(os.environ.get("PASS_AGENT_CONFIG")))
