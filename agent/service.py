"""The agent's service: the I/O shell around the lifecycles, and the facade every front end uses.

It owns the configuration, the device identity, the upstream governor and, per registered
application (issue 16: one per [[app]] table, or "default"), a credential store, a lifecycle and
a statement file. One worker thread performs the upstream requests every lifecycle asks for, each
after the governor (agent/governor.py) granted it, so there is never more than one in flight on
the box. The socket server, the console and the CLI only call the facade methods below (each takes
an optional `app`: None means the only application, and is an `app_required` error when there are
several); each returns at once and never waits on the network (except `wait_token`, which a thread
that may block can use). One application's revocation, statement change or operator wait never
touches another's state: only the governor's budget is shared (a 429 pauses every application).

Must never: hold its lock across network or flash I/O, log a secret, or re-register on its own
initiative (only the lifecycle decides).
"""

from __future__ import annotations

import os
import select
import threading
import time
import traceback
from typing import Any, Callable

from agent import __version__, config, dcr, devfields, fswatch, governor, lifecycle
from agent import clock as clockmod
from agent import log as agentlog
from agent.deviceinfo import sha256
from agent.errors import FATAL, OPERATOR, AgentError, NotReady, StoreError

STATE_WORDS = {
    lifecycle.UNREGISTERED: "not registered yet",
    lifecycle.REGISTERING: "registering with Adobe Pass",
    lifecycle.REGISTERED: "registered, fetching a token",
    lifecycle.FETCHING: "fetching an access token",
    lifecycle.TOKEN_VALID: "holding a valid token",
    lifecycle.REFRESHING: "refreshing the token",
    lifecycle.BACKING_OFF: "backing off after an upstream error",
    lifecycle.NEEDS_OPERATOR: "needs an operator: configuration problem",
}


def read_statement(path: str) -> tuple[str, str, str]:
    """The software statement (a JWT), its SHA-256 hex and the registered application it names
    ("iss|sub", lifecycle.statement_identity); raises AgentError(kind operator) naming the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(65536)
    except OSError as e:
        raise AgentError("cannot read the software statement %s: %s" % (path, e.strerror or e),
                         code="statement_unreadable", kind=OPERATOR,
                         hint="install the statement from the Adobe Pass TVE Dashboard at [adobe] software_statement")
    text = raw.decode("utf-8", "replace").strip()
    app = lifecycle.statement_identity(text, path)
    return text, sha256(text.encode("utf-8")).hexdigest(), app


WAIT_SLICE = 1.0  # longest a wait_token caller sleeps without re-reading the clock (see wait_token)


def internal_error(op: str, exc: BaseException) -> tuple[AgentError, str]:
    """A bug in the agent's own code during `op`, as the error the lifecycle and the status see and
    the traceback to log once.

    Kind operator, code `internal_error`: the lifecycle puts the agent in needs_operator and retries
    after its operator wait (hourly), or at once when an operator asks (console `refresh`) or the
    statement changes. Not an upstream error: backing off and retrying every minute forever hid bugs
    as "Adobe is failing" and, with a bug fleet-wide, sent Adobe a request per box per minute for
    nothing. Hourly still recovers a box from a bug that does not repeat. Everything user-visible is
    redacted (the exception text can quote a secret); the traceback's frames are the agent's own
    source lines, its last line the exception, and the log formatter redacts the record again.
    """
    tb = traceback.extract_tb(exc.__traceback__)
    where = ("%s:%d" % (os.path.basename(tb[-1].filename), tb[-1].lineno)) if tb else "?"
    what = agentlog.REDACTOR.redact(agentlog.escape_controls(str(exc)))[:200]
    err = AgentError("internal error during the %s request at %s: %s: %s (a bug in pass-agent, not a problem "
                     "at Adobe or in the configuration)" % (op, where, type(exc).__name__, what),
                     code="internal_error", kind=OPERATOR,
                     hint="report it with the traceback from the agent log (journalctl -u pass-agent); the agent "
                          "retries hourly, or at once on the console's `refresh`")
    lines = ["Traceback (most recent call last):"]
    for frame in traceback.format_list(tb):  # "  File ..., line N, in f\n    source\n"
        lines.extend(agentlog.escape_controls(line) for line in frame.rstrip("\n").split("\n"))
    lines.append("%s: %s" % (type(exc).__name__, what))
    return err, agentlog.REDACTOR.redact("\n".join(lines))


class _WakingCondition(threading.Condition):
    """A Condition whose notify() and notify_all() also wake the worker's select()."""

    def __init__(self, wake: Callable[[], None]) -> None:
        threading.Condition.__init__(self)
        self._wake_worker = wake

    def notify(self, n: int = 1) -> None:
        threading.Condition.notify(self, n)
        self._wake_worker()

    def notify_all(self) -> None:
        threading.Condition.notify_all(self)
        self._wake_worker()


class _WorkerSleeper:
    """The worker's sleep: until a deadline on the service clock or a wake-up from another thread.

    select() on a self-pipe and, when the service runs on agent.clock.now, a CLOCK_BOOTTIME alarm
    that fires at the deadline even when the box was suspended meanwhile. With an injected clock
    (tests) the plain timeout is all there is."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._alarm = clockmod.Alarm() if clock is clockmod.now else None
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._fds = [self._r] + ([self._alarm.fileno()] if self._alarm is not None and self._alarm.available else [])

    def wake(self) -> None:
        if self._w < 0:
            return  # closed: the fd number may belong to someone else by now
        try:
            os.write(self._w, b"\0")
        except OSError:  # pipe full: a wake-up is pending anyway
            pass

    def prepare(self) -> None:
        """Forget wake-ups the caller has already acted on. Call with the state lock held."""
        try:
            while os.read(self._r, 4096):
                pass
        except OSError:
            pass

    def sleep_until(self, deadline: float | None) -> None:
        alarm = self._alarm
        if alarm is not None:
            alarm.set(deadline)
        select.select(self._fds, [], [], clockmod.wait_timeout(deadline, self._clock(), alarm))
        if alarm is not None:
            alarm.clear()

    def close(self) -> None:
        fds, self._r, self._w = (self._r, self._w), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        if self._alarm is not None:
            self._alarm.close()


class _App:
    """One registered application inside the service: its configuration, store, lifecycle and
    statement file. Every field is read and written under Service._cond, except `lc.tok`, which the
    hot path reads without the lock (the lifecycle replaces the token dict whole)."""

    __slots__ = ("name", "cfg", "store", "lc", "statement", "statement_sig", "watch", "queued", "ticket",
                 "ident_base", "ident")

    def __init__(self, cfg: config.AppConfig, store: Any, lc: lifecycle.Lifecycle) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.store = store
        self.lc = lc
        self.statement: str | None = None
        self.statement_sig: tuple | None = None
        self.watch: fswatch.FileWatch | None = None
        self.queued = False             # waiting in the governor's line
        self.ticket: int | None = None  # the governor's grant for the request in flight
        self.ident_base: Any = None     # the box identity's x_device_info the cached `ident` was built from
        self.ident: dict | None = None  # the identity with this application's applicationId


def governor_settings(up: config.UpstreamConfig) -> dict:
    """The Governor keyword arguments of an [upstream] table (for the constructor and retune)."""
    return {"rate": up.rate, "burst": up.burst, "initial": None if up.assume_burst else 1, "slack": up.slack,
            "pause_cap": up.pause_cap}


def app_required(names: list[str]) -> AgentError:
    """The error for a call that did not say which application, where several are possible."""
    return AgentError("this agent serves several applications (%s); say which one (param \"app\", --app NAME, "
                      "token_client -a NAME)" % ", ".join(names), code="app_required", kind=FATAL,
                      hint="pass the application's name as configured in its [[app]] table")


class Service:
    """Thread-safe facade over the applications' lifecycles + stores, the box identity and the upstream
    governor. See docs/ARCHITECTURE.md ("Several applications")."""

    def __init__(self, cfg: config.Config, *, identity: dict | None = None, store: Any = None,
                 stores: dict | None = None, logbuf: agentlog.LogBuffer | None = None,
                 clock: Callable[[], float] = clockmod.now, wall: Callable[[], float] = time.time,
                 send: Callable[..., tuple] | None = None, gov: governor.Governor | None = None) -> None:
        """`stores`: application name -> its Store (None or missing: in memory only); `store`: the
        store of a single-application configuration (the form every caller used before issue 16)."""
        self.cfg = cfg
        self.version = __version__
        self.clock, self.wall = clock, wall
        self.log = agentlog.get("service")
        self.logs = logbuf or agentlog.LogBuffer()
        self._send = send or dcr.send
        if identity is None:
            from agent import boards
            identity = boards.identify_for(cfg.device)
        self._identity = identity
        apps = cfg.apps
        if stores is None:
            stores = {apps[0].name: store} if len(apps) == 1 else {}
        self._apps: dict[str, _App] = {}
        for a in apps:
            lc = lifecycle.Lifecycle(refresh_at=cfg.refresh.at, jitter=cfg.refresh.jitter,
                                     backoff_cap=cfg.refresh.backoff_cap)
            self._apps[a.name] = _App(a, stores.get(a.name), lc)
        self._names = list(self._apps)
        # The application a call without `app` means: the only one, else none (app_required).
        self._only: _App | None = self._apps[self._names[0]] if len(self._names) == 1 else None
        # Every application's DCR request passes this one budget (agent/governor.py): Adobe throttles
        # the box's public address, not an application. Its settings: [upstream].
        self.governor = gov or governor.Governor(**governor_settings(cfg.upstream))
        # The worker sleeps in select() on a wake-up pipe and a CLOCK_BOOTTIME alarm (a Condition's
        # timeout counts on CLOCK_MONOTONIC and would end late by a suspend's length); every
        # notify on the condition also wakes the worker, so all existing notify_all() calls do.
        self._sleeper = _WorkerSleeper(clock)
        self._cond = _WakingCondition(self._sleeper.wake)
        self._subs: list[Callable[[dict], None]] = []
        self._listeners: list[Callable[[], None]] = []  # told after every upstream outcome (systemd STATUS=)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._started_mono = clock()

    # ------------------------------------------------------------------ single-application views
    @property
    def lc(self) -> lifecycle.Lifecycle:
        """The first application's lifecycle (single-application code and tests)."""
        return self._apps[self._names[0]].lc

    @property
    def store(self) -> Any:
        """The first application's store (single-application code and tests)."""
        return self._apps[self._names[0]].store

    def _app(self, app: str | None) -> _App:
        """The application a call names (None: the only one). Raises app_required / unknown_app."""
        if app is None:
            if self._only is not None:
                return self._only
            raise app_required(self._names)
        a = self._apps.get(app)
        if a is None:
            raise AgentError("no application named %r; this agent serves %s" % (str(app)[:64], ", ".join(self._names)),
                             code="unknown_app", kind=FATAL, hint="use one of the configured [[app]] names")
        return a

    # ------------------------------------------------------------------ life of the service
    def start(self) -> None:
        """Load every application's stored state (no network) and start the one worker thread. Once:
        a second start would reload the lifecycles under the running worker and start another one
        (two requests in flight against Adobe's one budget), so it is refused."""
        if self._thread is not None:
            raise RuntimeError("Service.start() called twice: the service already runs its worker")
        for a in self._apps.values():
            self._start_app(a)
        self._thread = threading.Thread(target=self._run, name="lifecycle", daemon=True)
        self._thread.start()

    def _start_app(self, a: _App) -> None:
        stored = None
        if a.store is not None:
            stored = a.store.load()
            # store.load() already logged why a slot was unusable (foreign device, corrupt...).
        if stored and stored.get("client"):
            agentlog.REDACTOR.add(stored["client"].get("client_secret"), kind="client_secret")
            if stored.get("token"):
                agentlog.REDACTOR.add(stored["token"].get("access_token"), kind="access_token")
        app, digest, problem = self._refresh_statement(a, force=True) or (None, None, None)
        with self._cond:
            now = self.clock()
            effects = a.lc.load(stored, app, digest, now, self.wall())
            if problem is not None:
                a.lc.statement_changed(None, digest, now, problem)
            if stored and stored.get("client"):
                self.log.info("%sloaded stored credentials (client %s); state: %s", self._tag(a),
                              (stored["client"].get("client_id") or "?")[:8] + "…", STATE_WORDS[a.lc.state])
        self._apply(a, effects)
        # A new statement file is noticed within moments, without a periodic wake-up (agent/fswatch.py).
        a.watch = fswatch.FileWatch(a.cfg.software_statement, self._statement_poke).start()

    def _tag(self, a: _App) -> str:
        """The log prefix naming the application (none with a single application: logs read as before)."""
        return "" if self._only is not None else "[%s] " % a.name

    def _statement_poke(self) -> None:
        """From a file watch thread: a statement file may have changed; the worker re-checks them."""
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 1.0) -> None:
        for a in self._apps.values():
            if a.watch is not None:
                a.watch.stop(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self._sleeper.close()  # the worker is gone: its pipe and alarm fds with it

    def reload(self, cfg: config.Config) -> list[str]:
        """Apply a new configuration's lifecycle-relevant parts (statement paths, redirect URIs,
        applicationIds, refresh tuning) and the [upstream] budget (agent/governor.py retune) in place.
        Returns the names of applications added or removed, which need a restart (their stores and the
        socket's lists are built at start)."""
        new = {a.name: a for a in cfg.apps}
        changed = sorted(set(new) ^ set(self._apps))
        with self._cond:
            self.cfg = cfg
            self.governor.retune(**governor_settings(cfg.upstream))  # validated: [upstream]'s bounds are narrower
            for a in self._apps.values():
                a.lc.refresh_at = cfg.refresh.at
                a.lc.jitter = cfg.refresh.jitter
                a.lc.backoff_cap = cfg.refresh.backoff_cap
                if a.name in new:
                    a.cfg = new[a.name]
                    a.ident = None
                a.statement_sig = None
            self._cond.notify_all()
        for a in self._apps.values():
            if a.watch is not None:
                a.watch.set_path(a.cfg.software_statement)
        return changed

    # ------------------------------------------------------------------ worker
    def _refresh_statement(self, a: _App, force: bool = False) -> tuple[str | None, str | None, dict | None] | None:
        """Re-read an application's statement when its file changed (cheap stat otherwise). None:
        unchanged; else (application "iss|sub", SHA-256, None), or (None, None, problem) when the
        file is unusable."""
        path = a.cfg.software_statement
        try:
            st = os.stat(path)
            sig: tuple | None = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)
        except OSError:
            sig = None
        if not force and sig == a.statement_sig:
            return None
        a.statement_sig = sig
        try:
            text, digest, app = read_statement(path)
        except AgentError as e:
            a.statement = None
            self.log.error("%s%s", self._tag(a), e)
            return None, None, dict(e.to_dict())
        agentlog.REDACTOR.add(text, kind="software_statement")
        if a.statement is not None and text != a.statement:
            self.log.info("%sthe software statement changed (new SHA-256 %s…, application %s)", self._tag(a),
                          digest[:12], app.split("|", 1)[1])
        a.statement = text
        return app, digest, None

    @staticmethod
    def _next_op(lc: lifecycle.Lifecycle) -> str:
        """What lc.poll() starts when due (the governor classes a request before it starts)."""
        return "register" if lc.client is None or lc.pending_register else "token"

    def _pick(self, now: float) -> tuple[_App, str, Any] | None:
        """Under the lock: the one request to perform now, past the governor, or None.

        Due applications are offered to the governor best class first (a first token before a
        refresh, agent/governor.py "Priority"); the first grant is performed at once and nobody else
        is asked in this round, so a grant is always used the moment it is given (a grant used late
        would let requests reach Adobe closer together than the governor's model of its bucket)."""
        due = []
        for a in self._apps.values():
            lc = a.lc
            if lc.in_flight or lc.due is None or now < lc.due:
                if a.queued and not lc.in_flight:
                    self.governor.withdraw(a.name)  # no longer wanted (statement problem, wiped...)
                    a.queued = False
                continue
            op = self._next_op(lc)
            if op == "register" and lc.statement_problem is not None:
                lc.poll(now)  # nothing to register with: the lifecycle parks itself (no request)
                continue
            holds = lc.tok is not None and lc.tok["expires_mono"] > now
            due.append((governor.dcr_class(op, holds), a))
        due.sort(key=lambda x: x[0])
        for cls, a in due:
            dec = self.governor.request(a.name, cls, now)
            if not dec.granted:
                a.queued = True
                continue
            a.queued = False
            a.ticket = dec.ticket
            req = a.lc.poll(now)
            if req is None:  # cannot happen after the checks above; the grant is lost, never returned
                continue
            client = dict(a.lc.client) if a.lc.client else None
            return a, req["op"], (a.statement, a.lc.statement_app, client)
        return None

    def _run(self) -> None:
        # One worker for every application: Adobe's budget is per address (1 request/s after the burst),
        # so parallel requests would buy nothing but bursts the governor must prevent anyway, and one
        # request in flight box-wide is the simplest thing that obeys it (docs/ARCHITECTURE.md).
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = self.clock()
                for a in self._apps.values():
                    seen = self._refresh_statement(a)
                    if seen is not None and a.lc.statement_changed(seen[0], seen[1], now, seen[2]):
                        self.log.info("%sregistering again because the software statement names another "
                                      "registered application", self._tag(a))
                job = self._pick(now)
                if job is None:
                    deadline = self._deadline(now)
                    self._sleeper.prepare()  # under the lock: a notify from here on ends the sleep
            if job is None:
                self._sleeper.sleep_until(deadline)  # outside the lock; ends early after a resume
                continue
            a, op, (statement, statement_app, client) = job
            self._perform(a, op, statement, statement_app, client)

    def _deadline(self, now: float) -> float | None:
        """Under the lock: when the worker must look again (the earliest due request not waiting in
        the governor's line, the governor's next grant, a 30 s statement check in needs_operator)."""
        times = []
        for a in self._apps.values():
            d = a.lc.next_deadline()
            if d is not None and not a.queued:
                times.append(d)
            if a.lc.state == lifecycle.NEEDS_OPERATOR:
                times.append(now + 30.0)  # watch the statement file so a fix is picked up at once
        g = self.governor.next_grant_time(now)
        if g is not None:
            times.append(g)
        return min(times) if times else None

    def _perform(self, a: _App, op: str, statement: str | None, statement_app: str | None,
                 client: dict | None) -> None:
        adobe, ac = self.cfg.adobe, a.cfg
        result: Any = None
        error: AgentError | None = None
        trace: str | None = None
        # The token's lifetime counts from when we asked, not when the answer arrived: never overstate it.
        sent_mono, sent_wall = self.clock(), self.wall()
        try:
            refresh = getattr(self._identity, "refresh_network", None)
            if refresh is not None:  # once per upstream request (never on token.get): Wi-Fi/LAN, new lease
                refresh()
            xdi = self._app_identity(a)["x_device_info"]
            if op == "register":
                if statement is None:
                    raise AgentError("no usable software statement at %s" % ac.software_statement,
                                     code="statement_unreadable", kind=OPERATOR,
                                     hint="install the statement from the Adobe Pass TVE Dashboard")
                req = dcr.register_request(adobe.base_url, statement, xdi, ac.redirect_uri)
                parse, secret = dcr.parse_register, "client_secret"
            else:
                assert client is not None
                req = dcr.token_request(adobe.base_url, client["client_id"], client["client_secret"], xdi)
                parse, secret = dcr.parse_token, "access_token"
            status, headers, body = self._send(req, timeout=adobe.timeout, ca_file=adobe.ca_file, wall_now=self.wall())
            result = parse(status, headers, body, self.wall())
            agentlog.REDACTOR.add(result[secret], kind=secret)
        except AgentError as e:
            error = e
        except Exception as e:  # a bug in the agent: must not kill the worker, must not pass for Adobe's fault
            error, trace = internal_error(op, e)
        tag = self._tag(a)
        with self._cond:
            now, wall = self.clock(), self.wall()
            if error is not None:
                effects = a.lc.on_error(error, now, wall)
                if getattr(error, "status", None) == 429 or error.code == lifecycle.THROTTLED:
                    # Adobe's 429 is about the box's address: every application pauses (agent/governor.py).
                    until = self.governor.on_throttled(now, window=a.lc.window, retry_after=error.retry_after,
                                                       ticket=a.ticket)
                    if len(self._apps) > 1:
                        self.log.info("%sthrottled by Adobe: every application waits %.1f s", tag, until - now)
                nxt = a.lc.next_deadline()
                then = ("waiting for an operator, next attempt in %.0f s" % max(0.0, (nxt or now) - now)
                        if a.lc.state == lifecycle.NEEDS_OPERATOR else
                        "next attempt in %.1f s" % max(0.0, (nxt or now) - now))
                if trace is None:
                    self.log.warning("%s%s failed: %s; %s", tag, op, error, then)
                else:  # one record: the message, then the traceback on continuation lines (redacted)
                    self.log.error("%s%s; %s\n%s" % (tag, error, then, trace))
            elif op == "register":
                effects = a.lc.on_registered(result, statement_app, now, wall)
                self.log.info("%sregistered with Adobe Pass as client %s…", tag, result["client_id"][:8])
            else:
                effects = a.lc.on_token(result, min(sent_mono, now), min(sent_wall, wall))
                t = a.lc.tok
                self.log.info("%saccess token received: expires in %d s, refresh in %.0f s%s", tag,
                              int(t["expires_mono"] - now), t["refresh_mono"] - now,
                              " (expires_in missing: assumed)" if result.get("expires_in_assumed") else "")
            a.ticket = None
            self._cond.notify_all()
        self._apply(a, effects)
        for cb in list(self._listeners):
            try:
                cb()
            except Exception as e:
                self.log.debug("listener failed: %s", e)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (from the worker thread) after every upstream outcome."""
        self._listeners.append(callback)

    def _apply(self, a: _App, effects: list) -> None:
        for kind, arg in effects:
            if kind == "note":
                self.log.warning("%s%s", self._tag(a), arg)
            elif kind == "save" and a.store is not None:
                try:
                    a.store.save(arg)
                except StoreError as e:  # counted in store.stats["failures"]
                    self.log.error("%scould not save credentials: %s (kept in memory; retried at the next change)",
                                   self._tag(a), e)
            elif kind == "token_changed":
                with self._cond:
                    view = a.lc.view(self.clock(), self.wall())["token"]  # same epoch times as token.get
                    subs = list(self._subs)
                if view:
                    event = {"method": "token.changed",
                             "params": {"app": a.name, "expires_at": view["expires_at"],
                                        "refresh_at": view["refresh_at"]}}
                    for cb in subs:
                        try:
                            cb(event)
                        except Exception as e:
                            self.log.debug("subscriber failed: %s", e)

    # ------------------------------------------------------------------ identity per application
    def _app_identity(self, a: _App) -> dict:
        """The box identity with this application's applicationId in X-Device-Info. The box's own
        (no application_id, or the one it already carries) is returned as is; another is derived once
        per network change (the base header is replaced whole when the network changes)."""
        base = self._identity
        want = a.cfg.application_id
        fields = base.get("fields") or {}
        if not want or fields.get("applicationId") == want or "applicationId" in (self.cfg.device.overrides or {}):
            return base
        xdi = base["x_device_info"]
        cached = a.ident
        if cached is not None and a.ident_base is xdi:
            return cached
        f = dict(fields, applicationId=want)
        sources = dict(base.get("sources") or {}, applicationId="config [[app]] %s application_id" % a.name)
        ident = dict(base, fields=f, x_device_info=devfields.encode(f), sources=sources)
        a.ident, a.ident_base = ident, xdi
        return ident

    # ------------------------------------------------------------------ facade
    def apps(self) -> list[str]:
        return list(self._names)

    def _token_view(self, t: dict, now: float, wall: float) -> dict:
        expires_at, refresh_at, expires_in = lifecycle.epoch_times(t, now, wall)
        return {"access_token": t["access_token"], "token_type": t["token_type"],
                "expires_at": expires_at, "expires_in": expires_in, "refresh_at": refresh_at}

    def token(self, min_ttl: float = 0, app: str | None = None) -> dict | None:
        # Hot path, no lock: the lifecycle replaces its token dict whole (never edits the fields read
        # here), so one attribute read gives a consistent token. Misses take the lock below.
        a = self._only if app is None else self._apps.get(app)
        if a is None:
            a = self._app(app)  # raises app_required / unknown_app
        t = a.lc.tok
        if t is not None:
            now = self.clock()
            left = t["expires_mono"] - now
            if left > 0 and left > min_ttl:
                return self._token_view(t, now, self.wall())
        with self._cond:
            now = self.clock()
            t = a.lc.token(now, min_ttl)
            if t is None:
                self._cond.notify_all()
                return None
            return self._token_view(t, now, self.wall())

    def wait_token(self, timeout: float, min_ttl: float = 0, app: str | None = None) -> dict | None:
        a = self._app(app)
        deadline = self.clock() + timeout
        # A Condition's timeout counts on CLOCK_MONOTONIC: across a suspend it would end late by the
        # suspend's length. Waiting callers (threads that chose to block; the daemon never does this)
        # re-read the clock at least every WAIT_SLICE seconds instead, so the deadline holds within that.
        with self._cond:
            while True:
                now = self.clock()
                t = a.lc.token(now, min_ttl)
                if t is not None:
                    return self._token_view(t, now, self.wall())
                self._cond.notify_all()
                if now >= deadline or self._stopping:
                    return None
                self._cond.wait(min(deadline - now, WAIT_SLICE))

    def not_ready_error(self, app: str | None = None) -> AgentError:
        """Why `token()` gave nothing: needs an operator, a valid token too short for the min_ttl
        asked, an expired one (short tokens wait for the minimum interval), or a failing upstream."""
        a = self._app(app)
        with self._cond:
            now = self.clock()
            lc = a.lc
            err, due, state, t, in_flight = lc.last_error, lc.due, lc.state, lc.tok, lc.in_flight
            interval = lc.min_token_interval
            queued = a.queued
            gov_at = self.governor.next_grant_time(now) if queued else None
        if queued and gov_at is not None:
            due = max(due or now, gov_at)
        retry_after = 1.0 if due is None else max(1.0, round(due - now, 1))
        if state == lifecycle.NEEDS_OPERATOR and err:
            return AgentError("the agent needs an operator: %s" % err.get("message"), code=err.get("code", "needs_operator"),
                              kind=OPERATOR, retry_after=retry_after, hint=err.get("hint"))
        if in_flight:
            nxt = "one is being fetched now"
        elif queued:
            nxt = ("waiting for the box's upstream budget (shared by %d applications); next attempt in %.0f s"
                   % (len(self._apps), retry_after))
        elif err:
            nxt = "the last attempt failed (%s); next attempt in %.0f s" % (err.get("code"), retry_after)
        else:
            nxt = "the next one is requested in %.0f s" % retry_after
        if t is not None and t["expires_mono"] > now:
            return NotReady("no token with the min_ttl asked for yet: the held token has %d s left; %s"
                            % (int(t["expires_mono"] - now), nxt), retry_after=retry_after,
                            hint=err.get("hint") if err else None)
        if t is not None and not err and t["expires_in"] * lc.refresh_at < interval:
            return NotReady("no valid token: Adobe's tokens live %d s and the agent asks for one at most every "
                            "%d s (Adobe's throttle); %s" % (t["expires_in"], int(interval), nxt),
                            retry_after=retry_after)
        if err:
            return NotReady("no valid token yet: %s" % nxt, retry_after=retry_after, hint=err.get("hint"))
        if t is not None:
            return NotReady("no valid token yet: the last one expired; %s" % nxt, retry_after=retry_after)
        return NotReady("no valid token yet: %s" % STATE_WORDS.get(state, state), retry_after=retry_after)

    # ------------------------------------------------------------------ the REST API v2 gateway (facade.GatewayFacade)
    def api_acquire(self) -> dict:
        """The governor's try mode for one gateway request (issue 17): granted now, or refused at once
        with the seconds to wait; nothing queues. {"granted", "retry_after", "ticket"}."""
        with self._cond:
            now = self.clock()
            d = self.governor.try_acquire(now, governor.GATEWAY)
        return {"granted": d.granted, "retry_after": 0.0 if d.granted else max(0.0, d.at - now), "ticket": d.ticket}

    def api_throttled(self, ticket: int | None, retry_after: float | None = None) -> float:
        """Adobe answered 429 to the gateway request granted `ticket`: every application pauses (the
        governor's "Pause"). Returns the seconds the pause lasts from now."""
        with self._cond:
            now = self.clock()
            until = self.governor.on_throttled(now, None, retry_after, ticket)
            self._cond.notify_all()
        self.log.info("gateway: throttled by Adobe: every application waits %.1f s", until - now)
        return max(0.0, until - now)

    def wait_new_token(self, old: str, timeout: float, app: str | None = None) -> dict | None:
        """Block up to `timeout` s until application `app` holds a valid token other than `old` (the one a
        protected API refused); None at the deadline. For threads that may block (the gateway's runner)."""
        a = self._app(app)
        deadline = self.clock() + timeout
        with self._cond:
            while True:
                now = self.clock()
                t = a.lc.token(now, 0)
                if t is not None and t["access_token"] != old:
                    return self._token_view(t, now, self.wall())
                if now >= deadline or self._stopping:
                    return None
                self._cond.wait(min(deadline - now, WAIT_SLICE))

    def identity(self, app: str | None = None) -> dict:
        if app is None and self._only is None:
            return self._identity  # the box's own, without an application's applicationId
        return self._app_identity(self._app(app))

    def report_error(self, status: int, body: Any = None, access_token: str | None = None,
                     management: bool = False, uid: int | None = None, app: str | None = None) -> dict:
        """A player's protected-API error for application `app`. `uid`: the reporting peer's uid
        (SO_PEERCRED), for the per-peer limit on re-registrations; None (in-process callers) counts
        as one peer."""
        a = self._app(app)
        decision, reason = dcr.classify_protected_error(status, body, management=management)
        with self._cond:
            result = a.lc.report(status, decision, access_token, self.clock(), uid)
            self._cond.notify_all()
        if result["decision"] in ("refresh", "reregister"):
            self.log.info("%splayer reported HTTP %s (%s): %s", self._tag(a), status, reason, result["decision"])
        return dict(result, classified=reason)

    def _app_view(self, a: _App, now: float, wall: float) -> dict:
        v = a.lc.view(now, wall)
        v["app"] = a.name
        v["state_text"] = STATE_WORDS.get(v["state"], v["state"])
        v["store"] = dict(getattr(a.store, "stats", {}) or {})
        v["store"]["problem"] = getattr(a.store, "problem", None)
        v["statement_sha256"] = (a.lc.statement_hash or "")[:16] or None
        v["waiting_for_budget"] = a.queued
        return v

    def status(self, app: str | None = None) -> dict:
        """The status of every application ("apps") and the upstream budget; the top level also has
        the fields of application `app` (None: the only one, if there is only one), as before issue 16."""
        chosen = self._app(app) if app is not None else self._only
        with self._cond:
            now, wall = self.clock(), self.wall()
            views = [self._app_view(a, now, wall) for a in self._apps.values()]
            gov = self.governor.view(now)
        v: dict = dict(next(x for x in views if x["app"] == chosen.name)) if chosen is not None else {}
        v["version"] = self.version
        v["uptime"] = round(now - self._started_mono, 3)
        v["base_url"] = self.cfg.adobe.base_url
        v["apps"] = views
        v["governor"] = gov
        return v

    def status_line(self) -> str:
        """One line for systemd STATUS= and the console banner."""
        s = self.status()
        if self._only is not None:
            return self._one_line(s)
        ready = sum(1 for x in s["apps"] if x["token"])
        calm = (lifecycle.TOKEN_VALID, lifecycle.REFRESHING)  # nothing to say about these
        parts = ["%s: %s" % (x["app"], self._one_line(x)) for x in s["apps"]
                 if not x["token"] or x["state"] not in calm or x["last_error"]]
        line = "%d of %d applications hold a valid token" % (ready, len(s["apps"]))
        return line + ("; " + "; ".join(parts) if parts else "")

    @staticmethod
    def _one_line(s: dict) -> str:
        line = STATE_WORDS.get(s["state"], s["state"])
        if s["token"]:
            line += ", token valid for %d s" % s["token"]["expires_in"]
        elif s["state"] != lifecycle.TOKEN_VALID:
            line += ", no valid token"
        if s["last_error"]:
            line += ", last error: %s" % s["last_error"]["code"]
        return line

    def health(self, app: str | None = None) -> dict:
        """live: the worker runs; ready: application `app` holds a valid token (None: every one does)."""
        targets = [self._app(app)] if app is not None else list(self._apps.values())
        with self._cond:
            now = self.clock()
            ready = all(a.lc.tok is not None and a.lc.tok["expires_mono"] > now for a in targets)
        return {"live": self._thread is not None and self._thread.is_alive(), "ready": ready}

    def subscribe(self, callback: Callable[[dict], None]) -> None:
        with self._cond:
            self._subs.append(callback)

    def unsubscribe(self, callback: Callable[[dict], None]) -> None:
        with self._cond:
            if callback in self._subs:
                self._subs.remove(callback)

    def request_refresh(self, app: str | None = None) -> None:
        """A new token now for application `app` (None: every application)."""
        targets = [self._app(app)] if app is not None or self._only is not None else list(self._apps.values())
        with self._cond:
            for a in targets:
                a.lc.retry_now(self.clock())
            self._cond.notify_all()

    def force_register(self, app: str | None = None) -> None:
        a = self._app(app)
        with self._cond:
            a.lc.need_register(self.clock())
            self._cond.notify_all()
        self.log.info("%sre-registration requested by an operator", self._tag(a))

    def reset_credentials(self, app: str | None = None) -> None:
        a = self._app(app)
        if a.store is not None:
            a.store.wipe()
        with self._cond:
            a.lc.forget(self.clock())
            self._cond.notify_all()
        self.log.warning("%scredentials wiped by an operator: registering afresh", self._tag(a))

    def config_view(self) -> dict:
        return config.view(self.cfg)
