"""The fleet simulation (tools/fleetsim.py) on a small fleet: it drives the real lifecycle and the
agent's throttle policy keeps its promises against the floor and the naive client."""

from __future__ import annotations

import json

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
    assert data["policy"]["throttle_spread"] == 0.2
    assert svg.read_text().startswith("<svg") and svg.read_text().count("<polyline") == 12
