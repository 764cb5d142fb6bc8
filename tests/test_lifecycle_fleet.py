"""The fleet simulation (tools/fleetsim.py) on a small fleet: it drives the real lifecycle and the
agent's throttle policy keeps its promises against the floor and the naive client."""

from __future__ import annotations

import json

import pytest

from agent import lifecycle
from tools import fleetsim


def test_city_herd_small_fleet_near_the_floor_with_far_fewer_requests_than_naive():
    r = fleetsim.run_scenario(fleetsim.scenario_city(1000, 100), seed=3, naive_sample=1)
    a, n, f = r["agent"], r["naive"], r["floor"]
    assert a["gave_up"] == 0 and a["devices"] == 1000
    assert f["time_to_all_s"] == 190.5
    assert a["time_to_all_s"] <= 1.5 * f["time_to_all_s"]
    assert a["requests_per_device"] * 2 < n["requests_per_device"]
    assert r["curves"]["agent"][-1][1] == 1000


def test_the_simulation_drives_the_real_lifecycle(monkeypatch):
    made = []
    real = lifecycle.Lifecycle

    class Spy(real):
        def __init__(self, *a, **k):
            real.__init__(self, *a, **k)
            made.append(self)

    monkeypatch.setattr(lifecycle, "Lifecycle", Spy)
    fleetsim.run_case(fleetsim.scenario_city(30, 10), "agent", seed=1)
    assert len(made) == 30
    assert all(lc.state == lifecycle.TOKEN_VALID and lc.counters["register"]["ok"] == 1 for lc in made)


def test_outage_and_revocation_recover_every_box(tmp_path):
    out = tmp_path / "f.json"
    svg = tmp_path / "f.svg"
    rc = fleetsim.main(["--scenario", "all", "--devices", "200", "--ratios", "1,50", "--ratio", "50",
                        "--json", str(out), "--svg", str(svg)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert [r["scenario"] for r in data["results"]] == ["city", "city", "outage", "revocation"]
    assert all(r["agent"]["gave_up"] == 0 for r in data["results"])
    assert data["policy"]["throttle_spread"] == 0.25 and data["policy"]["outage_cap"] == 60.0
    for r in data["results"]:
        # No client in the run gets fewer 429s than the lower bound while meeting the time target.
        for who in ("agent", "naive"):
            if r[who]["time_to_all_s"] is not None and r[who]["time_to_all_s"] <= 1.3 * r["floor"]["time_to_all_s"]:
                assert r[who]["share_429"] >= r["share_429_floor"]
    out = [r for r in data["results"] if r["scenario"] == "outage"][0]["agent"]
    assert 60 <= out["down_req_per_hour_without_token"] <= 160  # ~120: the outage cap's bounded load
    assert out["down_req_per_hour_with_token"] < 10
    assert svg.read_text().startswith("<svg") and svg.read_text().count("<polyline") == 12


def test_the_429_floor_follows_from_the_first_wave():
    # R boxes, register + token each: at most 10 requests get through by 0.525 s, at most 5 of them
    # token requests, so at least R - 5 are refused; at most 10 + 1.3 x floor succeed in time.
    city = fleetsim.scenario_city
    assert fleetsim.floor_429(city(100, 1), 0.5) == 0.0
    assert fleetsim.floor_429(city(100, 5), 0.5) == 0.0
    assert abs(fleetsim.floor_429(city(100, 10), 10.5) - 5 / (5 + 23)) < 1e-9
    assert abs(fleetsim.floor_429(city(1000, 1000), 1990.5) - 995 / (995 + 2597)) < 1e-9
    assert fleetsim.floor_429(fleetsim.scenario_outage(1000, 1000), 200.0) == 0.0


def test_the_recovery_floor_serves_lacking_boxes_first_then_by_expiry():
    # 12 boxes lack a token: burst 10 at once, then 1/s; a holder expiring at 1 s cannot be reached
    # before it expires (the 13th request is admitted at 3 s), one expiring at 100 s can.
    t_all, events, requests = fleetsim.floor_recovery(12, [100.0, 1.0])
    assert t_all == 3.0 + fleetsim.RTT[1]
    assert (1.0, -1) in events and requests == 13
    assert sum(d for _, d in events) == 12
    assert fleetsim.floor_recovery(0, [5000.0]) == (0.0, [], 0)


def test_a_client_acting_for_ever_at_one_instant_fails_loudly(monkeypatch):
    """Issue 21: a lifecycle that keeps asking at the same virtual time made the drivers spin for ever."""
    real = lifecycle.Lifecycle

    class Spinning(real):
        def poll(self, now):
            return None  # never acts...

        def next_deadline(self):
            return 5.0   # ...but is always due at t = 5 s

    monkeypatch.setattr(lifecycle, "Lifecycle", Spinning)
    with pytest.raises(RuntimeError, match=r"stuck at t=[0-9.]+ s: 10000 events without time moving"):
        fleetsim.run_case(fleetsim.scenario_city(3, 3), "agent", seed=1)
