"""The box-wide upstream governor (agent/governor.py): bucket arithmetic with Adobe's one-time burst,
a 429 pausing every application, priority classes, round robin, the gateway's try mode, bounded
memory, and the property that matters most: whatever the demand, the grants replayed through the
emulator's throttle (agent/emulator/throttle.Throttle, Adobe's model) are never refused."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import governor as gv
from agent.emulator.throttle import Throttle


def drain(g: gv.Governor, start: float, until: float) -> list[tuple[float, str]]:
    """The shell's loop: wake at next_grant_time and take the grants, until `until`."""
    out, now = [], start
    while True:
        t = g.next_grant_time(now)
        if t is None or t > until:
            return out
        now = max(now, t)
        out += [(now, k) for k, _ in g.take_grants(now)]


# ------------------------------------------------------------------ bucket arithmetic

def test_burst_then_one_per_step():
    g = gv.Governor(slack=0.0)
    grants = [g.request("a%d" % i, gv.REGISTER, 5.0) for i in range(12)]
    assert [d.granted for d in grants] == [True] * 10 + [False, False]
    assert [d.ticket for d in grants[:10]] == list(range(1, 11))
    # After the burst: 1/rate apart, counted from the 10th grant (Adobe refills only below one token).
    assert grants[10].queued and grants[10].at == pytest.approx(6.0)
    assert grants[11].at == pytest.approx(7.0)
    assert g.next_grant_time(5.0) == pytest.approx(6.0)
    assert g.take_grants(5.999) == []
    assert [k for k, _ in g.take_grants(6.0 + 1e-5)] == ["a10"]
    assert [k for k, _ in g.take_grants(7.0 + 2e-5)] == ["a11"]
    assert g.next_grant_time(8.0) is None


def test_slack_spaces_grants_after_the_burst():
    g = gv.Governor(slack=0.25, burst=2)
    assert g.request("a", gv.FETCH, 0.0).granted and g.request("b", gv.FETCH, 0.0).granted
    d = g.request("c", gv.FETCH, 0.0)
    assert not d.granted and d.at == pytest.approx(1.25)


def test_the_one_time_burst_does_not_come_back_after_idling():
    g = gv.Governor(slack=0.0)
    for _i in range(10):
        assert g.request("a", gv.FETCH, 0.0).granted
    # A whole day idle: Adobe's bucket holds one token, not ten. One grant, then one per second.
    assert g.request("a", gv.FETCH, 86400.0).granted
    d = g.request("a", gv.FETCH, 86400.0)
    assert not d.granted and d.at == pytest.approx(86401.0)


def test_initial_one_assumes_no_burst():
    g = gv.Governor(initial=1, slack=0.0)
    assert g.request("a", gv.FETCH, 0.0).granted
    assert not g.request("b", gv.FETCH, 0.0).granted


def test_bad_settings_are_refused_with_a_code_and_a_hint():
    with pytest.raises(gv.GovernorError) as e:
        gv.Governor(rate=0, burst=0, initial=5, slack=-1)
    assert e.value.code == "governor_invalid" and "rate must be > 0" in e.value.message
    assert "burst must be" in e.value.message and "slack must be" in e.value.message and e.value.hint
    with pytest.raises(gv.GovernorError):
        gv.Governor().request("a", 7, 0.0)


# ------------------------------------------------------------------ 429

def test_a_429_for_one_application_pauses_all_of_them():
    g = gv.Governor(slack=0.0, random=lambda: 0.5)
    d = g.request("app1", gv.FETCH, 0.0)
    assert d.granted
    end = g.on_throttled(0.2, window=20.0, ticket=d.ticket)
    assert end == pytest.approx(10.2)            # window x U(0,1) = 20 x 0.5
    # The model forgot the burst: nothing for anyone until the pause ends, then one per second.
    for app in ("app2", "app3"):
        q = g.request(app, gv.FETCH, 0.3)
        assert not q.granted and q.queued
    assert not g.try_acquire(0.3).granted
    assert g.take_grants(10.1) == []
    assert [k for k, _ in g.take_grants(10.2)] == ["app2"]
    assert g.take_grants(10.5) == []
    assert [k for k, _ in g.take_grants(11.3)] == ["app3"]


def test_pause_is_at_least_one_refill_and_retry_after_is_a_capped_floor():
    g = gv.Governor(random=lambda: 0.0, pause_cap=300.0)
    t = g.request("a", gv.FETCH, 0.0).ticket
    assert g.on_throttled(1.0, window=10.0, ticket=t) == pytest.approx(2.0)      # at least 1/rate
    t = g.request("a", gv.FETCH, 50.0).ticket
    assert g.on_throttled(50.0, window=3.0, retry_after=30, ticket=t) == pytest.approx(80.0)
    t = g.request("a", gv.FETCH, 100.0).ticket
    assert g.on_throttled(100.0, window=3.0, retry_after=86400, ticket=t) == pytest.approx(400.0)


def test_refusals_of_requests_sent_together_draw_one_pause():
    draws = iter([0.1, 0.9, 0.9, 0.9, 0.9, 0.9])
    g = gv.Governor(random=lambda: next(draws))
    tickets = [g.request("app%d" % i, gv.REGISTER, 0.0).ticket for i in range(6)]
    first = g.on_throttled(0.2, window=30.0, ticket=tickets[0])
    assert first == pytest.approx(3.2)
    for t in tickets[1:]:  # in flight together with the first: no new, longer pause
        assert g.on_throttled(0.21, window=30.0, ticket=t) == pytest.approx(first)
    assert g.pauses == 1 and g.throttled == 6
    # A request granted after the pause ended that is refused again draws a new pause.
    d = g.request("app0", gv.REGISTER, 3.3)
    assert d.granted
    assert g.on_throttled(3.5, window=30.0, ticket=d.ticket) == pytest.approx(3.5 + 27.0)


# ------------------------------------------------------------------ priority and round robin

def test_priority_first_tokens_before_refreshes_before_the_gateway():
    g = gv.Governor(initial=1, slack=0.0)
    assert g.request("warmup", gv.REFRESH, 0.0).granted           # spends the only token
    assert not g.request("refresher", gv.REFRESH, 0.1).granted
    assert not g.request("newapp", gv.REGISTER, 0.2).granted
    assert not g.request("registered", gv.FETCH, 0.3).granted
    assert not g.try_acquire(5.0, gv.GATEWAY).granted              # DCR waiters go first
    order = [k for _, k in drain(g, 0.3, 100.0)]
    assert order == ["registered", "newapp", "refresher"]
    assert g.try_acquire(10.0).granted                             # nobody ahead: the gateway goes


def test_dcr_class():
    assert gv.dcr_class("token", holds_token=False) == gv.FETCH
    assert gv.dcr_class("register", holds_token=False) == gv.REGISTER
    assert gv.dcr_class("token", holds_token=True) == gv.REFRESH
    assert gv.dcr_class("register", holds_token=True) == gv.REFRESH
    assert gv.FETCH < gv.REGISTER < gv.REFRESH < gv.GATEWAY


def test_round_robin_within_a_class():
    g = gv.Governor(initial=1, slack=0.0)
    assert g.request("x", gv.FETCH, 0.0).granted  # spends the only token: the others queue
    apps = ["a", "b", "c"]
    for k in apps:
        g.request(k, gv.FETCH, 0.0)
    served, now = [], 0.0
    while len(served) < 9:
        now = g.next_grant_time(now)
        for k, _ in g.take_grants(now):
            served.append(k)
            g.request(k, gv.FETCH, now)  # wants another at once: joins the line at the back
    assert served == ["a", "b", "c"] * 3


def test_asking_again_keeps_the_place_and_a_rising_class_moves_up():
    g = gv.Governor(initial=1, slack=0.0)
    g.request("x", gv.REFRESH, 0.0)  # granted: spends the token
    for k in ("a", "b", "c"):
        g.request(k, gv.REFRESH, 0.0)
    assert g.request("a", gv.REFRESH, 0.5).at == pytest.approx(1.0)   # still first
    g.request("c", gv.FETCH, 0.6)                                       # its token expired meanwhile
    assert [k for _, k in drain(g, 0.6, 10.0)] == ["c", "a", "b"]
    assert g.withdraw("a") is False and g.waiting() == 0


def test_withdraw_leaves_the_line():
    g = gv.Governor(initial=1, slack=0.0)
    g.request("x", gv.FETCH, 0.0)
    g.request("a", gv.FETCH, 0.0)
    g.request("b", gv.FETCH, 0.0)
    assert g.withdraw("a")
    assert [k for _, k in drain(g, 0.0, 10.0)] == ["b"]


# ------------------------------------------------------------------ try mode and bounds

def test_try_mode_answers_a_retry_time_at_once_and_holds_nothing():
    g = gv.Governor(slack=0.0)
    for _i in range(10):
        assert g.try_acquire(0.0).granted
    d = g.try_acquire(0.0)
    assert not d.granted and not d.queued and d.at == pytest.approx(1.0)
    assert g.waiting() == 0 and g.next_grant_time(0.0) is None
    assert 1.0 <= d.at < 1.001    # a whole refill, never less (the gateway's Retry-After comes from it)
    g.request("app", gv.REFRESH, 0.5)                         # a queued DCR request is ahead
    assert g.try_acquire(0.5).at == pytest.approx(2.0, abs=1e-4)
    assert g.try_acquire(1.0 + 1e-5).granted is False        # the refill goes to the app
    assert [k for k, _ in g.take_grants(1.0 + 1e-5)] == ["app"]


def test_memory_is_bounded_whatever_the_callers_do():
    g = gv.Governor(initial=1, slack=0.0, max_waiters=8, gateway_waiters=4)
    g.try_acquire(0.0)
    for i in range(10000):
        d = g.request("gw-%d" % i, gv.GATEWAY, 0.0)
        assert d.granted is False
    for i in range(10000):
        g.request("app-%d" % i, gv.FETCH if i % 2 else gv.REFRESH, 0.0)
    assert g.waiting() == 12
    assert g.refused == 2 * 10000 - 12
    full = g.request("late", gv.FETCH, 0.0)
    assert not full.queued and full.at > 0.0
    assert len(g.view(0.0)["waiting"]) == 4 and sum(g.view(0.0)["waiting"].values()) == 12


# ------------------------------------------------------------------ never exceed Adobe's bucket

def _run_demand(g: gv.Governor, demand: list[tuple[float, int, int]], horizon: float
                ) -> list[tuple[float, int]]:
    """A shell in virtual time: each (time, app, class) is an application wanting one request
    (re-asking while queued); a gateway entry (app < 0) tries once. Returns (grant time, ticket)."""
    events = [(t, i, app, cls) for i, (t, app, cls) in enumerate(demand)]
    heapq.heapify(events)
    grants: list[tuple[float, int]] = []
    now = 0.0
    while True:
        nxt = g.next_grant_time(now)
        if events and (nxt is None or events[0][0] <= nxt):
            now, _, app, cls = heapq.heappop(events)
            if app < 0:
                d = g.try_acquire(now, gv.GATEWAY)
            else:
                d = g.request("app%d" % app, cls, now)
            if d.granted:
                grants.append((now, d.ticket))
        elif nxt is not None and nxt <= horizon:
            now = max(now, nxt)
            grants += [(now, d.ticket) for _, d in g.take_grants(now)]
        else:
            return grants


demand_st = st.lists(st.tuples(st.floats(0, 120, allow_nan=False), st.integers(-1, 5),
                               st.sampled_from([gv.FETCH, gv.REGISTER, gv.REFRESH])), min_size=1, max_size=120)


@settings(max_examples=300, deadline=None)
@given(demand=demand_st, burst=st.integers(1, 10), rate=st.sampled_from([1.0, 0.5, 2.0, 3.0]))
def test_grants_replayed_through_the_emulators_throttle_are_never_refused(demand, burst, rate):
    g = gv.Governor(rate=rate, burst=burst, slack=0.0)
    grants = _run_demand(g, demand, horizon=10000.0)
    assert g.waiting() == 0 and len(grants) >= 1     # every queued application was served
    adobe = Throttle(rate=rate, burst=burst)
    refused = [t for t, _ in grants if not adobe.take("box", t)[0]]
    assert refused == []


@settings(max_examples=300, deadline=None)
@given(demand=demand_st, delays=st.lists(st.floats(0, 1, allow_nan=False), min_size=200, max_size=200),
       slack=st.sampled_from([0.05, 0.2, 0.5]))
def test_grants_arriving_with_jitter_up_to_the_slack_are_never_refused(demand, delays, slack):
    # Each grant reaches Adobe after its own delay in [0, slack]: arrivals may reorder.
    g = gv.Governor(slack=slack)
    grants = _run_demand(g, demand, horizon=10000.0)
    arrivals = sorted(t + slack * delays[i % len(delays)] for i, (t, _) in enumerate(grants))
    adobe = Throttle()
    assert [t for t in arrivals if not adobe.take("box", t)[0]] == []


def test_without_the_slack_jittered_arrivals_would_be_refused():
    # The reason for `slack`: two grants one refill apart, the first arriving late, the second early.
    g = gv.Governor(burst=1, slack=0.0)
    t1 = g.request("a", gv.FETCH, 0.0)
    t2 = g.request("b", gv.FETCH, 0.0)
    assert t1.granted and not t2.granted
    (_, d2), = g.take_grants(t2.at)
    adobe = Throttle(burst=1)
    assert adobe.take("box", 0.0 + 0.2)[0]
    assert not adobe.take("box", d2.at + 0.0)[0]


def test_a_429_forgets_the_burst_so_the_next_grants_fit_an_empty_bucket():
    # Another box behind the NAT spent the address's burst: the first 429 resets the model.
    g = gv.Governor(slack=0.0, random=lambda: 0.0)
    adobe = Throttle()
    for _i in range(10):
        adobe.take("box", 0.0)       # someone else's burst
    d = g.request("a", gv.FETCH, 1.0)
    assert d.granted and adobe.take("box", 1.0)[0]   # the refill since 0
    d2 = g.request("b", gv.FETCH, 1.0)
    assert d2.granted and not adobe.take("box", 1.0)[0]
    g.on_throttled(1.1, window=3.0, ticket=d2.ticket)
    got = drain_requests(g, ["b", "c", "d"], 1.1, 20.0)
    assert [adobe.take("box", t)[0] for t in got] == [True, True, True]


def drain_requests(g: gv.Governor, keys: list[str], now: float, until: float) -> list[float]:
    for k in keys:
        d = g.request(k, gv.FETCH, now)
        assert not d.granted
    return [t for t, _ in drain(g, now, until)]


# ------------------------------------------------------------------ real parts: the emulator over HTTP

class Box:
    """A box's shell in miniature: real lifecycles (one per application), one governor, real DCR
    requests over HTTP to the emulator; virtual time (the emulator's clock is the same variable)."""

    def __init__(self, emu, clock: list, apps: int, name: str, seed: int) -> None:
        import random

        from agent import lifecycle

        self.emu, self.clock, self.name = emu, clock, name
        rng = random.Random(seed)
        self.gov = gv.Governor(random=rng.random)
        self.lcs, self.statements, self.queued, self.tickets = [], [], set(), {}
        self.grants: list[tuple[float, int]] = []   # (time, app)
        self.pauses: list[tuple[float, float]] = []  # (429 time, pause end)
        for k in range(apps):
            st_text = emu.mint_statement(app_id="%s-app%d" % (name, k))
            ident = lifecycle.statement_identity(st_text, "app%d.jwt" % k)
            lc = lifecycle.Lifecycle(random=rng.random, throttle_spread=0.05, throttle_min=1.2)
            lc.load(None, ident, "h%d" % k, clock[0], 1.7e9 + clock[0])
            self.lcs.append(lc)
            self.statements.append((st_text, ident))

    def done(self) -> bool:
        return all(lc.tok is not None for lc in self.lcs)

    def next_time(self) -> float | None:
        times = [lc.next_deadline() for k, lc in enumerate(self.lcs) if k not in self.queued]
        times = [t for t in times if t is not None]
        g = self.gov.next_grant_time(self.clock[0])
        return min(times + ([g] if g is not None else []), default=None)

    def step(self) -> None:
        from agent.emulator.client import device_info

        now = self.clock[0]
        go = []
        for k, lc in enumerate(self.lcs):
            due = lc.next_deadline()
            if k in self.queued or due is None or due > now:
                continue
            op = "register" if lc.client is None or lc.pending_register else "token"
            d = self.gov.request(k, gv.dcr_class(op, lc.token(now) is not None), now)
            if d.granted:
                go.append((k, d.ticket))
            else:
                self.queued.add(k)
        for k, d in self.gov.take_grants(now):
            self.queued.discard(k)
            go.append((k, d.ticket))
        for k, ticket in go:
            self._send(k, ticket, now, device_info())

    def _send(self, k: int, ticket: int, now: float, xdi: str) -> None:
        from agent import dcr
        from agent.errors import AgentError

        lc = self.lcs[k]
        req = lc.poll(now)
        assert req is not None
        self.grants.append((now, k))
        st_text, ident = self.statements[k]
        if req["op"] == "register":
            http = dcr.register_request(self.emu.base_url, st_text, xdi)
        else:
            http = dcr.token_request(self.emu.base_url, lc.client["client_id"], lc.client["client_secret"], xdi)
        status, headers, body = dcr.send(http, timeout=10)
        try:
            parse = dcr.parse_register if req["op"] == "register" else dcr.parse_token
            result = parse(status, headers, body, 1.7e9 + now)
        except AgentError as e:
            lc.on_error(e, now, 1.7e9 + now)
            if status == 429:
                self.pauses.append((now, self.gov.on_throttled(now, window=lc.window, retry_after=e.retry_after,
                                                                ticket=ticket)))
            return
        if req["op"] == "register":
            lc.on_registered(result, ident, now, 1.7e9 + now)
        else:
            lc.on_token(result, now, 1.7e9 + now)


def run_boxes(emu, clock: list, boxes: list[Box], limit: int = 5000) -> None:
    for _ in range(limit):
        if all(b.done() for b in boxes):
            return
        for b in boxes:
            b.step()
        if all(b.done() for b in boxes):
            return
        nxt = [t for t in (b.next_time() for b in boxes if not b.done()) if t is not None]
        assert nxt, "nothing scheduled but applications without a token"
        clock[0] = max(clock[0], min(nxt))
    raise AssertionError("the boxes did not all get tokens")


def test_six_applications_through_one_governor_against_the_emulator(tmp_path):
    from agent.emulator import Emulator

    clock = [1000.0]
    with Emulator(state_dir=str(tmp_path), tls=False, clock=lambda: clock[0]) as emu:   # rate 1, one-time burst 10
        box = Box(emu, clock, 6, "solo", seed=1)
        run_boxes(emu, clock, [box])
        log = emu.requests()
    assert [r["status"] for r in log] == [201] * 12          # 6 registers, 6 tokens, not one 429
    adobe = Throttle()
    assert all(adobe.take(r["ip"], r["t"])[0] for r in log)  # the log replayed: never over the bucket
    # The burst went to the six registers and four tokens; the last two tokens are paced 1 s + slack.
    assert clock[0] - 1000.0 == pytest.approx(2 * 1.1, abs=1e-3)
    assert len({lc.client["client_id"] for lc in box.lcs}) == 6


def test_two_boxes_behind_one_address_pause_on_429_and_all_get_tokens(tmp_path):
    # Two boxes of three applications behind one address: 12 requests, so the burst does not cover
    # both. The 429s pause every application of the refused box, and the emulator's log, replayed
    # through the model bucket, agrees with every answer it gave.
    from agent.emulator import Emulator

    clock = [50.0]
    with Emulator(state_dir=str(tmp_path), tls=False, clock=lambda: clock[0], burst=4) as emu:
        boxes = [Box(emu, clock, 3, "box%d" % i, seed=i) for i in range(2)]
        for b in boxes:
            b.gov = gv.Governor(burst=4, random=b.gov.random)
        run_boxes(emu, clock, boxes)
        log = emu.requests()
    statuses = [r["status"] for r in log]
    assert statuses.count(201) == 12 and 429 in statuses
    model = Throttle(burst=4)
    assert [model.take(r["ip"], r["t"])[0] for r in log] == [s != 429 for s in statuses]
    for b in boxes:
        assert b.pauses
        for t429, end in b.pauses:   # nothing left the box while it was paused
            assert not [t for t, _ in b.grants if t429 < t < end]
