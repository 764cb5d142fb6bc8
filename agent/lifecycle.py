"""Credential lifecycle: the state machine that decides when to register, fetch and refresh.

Read this header first. Everything that decides *when* the agent talks to Adobe lives in this file;
nothing here does I/O. The shell (agent/service.py) asks `poll(now)` what to do, performs the
request, and feeds the outcome back with `on_registered`, `on_token` or `on_error`. Time comes in
as arguments: `now` is a monotonic clock in seconds, `wall` the wall clock (epoch seconds), and
randomness comes from the injected `random` function, so tests and the fleet simulation run it in
virtual time.

Theory of operation
-------------------
The agent is always in exactly one state (see STATES). A state says what the agent is doing about
Adobe; whether it holds a valid token is separate (the token can expire in any state) and is
answered by `token(now)`. Each state has a due time (`self.due`, monotonic): the moment `poll`
starts the next request. `poll` returns at most one request at a time (single-flight) and nothing
while one is in flight, so a thousand callers wanting a token cause one upstream request.

Transitions are the TRANSITIONS table, keyed by (state, event). Events come from `poll` (starting
a request), from outcomes (ok / retry / reregister / operator errors), from the player (reports,
demand) and from the operator (statement change, forced registration, reset). An event that has
no entry in the table for the current state is a bug and raises LifecycleError naming both.

Rules (reference: shared/reference/adobe-pass-dcr.md sections 1, 2, 6, 7)
- Register only with no credentials, after `invalid_client`, when the software statement changed,
  on a player's `application-registration`/management-403 report, or when forced. Never on 429,
  5xx, timeouts or network errors. One re-registration per trigger; a repeat backs off.
- Token expiry = monotonic receipt time + expires_in. Refresh at `refresh_at` of the lifetime with
  ±`jitter`. The wall clock is only used to translate to and from persisted/epoch values.
- Backoff is exponential with full jitter, 1 s minimum (Adobe's minimum after a 429), capped,
  and never shorter than a Retry-After. Backoff state lives in memory only.
- Configuration errors put the agent in needs_operator: retried slowly, at once when the
  statement changes.
"""

from __future__ import annotations

import random as _random
from typing import Callable

from agent.errors import OPERATOR, REREGISTER, AgentError

UNREGISTERED = "unregistered"      # no credentials; next: register
REGISTERING = "registering"        # register request in flight
REGISTERED = "registered"          # credentials but no token; next: fetch a token
FETCHING = "fetching"              # token request in flight and no valid token
TOKEN_VALID = "token_valid"        # holds a token; next: refresh ahead of expiry
REFRESHING = "refreshing"          # token request in flight while a token is held
BACKING_OFF = "backing_off"        # last request failed transiently; retry at `due`
NEEDS_OPERATOR = "needs_operator"  # configuration error; slow retry, or at once on statement change

STATES = (UNREGISTERED, REGISTERING, REGISTERED, FETCHING, TOKEN_VALID, REFRESHING, BACKING_OFF, NEEDS_OPERATOR)

# Events
START_REGISTER, START_TOKEN = "start_register", "start_token"
REGISTER_OK, TOKEN_OK = "register_ok", "token_ok"
ERR_RETRY, ERR_REREGISTER, ERR_OPERATOR = "error_retry", "error_reregister", "error_operator"
NEED_REGISTER = "need_register"  # statement changed, forced, player report, invalid_client
NEED_TOKEN = "need_token"        # token missing/expiring and a caller wants one, or a 401 report
FORGET = "forget"                # credentials wiped

_ANY_IDLE = (UNREGISTERED, REGISTERED, TOKEN_VALID, BACKING_OFF, NEEDS_OPERATOR)
_IN_FLIGHT = (REGISTERING, FETCHING, REFRESHING)

TRANSITIONS: dict[tuple[str, str], str] = {}
for _s in (UNREGISTERED, BACKING_OFF, NEEDS_OPERATOR, REGISTERED, TOKEN_VALID):
    TRANSITIONS[(_s, START_REGISTER)] = REGISTERING
for _s in (REGISTERED, TOKEN_VALID, BACKING_OFF, NEEDS_OPERATOR):
    TRANSITIONS[(_s, START_TOKEN)] = FETCHING  # becomes REFRESHING when a token is held (see _enter)
TRANSITIONS.update({
    (REGISTERING, REGISTER_OK): REGISTERED,
    (FETCHING, TOKEN_OK): TOKEN_VALID,
    (REFRESHING, TOKEN_OK): TOKEN_VALID,
})
for _s in _IN_FLIGHT:
    TRANSITIONS[(_s, ERR_RETRY)] = BACKING_OFF
    TRANSITIONS[(_s, ERR_OPERATOR)] = NEEDS_OPERATOR
    TRANSITIONS[(_s, ERR_REREGISTER)] = UNREGISTERED  # or BACKING_OFF when this trigger was already used
for _s in _ANY_IDLE:
    TRANSITIONS[(_s, NEED_REGISTER)] = UNREGISTERED
    TRANSITIONS[(_s, NEED_TOKEN)] = _s  # only moves `due`
for _s in STATES:
    TRANSITIONS[(_s, FORGET)] = UNREGISTERED
for _s in _IN_FLIGHT:
    TRANSITIONS[(_s, NEED_REGISTER)] = _s  # remembered in `pending_register`, applied when the request ends
    TRANSITIONS[(_s, NEED_TOKEN)] = _s


class LifecycleError(AgentError):
    code = "lifecycle_error"


class Lifecycle:
    """The credential lifecycle of one device. Not thread-safe: the shell serialises calls."""

    def __init__(self, *, refresh_at: float = 0.8, jitter: float = 0.1,
                 random: Callable[[], float] | None = None, backoff_base: float = 1.0,
                 backoff_cap: float = 300.0, operator_retry: float = 3600.0,
                 refresh_report_interval: float = 30.0, register_report_interval: float = 900.0,
                 min_ttl_refresh_interval: float = 30.0) -> None:
        self.refresh_at = refresh_at
        self.jitter = jitter
        self.random = random or _random.random
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.operator_retry = operator_retry
        self.refresh_report_interval = refresh_report_interval
        self.register_report_interval = register_report_interval
        self.min_ttl_refresh_interval = min_ttl_refresh_interval

        self.state = UNREGISTERED
        self.due: float | None = 0.0
        self.client: dict | None = None           # credentials from Adobe
        self.client_statement_hash: str | None = None
        self.registered_at: float | None = None   # wall
        self.statement_hash: str | None = None    # hash of the statement on disk now
        self.tok: dict | None = None              # token + monotonic received/expires/refresh times
        self.attempts = 0                         # consecutive failures, for backoff
        self.pending_register = False             # a register trigger arrived while a request was in flight
        self.register_trigger_used = False        # one re-registration per trigger
        self.in_flight: str | None = None
        self.last_error: dict | None = None
        self.last_report = {"refresh": -1e18, "reregister": -1e18}
        self.counters: dict[str, dict[str, int]] = {"register": {}, "token": {}}
        self.token_generation = 0

    # ----------------------------------------------------------------- transitions
    def _fire(self, event: str) -> str:
        key = (self.state, event)
        if key not in TRANSITIONS:
            raise LifecycleError("lifecycle: event %r is not allowed in state %r" % (event, self.state))
        new = TRANSITIONS[key]
        self.state = new
        return new

    def _has_token(self, now: float) -> bool:
        return self.tok is not None and now < self.tok["expires_mono"]

    # ----------------------------------------------------------------- start-up
    def load(self, stored: dict | None, statement_hash: str | None, now: float, wall: float) -> None:
        """Adopt the persisted state (or none) at start. Never triggers I/O by itself."""
        self.statement_hash = statement_hash
        self.state, self.due = UNREGISTERED, now
        if not stored or not isinstance(stored.get("client"), dict):
            return
        self.client = stored["client"]
        self.client_statement_hash = stored.get("statement_hash")
        self.registered_at = stored.get("registered_at")
        self.state = REGISTERED
        t = stored.get("token")
        if isinstance(t, dict) and t.get("access_token") and t.get("expires_in"):
            expires_in = float(t["expires_in"])
            received = float(t.get("received_at") or 0)
            age = wall - received
            if age < -60:
                # The wall clock is behind the receipt time (a box without RTC before NTP): the token's
                # age is unknown. Serve it (better than nothing offline) but refresh at once.
                remaining, refresh_now = expires_in, True
            else:
                remaining, refresh_now = expires_in - max(age, 0.0), False
            if remaining > 0:
                self._set_token(t, now, remaining, expires_in, now if refresh_now else None)
                self.state = TOKEN_VALID
        if self.statement_hash and self.client_statement_hash and self.statement_hash != self.client_statement_hash:
            self.pending_register = True
            self.due = now
        elif self.state == REGISTERED:
            self.due = now

    def _set_token(self, t: dict, now: float, remaining: float, lifetime: float, refresh_mono: float | None) -> None:
        if refresh_mono is None:
            f = self.refresh_at * (1.0 + self.jitter * (2.0 * self.random() - 1.0))
            f = min(max(f, 0.05), 0.98)
            elapsed = lifetime - remaining
            refresh_mono = now + max(lifetime * f - elapsed, 0.0)
        self.tok = {
            "access_token": t["access_token"],
            "token_type": t.get("token_type") or "bearer",
            "expires_in": int(lifetime),
            "received_mono": now - (lifetime - remaining),
            "expires_mono": now + remaining,
            "refresh_mono": refresh_mono,
        }
        self.token_generation += 1
        self.due = refresh_mono

    # ----------------------------------------------------------------- driving
    def poll(self, now: float) -> dict | None:
        """The request to start now, or None. Marks it in flight (single-flight)."""
        if self.in_flight or self.due is None or now < self.due:
            return None
        if self.client is None or self.pending_register or self.state == UNREGISTERED:
            self._fire(START_REGISTER)
            self.pending_register = False
            self.in_flight = "register"
            return {"op": "register"}
        had = self._has_token(now)
        self._fire(START_TOKEN)
        if had:
            self.state = REFRESHING
        self.in_flight = "token"
        return {"op": "token"}

    def next_deadline(self) -> float | None:
        """Monotonic time of the next scheduled request (None: nothing scheduled or in flight)."""
        return None if self.in_flight else self.due

    def _count(self, endpoint: str, outcome: str) -> None:
        c = self.counters[endpoint]
        c[outcome] = c.get(outcome, 0) + 1

    def on_registered(self, client: dict, statement_hash: str | None, now: float, wall: float) -> list:
        """A registration succeeded. Returns effects for the shell: [("save", snapshot)]."""
        self._count("register", "ok")
        self.in_flight = None
        self._fire(REGISTER_OK)
        self.client = client
        self.client_statement_hash = statement_hash
        self.registered_at = wall
        self.attempts = 0
        self.last_error = None
        # Keep serving the old token (if any) until the new client's first token arrives: it is
        # fetched at once, and for a changed statement the old token is still good at Adobe.
        self.due = now
        return [("save", self.snapshot(now, wall))]

    def on_token(self, token: dict, now: float, wall: float) -> list:
        """A token arrived (parsed by dcr.parse_token). Effects: save and notify."""
        self._count("token", "ok")
        self.in_flight = None
        self._fire(TOKEN_OK)
        lifetime = float(token["expires_in"])
        self._set_token(token, now, lifetime, lifetime, None)
        self.tok["received_wall"] = wall
        self.attempts = 0
        self.register_trigger_used = False
        self.last_error = None
        if self.pending_register:
            self.due = now
        return [("save", self.snapshot(now, wall)), ("token_changed", None)]

    def _backoff(self, now: float, retry_after: float | None) -> float:
        ceiling = min(self.backoff_cap, self.backoff_base * (2 ** min(self.attempts, 30)))
        delay = max(1.0, ceiling * self.random())
        if retry_after is not None:
            delay = max(delay, float(retry_after))
        self.attempts += 1
        return now + delay

    def on_error(self, err: AgentError, now: float, wall: float) -> list:
        """A request failed. Decide: back off, re-register once, or wait for an operator."""
        endpoint = self.in_flight or "token"
        self._count(endpoint, err.code)
        self.in_flight = None
        self.last_error = dict(err.to_dict(), endpoint=endpoint, at=wall)
        kind = err.kind
        if kind == REREGISTER and endpoint == "token":
            if self.register_trigger_used:
                # We already re-registered for this trigger and the fresh client is refused too.
                self._fire(ERR_RETRY)
                self.pending_register = True
                self.due = self._backoff(now, err.retry_after)
            else:
                self._fire(ERR_REREGISTER)
                self.register_trigger_used = True
                self.pending_register = True
                self.due = now
            return []
        if kind == OPERATOR:
            self._fire(ERR_OPERATOR)
            self.attempts += 1
            self.due = now + self.operator_retry
            return []
        self._fire(ERR_RETRY)
        self.due = self._backoff(now, err.retry_after)
        # A held token stays valid for serving; refresh again before it expires if we can.
        if self._has_token(now) and self.due >= self.tok["expires_mono"]:
            self.due = max(now + 1.0, self.tok["expires_mono"] - 1.0) if err.retry_after is None else self.due
        return []

    # ----------------------------------------------------------------- callers
    def token(self, now: float, min_ttl: float = 0.0) -> dict | None:
        """The held token if it has at least min_ttl seconds left; else None and a fetch is scheduled."""
        t = self.tok
        if t is not None and t["expires_mono"] - now > max(min_ttl, 0.0):
            return t
        self.demand(now, refresh_allowed=t is None or now - t["received_mono"] >= self.min_ttl_refresh_interval
                    or t["expires_mono"] <= now)
        return None

    def demand(self, now: float, refresh_allowed: bool = True) -> None:
        """A caller wants a (fresher) token: move the due time to now unless backing off or waiting
        for an operator (demand must never shorten a backoff: that is how storms start)."""
        if not refresh_allowed or self.in_flight or self.state in (BACKING_OFF, NEEDS_OPERATOR):
            return
        self._fire(NEED_TOKEN)
        if self.due is None or self.due > now:
            self.due = now

    def report(self, status: int, decision: str, access_token: str | None, now: float) -> dict:
        """A player's protected-API error, already classified by dcr.classify_protected_error."""
        if decision == "refresh":
            if access_token and self.tok and access_token != self.tok["access_token"]:
                return {"decision": "ignored", "reason": "the reported token is not the current one"}
            if now - self.last_report["refresh"] < self.refresh_report_interval:
                return {"decision": "rate_limited", "reason": "a refresh for a report happened just now"}
            self.last_report["refresh"] = now
            if self.in_flight:
                return {"decision": "refresh", "reason": "a request is already in flight"}
            self.tok = None  # the upstream says this token is no good: stop serving it
            if self.state == TOKEN_VALID:
                self.state = REGISTERED
            if self.state not in (BACKING_OFF, NEEDS_OPERATOR):
                self.due = now
            return {"decision": "refresh", "reason": "token rejected by a protected API"}
        if decision == "reregister":
            if now - self.last_report["reregister"] < self.register_report_interval:
                return {"decision": "rate_limited", "reason": "a re-registration for a report happened recently"}
            self.last_report["reregister"] = now
            self.need_register(now)
            return {"decision": "reregister", "reason": "the credentials were rejected by a protected API"}
        return {"decision": "ignored", "reason": "not about the agent's credentials"}

    def need_register(self, now: float) -> None:
        """Register again (statement changed, forced, or reported). Old credentials keep serving
        until the new ones are saved."""
        self.register_trigger_used = True
        if self.in_flight:
            self._fire(NEED_REGISTER)
            self.pending_register = True
            return
        had_token = self._has_token(now)
        self._fire(NEED_REGISTER)
        self.pending_register = True
        self.attempts = 0
        self.due = now
        if had_token:
            self.state = TOKEN_VALID  # still serving; poll() starts the registration

    def retry_now(self, now: float) -> bool:
        """An operator asked to try again at once (console `refresh`): skips the current wait once."""
        if self.in_flight:
            return False
        self.due = now
        return True

    def statement_changed(self, statement_hash: str | None, now: float) -> bool:
        """The statement file on disk now hashes to `statement_hash`. True if that triggers a register."""
        old = self.statement_hash
        self.statement_hash = statement_hash
        if statement_hash is None or statement_hash == old:
            return False
        if self.client is not None and statement_hash == self.client_statement_hash:
            return False
        self.need_register(now)
        return True

    def forget(self, now: float) -> None:
        """Credentials were wiped by an operator."""
        self._fire(FORGET)
        self.client = self.tok = None
        self.client_statement_hash = self.registered_at = None
        self.pending_register = False
        self.attempts = 0
        self.due = now

    # ----------------------------------------------------------------- views
    def snapshot(self, now: float, wall: float) -> dict:
        """What the store persists (wall-clock times, since monotonic time does not survive a reboot)."""
        token = None
        if self.tok is not None:
            t = self.tok
            received_wall = t.get("received_wall", wall - (now - t["received_mono"]))
            token = {"access_token": t["access_token"], "token_type": t["token_type"],
                     "expires_in": t["expires_in"], "received_at": received_wall,
                     "expires_at": received_wall + t["expires_in"]}
        return {"client": self.client, "statement_hash": self.client_statement_hash,
                "registered_at": self.registered_at, "token": token}

    def view(self, now: float, wall: float) -> dict:
        """Secret-free summary for status displays."""
        t = self.tok
        token = None
        if t is not None and t["expires_mono"] > now:
            token = {"expires_at": wall + (t["expires_mono"] - now), "refresh_at": wall + (t["refresh_mono"] - now),
                     "expires_in": int(t["expires_mono"] - now)}
        cid = (self.client or {}).get("client_id")
        return {
            "state": self.state,
            "registered_at": self.registered_at,
            "client_id_hint": (cid[:8] + "…") if cid else None,
            "token": token,
            "next_request_in": None if self.due is None or self.in_flight else max(0.0, self.due - now),
            "in_flight": self.in_flight,
            "last_error": self.last_error,
            "backoff_attempts": self.attempts,
            "upstream": {k: dict(v) for k, v in self.counters.items()},
        }
