"""Credential lifecycle: the state machine that decides when to register, fetch and refresh.

Read this header first. Everything that decides *when* the agent talks to Adobe lives in this file;
nothing here does I/O. The shell (agent/service.py) asks `poll(now)` what to do, performs the
request, and feeds the outcome back with `on_registered`, `on_token` or `on_error`. Time comes in
as arguments: `now` is a monotonic clock in seconds, `wall` the wall clock (epoch seconds), and
randomness comes from the injected `random` function, so tests and the fleet simulation
(tools/fleetsim.py) run it in virtual time. Must never: do I/O, read a clock, or keep backoff
state anywhere but in memory.

Theory of operation
-------------------
The agent is always in exactly one state (see STATES). A state says what the agent is doing about
Adobe; whether it holds a valid token is answered by `token(now)` (a token can expire in any
state). Each state has a due time (`self.due`, monotonic): the moment `poll` starts the next
request. `poll` returns at most one request at a time (single-flight) and nothing while one is in
flight, so a thousand callers wanting a token cause one upstream request.

Transitions are the TRANSITIONS table, keyed by (state, event). The target SETTLE means "the
resting state matching what is held": unregistered (no credentials), token_valid (a valid token)
or registered (credentials, no valid token). An event with no entry for the current state is a
bug and raises LifecycleError naming both. `pending_register` remembers that the next request
must be a registration (a trigger arrived); it is cleared only when a registration succeeds.

Rules (reference: shared/reference/adobe-pass-dcr.md sections 1, 2, 6, 7)
- Register only with no credentials, after `invalid_client` from the token endpoint, when the
  software statement changed, on a player's `application-registration`/management-403 report, or
  when an operator forces it. Never on 429, 5xx, timeouts or network errors. One immediate
  re-registration per trigger: if the fresh client is refused again, the next one backs off.
- Token expiry = monotonic time + expires_in, where the shell passes the time the request was
  sent (not when the answer arrived), so the lifetime is never overstated. Refresh at
  (`refresh_at` ± `jitter`) of the lifetime (absolute fractions: 0.8 ± 0.1 by default, uniform). The wall clock only translates to
  and from persisted/epoch values, so wall-clock jumps (NTP on a box without RTC) change nothing.
- A valid token is always served; failures never discard it. A player's 401 report refreshes it
  once (only for the current token) but keeps serving it until a new one arrives.
- Configuration errors put the agent in needs_operator: retried after `operator_retry` (hourly),
  at once when the statement changes or an operator asks.

Backoff policy (memory only: a restart starts afresh; docs/FLEET.md measures every choice)
- Transient errors (5xx, network, timeout, malformed answers): exponential with full jitter,
  delay = U(0, min(cap, base * 2**n)), at least 1 s, n = consecutive failures. The cap depends on
  what is at stake: `backoff_cap` (5 min) while the box holds a token valid for longer than that,
  `outage_cap` (60 s) otherwise. A box without a token must notice within a minute that Adobe is
  back (after a 2 h outage the 5 min cap made the recovery 1.5x slower than the floor); a box with
  a token has no hurry. Load on a down Adobe: a box without a token sends about one request per
  30 s (120 an hour); a box with a token, about one an hour (see "yield" below). A repeated
  `invalid_client` (a fresh client refused too) uses the same curve capped at `operator_retry`.
- Throttled (429): Adobe's bucket is per public address, so a 429 means "the address is busy",
  and a box behind a crowded carrier NAT shares it with up to thousands of others that all
  started at the same moment (a power cut). The retry is drawn from U(0, W), at least 1 s
  (Adobe's minimum), with W = `throttle_spread` (0.25) x the time the current 429 streak has
  lasted, at least `throttle_min` (3 s), capped at `throttle_cap`: a box that has been refused
  for 10 minutes is in a queue that needs tens of minutes, so it spreads its retries over that
  time. Because every box of a crowd sees the same elapsed time, the crowd's retries track the
  queue without any message between boxes (time-to-all-tokens within ~1.2x of the throttle's
  floor, where plain exponential backoff needs 3-25x). Any other answer ends a streak.
  (`throttle_spread=None` selects plain exponential windows, x `throttle_growth` per 429.)
- A registration that succeeds during a 429 streak is followed by its token request after 1 s
  (`token_spread` x W, at least 1 s): a box half-way through should finish first, so that few
  boxes still need two requests when the queue runs dry. The streak goes on.
- Yield: a refresh that fails (429 or transient) while a valid token of the current client is
  held waits a uniform ½..1 (`holder_yield`) of the token's remaining life, but no later than
  `expiry_margin` (60 s) before it expires: boxes with a token leave Adobe to boxes without one
  after an outage or in a crowd, and still retry, ever more often, as expiry nears. Not after
  a re-registration (that token may belong to revoked credentials).
- A Retry-After (seconds or HTTP date, converted by agent/dcr.py) is a floor on any delay.
- The failure counters reset when a token arrives; a statement change or an operator resets
  the transient counter (a new situation) but not the 429 streak (the address is as busy).
- Demand from callers never shortens a backoff or an operator wait: that is how storms start.
"""

from __future__ import annotations

import math
import random as _random
from typing import Callable

from agent.errors import OPERATOR, REREGISTER, AgentError

UNREGISTERED = "unregistered"      # no credentials; next: register
REGISTERING = "registering"        # register request in flight
REGISTERED = "registered"          # credentials but no valid token; next: fetch a token
FETCHING = "fetching"              # token request in flight and no valid token
TOKEN_VALID = "token_valid"        # holds a valid token; next: refresh ahead of expiry
REFRESHING = "refreshing"          # token request in flight while a valid token is held
BACKING_OFF = "backing_off"        # last request failed transiently; retry at `due`
NEEDS_OPERATOR = "needs_operator"  # configuration error; slow retry, or at once on statement change

STATES = (UNREGISTERED, REGISTERING, REGISTERED, FETCHING, TOKEN_VALID, REFRESHING, BACKING_OFF, NEEDS_OPERATOR)
SETTLE = "settle"  # pseudo-target: unregistered / token_valid / registered, from what is held

# Events
START_REGISTER = "start_register"  # poll: a registration starts
START_FETCH = "start_fetch"        # poll: a token request starts, no valid token held
START_REFRESH = "start_refresh"    # poll: a token request starts while a valid token is held
REGISTER_OK, TOKEN_OK = "register_ok", "token_ok"
ERR_RETRY, ERR_REREGISTER, ERR_OPERATOR = "error_retry", "error_reregister", "error_operator"
NEED_REGISTER = "need_register"    # statement changed, forced, player report
NEED_TOKEN = "need_token"          # a caller wants a (fresher) token, or a player's 401 report
FORGET = "forget"                  # credentials wiped by an operator

EVENTS = (START_REGISTER, START_FETCH, START_REFRESH, REGISTER_OK, TOKEN_OK, ERR_RETRY, ERR_REREGISTER,
          ERR_OPERATOR, NEED_REGISTER, NEED_TOKEN, FORGET)

_IDLE = (UNREGISTERED, REGISTERED, TOKEN_VALID, BACKING_OFF, NEEDS_OPERATOR)
_IN_FLIGHT = (REGISTERING, FETCHING, REFRESHING)

TRANSITIONS: dict[tuple[str, str], str] = {}
for _s in _IDLE:
    TRANSITIONS[(_s, START_REGISTER)] = REGISTERING
    TRANSITIONS[(_s, NEED_TOKEN)] = _s            # only moves `due`
for _s in (UNREGISTERED, REGISTERED, TOKEN_VALID):
    TRANSITIONS[(_s, NEED_REGISTER)] = SETTLE     # sets pending_register; poll() starts the registration
for _s in (BACKING_OFF, NEEDS_OPERATOR):
    TRANSITIONS[(_s, NEED_REGISTER)] = _s         # pending_register; the wait is cut only by a statement change
for _s in (REGISTERED, TOKEN_VALID, BACKING_OFF, NEEDS_OPERATOR):
    TRANSITIONS[(_s, START_FETCH)] = FETCHING     # token_valid: the token expired before the refresh ran
for _s in (TOKEN_VALID, BACKING_OFF, NEEDS_OPERATOR):
    TRANSITIONS[(_s, START_REFRESH)] = REFRESHING
TRANSITIONS[(REGISTERING, REGISTER_OK)] = SETTLE  # token_valid when re-registering while holding a token
TRANSITIONS[(FETCHING, TOKEN_OK)] = TOKEN_VALID
TRANSITIONS[(REFRESHING, TOKEN_OK)] = TOKEN_VALID
for _s in _IN_FLIGHT:
    TRANSITIONS[(_s, ERR_RETRY)] = BACKING_OFF
    TRANSITIONS[(_s, ERR_OPERATOR)] = NEEDS_OPERATOR
    TRANSITIONS[(_s, NEED_REGISTER)] = _s         # remembered in pending_register
    TRANSITIONS[(_s, NEED_TOKEN)] = _s
for _s in (FETCHING, REFRESHING):
    TRANSITIONS[(_s, ERR_REREGISTER)] = SETTLE    # credentials dropped: unregistered, or token_valid if one is held
for _s in STATES:
    TRANSITIONS[(_s, FORGET)] = UNREGISTERED

THROTTLED = "throttled"  # agent.dcr's code for a 429


def epoch_times(tok: dict, now: float, wall: float) -> tuple[float, float, int]:
    """(expires_at, refresh_at, expires_in) of a held token, as epoch seconds and whole seconds left.

    The monotonic schedule goes through a whole-second wall offset, floored: the values stay the
    same for one token (the socket server reuses its encoded answer), follow a wall-clock jump at
    once, and an epoch expiry may come out early, never late.
    """
    off = float(math.floor(wall - now))
    return off + tok["expires_mono"], off + tok["refresh_mono"], int(tok["expires_mono"] - now)


class LifecycleError(AgentError):
    """An event arrived that the current state does not allow: a bug in the shell or here."""

    code = "lifecycle_error"


class Lifecycle:
    """The credential lifecycle of one device. Not thread-safe: the shell serialises calls."""

    def __init__(self, *, refresh_at: float = 0.8, jitter: float = 0.1,
                 random: Callable[[], float] | None = None, backoff_base: float = 1.0,
                 backoff_cap: float = 300.0, throttle_growth: float = 4.0, throttle_cap: float = 3600.0,
                 throttle_spread: float | None = 0.25, throttle_min: float = 3.0, token_spread: float = 0.0,
                 holder_yield: float = 0.5, expiry_margin: float = 60.0, outage_cap: float = 60.0,
                 operator_retry: float = 3600.0, refresh_report_interval: float = 30.0,
                 register_report_interval: float = 900.0, min_ttl_refresh_interval: float = 30.0) -> None:
        self.refresh_at = refresh_at
        self.jitter = jitter
        self.random = random or _random.random
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.throttle_growth = throttle_growth
        self.throttle_cap = throttle_cap
        self.throttle_spread = throttle_spread
        self.holder_yield = holder_yield
        self.expiry_margin = expiry_margin
        self.token_spread = token_spread
        self.throttle_min = throttle_min
        self.outage_cap = outage_cap
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
        self.attempts = 0                         # consecutive transient failures (not 429), for backoff
        self.throttled = 0                        # consecutive 429s, for the throttle window
        self.window = 0.0                         # last throttle window (s); spreads the token request too
        self.throttled_since = 0.0                # monotonic time of the first 429 of the current streak
        self.pending_register = False             # the next request must be a registration
        self.trigger_spent = False                # a registration succeeded for this trigger, no token since
        self.retrigger = False                    # a statement change/operator arrived during the request
        self.in_flight: str | None = None
        self.stale = False                        # credentials were wiped while a request was in flight
        self.last_error: dict | None = None
        self.last_report = {"refresh": -1e18, "reregister": -1e18}
        self.report_refresh_gen = -1              # token generation a 401 report already refreshed
        self.counters: dict[str, dict[str, int]] = {"register": {}, "token": {}}
        self.token_generation = 0

    # ----------------------------------------------------------------- transitions
    def _fire(self, event: str, now: float) -> str:
        key = (self.state, event)
        if key not in TRANSITIONS:
            raise LifecycleError("lifecycle: event %r is not allowed in state %r" % (event, self.state),
                                 hint="this is a bug in pass-agent: please report it with the log")
        new = TRANSITIONS[key]
        if new == SETTLE:
            new = self._settled(now)
        self.state = new
        return new

    def _settled(self, now: float) -> str:
        if self._has_token(now):
            return TOKEN_VALID
        return UNREGISTERED if self.client is None else REGISTERED

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
        self.state = self._settled(now)
        if self.statement_hash and self.client_statement_hash and self.statement_hash != self.client_statement_hash:
            self.pending_register = True
            self.due = now
        elif self.state == REGISTERED:
            self.due = now

    def _set_token(self, t: dict, now: float, remaining: float, lifetime: float, refresh_mono: float | None) -> None:
        received = now - (lifetime - remaining)
        if refresh_mono is None:
            f = self.refresh_at + self.jitter * (2.0 * self.random() - 1.0)
            f = min(max(f, 0.05), 0.98)
            refresh_mono = max(received + lifetime * f, now)
        self.tok = {
            "access_token": t["access_token"],
            "token_type": t.get("token_type") or "bearer",
            "expires_in": int(lifetime),
            "received_mono": received,
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
        if self.client is None or self.pending_register:
            self._fire(START_REGISTER, now)
            self.in_flight = "register"
            return {"op": "register"}
        self._fire(START_REFRESH if self._has_token(now) else START_FETCH, now)
        self.in_flight = "token"
        return {"op": "token"}

    def next_deadline(self) -> float | None:
        """Monotonic time of the next scheduled request (None: nothing scheduled or in flight)."""
        return None if self.in_flight else self.due

    def _count(self, endpoint: str, outcome: str) -> None:
        c = self.counters[endpoint]
        c[outcome] = c.get(outcome, 0) + 1

    def _drop_stale(self, now: float) -> bool:
        """The outcome of a request started before `forget`: count it, then ignore it."""
        if not self.stale:
            return False
        self.stale = False
        self.in_flight = None
        self.due = now
        return True

    def on_registered(self, client: dict, statement_hash: str | None, now: float, wall: float) -> list:
        """A registration succeeded. Returns effects for the shell: [("save", snapshot)]."""
        self._count("register", "ok")
        if self._drop_stale(now):
            return []
        self.in_flight = None
        self.client = client
        self.client_statement_hash = statement_hash
        self.registered_at = wall
        self.retrigger = False
        # The statement changed while this registration (with the old one) was in flight: again.
        self.pending_register = bool(self.statement_hash and statement_hash and self.statement_hash != statement_hash)
        self.trigger_spent = True
        self.last_error = None
        # Keep serving the old token (if any) until the new client's first token arrives. The token
        # is fetched at once, or, within a 429 streak, after token_spread x the streak's window (at
        # least Adobe's 1 s): a box half-way through goes first (see 'Backoff policy').
        self._fire(REGISTER_OK, now)
        self.due = now + (self._spread(self.window * self.token_spread) if self.throttled else 0.0)
        return [("save", self.snapshot(now, wall))]

    def on_token(self, token: dict, now: float, wall: float) -> list:
        """A token arrived (parsed by dcr.parse_token). Effects: save and notify."""
        self._count("token", "ok")
        if self._drop_stale(now):
            return []
        self.in_flight = None
        self._fire(TOKEN_OK, now)
        lifetime = float(token["expires_in"])
        self._set_token(token, now, lifetime, lifetime, None)
        self.tok["received_wall"] = wall
        self.attempts = self.throttled = 0
        self.window = 0.0
        self.trigger_spent = False
        self.last_error = None
        if self.pending_register:  # a trigger arrived while the token request was in flight
            self.due = now
        return [("save", self.snapshot(now, wall)), ("token_changed", None)]

    def _spread(self, window: float) -> float:
        return max(1.0, window * self.random())

    def _backoff(self, now: float, err: AgentError, refresh: bool = False) -> float:
        """Due time after a transient failure (see 'Backoff policy' in the header).
        refresh: the failed request was a token refresh for the credentials the held token came from."""
        if err.code != THROTTLED and getattr(err, "status", None) is not None:
            self.throttled = 0  # Adobe answered something else: the 429 streak is over
        if err.code == THROTTLED:
            if self.throttled == 0:
                self.throttled_since = now
            if self.throttle_spread is not None:
                w = self.throttle_spread * (now - self.throttled_since)
            else:
                w = self.backoff_base * self.throttle_growth ** min(self.throttled, 30)
            self.window = min(self.throttle_cap, max(self.backoff_base, self.throttle_min, w))
            self.throttled += 1
            delay = self._spread(self.window)
        else:
            # A fresh client refused again (invalid_client) is not a network blip: each registration
            # logs the user out, so those repeats grow up to the operator wait instead of backoff_cap.
            if err.kind == REREGISTER:
                cap = self.operator_retry
            elif self.tok is not None and self.tok["expires_mono"] - now > self.backoff_cap:
                cap = self.backoff_cap
            else:
                cap = min(self.backoff_cap, self.outage_cap)
            ceiling = min(cap, self.backoff_base * 2.0 ** min(self.attempts, 30))
            self.attempts += 1
            delay = self._spread(ceiling)
        t = self.tok
        if refresh and t is not None and t["expires_mono"] > now and self.holder_yield:
            # A refresh while holding a valid token of the current client: no hurry. Leave Adobe to
            # boxes without one (the retry still comes before expiry, see on_error). Not after a
            # re-registration: that token may belong to revoked credentials.
            left = t["expires_mono"] - now
            delay = max(delay, min(self.holder_yield * (1.0 + self.random()) * left, left - self.expiry_margin))
        if err.retry_after is not None:
            delay = max(delay, float(err.retry_after))
        return now + delay

    def on_error(self, err: AgentError, now: float, wall: float) -> list:
        """A request failed. Decide: back off, re-register once, or wait for an operator."""
        endpoint = self.in_flight or "token"
        self._count(endpoint, err.code)
        if self._drop_stale(now):
            return []
        self.in_flight = None
        self.last_error = dict(err.to_dict(), endpoint=endpoint, at=wall)
        if err.kind == REREGISTER and endpoint == "token":
            self.pending_register = True
            if not self.trigger_spent:
                # First refusal of these credentials: register again at once (the old ones are dead).
                self.client = None
                self._fire(ERR_REREGISTER, now)
                self.due = now
                return []
            # The client registered for this trigger is refused too: register again only after a backoff.
            self.trigger_spent = False
        elif err.kind == OPERATOR:
            self.throttled = 0  # Adobe answered: the 429 streak is over
            self._fire(ERR_OPERATOR, now)
            # The refusal may concern the statement replaced while the request was in flight.
            self.due = now if self.retrigger else now + self.operator_retry
            self.retrigger = False
            return []
        self.retrigger = False
        self._fire(ERR_RETRY, now)
        refresh = endpoint == "token" and not self.pending_register and not self.trigger_spent
        self.due = self._backoff(now, err, refresh)
        # A held token stays served; if the backoff ends after it expires, try once shortly before.
        # (Only once: from the last two minutes on, the plain backoff applies, so it cannot loop.)
        t = self.tok
        if (err.retry_after is None and t is not None and now < t["expires_mono"] - 120.0
                and self.due >= t["expires_mono"]):
            self.due = t["expires_mono"] - 60.0
        return []

    # ----------------------------------------------------------------- callers
    def token(self, now: float, min_ttl: float = 0.0) -> dict | None:
        """The held token if it has more than min_ttl seconds left; else None and a fetch is scheduled."""
        t = self.tok
        if t is not None and t["expires_mono"] - now > max(min_ttl, 0.0):
            return t
        self.demand(now, refresh_allowed=t is None or t["expires_mono"] <= now
                    or now - t["received_mono"] >= self.min_ttl_refresh_interval)
        return None

    def demand(self, now: float, refresh_allowed: bool = True) -> None:
        """A caller wants a (fresher) token: move the due time to now unless a request is in flight,
        the agent is backing off or waits for an operator (never shorten those)."""
        if not refresh_allowed or self.in_flight or self.state in (BACKING_OFF, NEEDS_OPERATOR):
            return
        self._fire(NEED_TOKEN, now)
        if self.due is None or self.due > now:
            self.due = now

    def report(self, status: int, decision: str, access_token: str | None, now: float) -> dict:
        """A player's protected-API error, already classified by dcr.classify_protected_error.

        refresh: one refresh per token, only when the reported token is the current one (or none was
        given); rate-limited. reregister: one registration per `register_report_interval`. A report
        never shortens a backoff or an operator wait."""
        if decision == "refresh":
            if self.tok is None:
                return {"decision": "ignored", "reason": "no token is held; one is being fetched"}
            if access_token and access_token != self.tok["access_token"]:
                return {"decision": "ignored", "reason": "the reported token is not the current one"}
            if self.report_refresh_gen == self.token_generation:
                return {"decision": "ignored", "reason": "a refresh for this token was already requested"}
            if now - self.last_report["refresh"] < self.refresh_report_interval:
                return {"decision": "rate_limited", "reason": "a refresh for a report happened just now"}
            self.last_report["refresh"] = now
            self.report_refresh_gen = self.token_generation
            if not self.in_flight and self.state not in (BACKING_OFF, NEEDS_OPERATOR):
                self._fire(NEED_TOKEN, now)
                self.due = now
            return {"decision": "refresh", "reason": "token rejected by a protected API"}
        if decision == "reregister":
            if now - self.last_report["reregister"] < self.register_report_interval:
                return {"decision": "rate_limited", "reason": "a re-registration for a report happened recently"}
            self.last_report["reregister"] = now
            self.need_register(now, shorten=False)
            return {"decision": "reregister", "reason": "the credentials were rejected by a protected API"}
        return {"decision": "ignored", "reason": "not about the agent's credentials"}

    def need_register(self, now: float, shorten: bool = True) -> None:
        """A new registration trigger (statement changed, forced, reported). The old credentials and
        token keep serving until the new ones arrive. `shorten`: may cut a backoff/operator wait
        (statement change, operator) or not (player report)."""
        self.pending_register = True
        self.trigger_spent = False
        self._fire(NEED_REGISTER, now)
        if self.in_flight:
            self.retrigger = self.retrigger or shorten
            return
        if shorten:
            self.attempts = 0
            self.due = now
        elif self.state not in (BACKING_OFF, NEEDS_OPERATOR) and (self.due is None or self.due > now):
            self.due = now

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
        """Credentials were wiped by an operator. The outcome of a request in flight will be ignored."""
        self._fire(FORGET, now)
        self.stale = self.in_flight is not None
        self.client = self.tok = None
        self.client_statement_hash = self.registered_at = None
        self.pending_register = self.trigger_spent = False
        self.attempts = self.throttled = 0
        self.window = 0.0
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
            expires_at, refresh_at, expires_in = epoch_times(t, now, wall)
            token = {"expires_at": expires_at, "refresh_at": refresh_at, "expires_in": expires_in}
        cid = (self.client or {}).get("client_id")
        return {
            "state": self.state,
            "registered_at": self.registered_at,
            "client_id_hint": (cid[:8] + "…") if cid else None,
            "token": token,
            "next_request_in": None if self.due is None or self.in_flight else max(0.0, self.due - now),
            "in_flight": self.in_flight,
            "pending_register": self.pending_register,
            "last_error": self.last_error,
            "backoff_attempts": self.attempts + self.throttled,
            "upstream": {k: dict(v) for k, v in self.counters.items()},
        }
