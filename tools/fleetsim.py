"""Fleet simulation: thousands of boxes behind carrier NATs against Adobe's throttle, in virtual time.

Drives the REAL credential lifecycle (agent.lifecycle.Lifecycle, one per device) and the real DCR
response parsers (agent.dcr) through a discrete-event simulation (a heap of events, no time steps)
against a model of Adobe Pass: a token bucket per public address (1 request/s, burst of 10,
refused requests answered 429 with an HTML body and no Retry-After, refusals take no token) and a
round-trip latency drawn per request. Every scenario uses the emulator's Throttle, whose burst is
Adobe's one-time allowance (issue 20; --bucket refill: the bucket that refills up to the burst, the
model of the figures before it, for comparison; docs/FLEET.md, "Model"). The agent is the lifecycle
behind one governor per box, as agent/service.py runs it. Compares, in the same run, the agent with a naive
client (fixed 1 s retries, no jitter) and with the floor (the best schedule the throttle allows).

Scenarios (docs/FLEET.md explains each and the figures):
  city        the whole city powers on at once: fresh boxes, each needs register + token;
              run for several devices-per-address ratios (1, 10, 100, 1000 by default)
  outage      boxes hold tokens of random age; Adobe answers 503 for 2 hours, then recovers
  revocation  Adobe revokes the software statement (and its clients); an hour later a new
              statement is rolled out to every box at once
  apps        the city power cut for boxes with several applications (1, 3, 6 by default), each
              box's applications behind one agent.governor.Governor (issue 16), compared with one
              agent per application ("ungoverned")

Addresses never share state (the throttle is per address), so each address is simulated on its
own and the results are summed: memory stays small for 100,000 devices. The naive client is
simulated for a sample of addresses (it makes millions of requests) and scaled; the table says so.

Usage: python -m tools.fleetsim [--scenario city|outage|revocation|apps|all] [--devices N]
         [--other-devices N] [--ratios 1,10,100,1000] [--ratio R] [--apps 1,3,6] [--app-ratios 1,10,100]
         [--app-boxes N] [--json FILE] [--svg FILE] [--svg-apps FILE] [--seed S] [--naive-sample K]
         [--policy JSON] [--governor JSON] [--bucket one-time|refill] [--search FILE]
Must never: re-implement the agent's policy (the agent column is agent.lifecycle itself), or
use wall-clock time.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
import time
from typing import Any, Callable

from agent import dcr, governor, lifecycle
from agent.emulator.throttle import Throttle
from agent.errors import AgentError

RATE, BURST = 1.0, 10          # Adobe's documented throttle, per public address
TTL = 21600                    # access token lifetime (s), as in Adobe's current samples
RTT = (0.05, 0.25)             # round-trip time to Adobe, uniform (s)
WALL0 = 1.7e9                  # wall clock at virtual time 0
HTML_429 = b"<html><head><title>429 Too Many Requests</title></head><body>429</body></html>"
OLD, NEW = "statement-old", "statement-new"

WAKE, ARRIVE, ANSWER, GLOBAL, MARK, GOV = 0, 1, 2, 3, 4, 5
# Adobe's bucket in every scenario (--bucket): "one-time" is Adobe's documented throttle (reference
# section 6, agent/emulator/throttle.Throttle's default: the burst of 10 is a one-time allowance, the
# bucket refills only up to one token, so an idle second is lost for good); "refill" is the classic
# bucket that refills up to the burst, the model the figures before issue 20 were tuned with, kept
# for comparison only (it is easier than Adobe's: idle seconds are banked, up to ten).
BUCKETS = ("one-time", "refill")
BUCKET = ["one-time"]
POLICY: dict = {}              # Lifecycle keyword overrides (--policy), for experiments only
GOVERNOR: dict = {}            # Governor keyword overrides (--governor), for experiments only
# Lifecycle overrides for governed boxes: none since issue 20. The issue 16 proposal (0.05 x the
# streak, at least 1.2 s) is superseded by the lifecycle's defaults (0.04, 1.25 s), which every box uses
# behind its governor; docs/FLEET.md ("Issue 20") gives the search that chose them.
GOVERNED_POLICY: dict = {}


# ------------------------------------------------------------------------------------ clients

class AgentClient:
    """One box running the real lifecycle. The driver calls poll/outcome; this only adapts."""

    kind = "agent"

    def __init__(self, rnd: Callable[[], float], stored: dict | None, statement: str, now: float,
                 policy: dict | None = None) -> None:
        self.lc = lifecycle.Lifecycle(random=rnd, **(POLICY if policy is None else policy))
        self.statement = statement
        # A rolled-out statement is modelled as naming another registered application (identity
        # = the statement's name), the case where the agent must register again.
        self.lc.load(stored, statement, statement, now, now + WALL0)

    def poll(self, now: float) -> str | None:
        req = self.lc.poll(now)
        return req["op"] if req else None

    def next_deadline(self) -> float | None:
        return self.lc.next_deadline()

    def next_op(self) -> str:
        """What poll() will start when due (the governor classes the request before it starts)."""
        return "register" if self.lc.client is None or self.lc.pending_register else "token"

    def ok(self, op: str, result: dict, now: float) -> None:
        if op == "register":
            self.lc.on_registered(result, self.statement, now, now + WALL0)
        else:
            self.lc.on_token(result, now, now + WALL0)

    def error(self, err: AgentError, now: float) -> None:
        self.lc.on_error(err, now, now + WALL0)

    def statement_changed(self, statement: str, now: float) -> None:
        self.statement = statement
        self.lc.statement_changed(statement, statement, now)

    def token_expiry(self, now: float) -> float | None:
        t = self.lc.tok
        return t["expires_mono"] if t is not None and t["expires_mono"] > now else None

    @property
    def client_statement(self) -> str | None:
        return self.lc.client_statement_app if self.lc.client else None


class NaiveClient:
    """The baseline: register, fetch, refresh at 80 %, and retry every failure after exactly 1 s."""

    kind = "naive"

    def __init__(self, rnd: Callable[[], float], stored: dict | None, statement: str, now: float) -> None:
        self.statement = statement
        self.client_statement: str | None = None
        self.client = None
        self.expires = None
        self.due: float | None = now
        self.busy = False
        self.want_register = True
        if stored and stored.get("client"):
            self.client, self.client_statement, self.want_register = stored["client"], stored["statement_app"], False
            t = stored.get("token")
            if t:
                age = now + WALL0 - t["received_at"]
                self.expires = now + t["expires_in"] - age
                self.due = now + max(0.0, 0.8 * t["expires_in"] - age)

    def poll(self, now: float) -> str | None:
        if self.busy or self.due is None or now < self.due:
            return None
        self.busy = True
        return "register" if self.want_register else "token"

    def next_deadline(self) -> float | None:
        return None if self.busy else self.due

    def ok(self, op: str, result: dict, now: float) -> None:
        self.busy = False
        if op == "register":
            self.client, self.client_statement, self.want_register, self.due = result, self.statement, False, now
        else:
            self.expires = now + result["expires_in"]
            self.due = now + 0.8 * result["expires_in"]

    def error(self, err: AgentError, now: float) -> None:
        self.busy = False
        if err.code == "invalid_client":
            self.want_register = True
        self.due = now + 1.0

    def statement_changed(self, statement: str, now: float) -> None:
        self.statement, self.want_register = statement, True
        if not self.busy:
            self.due = now

    def token_expiry(self, now: float) -> float | None:
        return self.expires if self.expires is not None and self.expires > now else None


# ------------------------------------------------------------------------------------ scenarios

def scenario_city(n: int, ratio: int) -> dict:
    return {"name": "city", "ratio": ratio, "n": n, "t_ref": 0.0, "horizon": max(600.0, 8.0 * (2 * ratio - BURST)),
            "bucket": BUCKET[0], "stored": lambda rng: None, "start": lambda rng: 0.0,
            "down": None, "revoke_at": None, "rollout_at": None}


def scenario_apps(boxes: int, ratio: int, apps: int) -> dict:
    """City power cut with `apps` applications per box (issue 16): every application needs register +
    token; a box's applications go through one governor (agent.governor); Adobe's bucket is the
    emulator's (one-time burst). n counts applications; ratio counts boxes per address."""
    per = ratio * apps
    return {"name": "apps", "ratio": ratio, "apps": apps, "n": boxes * apps, "t_ref": 0.0,
            "horizon": max(600.0, 8.0 * (2 * per - BURST)), "bucket": BUCKET[0],
            "stored": lambda rng: None, "start": lambda rng: 0.0, "down": None, "revoke_at": None, "rollout_at": None}


def per_address(sc: dict) -> int:
    """Applications (lifecycles) behind one public address."""
    return sc["ratio"] * sc.get("apps", 1)


def _holding(rng: random.Random) -> dict:
    # A box that registered long ago and refreshes on schedule: its token's age is uniform over
    # the shortest refresh interval (0.7 of the lifetime), so no refresh is already overdue at 0.
    age = rng.random() * 0.7 * TTL
    return {"client": {"client_id": "c-%d" % rng.getrandbits(48), "client_secret": "s"},
            "statement_app": OLD, "statement_hash": OLD, "registered_at": WALL0 - 86400,
            "token": {"access_token": "t", "token_type": "bearer", "expires_in": TTL,
                      "received_at": WALL0 - age, "expires_at": WALL0 - age + TTL}}


def scenario_outage(n: int, ratio: int) -> dict:
    return {"name": "outage", "ratio": ratio, "n": n, "t_ref": 3 * 3600.0, "horizon": 6 * 3600.0,
            "bucket": BUCKET[0], "stored": _holding, "start": lambda rng: 0.0, "down": (3600.0, 3 * 3600.0),
            "revoke_at": None, "rollout_at": None}


def scenario_revocation(n: int, ratio: int) -> dict:
    return {"name": "revocation", "ratio": ratio, "n": n, "t_ref": 3600.0,
            "horizon": 3600.0 + max(1800.0, 8.0 * (2 * ratio - BURST)), "bucket": BUCKET[0],
            "stored": _holding, "start": lambda rng: 0.0, "down": None, "revoke_at": 0.0, "rollout_at": 3600.0}


# ------------------------------------------------------------------------------------ Adobe model

def make_bucket(sc: dict) -> Throttle:
    """Adobe's bucket for one address: the emulator's Throttle (one-time burst, Adobe's documented
    model) or, for comparison, the classic bucket that refills up to the burst (sc["bucket"])."""
    return Throttle(RATE, BURST, refill_burst=sc.get("bucket", "one-time") == "refill")


def bucket_tokens(bucket: Throttle, t: float) -> float:
    """The tokens the bucket would hold at `t` (a peek: nothing is taken or written)."""
    tokens, last = bucket._buckets.get("address", (float(BURST), t))
    ceiling = float(BURST) if bucket.refill_burst else 1.0
    return min(ceiling, tokens + max(0.0, t - last) * RATE) if tokens < ceiling else tokens


def _answer(op: str, client: Any, statement: str, t: float, sc: dict, bucket: Throttle, counter: list
            ) -> tuple[int, dict, bytes]:
    """What Adobe answers a request arriving at `t` (`bucket`: make_bucket's Throttle for the address)."""
    down = sc["down"]
    if down and down[0] <= t < down[1]:
        return 503, {"Content-Type": "text/html"}, b"<html>503 Service Unavailable</html>"
    if not bucket.take("address", t)[0]:
        return 429, {"Content-Type": "text/html"}, HTML_429
    revoked = sc["revoke_at"] is not None and t >= sc["revoke_at"]
    counter[0] += 1
    if op == "register":
        if revoked and statement == OLD:
            return 400, {}, b'{"error": "invalid_software_statement"}'
        body = {"client_id": "c-%d" % counter[0], "client_secret": "s-%d" % counter[0],
                "client_id_issued_at": int((t + WALL0) * 1000), "grant_types": ["client_credentials"]}
        return 201, {}, json.dumps(body).encode()
    if revoked and client.client_statement == OLD:
        return 400, {}, b'{"error": "invalid_client"}'
    body = {"access_token": "tok-%d" % counter[0], "token_type": "bearer", "expires_in": TTL,
            "created_at": int((t + WALL0) * 1000), "id": "id-%d" % counter[0]}
    return 201, {}, json.dumps(body).encode()


# ------------------------------------------------------------------------------------ driver

class Totals:
    """Sums over addresses: requests by second, outcomes, holding-interval deltas, token times."""

    def __init__(self, horizon: float) -> None:
        self.bins = [0] * (int(horizon) + 2)
        self.throttled = 0
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.delta: dict[int, int] = {}        # second -> change in devices holding a token
        self.ready_times: list[float] = []     # per device: first token that counts for the scenario
        self.devices = 0
        self.needing = 0                       # outage: devices without a token at recovery
        self.recovery: list[tuple[int, list[float], float]] = []  # outage, per address: (lacking, holders'
        #                                                    expiries, bucket tokens at the recovery)
        self.ref_tokens: list[float] = []      # outage/revocation, per address: bucket tokens at t_ref
        self.down_requests = [0, 0]            # outage: 503 answers to boxes [without, with] a valid token
        self.after_ref = [0, 0]                # requests at/after t_ref: [all, answered 429]
        self.stuck = 0                         # devices without a counting token at the horizon
        self.lapses: list[tuple[float, float]] = []  # outage: (expiry after the recovery, gap s) of every
        #                                        token that expired after the recovery before the next arrived

    def add_interval(self, start: float, end: float) -> None:
        a, b = int(start), int(end)
        if b <= a:
            return
        self.delta[a] = self.delta.get(a, 0) + 1
        self.delta[b] = self.delta.get(b, 0) - 1


def run_address(sc: dict, kind: str, rng: random.Random, totals: Totals, ratio: int,
                trace: list | None = None) -> None:
    """Simulate one public address shared by `ratio` applications until the scenario's horizon (one
    application per box, or sc["apps"] per box: applications i*apps .. i*apps+apps-1 are box i's and,
    for the agent, share box i's governor). kind "agent-ungoverned": the agent without the governor
    (every application for itself, as separate agents would be).
    trace: if given, receives (time, device, op, status) for every answer (for analysis)."""
    horizon = sc["horizon"]
    make = AgentClient if kind.startswith("agent") else NaiveClient
    per_box = sc.get("apps", 1)
    governed = kind == "agent"  # the agent as shipped: every box's requests pass its governor (agent/service.py)
    govs = [governor.Governor(random=rng.random, **GOVERNOR) for _ in range(ratio // per_box)] if governed else []
    gov_version = [0] * len(govs)
    queued = [False] * ratio
    tickets: list[int | None] = [None] * ratio
    if governed:
        policy = {**GOVERNED_POLICY, **POLICY}
        devs = [AgentClient(rng.random, sc["stored"](rng), OLD, 0.0, policy) for _ in range(ratio)]
    else:
        devs = [make(rng.random, sc["stored"](rng), OLD, 0.0) for _ in range(ratio)]
    version = [0] * ratio
    hold_start: list[float | None] = [None] * ratio
    hold_end = [0.0] * ratio
    ready: list[float | None] = [None] * ratio
    lacked_at_ref = [False] * ratio
    bucket = make_bucket(sc)
    counter = [0]
    heap: list[tuple] = []
    seq = 0
    for i, d in enumerate(devs):
        exp = d.token_expiry(0.0)
        if exp is not None:
            hold_start[i], hold_end[i] = 0.0, exp
        start = sc["start"](rng)
        heap.append((start, seq, WAKE, i, 0, None))
        seq += 1
    if sc["name"] in ("outage", "revocation"):  # before the rollout: the bucket as the herd finds it
        heap.append((sc["t_ref"], seq, MARK, -1, 0, None))
        seq += 1
    if sc["rollout_at"] is not None:
        heap.append((sc["rollout_at"], seq, GLOBAL, -1, 0, None))
        seq += 1
    heapq.heapify(heap)
    t_ref = sc["t_ref"]
    revocation = sc["rollout_at"] is not None
    errors: dict[tuple, AgentError] = {}

    def schedule_wake(i: int, now: float) -> None:
        nonlocal seq
        version[i] += 1
        d = devs[i].next_deadline()
        if d is not None and d <= horizon:
            heapq.heappush(heap, (max(d, now), seq, WAKE, i, version[i], None))
            seq += 1

    def schedule_gov(b: int, now: float) -> None:
        nonlocal seq
        gov_version[b] += 1
        nt = govs[b].next_grant_time(now)
        if nt is not None and nt <= horizon:
            heapq.heappush(heap, (max(nt, now), seq, GOV, b, gov_version[b], None))
            seq += 1

    def send(i: int, op: str, now: float) -> None:
        nonlocal seq
        rtt = RTT[0] + (RTT[1] - RTT[0]) * rng.random()
        heapq.heappush(heap, (now + rtt / 2, seq, ARRIVE, i, 0, (op, rtt / 2)))
        seq += 1

    # A client that keeps acting without virtual time moving (e.g. re-registering at once on every
    # refusal) would spin here for ever: stop loudly instead (issue 21). Every box may legitimately act
    # at one instant (a rollout wakes them all), a few events each.
    same_limit = max(10_000, 50 * ratio)
    same, last_t = 0, None
    while heap:
        t, _, ev, i, ver, data = heapq.heappop(heap)
        if t > horizon:
            break
        same = same + 1 if t == last_t else 0
        last_t = t
        if same >= same_limit:
            raise RuntimeError("fleetsim: %s simulation stuck at t=%.3f s: %d events without time moving (box %d, "
                               "state %r); a client that acts again at once for ever?"
                               % (kind, t, same, i, getattr(getattr(devs[i], "lc", None), "state", None)))
        if ev == WAKE:
            if ver != version[i]:
                continue
            if governed:
                # The box's governor decides when the due request may leave (agent.governor).
                d = devs[i]
                due = d.next_deadline()
                if queued[i] or due is None or due > t:
                    if not queued[i]:
                        schedule_wake(i, t)
                    continue
                b = i // per_box
                dec = govs[b].request(i, governor.dcr_class(d.next_op(), d.token_expiry(t) is not None), t)
                if not dec.granted:
                    queued[i] = True
                    schedule_gov(b, t)
                    continue
                tickets[i] = dec.ticket
            op = devs[i].poll(t)
            if op is None:
                schedule_wake(i, t)
                continue
            send(i, op, t)
        elif ev == GOV:
            if ver != gov_version[i]:
                continue
            for j, dec in govs[i].take_grants(t):
                queued[j] = False
                tickets[j] = dec.ticket
                op = devs[j].poll(t)
                if op is None:  # nothing to do after all: the grant is lost (never returned)
                    schedule_wake(j, t)
                else:
                    send(j, op, t)
            schedule_gov(i, t)
        elif ev == ARRIVE:
            op, half = data
            d = devs[i]
            status, headers, body = _answer(op, d, d.statement, t, sc, bucket, counter)
            totals.requests += 1
            totals.bins[int(t)] += 1
            if t >= t_ref:
                totals.after_ref[0] += 1
                totals.after_ref[1] += status == 429
            if status == 503:
                totals.down_requests[d.token_expiry(t) is not None] += 1
            totals.by_status[status] = totals.by_status.get(status, 0) + 1
            if status == 429:
                totals.throttled += 1
            heapq.heappush(heap, (t + half, seq, ANSWER, i, 0, (op, status, headers, body)))
            seq += 1
        elif ev == ANSWER:
            op, status, headers, body = data
            d = devs[i]
            if trace is not None:
                trace.append((t, i, op, status))
            err = errors.get((op, status, body)) if status >= 300 else None
            try:
                if err is not None:
                    raise err
                result = (dcr.parse_register if op == "register" else dcr.parse_token)(status, headers, body, t + WALL0)
            except AgentError as e:
                if status >= 300:  # identical error answers parse to identical errors: parse each once
                    errors[(op, status, body)] = e
                d.error(e, t)
                if governed and status == 429:  # pauses every application of the box
                    b = i // per_box
                    govs[b].on_throttled(t, window=d.lc.window, retry_after=e.retry_after, ticket=tickets[i])
                    schedule_gov(b, t)
            else:
                d.ok(op, result, t)
                if op == "token":
                    exp = t + result["expires_in"]
                    if hold_start[i] is not None and t_ref < hold_end[i] <= t:
                        totals.lapses.append((hold_end[i] - t_ref, t - hold_end[i]))
                    if hold_start[i] is not None and t < hold_end[i]:
                        hold_end[i] = exp
                    else:
                        if hold_start[i] is not None:
                            totals.add_interval(hold_start[i], hold_end[i])
                        hold_start[i], hold_end[i] = t, exp
                    counts = t >= t_ref and (not revocation or d.client_statement == NEW)
                    if counts and ready[i] is None:
                        ready[i] = t
            schedule_wake(i, t)
        elif ev == MARK:  # Adobe is back / the rollout: the bucket's tokens, and which boxes hold no valid token
            totals.ref_tokens.append(bucket_tokens(bucket, t))
            if sc["name"] == "outage":
                for j in range(ratio):
                    lacked_at_ref[j] = hold_start[j] is None or hold_end[j] <= t
                totals.recovery.append((sum(lacked_at_ref), [hold_end[j] - t for j in range(ratio)
                                                             if not lacked_at_ref[j]], totals.ref_tokens[-1]))
        else:  # GLOBAL: the new statement reaches every box
            for j, d in enumerate(devs):
                d.statement_changed(NEW, t)
                schedule_wake(j, t)
    for i in range(ratio):
        if hold_start[i] is not None:
            totals.add_interval(hold_start[i], min(hold_end[i], horizon + 1))  # still held at the horizon
        totals.devices += 1
        if sc["name"] == "outage":
            # Counts: holds a token at the horizon. Needing: held none when Adobe came back.
            ok = hold_start[i] is not None and hold_end[i] > horizon
            totals.needing += 1 if lacked_at_ref[i] else 0
        else:
            ok = ready[i] is not None
            if ok:
                totals.ready_times.append(ready[i])
        if not ok:
            totals.stuck += 1


# ------------------------------------------------------------------------------------ floor

def floor_one_time(apps: int, tokens: float = BURST, refill: bool = False) -> list[float]:
    """Token times of the best schedule for `apps` applications behind one address, each needing
    register then token, under Adobe's bucket as the emulator models it (a one-time burst of BURST,
    then RATE per second, the refill starting only once the burst is spent; `tokens`: what the
    bucket holds when the herd starts, BURST for a fresh address; `refill`: the classic bucket that
    refills up to the burst instead, for comparison), every round trip the
    slowest (RTT1; the answer half-way). Careful about the burst: a token request can only follow
    its register's answer, so with fewer than BURST registers the burst cannot all be spent at the
    first arrival, and the refill starts late (six applications: 6 registers at RTT1/2, 4 tokens
    at 1.5 RTT1 empty the burst, the last 2 follow 1 s and 2 s later: 2 s + 2 RTT1).
    Greedy: every request is admitted the moment it has arrived and the bucket allows, token
    requests first. Optimal: the n-th admission is at least the BURST-th admission plus
    (n - BURST)/RATE, and no schedule empties the burst earlier (all registers arrive at RTT1/2,
    the earliest tokens at 1.5 RTT1) nor leaves a slot unused while a request waits."""
    h = RTT[1] / 2
    bucket = Throttle(RATE, BURST, refill_burst=refill)
    bucket._buckets["address"] = (float(tokens), 0.0)
    regs = apps                            # register requests not yet admitted (all arrive at h)
    toks: list[float] = []                 # arrival times of token requests (a heap)
    out: list[float] = []
    t = h
    while regs or toks:
        if toks and toks[0] <= t:
            kind = "token"
        elif regs:
            kind = "register"
        else:
            t = toks[0]
            continue
        ok, wait = bucket.take("address", t)
        if not ok:
            t += wait + 1e-9
            continue
        if kind == "token":
            heapq.heappop(toks)
            out.append(t + h)
        else:
            regs -= 1
            heapq.heappush(toks, t + 2 * h)
    return out


def floor_recovery(lacking: int, expiries: list[float], tokens: float = BURST
                   ) -> tuple[float, list[tuple[float, int]], int]:
    """The best schedule for one address after Adobe recovers (at 0), knowing the exact second it does.

    `lacking` boxes hold no token; the others hold tokens expiring at `expiries` (s after recovery) and
    each needs one request before that to never lack one. `tokens`: what the address's bucket holds
    at the recovery (the backlog floor: under Adobe's one-time burst an address that used Adobe
    before the outage has spent its burst, and an idle bucket holds one token, so the backlog is
    served at 1/s from the first request; the classic bucket would hold BURST). Request k is
    admitted at max(0, k - tokens)/RATE (both models: above one token the one-time bucket does not
    refill, below it refills at RATE) and its token arrives one slowest round trip later. Earliest deadline first is optimal here (an
    exchange argument: swapping two requests into deadline order never makes the last late one later).
    Returns (time until no box lacks a token, [(time, +1/-1 boxes holding)], requests needed by then)."""
    k, t_all, events = 0, 0.0, []
    for _ in range(lacking):
        k += 1
        t_all = max(0.0, (k - tokens) / RATE) + RTT[1]
        events.append((t_all, 1))
    served = [max(0.0, (k + j + 1 - tokens) / RATE) + RTT[1] for j in range(len(expiries))]
    for e, s in zip(sorted(expiries), served):
        if s > e:  # even the best schedule cannot reach this box before its token expires
            events += [(e, -1), (s, 1)]
            t_all = max(t_all, s)
    requests = lacking + sum(1 for e in expiries if e < t_all)
    return t_all, events, requests


TARGET = 1.3       # time to all tokens within 1.3x of the floor (issue 11)...
TARGET_PLUS = 5.0  # ...or within the floor + 5 s, whichever is larger (issue 20; not for the outage)
SHARE_TARGETS = {10: 0.40, 100: 0.90, 1000: 0.95}  # issue 20: most 429s allowed, by boxes per address


def time_target(sc: dict, floor_time: float) -> float:
    """The time to all tokens allowed (issue 20): max(1.3x the floor, the floor + 5 s); after an
    outage, 1.3x the floor of the backlog."""
    if sc["name"] == "outage":
        return TARGET * floor_time
    return max(TARGET * floor_time, floor_time + TARGET_PLUS)


def floor_429(sc: dict, floor_time: float) -> float:
    """The tightened first-wave bound: the least 429 share of any client whose boxes do not talk to
    each other, that meets the time target at every ratio and whose admitted requests are all needed
    (one register and one token per application, as the agent's), for a herd that needs register +
    token from power-on (city, apps) or from a rollout (revocation). docs/FLEET.md gives the argument:

    A box cannot tell, before its first answer, whether it is alone behind its address. Alone, the
    floor is two slowest round trips (2 x RTT1) and time_target allows A = max(1.3 x, + 5 s) of
    that (5.5 s), so its token request must reach Adobe by w = A - RTT1/2 and its register by
    w - RTT1: every box's register, and the token request of every box whose register is admitted
    in time, reach the bucket by w. The bucket admits at most C = BURST + floor(RATE (w - RTT0/2))
    requests by then (15: the one-time bucket refills only once the burst is spent, at the
    earliest RTT0/2; the classic one the same); with a registers and b <= a token requests among
    them, b <= C // 2, so at least R - C // 2 of the first wave are refused. Every application
    needs exactly 2 admitted requests, so the share is at least refused / (refused + 2 R).
    (The bound before issue 20 counted every request the bucket could admit until 1.3x the floor
    as a success, and used the 1.3x target alone: R - 5 refused, 17.9 / 27.0 / 27.7 %.)
    Outage: none (boxes that lost their token at different times need not arrive together)."""
    if sc["name"] == "outage":
        return 0.0
    rtt0, rtt1 = RTT
    apps = sc.get("apps", 1)
    needed = 2 * sc["ratio"] * apps
    if "apps" in sc and 2 * apps > BURST:
        # A box alone behind its address must empty the burst by `w` to meet the target (after it,
        # its remaining 2 apps - BURST requests are 1/RATE apart), and at least BURST/2 of the burst
        # are registers (a token follows its register): so every box sends BURST/2 registers that
        # reach the bucket by w, which admits at most BURST + RATE (w - RTT0/2) by then.
        alone = floor_one_time(apps)[-1]
        w = time_target(sc, alone) - (2 * apps - BURST) / RATE - rtt1 / 2
        refused = max(0, sc["ratio"] * ((BURST + 1) // 2) - int(BURST + RATE * (w - rtt0 / 2)))
        return refused / float(refused + needed) if refused else 0.0
    w = time_target(sc, 2 * rtt1) - rtt1 / 2
    admitted_first = BURST + int(RATE * (w - rtt0 / 2))
    # Alone, every application's register must leave by the same deadline (2 x apps <= BURST: all
    # fit the burst), so a box of `apps` applications sends `apps` registers in the first wave.
    refused = max(0, sc["ratio"] * apps - admitted_first // 2)
    return refused / float(refused + needed) if refused else 0.0


def elapsed_429_ref(sc: dict, floor_time: float) -> float:
    """The elapsed-time reference (a heuristic, not a proof; docs/FLEET.md): a box refused since the
    herd began, t seconds ago, cannot tell a crowd about to be served from a larger one, and if its
    crowd's floor were t it would have to be served by time_target(t): so it tries again at least
    every max(1.3 t, t + 5 s) - t. A box served at tau has then been refused at least once per such
    step from the alone deadline (5.5 s) to tau; with tokens arriving evenly over the floor T, the
    mean of those refusals per box, over 2 admitted requests per box, is the share."""
    if sc["name"] == "outage" or sc.get("apps", 1) != 1 or floor_time <= 0:
        return 0.0
    t1 = time_target(sc, 2 * RTT[1])
    steps, t, k = [], t1, 0
    while t < floor_time:
        steps.append(t)
        t = max(TARGET * t, t + TARGET_PLUS)
    total, prev = 0.0, 0.0
    for k, t in enumerate(steps + [floor_time]):  # boxes served in [prev, t) were refused k times
        total += k * (min(t, floor_time) - prev)
        prev = t
    refused = total / floor_time
    return max(floor_429(sc, floor_time), refused / (refused + 2.0))


SEARCH_FILE = "docs/fleet/search.json"


def search_best(path: str = SEARCH_FILE) -> dict:
    """The best policies tools/fleetsearch.py found ({} without the file): per crowd size, the fewest
    429s in time there, and the policy in time at every size searched."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return {"best": data.get("best", {}), "samples": data.get("samples"), "cases": data.get("cases", [])}


# ------------------------------------------------------------------------------------ running

def holding(totals: Totals, sc: dict) -> list[int]:
    """Devices counted as served, per second: holding a token (outage) or holding one that counts
    for the scenario (city: any; revocation: issued to a client of the new statement)."""
    horizon = int(sc["horizon"])
    arr = [0] * (horizon + 1)
    if sc["name"] == "outage":
        for sec, d in totals.delta.items():
            if sec <= horizon:
                arr[sec] += d
    else:
        for t in totals.ready_times:
            arr[min(horizon, int(math.ceil(t)))] += 1
    acc = 0
    for k in range(horizon + 1):
        acc += arr[k]
        arr[k] = acc
    return arr


def curve(values: list[int], scale: float = 1.0, points: int = 300) -> list[tuple[int, int]]:
    step = max(1, len(values) // points)
    idx = list(range(0, len(values), step))
    if idx[-1] != len(values) - 1:
        idx.append(len(values) - 1)
    return [(k, int(round(values[k] * scale))) for k in idx]


def summarize(totals: Totals, sc: dict, scale: float, served: list[int]) -> dict:
    t_ref = sc["t_ref"]
    n = totals.devices
    t_all = None
    if totals.stuck == 0:
        if sc["name"] == "outage":
            short = [k for k in range(int(t_ref), len(served) - 1) if served[k] < n]
            t_all = float(short[-1] + 1 - t_ref) if short else 0.0
        elif totals.ready_times:
            t_all = max(totals.ready_times) - t_ref
    end = int(t_ref + (t_all if t_all is not None else sc["horizon"] - t_ref)) + 1
    active = sum(totals.bins[int(t_ref):end])
    extra = {}
    if sc["name"] == "outage":
        # Load on the down Adobe, per box-hour spent without / with a valid token while it was down.
        a, b = (int(x) for x in sc["down"])
        holding_s = sum(served[a:b])
        lacking_s = n * (b - a) - holding_s
        extra = {"down_req_per_hour_without_token": round(3600.0 * totals.down_requests[0] / max(1, lacking_s), 1),
                 "down_req_per_hour_with_token": round(3600.0 * totals.down_requests[1] / max(1, holding_s), 2),
                 "share_429_after_recovery": round(totals.after_ref[1] / max(1, totals.after_ref[0]), 4)}
    if sc["name"] != "outage" and totals.ready_times:
        # How long an application waits for its first token, on average (the priority classes'
        # measure: every grant that completes an application early lowers it).
        extra["mean_time_to_token_s"] = round(sum(totals.ready_times) / len(totals.ready_times) - t_ref, 1)
    return {**extra,
        "devices": int(round(n * scale)),
        "time_to_all_s": round(t_all, 1) if t_all is not None else None,
        "requests": int(round(totals.requests * scale)),
        "requests_per_device": round(totals.requests / max(1, n), 2),
        "share_429": round(totals.throttled / max(1, totals.requests), 4),
        "peak_rps": round(max(totals.bins) * scale, 1),
        "mean_rps": round(active * scale / max(1.0, end - t_ref), 2),
        "gave_up": int(round(totals.stuck * scale)),
        "needing_at_recovery": int(round(totals.needing * scale)) if sc["name"] == "outage" else None,
    }


def run_case(sc: dict, kind: str, seed: int, sample_addresses: int | None = None
             ) -> tuple[dict, list[int], float, Totals]:
    ratio, n = per_address(sc), sc["n"]
    addresses = max(1, n // ratio)
    todo = addresses if sample_addresses is None else min(addresses, sample_addresses)
    totals = Totals(sc["horizon"])
    rng = random.Random(seed)
    for _ in range(todo):
        run_address(sc, kind, rng, totals, ratio)
    scale = addresses / todo
    served = holding(totals, sc)
    return summarize(totals, sc, scale, served), served, scale, totals


def floor_case(sc: dict, agent_totals: Totals, agent_served: list[int]) -> tuple[dict, list[int]]:
    """The floor's figures and curve. City and revocation: every address alike (floor_city).
    Outage: from the agent's own state at recovery (nothing can be done while Adobe is down), each
    address on its own (floor_recovery); time-to-all is the slowest address, as for the agent."""
    ratio, n = per_address(sc), sc["n"]
    addresses = max(1, n // ratio)
    horizon = int(sc["horizon"])
    arr = [0] * (horizon + 2)
    if sc["name"] == "outage":
        t_ref = sc["t_ref"]
        base = agent_served[:int(t_ref)]
        start, requests, t_all = n, 0, 0.0
        for lacking, expiries, tokens in agent_totals.recovery:
            t, events, req = floor_recovery(lacking, expiries, tokens)
            start -= lacking
            requests += req
            t_all = max(t_all, t)
            for when, d in events:
                arr[min(horizon + 1, int(math.ceil(t_ref + when)))] += d
        peak = float(sum(max(1, min(int(tk), lk)) for lk, _, tk in agent_totals.recovery))
    else:
        # Every address alike (a fresh address holds the burst), except the revocation, where each
        # address's bucket is as the agent left it at the rollout (agent_totals.ref_tokens).
        refill = sc.get("bucket") == "refill"
        groups: dict[float, int] = {}
        for tk in (agent_totals.ref_tokens or [float(BURST)] * addresses):
            groups[round(tk, 3)] = groups.get(round(tk, 3), 0) + 1
        t_all, peak = 0.0, 0.0
        for tk, count in groups.items():
            times = [sc["t_ref"] + x for x in floor_one_time(ratio, tk, refill)]
            for x in times:
                if x <= horizon:
                    arr[int(math.ceil(x))] += count
            t_all = max(t_all, (times[-1] - sc["t_ref"]) if times else 0.0)
            peak += count * max(1, min(int(tk), 2 * ratio))
        requests, base, start = 2 * n, [], 0
    acc, served = start, list(base)
    for k in range(len(base), horizon + 1):
        acc += arr[k]
        served.append(acc)
    return {"devices": n, "time_to_all_s": round(t_all, 1), "requests": requests, "requests_per_device":
            round(requests / n, 2), "share_429": 0.0, "peak_rps": peak,
            "mean_rps": round(requests / max(1.0, t_all), 2), "gave_up": 0}, served


def run_scenario(sc: dict, seed: int, naive_sample: int) -> dict:
    t0 = time.monotonic()
    agent, a_served, _, a_totals = run_case(sc, "agent", seed)
    naive, n_served, nscale, n_totals = run_case(sc, "naive", seed + 1, naive_sample)
    floor, f_served = floor_case(sc, a_totals, a_served)
    extra, curves = {}, {}
    if "apps" in sc:  # what the governor buys: the same boxes with one agent per application
        extra["ungoverned"], u_served, _, _ = run_case(sc, "agent-ungoverned", seed)
        curves["ungoverned"] = curve(u_served)
    ratio_time = None
    if agent["time_to_all_s"] is not None and floor["time_to_all_s"]:
        ratio_time = agent["time_to_all_s"] / floor["time_to_all_s"]
    allowed = time_target(sc, floor["time_to_all_s"])
    if sc["name"] == "outage":
        # Tokens that lapsed after the time the target allows for the backlog: a box that held one
        # let it expire (the defect behind issue 20's 39.6x, docs/FLEET.md); lapses within the
        # backlog are the crowd's, and the floor has its own.
        for m, tot, scale in ((agent, a_totals, 1.0), (naive, n_totals, nscale)):
            late = [g for x, g in tot.lapses if x > allowed]
            m["lapses_after_backlog"] = int(round(len(late) * scale))
            m["lapse_max_s"] = round(max(late), 1) if late else 0.0
    targets = {"time": agent["time_to_all_s"] is not None and agent["time_to_all_s"] <= allowed + 1e-9}
    share_allowed = SHARE_TARGETS.get(sc["ratio"]) if sc.get("apps", 1) == 1 else None
    if share_allowed is not None:
        targets["share_429"] = agent["share_429"] <= share_allowed
    targets["none_gave_up"] = agent["gave_up"] == 0
    return {"scenario": sc["name"], "ratio": sc["ratio"], "apps": sc.get("apps", 1), "devices": sc["n"],
            "t_ref": sc["t_ref"], "horizon": sc["horizon"], "agent": agent, "naive": naive, "floor": floor, **extra,
            "naive_sampled_addresses": None if nscale == 1 else int(round(sc["n"] / per_address(sc) / nscale)),
            "agent_vs_floor": round(ratio_time, 3) if ratio_time is not None else None,
            "share_429_floor": round(floor_429(sc, floor["time_to_all_s"]), 4),
            "share_429_elapsed_ref": round(elapsed_429_ref(sc, floor["time_to_all_s"]), 4),
            "time_allowed_s": round(allowed, 2),
            "share_429_allowed": share_allowed,
            "targets": targets,
            "curves": {"agent": curve(a_served), "naive": curve(n_served, nscale), "floor": curve(f_served), **curves},
            "sim_seconds": round(time.monotonic() - t0, 1)}


# ------------------------------------------------------------------------------------ output

def table(results: list[dict], search: dict | None = None) -> str:
    head = ("scenario", "box/addr", "apps/box", "client", "time-to-all s", "x floor", "allowed x", "429 share",
            "429 target", "1st-wave bound", "elapsed ref", "req/app", "peak req/s", "mean req/s", "gave up")
    rows = [head]
    best = (search or {}).get("best", {})
    for r in results:
        f = r["floor"]["time_to_all_s"]
        for who in ("floor", "agent", "search", "ungoverned", "naive"):
            if who == "search":
                # The search's best at this crowd size (tools/fleetsearch.py, a smaller fleet), next to the agent.
                b = best.get(str(r["ratio"])) if r["scenario"] == "city" else None
                if b:
                    rows.append((r["scenario"], str(r["ratio"]), "1", "search\u2020", "%.1f" % b["time_to_all_s"],
                                 "%.2f" % b["x_floor"], "", "%.1f%%" % (100 * b["share_429"]), "", "", "",
                                 "%.2f" % b["requests_per_box"], "", "", str(b["gave_up"])))
                continue
            if who not in r:
                continue
            m = r[who]
            tta = m["time_to_all_s"]
            x = (tta / f) if tta is not None and f else None
            label = who + ("*" if who == "naive" and r["naive_sampled_addresses"] else "")
            agent = who == "agent"
            share_t = r.get("share_429_allowed")
            rows.append((r["scenario"], str(r["ratio"]), str(r.get("apps", 1)), label,
                         "-" if tta is None else "%.1f" % tta,
                         "-" if x is None else "%.2f" % x,
                         "%.2f" % (r["time_allowed_s"] / f) if agent and f else "",
                         "%.1f%%" % (100 * m["share_429"]),
                         "%.0f%%" % (100 * share_t) if agent and share_t is not None else "",
                         "%.1f%%" % (100 * r["share_429_floor"]) if agent else "",
                         "%.1f%%" % (100 * r["share_429_elapsed_ref"]) if agent and r["share_429_elapsed_ref"] else "",
                         "%.2f" % (m["requests"] / max(1, m["devices"])),
                         "%.0f" % m["peak_rps"], "%.1f" % m.get("mean_rps", 0.0), str(m["gave_up"])))
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


COLORS = {"agent": "#1f77b4", "naive": "#d62728", "floor": "#2ca02c", "ungoverned": "#ff7f0e"}


def svg(results: list[dict]) -> str:
    """Small multiples: devices holding a token over time, one panel per scenario/ratio."""
    w, h, pad = 360, 236, 58
    cols = 3
    rows = (len(results) + cols - 1) // cols
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
           'font-size="11">' % (cols * w, rows * h + 48),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="10" y="18" font-size="14">%s holding a valid token over time, per scenario '
           '(time since power-on / start of the scenario)</text>'
           % ("Applications" if all(r["scenario"] == "apps" for r in results) else "Devices")]
    legend = [("agent", "agent (agent.lifecycle)"), ("naive", "naive client, fixed 1 s retries"),
              ("floor", "floor: best schedule under the throttle")]
    if any("ungoverned" in r for r in results):
        legend[0] = ("agent", "agent: one governor per box")
        legend.insert(1, ("ungoverned", "one agent per application"))
    for j, (who, label) in enumerate(legend):
        lx = 10 + j * (cols * w - 20) // len(legend)
        dash = ' stroke-dasharray="4 3"' if who == "floor" else ""
        out.append('<line x1="%d" y1="34" x2="%d" y2="34" stroke="%s" stroke-width="2"%s/>' % (lx, lx + 24, COLORS[who], dash))
        out.append('<text x="%d" y="38">%s</text>' % (lx + 30, label))
    for k, r in enumerate(results):
        ox, oy = (k % cols) * w, 48 + (k // cols) * h
        pw, ph = w - pad - 22, h - pad - 24
        x0, y0 = ox + pad, oy + 20
        out.append('<text transform="translate(%d,%.1f) rotate(-90)" text-anchor="middle" fill="#555">%s with a '
                   'token</text>' % (ox + 12, y0 + ph / 2, "applications" if r["scenario"] == "apps" else "devices"))
        out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">time</text>' % (x0 + pw / 2, y0 + ph + 28))
        tmax = r["horizon"]
        n = r["devices"]
        if "apps" in r and r["scenario"] == "apps":
            # Zoom on the herd: 1.5x the slowest client that finished (the horizon is far longer).
            done = [r[who]["time_to_all_s"] for who in ("floor", "agent", "ungoverned", "naive")
                    if who in r and r[who]["time_to_all_s"] is not None]
            tmax = min(r["horizon"], max(4.0, 1.5 * max(done or [r["horizon"]])))
            out.append('<text x="%d" y="%d" font-weight="bold">%d boxes x %d apps, %d boxes per address</text>'
                       % (x0, oy + 12, n // r["apps"], r["apps"], r["ratio"]))
        else:
            out.append('<text x="%d" y="%d" font-weight="bold">%s, %d devices, %d per address</text>'
                       % (x0, oy + 12, r["scenario"], n, r["ratio"]))
        out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>' % (x0, y0, pw, ph))
        for frac in (0.0, 0.5, 1.0):
            y = y0 + ph - frac * ph
            out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (x0 - 4, y + 4, _si(n * frac)))
            out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                       % (x0 + frac * pw, y0 + ph + 14, _dur(tmax * frac)))
        for who in ("floor", "naive", "ungoverned", "agent"):
            pts = r["curves"].get(who)
            if not pts:
                continue
            path = " ".join("%.1f,%.1f" % (x0 + pw * min(t, tmax) / tmax, y0 + ph - ph * min(v, n) / max(1, n))
                            for t, v in _upto(pts, tmax))
            dash = ' stroke-dasharray="4 3"' if who == "floor" else ""
            out.append('<polyline fill="none" stroke="%s" stroke-width="1.5"%s points="%s"/>'
                       % (COLORS[who], dash, path))
        a = r["agent"]
        out.append('<text x="%d" y="%d" fill="#333" text-anchor="end">agent %s (x%s floor), 429: %.0f%%</text>'
                   % (x0 + pw - 4, y0 + ph - 6, "-" if a["time_to_all_s"] is None else _dur(a["time_to_all_s"]),
                      "-" if r["agent_vs_floor"] is None else "%.2f" % r["agent_vs_floor"], 100 * a["share_429"]))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _upto(pts: list, tmax: float) -> list:
    """The curve's points up to tmax, and the first after it (clipped to the panel's edge)."""
    out = []
    for p in pts:
        out.append(p)
        if p[0] >= tmax:
            break
    return out


def _si(v: float) -> str:
    return "%dk" % (v / 1000) if v >= 1000 else "%d" % v


def _dur(s: float) -> str:
    return "%.0fs" % s if s < 120 else ("%.0fm" % (s / 60) if s < 7200 else "%.1fh" % (s / 3600))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fleetsim", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=("city", "outage", "revocation", "apps", "all"), default="all")
    p.add_argument("--devices", type=int, default=20000, help="boxes per city row (default 20000)")
    p.add_argument("--ratios", default=",".join(str(r) for r in list(range(1, 21)) + [50, 100, 1000]),
                   help="devices per public address for the city scenario (default 1-20,50,100,1000)")
    p.add_argument("--search", metavar="FILE", default=SEARCH_FILE,
                   help="tools/fleetsearch.py's JSON, printed next to the agent (default %s)" % SEARCH_FILE)
    p.add_argument("--ratio", type=int, default=1000, help="devices per address for outage and revocation")
    p.add_argument("--other-devices", type=int, default=20000,
                   help="boxes for the outage and revocation scenarios (default 20000, keeps the run short)")
    p.add_argument("--naive-sample", type=int, default=1,
                   help="addresses simulated for the naive client, scaled up (default 1)")
    p.add_argument("--apps", default="1,3,6", help="applications per box for the apps scenario (default 1,3,6)")
    p.add_argument("--app-ratios", default="1,10,100", help="boxes per public address for the apps scenario")
    p.add_argument("--app-boxes", type=int, default=3000, help="boxes in the apps scenario (default 3000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bucket", choices=BUCKETS, default="one-time",
                   help="Adobe's bucket: one-time (documented: the burst of 10 is never given back, default) or "
                        "refill (the classic bucket that refills up to the burst, for comparison)")
    p.add_argument("--policy", metavar="JSON", help='Lifecycle keyword overrides to experiment with, '
                   'e.g. \'{"throttle_growth": 2, "throttle_cap": 900}\'')
    p.add_argument("--governor", metavar="JSON", help='Governor keyword overrides (apps scenario), e.g. \'{"slack": 0.2}\'')
    p.add_argument("--json", metavar="FILE", help="write the figures (and curves) as JSON")
    p.add_argument("--svg", metavar="FILE", help="plot devices holding a token over time (city, outage, revocation)")
    p.add_argument("--svg-apps", metavar="FILE", help="plot applications holding a token over time (apps scenario)")
    a = p.parse_args(argv)
    if a.devices < 1 or a.other_devices < 1:
        p.error("--devices and --other-devices must be >= 1")
    try:
        ratios = [int(x) for x in a.ratios.split(",") if x.strip()]
    except ValueError:
        p.error("--ratios must be comma-separated integers, e.g. 1,10,100,1000")
    try:
        apps = [int(x) for x in a.apps.split(",") if x.strip()]
        app_ratios = [int(x) for x in a.app_ratios.split(",") if x.strip()]
    except ValueError:
        p.error("--apps and --app-ratios must be comma-separated integers, e.g. 1,3,6")
    if not ratios or min(ratios) < 1 or a.ratio < 1 or not apps or min(apps) < 1 or not app_ratios \
            or min(app_ratios) < 1 or a.app_boxes < 1:
        p.error("device-per-address ratios, --apps, --app-ratios and --app-boxes must be >= 1")
    if a.governor:
        try:
            GOVERNOR.update(json.loads(a.governor))
            governor.Governor(**GOVERNOR)
        except (ValueError, TypeError, AgentError) as e:
            p.error("--governor: %s" % e)
    if a.policy:
        try:
            POLICY.update(json.loads(a.policy))
            lifecycle.Lifecycle(**POLICY)
        except (ValueError, TypeError) as e:
            p.error("--policy: %s" % e)
    BUCKET[0] = a.bucket
    cases = []
    if a.scenario in ("city", "all"):
        cases += [scenario_city(a.devices, r) for r in ratios]
    if a.scenario in ("outage", "all"):
        cases.append(scenario_outage(min(a.devices, a.other_devices), a.ratio))
    if a.scenario in ("revocation", "all"):
        cases.append(scenario_revocation(min(a.devices, a.other_devices), a.ratio))
    if a.scenario in ("apps", "all"):
        cases += [scenario_apps(max(a.app_boxes, r), r, k) for r in app_ratios for k in apps]
    t0 = time.monotonic()
    results = []
    for sc in cases:
        if "apps" not in sc:
            sc["ratio"] = min(sc["ratio"], sc["n"])
        results.append(run_scenario(sc, a.seed, a.naive_sample))
        print("ran %s (%d per address%s) in %.1f s" % (sc["name"], sc["ratio"], ", %d apps per box" % sc["apps"]
                                                       if "apps" in sc else "", results[-1]["sim_seconds"]),
              file=sys.stderr)
    search = search_best(a.search) if a.bucket == "one-time" and not a.policy else {}
    print(table(results, search))
    print("Adobe's bucket: %s" % ("ONE-TIME burst of %d, then %g req/s per address (Adobe's documented throttle)"
                                  % (BURST, RATE) if a.bucket == "one-time" else
                                  "REFILLING up to the burst of %d at %g req/s (the pre-issue-20 model, for "
                                  "comparison only: easier than Adobe's)" % (BURST, RATE)))
    print("* naive client simulated on a sample of addresses and scaled; floor = best schedule under that bucket; "
          "allowed x = issue 20's time target over the floor: max(1.3x, floor + 5 s), outage 1.3x the backlog's")
    print("1st-wave bound: the least 429 share of any client whose boxes do not coordinate, that meets the time "
          "target at every ratio and asks only what it needs (a lower bound); elapsed ref: the heuristic "
          "elapsed-time argument (docs/FLEET.md)")
    if search.get("best"):
        print("\u2020 search: the fewest 429s within the time target among %s lifecycle policies tried by "
              "tools/fleetsearch.py (%s, one-time burst; %s)" % (search["samples"], a.search, ", ".join(
                  "%d per address: %d boxes" % (c["ratio"], c["boxes"]) for c in search["cases"])))
        if "all" in search["best"]:
            b = search["best"]["all"]
            print("\u2020 search, in time at every size searched, least 429s: %s; %s" % (", ".join(
                "%s per address %.2fx %.1f%%" % (k, v["x_floor"], 100 * v["share_429"]) for k, v in b["cases"].items()),
                json.dumps(b["policy"])))
    for r in results:
        if r["scenario"] == "outage":
            for who in ("agent", "naive"):
                m = r[who]
                print("outage, %s: while Adobe was down, %.1f requests per box-hour without a token, %.2f with "
                      "one; 429 share after recovery %.1f%%; tokens that lapsed after the backlog's allowed time "
                      "(a box held one, then none): %d%s" % (who, m["down_req_per_hour_without_token"],
                                                             m["down_req_per_hour_with_token"],
                                                             100 * m["share_429_after_recovery"],
                                                             m["lapses_after_backlog"],
                                                             ", longest gap %.1f s" % m["lapse_max_s"]
                                                             if m["lapses_after_backlog"] else ""))
    if any(r["scenario"] == "apps" for r in results):
        print("apps: each box's applications share one governor (agent.governor); Adobe's bucket is the emulator's "
              "(one-time burst of %d, then %g req/s); floor = best schedule for 2 requests per application under it; "
              "ungoverned = one agent per application, no governor (today's way to run several)" % (BURST, RATE))
    missed = ["%s/%d%s %s" % (r["scenario"], r["ratio"], "x%d" % r["apps"] if r["scenario"] == "apps" else "", k)
              for r in results for k, v in r["targets"].items() if not v]
    print("targets (agent, issue 20: time, 429 share at 10/100/1000 per address, no give-ups): %d rows, %s"
          % (len(results), "all met" if not missed else "MISSED: " + ", ".join(missed)))
    print("simulated in %.1f s" % (time.monotonic() - t0))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"policy": _policy(), "governed_policy": {**GOVERNED_POLICY, **POLICY},
                       "governor": _governor(), "search": search,
                       "model": {"rate": RATE, "burst": BURST, "bucket": a.bucket, "ttl": TTL, "rtt": RTT},
                       "results": results}, f, indent=1)
            f.write("\n")
    if a.svg and any(r["scenario"] != "apps" for r in results):
        with open(a.svg, "w") as f:
            f.write(svg([r for r in results if r["scenario"] != "apps"
                         and (r["scenario"] != "city" or r["ratio"] in (1, 10, 20, 100, 1000))]))
    if a.svg_apps and any(r["scenario"] == "apps" for r in results):
        with open(a.svg_apps, "w") as f:
            f.write(svg([r for r in results if r["scenario"] == "apps"]))
    return 0


def _governor() -> dict:
    g = governor.Governor(**GOVERNOR)
    return {"rate": g.rate, "burst": g.burst, "slack": g.slack, "pause_cap": g.pause_cap}


def _policy() -> dict:
    lc = lifecycle.Lifecycle(**POLICY)
    return {k: getattr(lc, k, None) for k in ("refresh_at", "jitter", "backoff_base", "backoff_cap", "outage_cap",
                                              "throttle_spread", "throttle_min", "throttle_first", "token_spread",
                                              "holder_yield",
                                              "expiry_margin", "throttle_growth", "throttle_cap", "operator_retry")}


if __name__ == "__main__":
    sys.exit(main())
