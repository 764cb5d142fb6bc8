"""Upstream governor: the one budget every request from this box to Adobe Pass goes through.

Read this header first. Adobe throttles per public address (reference section 6): 1 request/s
after a one-time burst of 10, shared by every application's DCR requests (register, token) and,
later, the REST gateway's API v2 calls (section 8). Applications that each spend the budget on
their own collide in 429s; this module is the single gate they all pass. It decides *whether and
when* a request may leave the box; agent/lifecycle.py still decides *what* each application
needs and when it wants it. Sans-I/O like the lifecycle: time comes in as arguments (`now`,
monotonic seconds that count suspend, the same clock the lifecycle gets), randomness from the
injected `random`. Must never: do I/O, read a clock, start threads, grant a request Adobe's bucket
(as modelled below) would refuse, or hold more waiters than its bounds.

Theory of operation
-------------------
A shell (the service, tools/fleetsim.py) asks before every upstream request:
- `request(key, cls, now)` -- queuing mode, for DCR requests (one key per application; the
  lifecycle is single-flight, so an application waits for at most one request). Granted at once
  when the key is first in line and the budget allows; else the key waits and the answer says
  when its turn is expected. The shell then wakes at `next_grant_time()` and calls
  `take_grants(now)`, which hands out the budget to waiters in priority order.
- `try_acquire(now, cls)` -- non-queuing mode, for the REST gateway: granted now, or refused at
  once with the time to retry (the gateway answers 429 with a Retry-After); nothing is held.
- `withdraw(key)` -- the application no longer wants its queued request.
- `on_throttled(now, window, retry_after, ticket)` -- Adobe answered 429 to any granted request:
  the budget is empty and EVERY application pauses (below).
- `retune(rate, burst, initial, slack, pause_cap)` -- new settings ([upstream] on SIGHUP) for the
  same budget: queued keys keep their place, a pause in force stays, and a burst the address has
  spent is never assumed back (a bigger burst after the first grant or 429 adds nothing, a smaller
  one caps what is left; before either, the model starts afresh from `initial`).
A grant that the shell does not use is lost (never returned): returning it could only overstate
the bucket, which the rule "never exceed Adobe's bucket" forbids.

The bucket model (conservative: Adobe's bucket as the emulator implements it)
- Adobe's burst is a one-time allowance: the bucket starts with `burst` tokens, refills at
  `rate` per second but only up to ONE token, and the unused rest of the burst is kept but never
  topped up (agent/emulator/throttle.py, default). An idle box therefore does NOT get its burst
  back: after 10 requests, the 11th, 12th... are 1/rate apart, however long the box was idle.
  Modelled exactly: `extra` = burst tokens left above the steady one (spent first, as Adobe's
  bucket does: it refills only below one token), `next_at` = when the steady token is back.
- `initial` (default `burst`): the tokens assumed at the first request. Adobe gives the burst on
  the first interaction of an address, and a box powering on after a power cut is the case that
  needs it: six applications get their first tokens in 2.5 s instead of 12 s. If the address had
  already spent it (an earlier boot, another box behind the NAT), the first 429 says so and the
  model drops to an empty bucket for good: at most one burst's worth of refusals per process.
  Pass initial=1 to assume nothing.
- `slack` (default 0.1 s): grants travel to Adobe with different delays. Two grants 1/rate apart
  can arrive 1/rate - jitter apart, and a bucket that refills only to one token refuses the
  second. So after the burst each grant waits 1/rate + slack after the previous one: with
  arrival jitter up to `slack` Adobe still sees 1/rate between requests (tests replay grants
  with random delays through the emulator's Throttle: no refusals).
- A 429 proves the real bucket is empty (other boxes behind the NAT, an earlier process): the
  model forgets the rest of the burst and waits 1/rate from the 429's answer, WITHOUT the slack.
  The refused request reached Adobe before its answer came back, and the bucket was empty then,
  so whoever took the last token took it earlier still: it is back by one refill after the
  refused arrival, before any request sent 1/rate after the answer can arrive, whatever its
  delay. The slack only guards the spacing of two ADMITTED grants of this box (next_at keeps
  that). Paying it after every 429 made each retry 1.1 s instead of 1 s after its answer; with
  13-20 boxes per address, where every box retries about once a refill until the last is
  served, that cost 1.28-1.31x the floor instead of 1.19-1.22x (tools/fleetsim.py, issue 20).

Pause (a 429 for one application pauses all of them)
- Adobe's 429 means "this address is busy"; every application shares that address, so none may
  send until the pause ends: now + max(1/rate, window x U(0, 1)), where `window` is the throttled
  application's lifecycle throttle window (a fraction of its 429 streak: the elapsed-time rule of
  agent/lifecycle.py, "Backoff policy"). A box with six applications in a crowd thereby probes the
  address about once per draw, like a box with one, instead of six times (fleet simulation, 100
  boxes x 6 applications per address, same lifecycle settings: 28 requests per application
  instead of 73 with a pause of one refill only, for a last token 3 % later).
  Not the application's next due time: after a refused refresh the lifecycle yields for hours,
  and the other applications must not wait for that. A Retry-After is a floor on the pause,
  capped at `pause_cap` (a proxy's `Retry-After: 86400` must not silence every application for a
  day). docs/FLEET.md measures the window a governed lifecycle should use (Adobe's bucket keeps
  no idle second, so the default 0.25 x streak, at least 3 s, leaves it idle in the tail).
- Requests granted before the pause began may still come back 429 (they were in flight
  together): they reset the model but do not draw a new pause (`ticket` tells them apart), else
  six concurrent refusals would pause the box for the longest of six draws.

Priority (lower class number first; within a class, round robin: first come, first served by the
time a key joined the line, and a key served joins again at the back)
- FETCH (0): a token request for an application with credentials but no valid token. One
  request from a token the players can use: each grant makes an application ready.
- REGISTER (1): a registration for an application without a valid token. Two requests from a
  usable token; after FETCH so that a registered application finishes before another starts
  (every grant then completes an application as early as possible, and fewer applications still
  need two requests when the budget runs dry -- the lifecycle's `token_spread` lesson). Measured
  (tools/fleetsim.py, 10 and 100 boxes x 6 applications per address): the same time until the
  last token, and the mean wait for a first token 63 s instead of 78 s, 717 s instead of 863 s.
- REFRESH (2): anything for an application that still holds a valid token (a refresh, or a
  re-registration while the old token serves). Nobody waits for it; the lifecycle refreshes at
  ~80 % of the lifetime and retries before expiry.
- GATEWAY (3): the REST gateway's calls. Last, because they are unbounded (players poll) while
  DCR requests are bounded (single-flight per application, a token at most every 30 s): at most
  one request per application can go ahead of a gateway call, and no player can starve a refresh
  into an expiry. A REST call needs a token anyway, so first tokens going first costs it nothing.
  The shell chooses the class (`dcr_class` for DCR requests).

Bounds: at most `max_waiters` queued keys of the DCR classes (one per application) and
`gateway_waiters` queued gateway keys; a request beyond them is refused like a try (not queued,
with a retry time). Counters are integers. Nothing grows with time or traffic.

States (derived from the fields, not stored; the table says what each event does in each)
| state     | when                          | request / take_grants   | try_acquire    | on_throttled       |
|-----------|-------------------------------|-------------------------|----------------|--------------------|
| burst     | extra > 0, not paused         | grant, extra -= 1       | grant if first | -> paused, extra=0 |
| steady    | extra = 0, now >= next_at     | grant, next_at = now+s  | grant if first | -> paused          |
| pacing    | extra = 0, now < next_at      | queue (wait next_at)    | refuse         | -> paused          |
| paused    | now < paused_until            | queue (wait the pause)  | refuse         | stale: model only  |
(s = 1/rate + slack; "first": no queued waiter of the same or a better class.)
"""

from __future__ import annotations

import random as _random
from typing import Callable

from agent.errors import OPERATOR, AgentError

FETCH, REGISTER, REFRESH, GATEWAY = 0, 1, 2, 3
CLASS_NAMES = ("fetch", "register", "refresh", "gateway")
_EPS = 1e-6  # a grant time computed in floating point lands this much after the refill, never before


def dcr_class(op: str, holds_token: bool) -> int:
    """The priority class of a DCR request: `op` is the lifecycle's "register" or "token";
    `holds_token`: the application holds a valid token now (see 'Priority')."""
    if holds_token:
        return REFRESH
    return REGISTER if op == "register" else FETCH


class GovernorError(AgentError):
    """The governor was configured or called wrongly (a bug in the shell or a bad setting)."""

    code = "governor_invalid"
    kind = OPERATOR


def _check(rate: float, burst: int, initial: int | None, slack: float, pause_cap: float, max_waiters: int,
           gateway_waiters: int) -> None:
    """Raise GovernorError naming every wrong setting (the constructor's and retune's)."""
    problems = []
    if not (isinstance(rate, (int, float)) and rate > 0):
        problems.append("rate must be > 0 requests per second (got %r)" % (rate,))
    if not (isinstance(burst, int) and burst >= 1):
        problems.append("burst must be an integer >= 1 (got %r)" % (burst,))
    if initial is not None and not (isinstance(initial, int) and isinstance(burst, int) and 1 <= initial <= burst):
        problems.append("initial must be an integer between 1 and burst (got %r)" % (initial,))
    if not (isinstance(slack, (int, float)) and 0 <= slack <= 10):
        problems.append("slack must be between 0 and 10 seconds (got %r)" % (slack,))
    if not (isinstance(pause_cap, (int, float)) and pause_cap >= 1):
        problems.append("pause_cap must be >= 1 second (got %r)" % (pause_cap,))
    for name, v in (("max_waiters", max_waiters), ("gateway_waiters", gateway_waiters)):
        if not (isinstance(v, int) and v >= 0):
            problems.append("%s must be an integer >= 0 (got %r)" % (name, v))
    if problems:
        raise GovernorError("upstream governor: " + "; ".join(problems),
                            hint="fix the [upstream] settings (Adobe's documented budget is rate 1, burst 10)")


class Decision:
    """The governor's answer. granted: go now (`ticket` identifies the grant for on_throttled).
    Otherwise `at` is when a grant is expected if nothing changes (queued) or when to try again
    (not queued: try mode, or the line is full)."""

    __slots__ = ("granted", "at", "queued", "ticket")

    def __init__(self, granted: bool, at: float, queued: bool = False, ticket: int | None = None) -> None:
        self.granted, self.at, self.queued, self.ticket = granted, at, queued, ticket

    def __repr__(self) -> str:
        return "Decision(granted=%r, at=%r, queued=%r, ticket=%r)" % (self.granted, self.at, self.queued, self.ticket)


class Governor:
    """One box's upstream budget. Not thread-safe: the shell serialises calls."""

    def __init__(self, *, rate: float = 1.0, burst: int = 10, initial: int | None = None, slack: float = 0.1,
                 pause_cap: float = 300.0, max_waiters: int = 64, gateway_waiters: int = 16,
                 random: Callable[[], float] | None = None) -> None:
        _check(rate, burst, initial, slack, pause_cap, max_waiters, gateway_waiters)
        self.rate = float(rate)
        self.burst = burst
        self.step = 1.0 / self.rate + float(slack)   # spacing of grants once the burst is spent
        self.slack = float(slack)
        self.pause_cap = float(pause_cap)
        self.max_waiters = max_waiters
        self.gateway_waiters = gateway_waiters
        self.random = random or _random.random
        start = burst if initial is None else initial
        self.extra = start - 1                  # one-time burst tokens left above the steady one
        self.next_at = float("-inf")            # when the steady token is back (<= now: available)
        self.paused_until = float("-inf")
        self.pause_ticket = 0                   # tickets up to this one were granted before the pause
        self.tickets = 0                        # grants so far (ticket numbers)
        self.throttled = 0                      # 429s reported
        self.pauses = 0                         # pauses drawn
        self.refused = 0                        # try/full-line refusals
        self._seq = 0
        self._waiting: dict[str, tuple[int, int]] = {}  # key -> (class, seq): the line
        self._gateway = 0                       # queued gateway keys

    def retune(self, *, rate: float = 1.0, burst: int = 10, initial: int | None = None, slack: float = 0.1,
               pause_cap: float = 300.0) -> None:
        """New settings for this budget (see 'Theory of operation'). Raises GovernorError, changing
        nothing, when a setting is wrong. The next steady grant moves to the last one + the new
        spacing when that is later, never earlier (a lower rate applies from the next grant on)."""
        _check(rate, burst, initial, slack, pause_cap, self.max_waiters, self.gateway_waiters)
        step = 1.0 / float(rate) + float(slack)
        if self.next_at != float("-inf"):  # next_at = the last steady grant + step + _EPS
            self.next_at = max(self.next_at, self.next_at - self.step + step)
        self.rate = float(rate)
        self.step = step
        self.slack = float(slack)
        self.pause_cap = float(pause_cap)
        self.burst = burst
        if self.tickets == 0 and self.throttled == 0:   # nothing sent yet: assume afresh
            self.extra = (burst if initial is None else initial) - 1
        else:                                           # never assume back what the address spent
            self.extra = min(self.extra, burst - 1)

    # ----------------------------------------------------------------- the bucket
    def _bucket_at(self) -> float:
        """Earliest time the bucket alone allows a grant."""
        return float("-inf") if self.extra > 0 else self.next_at

    def _open_at(self) -> float:
        return max(self.paused_until, self._bucket_at())

    def _take(self, now: float) -> Decision:
        if self.extra > 0:
            self.extra -= 1
        else:
            self.next_at = now + self.step + _EPS
        self.tickets += 1
        return Decision(True, now, ticket=self.tickets)

    def _projected(self, k: int, now: float) -> float:
        """When the k-th grant from now (0: the next) happens if demand is continuous."""
        t = max(now, self.paused_until)
        extra, nxt = self.extra, self.next_at
        for _ in range(k + 1):
            if extra > 0:
                extra -= 1
            else:
                t = max(t, nxt)
                nxt = t + self.step + _EPS
        return t

    # ----------------------------------------------------------------- the line
    def _ahead(self, key: str | None, cls: int, seq: int | None) -> int:
        """Queued keys that go before (cls, seq); seq None: before any newcomer of class cls."""
        n = 0
        for k, (c, s) in self._waiting.items():
            if k != key and (c < cls or (c == cls and (seq is None or s < seq))):
                n += 1
        return n

    def _best(self) -> str | None:
        best, bkey = None, None
        for k, v in self._waiting.items():
            if best is None or v < best:
                best, bkey = v, k
        return bkey

    def request(self, key: str, cls: int, now: float) -> Decision:
        """Queuing mode: grant now if `key` is first in line and the budget allows, else queue it.
        Asking again while queued keeps the key's place (its class may change)."""
        if cls not in (FETCH, REGISTER, REFRESH, GATEWAY):
            raise GovernorError("upstream governor: unknown priority class %r" % (cls,),
                                hint="use governor.FETCH, REGISTER, REFRESH or GATEWAY")
        old = self._waiting.get(key)
        if old is None:
            full = (self._gateway >= self.gateway_waiters if cls == GATEWAY
                    else len(self._waiting) - self._gateway >= self.max_waiters)
            if full:
                self.refused += 1
                return Decision(False, self._projected(self._ahead(None, cls, None), now))
            self._seq += 1
            seq = self._seq
            self._gateway += cls == GATEWAY
        else:
            seq = old[1]
            self._gateway += (cls == GATEWAY) - (old[0] == GATEWAY)
        self._waiting[key] = (cls, seq)
        ahead = self._ahead(key, cls, seq)
        if ahead == 0 and now >= self._open_at():
            self._remove(key)
            return self._take(now)
        return Decision(False, self._projected(ahead, now), queued=True)

    def _remove(self, key: str) -> None:
        cls, _ = self._waiting.pop(key)
        self._gateway -= cls == GATEWAY

    def withdraw(self, key: str) -> bool:
        """`key` no longer wants its queued request. True if it was queued."""
        if key not in self._waiting:
            return False
        self._remove(key)
        return True

    def take_grants(self, now: float) -> list[tuple[str, Decision]]:
        """Hand out what the budget allows now to the queued keys, best first."""
        out = []
        while self._waiting and now >= self._open_at():
            key = self._best()
            self._remove(key)
            out.append((key, self._take(now)))
        return out

    def next_grant_time(self, now: float) -> float | None:
        """When take_grants will next grant something (may be <= now), or None: nobody waits."""
        if not self._waiting:
            return None
        return self._open_at()

    def try_acquire(self, now: float, cls: int = GATEWAY) -> Decision:
        """Non-queuing mode: granted now, or refused with the time to retry; nothing is held.
        Queued keys of the same or a better class go first."""
        ahead = self._ahead(None, cls, None)
        if ahead == 0 and now >= self._open_at():
            return self._take(now)
        self.refused += 1
        return Decision(False, self._projected(ahead, now))

    # ----------------------------------------------------------------- Adobe's answers
    def on_throttled(self, now: float, window: float | None = None, retry_after: float | None = None,
                     ticket: int | None = None) -> float:
        """Adobe answered 429 to the grant `ticket` (None: unknown, treated as current). Empties the
        model and pauses every application (see 'Pause'). `window`: the throttled application's
        lifecycle throttle window (s). Returns the end of the pause."""
        self.throttled += 1
        self.extra = 0
        # One refill from the answer, no slack: the bucket was empty when the refused request arrived,
        # before `now`, so it holds a token again by now + 1/rate (see 'The bucket model').
        self.next_at = max(self.next_at, now + 1.0 / self.rate + _EPS)
        floor = now + min(float(retry_after), self.pause_cap) if retry_after is not None else now
        stale = ticket is not None and ticket <= self.pause_ticket and self.paused_until > now
        if not stale:
            draw = (float(window) * self.random()) if window else 0.0
            self.paused_until = now + min(self.pause_cap, max(1.0 / self.rate, draw))
            self.pause_ticket = self.tickets
            self.pauses += 1
        self.paused_until = max(self.paused_until, floor)
        return self.paused_until

    # ----------------------------------------------------------------- views
    def waiting(self) -> int:
        return len(self._waiting)

    def view(self, now: float) -> dict:
        """Secret-free summary for status displays."""
        by_class = {name: 0 for name in CLASS_NAMES}
        for c, _ in self._waiting.values():
            by_class[CLASS_NAMES[c]] += 1
        steady = 1.0 if now >= self.next_at else max(0.0, 1.0 - (self.next_at - now) / self.step)
        return {"tokens": round(self.extra + steady, 3), "paused_for": max(0.0, self.paused_until - now),
                "waiting": by_class, "granted": self.tickets, "throttled": self.throttled, "pauses": self.pauses,
                "refused": self.refused, "rate": self.rate, "burst": self.burst}
