"""Credential lifecycle: the state machine that decides when to register, fetch and refresh.

Read this header first. Everything that decides *when* the agent talks to Adobe lives in this file;
nothing here does I/O. The shell (agent/service.py) asks `poll(now)` what to do, performs the
request, and feeds the outcome back with `on_registered`, `on_token` or `on_error`. Time comes in
as arguments: `now` is a monotonic clock in seconds that counts suspend (the service passes
CLOCK_BOOTTIME, agent/clock.py: a token that expires while the box is in standby is expired at
resume, and what fell due is due at once), `wall` the wall clock (epoch seconds), and
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
resting state matching what is held": needs_operator while the statement file is unusable,
else unregistered (no credentials), token_valid (a valid token) or registered (credentials, no
valid token). An event with no entry for the current state is a bug and raises LifecycleError
naming both. `pending_register` remembers that the next request must be a registration (a
trigger arrived); it is cleared only when a registration succeeds.

Rules (reference: docs/ADOBE.md sections 1, 2, 3, 5, 6, 7)
- Register only with no credentials, after `invalid_client` from the token endpoint, when the
  software statement names a different registered application, on a player's
  `application-registration`/management-403 report, or when an operator forces it. Never on 429,
  5xx, timeouts or network errors. One immediate re-registration per trigger: if the fresh client
  is refused again, the next one backs off.
- The statement's identity is its registered application: (`iss`, `sub`) of the JWT payload, read
  without checking the signature (`statement_identity`; the agent has no Adobe key, and comparing
  identities needs none). Adobe: "each download yields a different statement (new `iat`, new
  `jti`) for the same registered application (`sub`) and does not invalidate earlier ones", and
  new client credentials invalidate the users' authenticated profiles; so a re-downloaded
  statement for the same application keeps the stored credentials (0 registrations) and is simply
  the one used from then on, while one for another application triggers exactly one registration.
  A new file of the same application still cuts a wait when a registration is pending or Adobe
  refused the old statement (the operator may have installed the fix). A file that is missing, is
  not a JWT or has no `sub` is an operator error (`statement_unreadable`, `statement_invalid`,
  `statement_no_sub`): needs_operator, no registration, and stored credentials keep fetching
  tokens on schedule (they do not need the statement).
- Stores written before identities (only `statement_hash`, a SHA-256 of the file's bytes) are
  upgraded without registering: same bytes as the file now -> its identity is adopted; different
  bytes -> the identity is adopted too, and `load` returns a note saying so. Why not register:
  the old agent re-registered on any byte change, so different bytes at upgrade time mean the file
  was replaced together with the agent (a firmware update shipping a fresh download, the case this
  rule exists for); registering would log every user of the fleet out. If the file really names
  another application, the old credentials keep working (Adobe does not invalidate them), an
  `invalid_client` still re-registers, and an operator can force a registration.
- Token expiry = monotonic time + expires_in, where the shell passes the time the request was
  sent (not when the answer arrived), so the lifetime is never overstated. Refresh at
  (`refresh_at` ± `jitter`) of the lifetime (absolute fractions: 0.8 ± 0.1 by default, uniform),
  but never sooner than `min_token_interval` (30 s) after the previous token was asked for: the
  schedule is max(refresh point, last token request + 30 s). Adobe's budget is 1 request/s per
  public address, shared by every app on the box and their REST API v2 calls, and "requesting a
  token per call or polling too often is itself a documented cause of 429s": 30 s keeps the
  agent's share at 1/30 of it whatever the lifetime (with 1 s tokens the old schedule asked every
  0.8 s and was throttled). The same floor applies to callers' demands and player reports; not to
  the first token of a new client (the old client's token may be dead). Tokens living less than
  the interval leave gaps without a token: `on_token` returns a note saying so.
- `token(now, min_ttl)` with a min_ttl at least the lifetime of Adobe's tokens (the last token's
  expires_in) can never be satisfied: it raises `min_ttl_unsatisfiable` at once instead of
  forcing a refresh every 30 s.
- The wall clock only translates to and from persisted/epoch values, so wall-clock jumps (NTP on a
  box without RTC) change nothing.
- A valid token is always served; failures never discard it. A player's 401 report refreshes it
  once (only for the current token) but keeps serving it until a new one arrives.
- A player's re-registration report counts only for the current token (a named token that is not
  the current one is ignored; one re-registration per token), and is limited per peer uid (one per
  `register_report_uid_interval`, 6 h) and overall (one per `register_report_interval`, 15 min,
  and `register_report_daily`, 4, per 24 h): each one logs the box's users out, so a confused or
  hostile local client must not be able to do it more than a few times a day. An actual
  revocation needs one; an `invalid_client` from Adobe is never limited by these.
- Configuration errors put the agent in needs_operator: retried after `operator_retry` (hourly),
  at once when the statement changes or an operator asks.
- Undocumented answers from the DCR endpoints (agent.dcr marks them `undocumented`: a 401/403
  without an OAuth body, an unknown OAuth code, a 2xx without `client_id`/`access_token`) are
  retried like transient errors at first (a captive portal or a proxy restart passes), but
  `undocumented_count` (3) of them in a row spanning at least `undocumented_span` (10 min) mean
  nothing will change by itself: needs_operator (`upstream_undocumented`, the status and the
  sanitised excerpt in the message, a hint) instead of polling every minute forever. Three
  answers exclude a single odd one; ten minutes cover a captive-portal login or a proxy restart
  (a box without a token has asked ~15 times by then). Any documented answer ends the streak;
  network errors and timeouts are no answer and neither count nor end it.

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
  (Adobe's minimum), with W = `throttle_spread` (0.04) x the time the current 429 streak has
  lasted, at least `throttle_min` (1.25 s), capped at `throttle_cap`: a box that has been refused
  for 10 minutes is in a queue that needs tens of minutes, so it spreads its retries over that
  time. Because every box of a crowd sees the same elapsed time, the crowd's retries track the
  queue without any message between boxes. Any other answer ends a streak. (`throttle_spread=None`
  selects plain exponential windows, x `throttle_growth` per 429; `throttle_first`, default
  None, gives a streak's first retry a window of its own: measured, not used.)
  Why so tight (issue 20, docs/FLEET.md): Adobe's burst of 10 is a one-time allowance and its
  bucket then holds at most one token, so a second in which no box of the address asks is lost
  for good; the crowd must keep asking about every second until the last box is served. The
  shell's governor (agent/governor.py) pauses the box for a draw from the same window, and after
  a 429 waits one refill (1 s) from the answer, not 1 s + its slack. Measured in tools/fleetsim.py
  (every box behind its governor, Adobe's one-time burst, 20,000 boxes; docs/fleet/latest.txt):
  time to all tokens within the target (max(1.3x, the floor + 5 s)) at 1-20, 50, 100 and 1000
  boxes per address and after a 2 h outage (see "Yield"), at the price of ~73 % / 97 % / 99 % of
  requests answered 429 at 10 / 100 / 1000 per address. Why 0.04 and 1.25 s (issue 20, H6): with
  the governor's slack after every 429 (0.03, 1 s) 13-20 per address took 1.28-1.31x the floor (14
  missed the target by 0.1 s); without it the same window takes 1.19-1.22x but draws 0.1-0.2 points
  more 429s there (every waiting box retries about once a refill, and each refill comes sooner).
  1.25 s spends that margin on fewer retries (1.25-1.31x at 11-20, 1.27x at 14; a city 429
  share at or below the old at every size), 0.04 spends the margin at 100 and 1000 (now 1.17x /
  1.18x) on 8 % / 18 % fewer requests per box (97.0 % / 98.7 % 429s, were 97.3 / 98.9). The old defaults tuned on a bucket that banks idle seconds (0.25 x, at least 3 s)
  take 2.0x / 1.9x the floor at 10 / 100. Searches (tools/fleetsearch.py, docs/FLEET.md) found no
  policy of this family in time with fewer than 72 % / 94 % 429s at 10 / 100; issue 20's 40 / 90 /
  95 % are not reached (docs/FLEET.md says why: retries that look random to Adobe's bucket pay a
  1 s dead time per admission, and a box that only sees 429s until it is served cannot tell how
  many others still wait, so its window can follow only the streak's age).
- A registration that succeeds during a 429 streak is followed by its token request after 1 s
  (`token_spread` x W, at least 1 s): a box half-way through should finish first, so that few
  boxes still need two requests when the queue runs dry. The streak goes on.
- Yield: a refresh that fails (429 or transient) while a valid token of the current client is
  held waits a uniform ½..1 (`holder_yield`) of the token's remaining life, but no later than
  `expiry_margin` (60 s) before it expires: boxes with a token leave Adobe to boxes without one
  after an outage or in a crowd, and still retry, ever more often, as expiry nears. Not after
  a re-registration (that token may belong to revoked credentials). A box that yields has left
  the queue, so a yield ends its 429 streak: a 429 at the retry starts a new one (1 s window).
  Counting the hours of yielding as the streak's age made a 429 in the last minute draw a window
  of 0.03 x hours, and the token lapsed (the outage scenario took 39x its floor, issue 20).
- A Retry-After (seconds or HTTP date, converted by agent/dcr.py) is a floor on any delay, but an
  upstream-dictated wait is capped: a box holding a valid token retries no later than
  `expiry_margin` before it expires, a box without one at least every `backoff_cap`. One 429 with
  `Retry-After: 86400` (or a date in year 9999) must not silence a box for a day: the throttle
  page's sample has no Retry-After at all, so a huge one is more likely a proxy's than Adobe's.
- The failure counters reset when a token arrives; a statement change or an operator resets
  the transient counter (a new situation) but not the 429 streak (the address is as busy).
- Demand from callers never shortens a backoff or an operator wait: that is how storms start.
"""

from __future__ import annotations

import base64
import binascii
import json
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
NEEDS_OPERATOR = "needs_operator"  # configuration error or unusable statement file; see the rules

STATES = (UNREGISTERED, REGISTERING, REGISTERED, FETCHING, TOKEN_VALID, REFRESHING, BACKING_OFF, NEEDS_OPERATOR)
SETTLE = "settle"  # pseudo-target: needs_operator / unregistered / token_valid / registered, from what is held

# Events
START_REGISTER = "start_register"  # poll: a registration starts
START_FETCH = "start_fetch"        # poll: a token request starts, no valid token held
START_REFRESH = "start_refresh"    # poll: a token request starts while a valid token is held
REGISTER_OK, TOKEN_OK = "register_ok", "token_ok"
ERR_RETRY, ERR_REREGISTER, ERR_OPERATOR = "error_retry", "error_reregister", "error_operator"
NEED_REGISTER = "need_register"    # statement for another application, forced, player report
NEED_TOKEN = "need_token"          # a caller wants a (fresher) token, or a player's 401 report
STATEMENT_BAD = "statement_bad"    # the statement file became unusable (missing, not a JWT, no sub)
STATEMENT_OK = "statement_ok"      # a usable statement file is back
FORGET = "forget"                  # credentials wiped by an operator

EVENTS = (START_REGISTER, START_FETCH, START_REFRESH, REGISTER_OK, TOKEN_OK, ERR_RETRY, ERR_REREGISTER,
          ERR_OPERATOR, NEED_REGISTER, NEED_TOKEN, STATEMENT_BAD, STATEMENT_OK, FORGET)

_IDLE = (UNREGISTERED, REGISTERED, TOKEN_VALID, BACKING_OFF, NEEDS_OPERATOR)
_IN_FLIGHT = (REGISTERING, FETCHING, REFRESHING)

TRANSITIONS: dict[tuple[str, str], str] = {}
for _s in _IDLE:
    TRANSITIONS[(_s, START_REGISTER)] = REGISTERING
    TRANSITIONS[(_s, NEED_TOKEN)] = _s            # only moves `due`
    TRANSITIONS[(_s, STATEMENT_BAD)] = NEEDS_OPERATOR
for _s in (UNREGISTERED, REGISTERED, TOKEN_VALID):
    TRANSITIONS[(_s, NEED_REGISTER)] = SETTLE     # sets pending_register; poll() starts the registration
for _s in (BACKING_OFF, NEEDS_OPERATOR):
    TRANSITIONS[(_s, NEED_REGISTER)] = _s         # pending_register; the wait is cut only by a statement change
for _s in (REGISTERED, TOKEN_VALID, BACKING_OFF, NEEDS_OPERATOR):
    TRANSITIONS[(_s, START_FETCH)] = FETCHING     # token_valid: the token expired before the refresh ran
for _s in (TOKEN_VALID, BACKING_OFF, NEEDS_OPERATOR):
    TRANSITIONS[(_s, START_REFRESH)] = REFRESHING
TRANSITIONS[(NEEDS_OPERATOR, STATEMENT_OK)] = SETTLE  # only when the file was the only problem
TRANSITIONS[(REGISTERING, REGISTER_OK)] = SETTLE  # token_valid when re-registering while holding a token
TRANSITIONS[(FETCHING, TOKEN_OK)] = SETTLE        # token_valid (needs_operator while the file is unusable)
TRANSITIONS[(REFRESHING, TOKEN_OK)] = SETTLE
for _s in _IN_FLIGHT:
    TRANSITIONS[(_s, ERR_RETRY)] = BACKING_OFF
    TRANSITIONS[(_s, ERR_OPERATOR)] = NEEDS_OPERATOR
    TRANSITIONS[(_s, NEED_REGISTER)] = _s         # remembered in pending_register
    TRANSITIONS[(_s, NEED_TOKEN)] = _s
    TRANSITIONS[(_s, STATEMENT_BAD)] = _s         # remembered in statement_problem; the outcome settles
for _s in (FETCHING, REFRESHING):
    TRANSITIONS[(_s, ERR_REREGISTER)] = SETTLE    # credentials dropped: unregistered, or token_valid if one is held
for _s in STATES:
    TRANSITIONS[(_s, FORGET)] = UNREGISTERED

THROTTLED = "throttled"  # agent.dcr's code for a 429
_STATEMENT_HINT = ("download the statement again from the Adobe Pass TVE Dashboard and install it at "
                   "[adobe] software_statement; the agent picks up the new file by itself")


def _statement_error(path: str, what: str, code: str) -> AgentError:
    return AgentError("the software statement %s %s" % (path, what), code=code, kind=OPERATOR, hint=_STATEMENT_HINT)


def statement_identity(text: str, path: str) -> str:
    """The registered application a software statement names: "iss|sub" of its JWT payload.

    The signature is not checked (the agent has no Adobe key; comparing identities needs none).
    Raises AgentError (kind operator, code statement_invalid or statement_no_sub) naming `path`.
    The message never contains the statement itself.
    """
    parts = text.strip().split(".")
    if len(parts) != 3:
        raise _statement_error(path, "is not a JWT (expected three base64url parts separated by dots, found %d)"
                               % len(parts), "statement_invalid")
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        payload = json.loads(raw.decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        raise _statement_error(path, "is not a JWT (its payload is not base64url JSON)", "statement_invalid")
    if not isinstance(payload, dict):
        raise _statement_error(path, "is not a JWT (its payload is not a JSON object)", "statement_invalid")
    sub, iss = payload.get("sub"), payload.get("iss")
    if not isinstance(sub, str) or not sub:
        raise _statement_error(path, "has no 'sub' claim (the registered application id Adobe's statements carry)",
                               "statement_no_sub")
    return "%s|%s" % (iss if isinstance(iss, str) else "", sub)


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
                 throttle_spread: float | None = 0.04, throttle_min: float = 1.25, token_spread: float = 0.0,
                 holder_yield: float = 0.5, expiry_margin: float = 60.0, outage_cap: float = 60.0,
                 operator_retry: float = 3600.0, refresh_report_interval: float = 30.0,
                 register_report_interval: float = 900.0, register_report_uid_interval: float = 21600.0,
                 register_report_daily: int = 4, min_token_interval: float = 30.0,
                 undocumented_count: int = 3, undocumented_span: float = 600.0,
                 throttle_first: float | None = None) -> None:
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
        self.throttle_first = throttle_first
        self.outage_cap = outage_cap
        self.operator_retry = operator_retry
        self.refresh_report_interval = refresh_report_interval
        self.register_report_interval = register_report_interval
        self.register_report_uid_interval = register_report_uid_interval
        self.register_report_daily = register_report_daily
        self.min_token_interval = min_token_interval
        self.undocumented_count = undocumented_count
        self.undocumented_span = undocumented_span

        self.state = UNREGISTERED
        self.due: float | None = 0.0
        self.client: dict | None = None           # credentials from Adobe
        self.client_statement_app: str | None = None  # "iss|sub" the client was registered for
        self.registered_at: float | None = None   # wall
        self.statement_app: str | None = None     # "iss|sub" of the statement on disk now (None: unusable)
        self.statement_hash: str | None = None    # SHA-256 of the statement on disk now (status, old stores)
        self.statement_problem: dict | None = None  # why the statement file is unusable (operator error)
        self.tok: dict | None = None              # token + monotonic received/expires/refresh times
        self.token_asked: float | None = None     # monotonic send time of the last token issued...
        self.token_asked_client: str | None = None  # ...and the client_id it was issued to
        self.attempts = 0                         # consecutive transient failures (not 429), for backoff
        self.throttled = 0                        # consecutive 429s, for the throttle window
        self.window = 0.0                         # last throttle window (s); spreads the token request too
        self.throttled_since = 0.0                # monotonic time of the first 429 of the current streak
        self.undocumented = 0                     # consecutive undocumented answers...
        self.undocumented_since = 0.0             # ...since this monotonic time
        self.operator_wait = False                # `due` is an operator wait (not the refresh schedule)
        self.pending_register = False             # the next request must be a registration
        self.trigger_spent = False                # a registration succeeded for this trigger, no token since
        self.retrigger = False                    # a statement change/operator arrived during the request
        self.in_flight: str | None = None
        self.stale = False                        # credentials were wiped while a request was in flight
        self.last_error: dict | None = None
        self.last_report = {"refresh": -1e18, "reregister": -1e18}
        self.report_refresh_gen = -1              # token generation a 401 report already refreshed
        self.report_register_gen = -1             # token generation a re-registration report already acted on
        self.report_uids: dict = {}               # peer uid -> monotonic time of its last acted-on report
        self.report_times: list[float] = []       # acted-on re-registration reports in the last 24 h
        self.short_noted: int | None = None       # token lifetime already noted as shorter than the interval
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
        if self.statement_problem is not None:
            return NEEDS_OPERATOR
        if self._has_token(now):
            return TOKEN_VALID
        return UNREGISTERED if self.client is None else REGISTERED

    def _has_token(self, now: float) -> bool:
        return self.tok is not None and now < self.tok["expires_mono"]

    # ----------------------------------------------------------------- start-up
    def load(self, stored: dict | None, statement_app: str | None, statement_hash: str | None,
             now: float, wall: float) -> list:
        """Adopt the persisted state (or none) at start. Never triggers I/O by itself.

        statement_app/statement_hash: identity and SHA-256 of the statement file now (app None:
        unusable; call `statement_changed(None, ..., problem)` to say why). Returns effects for the
        shell: ("note", text) to log, ("save", snapshot) when an old store was upgraded."""
        self.statement_app, self.statement_hash = statement_app, statement_hash
        self.state, self.due = UNREGISTERED, now
        if not stored or not isinstance(stored.get("client"), dict):
            return []
        effects: list = []
        self.client = stored["client"]
        self.registered_at = stored.get("registered_at")
        app = stored.get("statement_app")
        if not isinstance(app, str) or not app:
            # A store written before identities (see 'Rules'): adopt the current file's identity.
            app = statement_app
            old = stored.get("statement_hash")
            if app is not None:
                effects.append(("save", None))
                if old and statement_hash and old != statement_hash:
                    effects.append(("note", "the stored credentials predate statement identities and the statement "
                                    "file changed since they were registered: adopted its application %s for them "
                                    "without registering again (force a registration if the application really "
                                    "changed)" % app))
        self.client_statement_app = app
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
        if self.statement_app and self.client_statement_app and self.statement_app != self.client_statement_app:
            self.pending_register = True
            self.due = now
        elif self.state == REGISTERED:
            self.due = now
        return [("save", self.snapshot(now, wall)) if k == "save" else (k, a) for k, a in effects]

    def _set_token(self, t: dict, now: float, remaining: float, lifetime: float, refresh_mono: float | None) -> None:
        received = now - (lifetime - remaining)
        if refresh_mono is None:
            f = self.refresh_at + self.jitter * (2.0 * self.random() - 1.0)
            f = min(max(f, 0.05), 0.98)
            # Never sooner than min_token_interval after this token was asked for (see 'Rules').
            refresh_mono = max(received + lifetime * f, received + self.min_token_interval, now)
        self.tok = {
            "access_token": t["access_token"],
            "token_type": t.get("token_type") or "bearer",
            "expires_in": int(lifetime),
            "received_mono": received,
            "expires_mono": now + remaining,
            "refresh_mono": refresh_mono,
        }
        self.token_asked, self.token_asked_client = received, (self.client or {}).get("client_id")
        self.token_generation += 1
        self.due = refresh_mono

    # ----------------------------------------------------------------- driving
    def poll(self, now: float) -> dict | None:
        """The request to start now, or None. Marks it in flight (single-flight)."""
        if self.in_flight or self.due is None or now < self.due:
            return None
        if self.client is None or self.pending_register:
            if self.statement_problem is not None:
                self.due = None  # no usable statement to register with: statement_changed wakes it
                return None
            self._fire(START_REGISTER, now)
            self.in_flight = "register"
            return {"op": "register"}
        self._fire(START_REFRESH if self._has_token(now) else START_FETCH, now)
        self.in_flight = "token"
        return {"op": "token"}

    def next_deadline(self) -> float | None:
        """Monotonic time of the next scheduled request (None: nothing scheduled or in flight)."""
        return None if self.in_flight else self.due

    def _earliest_token(self, now: float) -> float:
        """When a token request for the current client may start: min_token_interval after the last
        token was asked for, unless the client changed since (its first token is never delayed)."""
        if (self.token_asked is None or self.client is None
                or self.client.get("client_id") != self.token_asked_client):
            return now
        return max(now, self.token_asked + self.min_token_interval)

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

    def _answered_ok(self) -> None:
        self.undocumented = 0
        self.operator_wait = False
        self.last_error = self.statement_problem

    def on_registered(self, client: dict, statement_app: str | None, now: float, wall: float) -> list:
        """A registration succeeded with the statement naming `statement_app`. Effects: [("save", snapshot)]."""
        self._count("register", "ok")
        if self._drop_stale(now):
            return []
        self.in_flight = None
        self.client = client
        self.client_statement_app = statement_app
        self.registered_at = wall
        self.retrigger = False
        # A statement for another application arrived while this registration was in flight: again.
        self.pending_register = bool(self.statement_app and statement_app and self.statement_app != statement_app)
        self.trigger_spent = True
        self._answered_ok()
        # Keep serving the old token (if any) until the new client's first token arrives. The token
        # is fetched at once, or, within a 429 streak, after token_spread x the streak's window (at
        # least Adobe's 1 s): a box half-way through goes first (see 'Backoff policy').
        self._fire(REGISTER_OK, now)
        self.due = now + (self._spread(self.window * self.token_spread) if self.throttled else 0.0)
        return [("save", self.snapshot(now, wall))]

    def on_token(self, token: dict, now: float, wall: float) -> list:
        """A token arrived (parsed by dcr.parse_token); `now` is when it was asked for.
        Effects: save, notify, and a note when tokens live less than the minimum interval."""
        self._count("token", "ok")
        if self._drop_stale(now):
            return []
        self.in_flight = None
        lifetime = float(token["expires_in"])
        self._set_token(token, now, lifetime, lifetime, None)
        self.tok["received_wall"] = wall
        self._fire(TOKEN_OK, now)
        self.attempts = self.throttled = 0
        self.window = 0.0
        self.trigger_spent = False
        self._answered_ok()
        if self.pending_register:  # a trigger arrived while the token request was in flight
            self.due = now
        effects: list = [("save", self.snapshot(now, wall)), ("token_changed", None)]
        if lifetime * self.refresh_at < self.min_token_interval and self.short_noted != int(lifetime):
            self.short_noted = int(lifetime)
            effects.append(("note", "Adobe's access tokens live %d s: the agent asks for one at most every %d s "
                            "(Adobe's throttle), so there are gaps without a valid token"
                            % (int(lifetime), int(self.min_token_interval))))
        return effects

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
            if self.throttled == 0 and self.throttle_first is not None:
                w = self.throttle_first  # the streak's first retry (see 'Backoff policy')
            elif self.throttle_spread is not None:
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
            wait = min(self.holder_yield * (1.0 + self.random()) * left, left - self.expiry_margin)
            if wait > delay:
                delay = wait
                # Yielding leaves the queue: the retry starts a new 429 streak. Counting the hours spent
                # yielding as the streak's age made a 429 a minute before expiry draw a window of
                # 0.03 x hours and the token lapse (the outage under Adobe's one-time burst, issue 20).
                self.throttled = 0
        if err.retry_after is not None:
            # A floor, but capped (see 'Backoff policy'): before expiry with a token, backoff_cap without.
            if t is not None and t["expires_mono"] - now > self.expiry_margin:
                limit = max(1.0, t["expires_mono"] - self.expiry_margin - now)
            else:
                limit = self.backoff_cap
            delay = max(delay, min(float(err.retry_after), limit))
        return now + delay

    def _undocumented_streak(self, err: AgentError, now: float) -> bool:
        """Count undocumented answers; True when the streak calls for an operator (see 'Rules')."""
        if getattr(err, "undocumented", False) is True:
            if self.undocumented == 0:
                self.undocumented_since = now
            self.undocumented += 1
            return (self.undocumented >= self.undocumented_count
                    and now - self.undocumented_since >= self.undocumented_span)
        if getattr(err, "status", None) is not None:
            self.undocumented = 0  # a documented answer ends the streak; no answer (network) does not
        return False

    def _operator_wait(self, now: float) -> None:
        self.operator_wait = True
        self.due = now if self.retrigger else now + self.operator_retry
        self.retrigger = False

    def on_error(self, err: AgentError, now: float, wall: float) -> list:
        """A request failed. Decide: back off, re-register once, or wait for an operator."""
        endpoint = self.in_flight or "token"
        self._count(endpoint, err.code)
        if self._drop_stale(now):
            return []
        self.in_flight = None
        self.last_error = dict(err.to_dict(), endpoint=endpoint, at=wall)
        if self._undocumented_streak(err, now):
            self.throttled = 0
            minutes = (now - self.undocumented_since) / 60.0
            self.last_error = {
                "code": "upstream_undocumented", "kind": OPERATOR, "status": getattr(err, "status", None),
                "message": "Adobe Pass gave %d answers in a row over %.0f min that its documentation does not "
                           "describe; the last: %s" % (self.undocumented, minutes, err.message),
                "hint": "something between the box and Adobe (proxy, captive portal, firewall) or a change at Adobe "
                        "answers instead of the DCR service: check [adobe] base_url and the network path; the agent "
                        "retries hourly, or at once on `pass-agent refresh`",
                "endpoint": endpoint, "at": wall}
            self._fire(ERR_OPERATOR, now)
            self._operator_wait(now)
            t = self.tok
            if t is not None and now < t["expires_mono"] - 2 * self.expiry_margin and self.due >= t["expires_mono"]:
                self.due = t["expires_mono"] - self.expiry_margin  # one try before the held token expires
            return []
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
            self._operator_wait(now)
            return []
        self.retrigger = False
        self._fire(ERR_RETRY, now)
        refresh = endpoint == "token" and not self.pending_register and not self.trigger_spent
        self.due = self._backoff(now, err, refresh)
        # A held token stays served; if the backoff ends after it expires, try once shortly before.
        # (Only once: from two margins before expiry on, the plain backoff applies, so it cannot loop.)
        t = self.tok
        if t is not None and now < t["expires_mono"] - 2 * self.expiry_margin and self.due >= t["expires_mono"]:
            self.due = t["expires_mono"] - self.expiry_margin
        return []

    # ----------------------------------------------------------------- callers
    def token(self, now: float, min_ttl: float = 0.0) -> dict | None:
        """The held token if it has more than min_ttl seconds left; else None and a fetch is scheduled.
        Raises AgentError(min_ttl_unsatisfiable) when min_ttl is at least the lifetime of Adobe's tokens."""
        t = self.tok
        if t is not None and t["expires_mono"] - now > max(min_ttl, 0.0):
            return t
        if t is not None and min_ttl >= t["expires_in"]:
            raise AgentError("min_ttl %g s can never be satisfied: Adobe's access tokens live %d s "
                             "(expires_in of the last token)" % (min_ttl, t["expires_in"]),
                             code="min_ttl_unsatisfiable", kind=OPERATOR,
                             hint="ask for a min_ttl below %d s, or none" % t["expires_in"])
        self.demand(now)
        return None

    def demand(self, now: float) -> None:
        """A caller wants a (fresher) token: move the due time to now (or to the end of the minimum
        interval between token requests) unless a request is in flight, the agent is backing off or
        waits for an operator (never shorten those)."""
        if self.in_flight or self.state == BACKING_OFF or (self.state == NEEDS_OPERATOR and self.operator_wait):
            return
        self._fire(NEED_TOKEN, now)
        when = now if self.client is None or self.pending_register else self._earliest_token(now)
        if self.due is None or self.due > when:
            self.due = when

    def report(self, status: int, decision: str, access_token: str | None, now: float, uid: int | None = None) -> dict:
        """A player's protected-API error, already classified by dcr.classify_protected_error.

        refresh: one refresh per token, only when the reported token is the current one (or none was
        given); rate-limited. reregister: only for the current token, one per token, limited per peer
        `uid` and overall (see 'Rules'). A report never shortens a backoff or an operator wait."""
        if decision in ("refresh", "reregister"):
            if self.tok is None:
                return {"decision": "ignored", "reason": "no token is held; one is being fetched"}
            if access_token and access_token != self.tok["access_token"]:
                return {"decision": "ignored", "reason": "the reported token is not the current one"}
        if decision == "refresh":
            if self.report_refresh_gen == self.token_generation:
                return {"decision": "ignored", "reason": "a refresh for this token was already requested"}
            if now - self.last_report["refresh"] < self.refresh_report_interval:
                return {"decision": "rate_limited", "reason": "a refresh for a report happened just now"}
            self.last_report["refresh"] = now
            self.report_refresh_gen = self.token_generation
            if not self.in_flight and self.state not in (BACKING_OFF, NEEDS_OPERATOR):
                self._fire(NEED_TOKEN, now)
                self.due = self._earliest_token(now)
            return {"decision": "refresh", "reason": "token rejected by a protected API"}
        if decision == "reregister":
            if self.report_register_gen == self.token_generation or self.pending_register:
                return {"decision": "ignored", "reason": "a re-registration for this token was already requested"}
            last = self.report_uids.get(uid)
            if last is not None and now - last < self.register_report_uid_interval:
                return {"decision": "rate_limited", "reason": "uid %s already triggered a re-registration %d min ago"
                        % ("unknown" if uid is None else uid, (now - last) // 60)}
            if now - self.last_report["reregister"] < self.register_report_interval:
                return {"decision": "rate_limited", "reason": "a re-registration for a report happened recently"}
            self.report_times = [x for x in self.report_times if now - x < 86400.0]
            if len(self.report_times) >= self.register_report_daily:
                return {"decision": "rate_limited",
                        "reason": "%d re-registrations for reports in 24 h already" % len(self.report_times)}
            self.last_report["reregister"] = now
            self.report_register_gen = self.token_generation
            self.report_times.append(now)
            if len(self.report_uids) >= 256:  # bounded: forget peers whose limit has run out, else the oldest
                self.report_uids = {u: x for u, x in self.report_uids.items()
                                    if now - x < self.register_report_uid_interval}
                while len(self.report_uids) >= 256:
                    del self.report_uids[min(self.report_uids, key=self.report_uids.__getitem__)]
            self.report_uids[uid] = now
            self.need_register(now, shorten=False)
            return {"decision": "reregister", "reason": "the credentials were rejected by a protected API"}
        return {"decision": "ignored", "reason": "not about the agent's credentials"}

    def need_register(self, now: float, shorten: bool = True) -> None:
        """A new registration trigger (statement for another application, forced, reported). The old
        credentials and token keep serving until the new ones arrive. `shorten`: may cut a
        backoff/operator wait (statement change, operator) or not (player report)."""
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

    def statement_changed(self, statement_app: str | None, statement_hash: str | None, now: float,
                          problem: dict | None = None) -> bool:
        """The statement file on disk now names `statement_app` ("iss|sub"; None: unusable, `problem`
        says why) and hashes to `statement_hash`. True if that triggers a registration (it names an
        application other than the one the current client was registered for)."""
        if statement_app is None:
            self.statement_app, self.statement_hash = None, statement_hash
            self.statement_problem = dict(problem or {"code": "statement_invalid", "kind": OPERATOR,
                                                      "message": "the software statement is unusable",
                                                      "hint": _STATEMENT_HINT})
            self.last_error = self.statement_problem
            self._fire(STATEMENT_BAD, now)
            if not self.in_flight and (self.client is None or self.pending_register):
                self.operator_wait = True  # nothing to do until the file is fixed
                self.due = None
            return False
        old_app = self.statement_app
        same_file = statement_app == old_app and statement_hash == self.statement_hash
        self.statement_app, self.statement_hash = statement_app, statement_hash
        if self.statement_problem is not None:
            self.statement_problem = None
            if self.last_error is not None and self.last_error.get("code", "").startswith("statement_"):
                self.last_error = None
            if self.state == NEEDS_OPERATOR and not self.operator_wait:
                self._fire(STATEMENT_OK, now)
            if not self.in_flight and (self.client is None or self.pending_register):
                same_file = False  # the registration it blocked can happen now
        if self.client is not None and self.client_statement_app is None:
            # Credentials from a store older than identities, loaded while the file was unusable:
            # adopted now, as load() would have (see 'Rules').
            self.client_statement_app = statement_app
        if same_file:
            return False
        if (self.client is not None and self.client_statement_app is not None
                and statement_app != self.client_statement_app) or \
                (self.in_flight == "register" and old_app is not None and statement_app != old_app):
            self.need_register(now)  # in flight: on_registered compares again
            return True
        # Same application, new file: no registration of its own, but a pending registration or an
        # operator wait (Adobe refused the old statement) may be fixed by it: try at once.
        if self.in_flight:
            self.retrigger = True
        elif self.client is None or self.pending_register or self.state == NEEDS_OPERATOR:
            self.attempts = 0
            self.operator_wait = False
            self.due = now
        return False

    def forget(self, now: float) -> None:
        """Credentials were wiped by an operator. The outcome of a request in flight will be ignored."""
        self._fire(FORGET, now)
        self.stale = self.in_flight is not None
        self.client = self.tok = None
        self.client_statement_app = self.registered_at = None
        self.pending_register = self.trigger_spent = False
        self.attempts = self.throttled = self.undocumented = 0
        self.window = 0.0
        self.due = now

    # ----------------------------------------------------------------- views
    def snapshot(self, now: float, wall: float) -> dict:
        """What the store persists (wall-clock times, since monotonic time does not survive a reboot).
        `statement_hash` (the file in use) stays for agents older than `statement_app`."""
        token = None
        if self.tok is not None:
            t = self.tok
            received_wall = t.get("received_wall", wall - (now - t["received_mono"]))
            token = {"access_token": t["access_token"], "token_type": t["token_type"],
                     "expires_in": t["expires_in"], "received_at": received_wall,
                     "expires_at": received_wall + t["expires_in"]}
        return {"client": self.client, "statement_app": self.client_statement_app,
                "statement_hash": self.statement_hash if self.client is not None else None,
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
            "statement_app": self.statement_app,
            "upstream": {k: dict(v) for k, v in self.counters.items()},
        }
