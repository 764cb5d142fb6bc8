"""The agent's service: the I/O shell around the lifecycle, and the facade every front end uses.

It owns the configuration, the device identity, the credential store and the lifecycle, and runs
one worker thread that performs the upstream requests the lifecycle asks for (so there is never
more than one in flight). The socket server, the console and the CLI only call the facade
methods below; each returns at once and never waits on the network (except `wait_token`, which a
thread that may block can use).

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

from agent import __version__, config, dcr, fswatch, lifecycle
from agent import clock as clockmod
from agent import log as agentlog
from agent.deviceinfo import sha256
from agent.errors import OPERATOR, AgentError, NotReady, StoreError

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


def storage_dir(cfg: config.Config, identity_profile: dict | None = None) -> str:
    return cfg.storage.dir or (identity_profile or {}).get("storage_dir") or config.STORAGE_DEFAULT_DIR


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


class Service:
    """Thread-safe facade over lifecycle + store + identity. See docs/ARCHITECTURE.md."""

    def __init__(self, cfg: config.Config, *, identity: dict | None = None, store: Any = None, logbuf: agentlog.LogBuffer | None = None,
                 clock: Callable[[], float] = clockmod.now, wall: Callable[[], float] = time.time,
                 send: Callable[..., tuple] | None = None) -> None:
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
        self.store = store
        self.lc = lifecycle.Lifecycle(refresh_at=cfg.refresh.at, jitter=cfg.refresh.jitter,
                                      backoff_cap=cfg.refresh.backoff_cap)
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
        self._statement_sig: tuple | None = None
        self._statement: str | None = None
        self._watch: fswatch.FileWatch | None = None

    # ------------------------------------------------------------------ life of the service
    def start(self) -> None:
        """Load the stored state (no network) and start the worker thread."""
        stored = None
        if self.store is not None:
            stored = self.store.load()
            # store.load() already logged why a slot was unusable (foreign device, corrupt...).
        if stored and stored.get("client"):
            agentlog.REDACTOR.add(stored["client"].get("client_secret"), kind="client_secret")
            if stored.get("token"):
                agentlog.REDACTOR.add(stored["token"].get("access_token"), kind="access_token")
        app, digest, problem = self._refresh_statement(force=True) or (None, None, None)
        with self._cond:
            now = self.clock()
            effects = self.lc.load(stored, app, digest, now, self.wall())
            if problem is not None:
                self.lc.statement_changed(None, digest, now, problem)
            if stored and stored.get("client"):
                self.log.info("loaded stored credentials (client %s); state: %s",
                              (stored["client"].get("client_id") or "?")[:8] + "…", STATE_WORDS[self.lc.state])
        self._apply(effects)
        # A new statement file is noticed within moments, without a periodic wake-up (agent/fswatch.py).
        self._watch = fswatch.FileWatch(self.cfg.adobe.software_statement, self._statement_poke).start()
        self._thread = threading.Thread(target=self._run, name="lifecycle", daemon=True)
        self._thread.start()

    def _statement_poke(self) -> None:
        """From the file watch thread: the statement file may have changed; the worker re-checks it."""
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 1.0) -> None:
        if self._watch is not None:
            self._watch.stop(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self._sleeper.close()  # the worker is gone: its pipe and alarm fds with it

    def reload(self, cfg: config.Config) -> None:
        """Apply a new configuration's lifecycle-relevant parts (statement path, timeouts) in place."""
        with self._cond:
            self.cfg = cfg
            self.lc.refresh_at = cfg.refresh.at
            self.lc.jitter = cfg.refresh.jitter
            self.lc.backoff_cap = cfg.refresh.backoff_cap
            self._statement_sig = None
            self._cond.notify_all()
        if self._watch is not None:
            self._watch.set_path(cfg.adobe.software_statement)

    # ------------------------------------------------------------------ worker
    def _refresh_statement(self, force: bool = False) -> tuple[str | None, str | None, dict | None] | None:
        """Re-read the statement when its file changed (cheap stat otherwise). None: unchanged; else
        (application "iss|sub", SHA-256, None), or (None, None, problem) when the file is unusable."""
        path = self.cfg.adobe.software_statement
        try:
            st = os.stat(path)
            sig: tuple | None = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)
        except OSError:
            sig = None
        if not force and sig == self._statement_sig:
            return None
        self._statement_sig = sig
        try:
            text, digest, app = read_statement(path)
        except AgentError as e:
            self._statement = None
            self.log.error("%s", e)
            return None, None, dict(e.to_dict())
        agentlog.REDACTOR.add(text, kind="software_statement")
        if self._statement is not None and text != self._statement:
            self.log.info("the software statement changed (new SHA-256 %s…, application %s)", digest[:12],
                          app.split("|", 1)[1])
        self._statement = text
        return app, digest, None

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = self.clock()
                seen = self._refresh_statement()
                if seen is not None and self.lc.statement_changed(seen[0], seen[1], now, seen[2]):
                    self.log.info("registering again because the software statement names another "
                                  "registered application")
                req = self.lc.poll(now)
                if req is None:
                    deadline = self.lc.next_deadline()
                    if self.lc.state == lifecycle.NEEDS_OPERATOR:
                        # Watch the statement file so a fix is picked up at once.
                        deadline = now + 30.0 if deadline is None else min(deadline, now + 30.0)
                    self._sleeper.prepare()  # under the lock: a notify from here on ends the sleep
                else:
                    statement, statement_app = self._statement, self.lc.statement_app
                    client = dict(self.lc.client) if self.lc.client else None
            if req is None:
                self._sleeper.sleep_until(deadline)  # outside the lock; ends early after a resume
                continue
            self._perform(req["op"], statement, statement_app, client)

    def _perform(self, op: str, statement: str | None, statement_app: str | None, client: dict | None) -> None:
        a = self.cfg.adobe
        result: Any = None
        error: AgentError | None = None
        trace: str | None = None
        # The token's lifetime counts from when we asked, not when the answer arrived: never overstate it.
        sent_mono, sent_wall = self.clock(), self.wall()
        try:
            refresh = getattr(self._identity, "refresh_network", None)
            if refresh is not None:  # once per upstream request (never on token.get): Wi-Fi/LAN, new lease
                refresh()
            xdi = self._identity["x_device_info"]
            if op == "register":
                if statement is None:
                    raise AgentError("no usable software statement at %s" % a.software_statement,
                                     code="statement_unreadable", kind=OPERATOR,
                                     hint="install the statement from the Adobe Pass TVE Dashboard")
                req = dcr.register_request(a.base_url, statement, xdi, a.redirect_uri)
                parse, secret = dcr.parse_register, "client_secret"
            else:
                assert client is not None
                req = dcr.token_request(a.base_url, client["client_id"], client["client_secret"], xdi)
                parse, secret = dcr.parse_token, "access_token"
            status, headers, body = self._send(req, timeout=a.timeout, ca_file=a.ca_file, wall_now=self.wall())
            result = parse(status, headers, body, self.wall())
            agentlog.REDACTOR.add(result[secret], kind=secret)
        except AgentError as e:
            error = e
        except Exception as e:  # a bug in the agent: must not kill the worker, must not pass for Adobe's fault
            error, trace = internal_error(op, e)
        with self._cond:
            now, wall = self.clock(), self.wall()
            if error is not None:
                effects = self.lc.on_error(error, now, wall)
                nxt = self.lc.next_deadline()
                then = ("waiting for an operator, next attempt in %.0f s" % max(0.0, (nxt or now) - now)
                        if self.lc.state == lifecycle.NEEDS_OPERATOR else
                        "next attempt in %.1f s" % max(0.0, (nxt or now) - now))
                if trace is None:
                    self.log.warning("%s failed: %s; %s", op, error, then)
                else:  # one record: the message, then the traceback on continuation lines (redacted)
                    self.log.error("%s; %s\n%s" % (error, then, trace))
            elif op == "register":
                effects = self.lc.on_registered(result, statement_app, now, wall)
                self.log.info("registered with Adobe Pass as client %s…", result["client_id"][:8])
            else:
                effects = self.lc.on_token(result, min(sent_mono, now), min(sent_wall, wall))
                t = self.lc.tok
                self.log.info("access token received: expires in %d s, refresh in %.0f s%s",
                              int(t["expires_mono"] - now), t["refresh_mono"] - now,
                              " (expires_in missing: assumed)" if result.get("expires_in_assumed") else "")
            self._cond.notify_all()
        self._apply(effects)
        for cb in list(self._listeners):
            try:
                cb()
            except Exception as e:
                self.log.debug("listener failed: %s", e)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (from the worker thread) after every upstream outcome."""
        self._listeners.append(callback)

    def _apply(self, effects: list) -> None:
        for kind, arg in effects:
            if kind == "note":
                self.log.warning("%s", arg)
            elif kind == "save" and self.store is not None:
                try:
                    self.store.save(arg)
                except StoreError as e:  # counted in store.stats["failures"]
                    self.log.error("could not save credentials: %s (kept in memory; retried at the next change)", e)
            elif kind == "token_changed":
                with self._cond:
                    view = self.lc.view(self.clock(), self.wall())["token"]  # same epoch times as token.get
                    subs = list(self._subs)
                if view:
                    event = {"method": "token.changed",
                             "params": {"expires_at": view["expires_at"], "refresh_at": view["refresh_at"]}}
                    for cb in subs:
                        try:
                            cb(event)
                        except Exception as e:
                            self.log.debug("subscriber failed: %s", e)

    # ------------------------------------------------------------------ facade
    def _token_view(self, t: dict, now: float, wall: float) -> dict:
        expires_at, refresh_at, expires_in = lifecycle.epoch_times(t, now, wall)
        return {"access_token": t["access_token"], "token_type": t["token_type"],
                "expires_at": expires_at, "expires_in": expires_in, "refresh_at": refresh_at}

    def token(self, min_ttl: float = 0) -> dict | None:
        # Hot path, no lock: the lifecycle replaces its token dict whole (never edits the fields read
        # here), so one attribute read gives a consistent token. Misses take the lock below.
        t = self.lc.tok
        if t is not None:
            now = self.clock()
            left = t["expires_mono"] - now
            if left > 0 and left > min_ttl:
                return self._token_view(t, now, self.wall())
        with self._cond:
            now = self.clock()
            t = self.lc.token(now, min_ttl)
            if t is None:
                self._cond.notify_all()
                return None
            return self._token_view(t, now, self.wall())

    def wait_token(self, timeout: float, min_ttl: float = 0) -> dict | None:
        deadline = self.clock() + timeout
        # A Condition's timeout counts on CLOCK_MONOTONIC: across a suspend it would end late by the
        # suspend's length. Waiting callers (threads that chose to block; the daemon never does) re-read
        # the clock at least every WAIT_SLICE seconds instead, so the deadline holds within that.
        with self._cond:
            while True:
                now = self.clock()
                t = self.lc.token(now, min_ttl)
                if t is not None:
                    return self._token_view(t, now, self.wall())
                self._cond.notify_all()
                if now >= deadline or self._stopping:
                    return None
                self._cond.wait(min(deadline - now, WAIT_SLICE))

    def not_ready_error(self) -> AgentError:
        """Why `token()` gave nothing: needs an operator, a valid token too short for the min_ttl
        asked, an expired one (short tokens wait for the minimum interval), or a failing upstream."""
        with self._cond:
            now = self.clock()
            err = self.lc.last_error
            due = self.lc.due
            state = self.lc.state
            t = self.lc.tok
            in_flight = self.lc.in_flight
            interval = self.lc.min_token_interval
        retry_after = 1.0 if due is None else max(1.0, round(due - now, 1))
        if state == lifecycle.NEEDS_OPERATOR and err:
            return AgentError("the agent needs an operator: %s" % err.get("message"), code=err.get("code", "needs_operator"),
                              kind=OPERATOR, retry_after=retry_after, hint=err.get("hint"))
        if in_flight:
            nxt = "one is being fetched now"
        elif err:
            nxt = "the last attempt failed (%s); next attempt in %.0f s" % (err.get("code"), retry_after)
        else:
            nxt = "the next one is requested in %.0f s" % retry_after
        if t is not None and t["expires_mono"] > now:
            return NotReady("no token with the min_ttl asked for yet: the held token has %d s left; %s"
                            % (int(t["expires_mono"] - now), nxt), retry_after=retry_after,
                            hint=err.get("hint") if err else None)
        if t is not None and not err and t["expires_in"] * self.lc.refresh_at < interval:
            return NotReady("no valid token: Adobe's tokens live %d s and the agent asks for one at most every "
                            "%d s (Adobe's throttle); %s" % (t["expires_in"], int(interval), nxt),
                            retry_after=retry_after)
        if err:
            return NotReady("no valid token yet: %s" % nxt, retry_after=retry_after, hint=err.get("hint"))
        if t is not None:
            return NotReady("no valid token yet: the last one expired; %s" % nxt, retry_after=retry_after)
        return NotReady("no valid token yet: %s" % STATE_WORDS.get(state, state), retry_after=retry_after)

    def identity(self) -> dict:
        return self._identity

    def report_error(self, status: int, body: Any = None, access_token: str | None = None,
                     management: bool = False, uid: int | None = None) -> dict:
        """A player's protected-API error. `uid`: the reporting peer's uid (SO_PEERCRED), for the
        per-peer limit on re-registrations; None (in-process callers) counts as one peer."""
        decision, reason = dcr.classify_protected_error(status, body, management=management)
        with self._cond:
            result = self.lc.report(status, decision, access_token, self.clock(), uid)
            self._cond.notify_all()
        if result["decision"] in ("refresh", "reregister"):
            self.log.info("player reported HTTP %s (%s): %s", status, reason, result["decision"])
        return dict(result, classified=reason)

    def status(self) -> dict:
        with self._cond:
            now, wall = self.clock(), self.wall()
            v = self.lc.view(now, wall)
        v["state_text"] = STATE_WORDS.get(v["state"], v["state"])
        v["version"] = self.version
        v["uptime"] = round(now - self._started_mono, 3)
        v["store"] = dict(getattr(self.store, "stats", {}) or {})
        v["store"]["problem"] = getattr(self.store, "problem", None)
        v["statement_sha256"] = (self.lc.statement_hash or "")[:16] or None
        v["base_url"] = self.cfg.adobe.base_url
        return v

    def status_line(self) -> str:
        """One line for systemd STATUS= and the console banner."""
        s = self.status()
        line = STATE_WORDS.get(s["state"], s["state"])
        if s["token"]:
            line += ", token valid for %d s" % s["token"]["expires_in"]
        elif s["state"] != lifecycle.TOKEN_VALID:
            line += ", no valid token"
        if s["last_error"]:
            line += ", last error: %s" % s["last_error"]["code"]
        return line

    def health(self) -> dict:
        with self._cond:
            now = self.clock()
            ready = self.lc.tok is not None and self.lc.tok["expires_mono"] > now
        return {"live": self._thread is not None and self._thread.is_alive(), "ready": ready}

    def subscribe(self, callback: Callable[[dict], None]) -> None:
        with self._cond:
            self._subs.append(callback)

    def unsubscribe(self, callback: Callable[[dict], None]) -> None:
        with self._cond:
            if callback in self._subs:
                self._subs.remove(callback)

    def request_refresh(self) -> None:
        with self._cond:
            self.lc.retry_now(self.clock())
            self._cond.notify_all()

    def force_register(self) -> None:
        with self._cond:
            self.lc.need_register(self.clock())
            self._cond.notify_all()
        self.log.info("re-registration requested by an operator")

    def reset_credentials(self) -> None:
        if self.store is not None:
            self.store.wipe()
        with self._cond:
            self.lc.forget(self.clock())
            self._cond.notify_all()
        self.log.warning("credentials wiped by an operator: registering afresh")

    def config_view(self) -> dict:
        return config.view(self.cfg)
