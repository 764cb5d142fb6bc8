"""Virtual-time driver for agent.lifecycle.Lifecycle, shared by the lifecycle tests.

`Box` owns one Lifecycle, a fake monotonic clock, a fake wall clock and a seeded random source.
`run_until(t)` jumps from one due time to the next (no real waiting), answers each request with
the `upstream(op, box)` function the test supplies, and records every request in `box.requests`
as (monotonic time, op, outcome code).
"""

from __future__ import annotations

import random
from typing import Callable

from agent import lifecycle
from agent.errors import OPERATOR, REREGISTER, RETRY, UpstreamError

STATEMENT_HASH = "a" * 64
APP = "auth.adobe.com|app-1"   # the registered application (iss|sub) the statement names


def client(n: int = 1) -> dict:
    return {"client_id": "client-%04d-0000-0000" % n, "client_secret": "secret-%04d" % n,
            "client_id_issued_at": 1.7e9, "redirect_uris": [], "grant_types": ["client_credentials"], "scopes": []}


def token(n: int = 1, expires_in: int = 21600, created_at: float | None = None) -> dict:
    return {"access_token": "token-%06d" % n, "token_type": "bearer", "expires_in": expires_in,
            "expires_in_assumed": False, "created_at": created_at, "id": "id-%d" % n}


def err(code: str, kind: str = RETRY, retry_after: float | None = None, status: int | None = None,
        undocumented: bool = False) -> UpstreamError:
    e = UpstreamError("test error %s" % code, code=code, kind=kind, retry_after=retry_after, status=status)
    if undocumented:  # how agent.dcr marks an answer Adobe's documentation does not describe
        e.undocumented = True
    return e


THROTTLED = lambda retry_after=None: err("throttled", RETRY, retry_after, 429)  # noqa: E731
SERVER_ERROR = lambda: err("server_error", RETRY, None, 503)  # noqa: E731
INVALID_CLIENT = lambda: err("invalid_client", REREGISTER, None, 400)  # noqa: E731
UNDOCUMENTED = lambda status=401: err("http_%d" % status, RETRY, None, status, True)  # noqa: E731
OPERATOR_ERR = lambda code="invalid_software_statement": err(code, OPERATOR, None, 400)  # noqa: E731


def healthy(op: str, box: Box):
    """Adobe working normally: every request succeeds."""
    box.issued += 1
    if op == "register":
        return client(box.issued)
    return token(box.issued, box.ttl)


class SimulationStuck(AssertionError):
    """The simulated lifecycle keeps acting without virtual time moving (a busy loop in the agent)."""


class Box:
    def __init__(self, upstream: Callable[[str, Box], object] = healthy, seed: int = 1, ttl: int = 21600,
                 latency: float = 0.0, stored: dict | None = None, statement_hash: str | None = STATEMENT_HASH,
                 app: str | None = APP, **kw) -> None:
        self.rng = random.Random(seed)
        self.lc = lifecycle.Lifecycle(random=self.rng.random, **kw)
        self.now = 1000.0            # monotonic: arbitrary origin
        self.wall_offset = 1.7e9     # wall = now + wall_offset; tests change it to jump the wall clock
        self.upstream = upstream
        self.ttl = ttl
        self.latency = latency
        self.issued = 0
        self.requests: list[tuple[float, str, str]] = []
        self.saves: list[dict] = []
        self.notes: list[str] = []
        self.effects(self.lc.load(stored, app, statement_hash, self.now, self.wall))

    @property
    def wall(self) -> float:
        return self.now + self.wall_offset

    def effects(self, effects: list) -> None:
        for kind, arg in effects:
            if kind == "save":
                self.saves.append(arg)
            elif kind == "note":
                self.notes.append(arg)

    def step(self) -> bool:
        """Perform the request due now, if any. True if one was performed."""
        req = self.lc.poll(self.now)
        if req is None:
            return False
        op = req["op"]
        self.now += self.latency
        outcome = self.upstream(op, self)
        if isinstance(outcome, UpstreamError):
            self.requests.append((self.now, op, outcome.code))
            self.lc.on_error(outcome, self.now, self.wall)
        elif op == "register":
            self.requests.append((self.now, op, "ok"))
            self.effects(self.lc.on_registered(outcome, self.lc.statement_app, self.now, self.wall))
        else:
            self.requests.append((self.now, op, "ok"))
            self.effects(self.lc.on_token(outcome, self.now, self.wall))
        return True

    # Bounds on one run_until (issue 21): a lifecycle that asks again at the same virtual instant for
    # ever (e.g. re-registering at once on every invalid_client) fails the test with the requests it
    # made, instead of spinning until someone kills the run.
    MAX_SAME_INSTANT = 1000     # requests/polls without virtual time moving
    MAX_STEPS = 2_000_000       # steps in one run_until, whatever the time

    def run_until(self, t: float, check: Callable[[Box], None] | None = None) -> None:
        """Advance virtual time to `t`, performing every request that falls due on the way.
        Raises SimulationStuck when the lifecycle stops letting virtual time advance."""
        steps = same = 0
        last = self.now
        while True:
            self.step()
            d = self.lc.next_deadline()
            if d is None or d > t:
                self.now = max(self.now, t)
                return
            self.now = max(self.now, d)
            steps += 1
            same = same + 1 if self.now == last else 0
            last = self.now
            if same >= self.MAX_SAME_INSTANT or steps >= self.MAX_STEPS:
                raise SimulationStuck(
                    "lifecycle simulation stuck at t=%.3f after %d steps (%d at this instant, state %s); last "
                    "requests: %r" % (self.now, steps, same, self.lc.state, self.requests[-5:]))
            if check is not None:
                check(self)

    def run_for(self, seconds: float, check: Callable[[Box], None] | None = None) -> None:
        self.run_until(self.now + seconds, check)

    def ops(self, op: str | None = None, outcome: str | None = None) -> list[tuple[float, str, str]]:
        return [r for r in self.requests if (op is None or r[1] == op) and (outcome is None or r[2] == outcome)]

    def gaps(self) -> list[float]:
        times = [r[0] for r in self.requests]
        return [b - a for a, b in zip(times, times[1:])]
