"""tools/bench.py finishes without the optional `requests` (the bench extra) and says what it skipped.

The shim benchmark runs for real with `requests` hidden (a package on PYTHONPATH whose import fails,
whether or not requests is installed); its JSON is what `python -m tools.bench` summarises. The other
sections are fixed figures in the shape their benchmarks write: only the summary is under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tools import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shim_without_requests(tmp_path) -> dict:
    hide = tmp_path / "hide" / "requests"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('requests hidden by the test (no bench extra)')\n")
    out = tmp_path / "shim.json"
    env = dict(os.environ, PYTHONPATH=str(hide.parent) + os.pathsep + ROOT)
    r = subprocess.run([sys.executable, "-m", "tools.bench_shim", "--runs", "1", "--posts", "3", "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "`requests` is not installed" in r.stdout
    with open(str(out)) as f:
        return json.load(f)


def _other_sections() -> dict:
    return {"python": "3.x", "cpus": 2, "date": "today",
            "socket": {"echo_p50_us": 20.0, "token_p50_us": 30.0, "throughput_rps": 20000.0},
            "socket_real_daemon": {"echo_p50_us": 20.0, "token_p50_us": 30.0, "ratio_p50": 1.5,
                                   "echo_p99_us": 40.0, "token_p99_us": 60.0},
            "coldstart": {"bare_ready_ms": 20.0, "agent_ready_ms": 90.0, "ready_ratio": 4.5,
                          "bare_pss_kb": 8000, "agent_pss_kb": 16000, "pss_delta_mb": 8.0},
            "store": [{"store": s, "refresh": {"flash_bytes": b}} for s, b in
                      (("naive", 8192), ("flash", 4096), ("runtime", 0))],
            "upstream": {"floor_per_device_day": 4.0, "per_device_day": 5.0, "ratio": 1.25}}


def test_bench_summary_without_requests_finishes_and_says_what_it_skipped(tmp_path):
    shim = _shim_without_requests(tmp_path)
    assert "requests" not in shim["imports"] and "requests" not in shim["latency_ms"]
    res = dict(_other_sections(), shim=shim)
    rows, skipped = bench.summary_rows(res)
    table = bench.format_table(res, rows, skipped)
    assert not [r for r in rows if r[1] == "requests"]  # nothing compared against an unmeasured baseline
    by_name = {r[0]: r for r in rows}
    assert by_name["shim import (ms)"][3] == shim["imports"]["agent.urequests + ssl"]["import_ms"]
    assert by_name["shim POST latency (ms)"][3] == shim["latency_ms"]["agent.urequests"]
    assert len(skipped) == 1 and "requests" in skipped[0] and "[bench]" in skipped[0]
    assert table.splitlines()[-1] == "skipped: " + skipped[0]
    assert "MISSED" not in table


def test_upstream_calls_per_device_day_drive_the_real_lifecycle():
    up = bench.upstream_per_device_day(days=2)
    assert up["calls"]["register"] == 1 and up["calls"]["token"] >= 2 * up["floor_per_device_day"]
    assert up["ratio"] <= 1.5


def test_six_applications_row_stands_next_to_the_single_application_figure_of_the_same_run():
    # Issue 16: token.get p50 with six applications within 10 % of one application, both from one
    # `bench_socket --apps 6` run (its JSON as that benchmark writes it).
    apps = {"requests": 20000, "apps": 6, "client": "uid 65534, no params (hot path)", "single_p50_us": 12.3,
            "apps_p50_us": 12.4, "single_p99_us": 20.0, "apps_p99_us": 21.0, "ratio_p50": 1.008, "target_met": True}
    shim = {"imports": {"agent.urequests + ssl": {"import_ms": 30.0, "pss_kib": 900}},
            "latency_ms": {"agent.urequests": 2.0}}
    res = dict(_other_sections(), shim=shim, socket_apps=apps)
    rows, _ = bench.summary_rows(res)
    (row,) = [r for r in rows if r[0] == "token.get p50, six applications (us)"]
    assert row[1:] == ("1 application", 12.3, 12.4, 1.008, "<= 1.10x", True)
    table = bench.format_table(res, rows, [])
    line = next(x for x in table.splitlines() if x.startswith("token.get p50, six applications"))
    assert "1 application" in line and "12.3" in line and "12.4" in line and "1.01" in line and line.endswith("met")
    slow = dict(res, socket_apps=dict(apps, apps_p50_us=14.0, ratio_p50=1.138, target_met=False))
    (row,) = [r for r in bench.summary_rows(slow)[0] if r[0] == "token.get p50, six applications (us)"]
    assert row[-1] is False and "MISSED" in bench.format_table(slow, [row], [])


def test_as_installed_rows_stand_next_to_the_earlier_start_up_figures_with_one_stated_baseline():
    # Issue 20: spawn -> READY and idle PSS of the overlay's zipapp (python3 -I) against the same bare
    # interpreter as the editable figures, which stay in the table; the baseline is printed.
    cold = dict(_other_sections()["coldstart"], box_ready_ms=36.0, box_ready_ratio=1.8, box_pss_kb=14000,
                box_pss_delta_mb=5.8, baseline="bare interpreter: /usr/bin/python3 -I -c BARE (sends READY=1, then sleeps)")
    shim = {"imports": {"agent.urequests + ssl": {"import_ms": 30.0, "pss_kib": 900}},
            "latency_ms": {"agent.urequests": 2.0}}
    res = dict(_other_sections(), shim=shim, coldstart=cold)
    rows, skipped = bench.summary_rows(res)
    by_name = {r[0]: r for r in rows}
    assert by_name["spawn -> READY from stored token (ms)"][2:4] == (20.0, 90.0)  # the earlier figure stays
    assert by_name["spawn -> READY, as installed (ms)"][1:] == ("bare python", 20.0, 36.0, 1.8, "<= 2.0x", True)
    assert by_name["idle PSS, as installed (kB)"][1:4] == ("bare python", 8000, 14000)
    assert by_name["idle PSS, as installed (kB)"][5:] == ("<= +6 MB", True)
    assert by_name["token.get p50, real daemon (us)"][5] == "<= 2.0x"
    table = bench.format_table(res, rows, skipped)
    assert "bare python: /usr/bin/python3 -I -c BARE (sends READY=1, then sleeps)" in table.splitlines()
    assert table.splitlines()[-1].startswith("skipped: ")
    slow = dict(res, coldstart=dict(cold, box_ready_ratio=4.3, box_pss_delta_mb=9.6, box_pss_kb=17800))
    missed = {r[0]: r[-1] for r in bench.summary_rows(slow)[0]}
    assert missed["spawn -> READY, as installed (ms)"] is False and missed["idle PSS, as installed (kB)"] is False
