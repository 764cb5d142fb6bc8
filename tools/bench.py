"""Every benchmark of the product in one run: `python -m tools.bench [--quick] [--out DIR]`.

Runs the component benchmarks (each as its own process, each with its own in-run baseline: e.g.
`bench_socket --apps 6` measures token.get on a daemon with six applications against one with a
single application, issue 16), adds
two figures measured here (token.get against the real daemon process, and upstream calls per
device-day from the real lifecycle in virtual time), prints one table of figure / baseline / value /
ratio / target, and writes the same as JSON (default docs/bench/latest.json and latest.txt).

Without `requests` (the `bench` extra) the shim-vs-requests rows are left out and the table ends with
a `skipped:` line saying so.

Must never: leave processes or sockets behind; report a figure it did not measure in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _sub(module: str, args: list, tmp: str, name: str | None = None) -> dict:
    out = os.path.join(tmp, (name or module.rsplit(".", 1)[-1]) + ".json")
    cmd = [sys.executable, "-m", module, *args, "--json", out]
    print("$ " + " ".join(cmd[1:]), flush=True)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    print(r.stdout.rstrip(), flush=True)
    if r.returncode not in (0, 1) or not os.path.exists(out):
        raise RuntimeError("%s failed (exit %d): %s" % (module, r.returncode, r.stderr[-2000:]))
    with open(out) as f:
        return json.load(f)


def upstream_per_device_day(days: int = 10, ttl: int = 21600) -> dict:
    """Drive the real lifecycle for `days` of virtual time with `ttl` tokens; count upstream calls."""
    from agent.lifecycle import Lifecycle

    rng = random.Random(7)
    lc = Lifecycle(random=rng.random)
    now, wall = 0.0, 1.7e9
    lc.load(None, "app", "hash", now, wall)
    calls = {"register": 0, "token": 0}
    end = days * 86400.0
    while now < end:
        req = lc.poll(now)
        if req is None:
            nxt = lc.next_deadline()
            now = end if nxt is None else max(nxt, now)
            continue
        calls[req["op"]] += 1
        if req["op"] == "register":
            lc.on_registered({"client_id": "c", "client_secret": "s"}, "app", now, wall + now)
        else:
            lc.on_token({"access_token": "t%d" % calls["token"], "token_type": "bearer", "expires_in": ttl},
                        now, wall + now)
    floor = 86400.0 / ttl  # one token per lifetime: the fewest calls that keep a token valid all day
    per_day = (calls["token"] + calls["register"]) / days
    return {"days": days, "ttl": ttl, "calls": calls, "per_device_day": round(per_day, 3),
            "floor_per_device_day": floor, "ratio": round(per_day / floor, 3),
            "naive_per_device_day_1_call_per_min": 1440}


def real_daemon_latency(n: int) -> dict:
    """token.get p50/p99 against the real `pass-agent run` process, and the echo floor, both pinned to CPU 0."""
    from agent.client import Client
    from tools import bench_socket as bs
    from tools.bench_coldstart import _spawn_until_ready, agent_against_emulator

    tmp, emu, cfg, cfg_path = agent_against_emulator("bench-daemon-")
    echo_path = os.path.join(tmp, "echo.sock")
    echo = bs._start(bs._run_echo, echo_path, 0)
    _, agent = _spawn_until_ready([sys.executable, "-m", "agent", "run", "--config", cfg_path], tmp)
    saved = os.sched_getaffinity(0)
    try:
        with Client(cfg.socket.path, timeout=20) as c:
            c.token(wait=15)
        os.sched_setaffinity(agent.pid, {0})
        os.sched_setaffinity(0, {0})
        echo_us, tok_us = [], []
        for _ in range(4):  # interleaved quarters, as bench_socket does: machine noise hits both series alike
            echo_us += bs._roundtrips(echo_path, n // 4, 500)
            tok_us += bs._roundtrips(cfg.socket.path, n // 4, 500)
    finally:
        os.sched_setaffinity(0, saved)
        agent.terminate()
        agent.wait(10)
        echo.kill()
        emu.stop()
    e50, t50 = statistics.median(echo_us), statistics.median(tok_us)
    return {"requests": n, "echo_p50_us": round(e50, 2), "token_p50_us": round(t50, 2),
            "token_p99_us": round(bs._pct(tok_us, 0.99), 2), "echo_p99_us": round(bs._pct(echo_us, 0.99), 2),
            "ratio_p50": round(t50 / e50, 2)}


APPS = 6  # applications of the issue 16 figure (bench_socket --apps)
APP_WORDS = {6: "six"}


def summary_rows(res: dict) -> tuple[list[tuple], list[str]]:
    """The table rows (figure, baseline name, baseline, value, ratio, target, met) of one run, and what
    was skipped because it was not measured (the `requests` comparison without the bench extra)."""
    s, d, c, sh, up = res["socket"], res["socket_real_daemon"], res["coldstart"], res["shim"], res["upstream"]
    stores = {x["store"]: x for x in res["store"]}
    imp, lat = sh["imports"], sh["latency_ms"]
    shim_ssl = imp["agent.urequests + ssl"]
    skipped: list[str] = []
    rows = [
        # figure, baseline name, baseline, value, ratio, target, met
        ("token.get p50, stand-in service (us)", "echo p50", s["echo_p50_us"], s["token_p50_us"],
         s["token_p50_us"] / s["echo_p50_us"], "<= 2.5x", s["token_p50_us"] <= 2.5 * s["echo_p50_us"]),
        ("token.get p50, real daemon (us)", "echo p50", d["echo_p50_us"], d["token_p50_us"], d["ratio_p50"],
         "<= 2.0x", d["ratio_p50"] <= 2.0),  # issue 20 (issue 8 asked <= 2.5x)
        ("token.get p99, real daemon (us)", "echo p99", d["echo_p99_us"], d["token_p99_us"],
         d["token_p99_us"] / d["echo_p99_us"], "< 1000 us", d["token_p99_us"] < 1000),
    ]
    if "socket_apps" in res:  # issue 16: both figures from one `bench_socket --apps N` run
        a = res["socket_apps"]
        rows.append(("token.get p50, %s applications (us)" % APP_WORDS.get(a["apps"], a["apps"]), "1 application",
                     a["single_p50_us"], a["apps_p50_us"], a["ratio_p50"], "<= 1.10x",
                     a["apps_p50_us"] <= 1.10 * a["single_p50_us"]))
    rows += [
        ("throughput, 32 clients (req/s)", "", None, round(s["throughput_rps"]), None, ">= 10000",
         s["throughput_rps"] >= 10000),
        ("spawn -> READY from stored token (ms)", "bare python", c["bare_ready_ms"], c["agent_ready_ms"],
         c["ready_ratio"], "<= 150 ms", c["agent_ready_ms"] <= 150),
        ("idle PSS (kB)", "bare python", c["bare_pss_kb"], c["agent_pss_kb"],
         c["agent_pss_kb"] / c["bare_pss_kb"], "<= +10 MB", c.get("pss_delta_mb", 99) <= 10),
    ]
    if "box_ready_ms" in c:  # issue 20: the agent as installed on a box (the overlay's launcher and modules, python3 -I)
        rows += [("spawn -> READY, as installed (ms)", "bare python", c["bare_ready_ms"], c["box_ready_ms"],
                  c["box_ready_ratio"], "<= 2.0x", c["box_ready_ratio"] <= 2.0),
                 ("idle PSS, as installed (kB)", "bare python", c["bare_pss_kb"], c["box_pss_kb"],
                  c["box_pss_kb"] / c["bare_pss_kb"], "<= +6 MB", c.get("box_pss_delta_mb", 99) <= 6)]
    if "box_steady_pss_kb" in c:  # issue 20: every box's real state, after it talked to Adobe (helper exited)
        rows.append(("idle PSS after a refresh, as installed (kB)", "bare python", c["steady_bare_pss_kb"],
                     c["box_steady_pss_kb"], c["box_steady_pss_kb"] / c["steady_bare_pss_kb"], "<= +6 MB",
                     c["box_steady_pss_delta_mb"] <= 6))
    if "pkcs11_ready_ms" in c:  # the key provider's price at start-up (issue 19), same run as the device figure
        rows += [("spawn -> READY, key provider pkcs11 (ms)", "device", c["agent_ready_ms"], c["pkcs11_ready_ms"],
                  c["pkcs11_vs_device_ratio"], "reported", True),
                 ("token.get, pkcs11 agent (us)", "device", c["token_get_us_device"], c["token_get_us_pkcs11"],
                  c["token_get_us_pkcs11"] / c["token_get_us_device"], "<= 1.25x",
                  c["token_get_us_pkcs11"] <= 1.25 * c["token_get_us_device"])]
    if "requests" in imp and "requests" in lat:
        req = imp["requests"]
        rows += [
            ("shim import (ms)", "requests", req["import_ms"], shim_ssl["import_ms"],
             shim_ssl["import_ms"] / req["import_ms"], "< requests", shim_ssl["import_ms"] < req["import_ms"]),
            ("shim +PSS after import (KiB)", "requests", req["pss_kib"], shim_ssl["pss_kib"],
             shim_ssl["pss_kib"] / req["pss_kib"], "< requests", shim_ssl["pss_kib"] < req["pss_kib"]),
            ("shim POST latency (ms)", "requests", lat["requests"], lat["agent.urequests"],
             lat["agent.urequests"] / lat["requests"], "<= requests", lat["agent.urequests"] <= lat["requests"]),
        ]
    else:
        # Still report the shim's own figures (no target: met is None); only the comparison needs `requests`.
        rows += [("shim import (ms)", "", None, shim_ssl["import_ms"], None, "", None),
                 ("shim POST latency (ms)", "", None, lat["agent.urequests"], None, "", None)]
        skipped.append("the shim-vs-requests comparison (import time, PSS, POST latency): `requests` is not "
                       "installed; pip install -e '.[bench]' to measure it")
    rows += [
        ("flash bytes per token refresh", "naive store", stores["naive"]["refresh"]["flash_bytes"],
         stores["flash"]["refresh"]["flash_bytes"],
         stores["flash"]["refresh"]["flash_bytes"] / stores["naive"]["refresh"]["flash_bytes"], "1 slot", True),
        ("flash bytes per refresh, runtime cache", "naive store", stores["naive"]["refresh"]["flash_bytes"],
         stores["runtime"]["refresh"]["flash_bytes"], 0.0, "0", stores["runtime"]["refresh"]["flash_bytes"] == 0),
        ("upstream calls per device-day (6 h tokens)", "1 per lifetime", up["floor_per_device_day"],
         up["per_device_day"], up["ratio"], "<= 1.5x", up["ratio"] <= 1.5),
    ]
    if "gateway" in res:  # the REST API v2 gateway (issue 17), tools/bench_gateway.py
        o, g = res["gateway"]["overhead"], res["gateway"]["startup"]
        rows += [
            ("gateway GET configuration p50 (ms)", "direct shim", o["direct_p50_ms"], o["proxied_p50_ms"],
             o["proxied_p50_ms"] / o["direct_p50_ms"], "<= +1 ms", o["added_p50_ms"] <= 1.0),
            ("gateway configuration cache hit p50 (ms)", "direct shim", o["direct_p50_ms"], o["cache_hit_p50_ms"],
             o["cache_hit_p50_ms"] / o["direct_p50_ms"], "reported", True),
            ("spawn -> READY, gateway off (ms)", "before gw", g["baseline_ready_ms"], g["off_ready_ms"],
             g["off_vs_baseline_ready_ratio"], "unchanged", g["off_vs_baseline_ready_ratio"] <= 1.1),
            ("idle PSS, gateway off (kB)", "before gw", g["baseline_pss_kb"], g["off_pss_kb"],
             g["off_pss_kb"] / g["baseline_pss_kb"], "unchanged", g["off_minus_baseline_pss_kb"] <= 512),
        ]
    return rows, skipped


def format_table(res: dict, rows: list[tuple], skipped: list[str], quick: bool = False) -> str:
    """The printed table: one line per figure, then one `skipped:` line per figure not measured."""
    lines = ["pass-agent benchmarks, %s, Python %s, %d CPUs%s" % (res["date"], res["python"], res["cpus"],
                                                                  " (quick)" if quick else ""),
             "%-44s %-15s %10s %10s %7s  %-10s %s" % ("figure", "baseline", "base", "value", "ratio", "target", ""),
             "-" * 110]
    for name, bname, base, value, ratio, target, met in rows:
        lines.append("%-44s %-15s %10s %10s %7s  %-10s %s" % (
            name, bname, "" if base is None else ("%.1f" % base if isinstance(base, float) else base),
            "%.1f" % value if isinstance(value, float) else value, "" if ratio is None else "%.2f" % ratio,
            target, "" if met is None else "met" if met else "MISSED"))
    if res.get("coldstart", {}).get("baseline"):  # one baseline process for every start-up and memory row
        lines.append("bare python: " + res["coldstart"]["baseline"].split(": ", 1)[-1])
    lines += ["skipped: " + what for what in skipped]
    return "\n".join(lines)


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (noisier figures)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"), help="where latest.json/.txt go")
    args = ap.parse_args(argv)
    q = args.quick
    tmp = tempfile.mkdtemp(prefix="bench-all-")
    res: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    res["socket"] = _sub("tools.bench_socket", ["--requests", "5000" if q else "20000"], tmp)
    res["socket_real_daemon"] = real_daemon_latency(5000 if q else 20000)
    res["socket_apps"] = _sub("tools.bench_socket", ["--apps", str(APPS), "--requests", "5000" if q else "20000"],
                              tmp, name="bench_socket_apps")
    res["coldstart"] = _sub("tools.bench_coldstart", ["--runs", "5" if q else "15"], tmp)
    res["shim"] = _sub("tools.bench_shim", ["--runs", "5" if q else "15"], tmp)
    res["store"] = _sub("tools.bench_store", [], tmp)
    res["upstream"] = upstream_per_device_day()
    res["gateway"] = _sub("tools.bench_gateway", ["--requests", "100" if q else "300", "--runs", "5" if q else "9"], tmp)

    rows, skipped = summary_rows(res)
    table = format_table(res, rows, skipped, q)
    print("\n" + table)
    res["table"] = [dict(zip(("figure", "baseline", "base", "value", "ratio", "target", "met"), r)) for r in rows]
    res["skipped"] = skipped
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "latest.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(os.path.join(args.out, "latest.txt"), "w") as f:
        f.write(table + "\n")
    print("\nwrote %s/latest.json and latest.txt" % args.out)
    return 0 if all(r[-1] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
