"""`pass-agent run`, stage 2: the daemon built around what stage 1 (agent/startup.py) made.

Stage 1 reaches READY=1 with the configuration, the device id, the stores loaded and the player
socket bound (docs/ARCHITECTURE.md, "Start-up"); this module imports everything else (service,
lifecycle, rpc, loop, server, logging, console, X-Device-Info, fswatch, governor...) and wires
config, identity, stores, service, socket server and console into one process around the already
bound socket and the already opened stores. Clients that connected meanwhile wait in the listen
backlog and are served when the loop runs. The main thread runs the event loop (socket server,
signals, watchdog); the service's worker thread talks to Adobe (through the helper process,
agent/helperproc.py); the console has its own thread.

Must never: exit on an upstream failure, drop the token or connections on SIGHUP, lose a signal
received before its loop ran (stage 1 records them), or wake up periodically when idle (only the
watchdog, when systemd asked for one, and the scheduled refresh).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from agent import config as configmod
from agent import log as agentlog
from agent import startup, storagepaths
from agent.errors import FATAL, AgentError, ConfigError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = startup.EXIT_OK, startup.EXIT_FAIL, startup.EXIT_USAGE


class Daemon:
    def __init__(self, boot: startup.Boot) -> None:
        self.boot = boot
        self.cfg = boot.cfg
        self.notifier = boot.notifier
        if boot.logbuf is None:  # no line logged in stage 1: the agent's log starts here
            boot.logbuf = agentlog.LogBuffer(1000)
        self.logbuf = boot.logbuf
        self.log = agentlog.setup(self.cfg.log.level, self.logbuf)
        self.loop: Any = None
        self.server: Any = None
        self.web: Any = None  # the optional web endpoint (agent/web), only with [web] listen
        self.gateway: Any = None  # the optional REST API v2 gateway (agent/gateway), only with [gateway] enabled
        self.console: Any = None
        self.service: Any = None
        self.stores: dict = boot.stores  # application name -> its Store, opened and loaded by stage 1
        self.store: Any = next(iter(self.stores.values()), None)  # the first application's (tests)
        self.helper: Any = boot.helper  # agent/helperproc.Helper: TLS and AES-GCM in a short-lived child
        self._last_status = ""

    def start(self) -> None:
        from agent import boards
        from agent.loop import Loop
        from agent.server import Server
        from agent.service import Service

        cfg, boot = self.cfg, self.boot
        # X-Device-Info and AP-Device-Identifier, from the profile stage 1 loaded (parsed once per start
        # at most); the device id must be the one the stores' key was derived from.
        identity = boards.identify_for(cfg.device, profile=boot.profile)
        if identity["device_id"] != boot.device_id:
            raise AgentError("the device identifier changed while the agent started (%s, then %s)" % (
                boot.device_id, identity["device_id"]), code="device_id_changed", kind=FATAL,
                hint="check the identity sources of the board profile ([identity] sources); start the agent again")
        for w in identity.get("warnings", []):
            self.log.warning("device info: %s", w)
        if self.helper is not None:
            self.helper.log = agentlog.get("helper")
        extra = {"send": self.helper.send} if self.helper is not None else {}
        self.service = Service(cfg, identity=identity, stores=self.stores, logbuf=self.logbuf, **extra)
        self.loop = Loop()
        s = cfg.socket
        self.server = Server(self.service, self.loop, s.path, mode=s.mode, allow_uids=s.allow_uids,
                             allow_gids=configmod.allowed_gids(cfg), apps=self._acls(cfg),
                             max_connections=s.max_connections,
                             max_per_uid=s.max_per_uid,
                             idle_timeout=s.idle_timeout, listen_fd=boot.listen_fd,
                             listen_fd_bound=boot.bound is not None, log=agentlog.get("server"))
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
        self._signals()
        if self.notifier.watchdog_interval:
            self._watchdog()
        sdir = storagepaths.storage_dir(cfg, boot.profile)
        self.log.info("pass-agent %s serving on %s (board %s, store %s); %s", self.service.version, self.server.path,
                      cfg.device.board, sdir, self.service.status_line())
        from agent import clock

        # Which clock schedules refreshes and timers, and what a suspend does to them (docs/ARCHITECTURE.md).
        self.log.info("time: %s", clock.SOURCE)
        self._config_cache()
        self._last_status = self.service.status_line()
        if boot.ready_sent:
            self.notifier.status(self._last_status)
        else:  # [web] or [gateway]: their sockets are up only now
            self.notifier.ready(self._last_status)

    def _signals(self) -> None:
        """The loop's signal handlers, then the signals stage 1 recorded before they existed."""
        stop = lambda *_: self.loop.call_soon_threadsafe(self.loop.stop)  # noqa: E731
        hup = lambda *_: self.loop.call_soon_threadsafe(self.reload)  # noqa: E731
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        signal.signal(signal.SIGHUP, hup)
        for sig in self.boot.pending:
            (hup if sig == signal.SIGHUP else stop)()
        self.boot.pending.clear()

    def _config_cache(self) -> None:
        """The validated-configuration cache (agent/configcache.py): say once why a file there was not
        used; write the new one after a miss (READY=1 is out: this is off the start's critical path)."""
        cache = self.boot.cache
        if cache is None:
            return
        if cache.problem:
            self.log.warning("configuration cache %s %s: ignored; the configuration was validated in full",
                             cache.path, cache.problem)
        if self.boot.cache_entry is not None:
            why = cache.write(self.boot.cache_entry)
            if why:
                self.log.warning("configuration cache not written: %s", why)
            else:
                self.log.debug("configuration cache written to %s", cache.path)

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
        self.boot.release_socket()  # the socket stage 1 bound: closed, and its file removed
        if self.loop is not None:
            self.loop.close()


def serve(boot: startup.Boot) -> int:
    """Stage 2 of `pass-agent run` (agent/startup.py calls it after READY=1): build, run, stop."""
    d = Daemon(boot)
    if boot.core_problem and boot.logbuf is None:  # stage 1 logged it when its log was up
        d.log.warning("core dumps could not be disabled (%s); a crash could write secrets to disk", boot.core_problem)
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


def run(config_path: str | None) -> int:
    """`pass-agent run` (agent/startup.py run: stage 1, then serve())."""
    return startup.run(config_path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(os.environ.get("PASS_AGENT_CONFIG")))
