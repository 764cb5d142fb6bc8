"""Benchmark: the agent's urequests shim against `requests`, in one run.

Measures (1) import time in fresh interpreters (median of N), (2) memory added by the import
(RSS from /proc/self/status and PSS from /proc/self/smaps_rollup, each minus a bare-interpreter
baseline measured the same way, median of N), and (3) median latency of a POST over plain HTTP to
the local Adobe Pass emulator (agent.emulator.Emulator, imported plainly: a broken emulator fails the
run rather than quietly benchmarking another server). Both clients open a new connection per request, as the shim always does; a
keep-alive `requests.Session` row is printed for reference. `requests` is imported lazily: it is
a benchmark-only dependency (extra `bench`) and the run says so when it is missing.

Usage: python -m tools.bench_shim [--runs N] [--posts N] [--json FILE]
Must never: talk to anything but loopback, or need `requests` for the agent itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROBE = r"""
import sys, time
t0 = time.perf_counter()
for m in sys.argv[1:]:
    __import__(m)
dt = time.perf_counter() - t0
def field(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
print(dt, field("/proc/self/status", "VmRSS"), field("/proc/self/smaps_rollup", "Pss"))
"""

SUBJECTS = [
    ("agent.urequests", ["agent.urequests"]),
    ("agent.urequests + ssl", ["agent.urequests", "ssl"]),  # the shim loads ssl on first HTTPS use
    ("requests", ["requests"]),
]


def probe(modules: list[str], runs: int) -> dict[str, float | None]:
    times, rss, pss = [], [], []
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True,
                             env=env, cwd=str(ROOT), timeout=120)
        if out.returncode != 0:
            raise RuntimeError("probe of %s failed: %s" % (modules, out.stderr.strip()[-500:]))
        dt, r, p = out.stdout.split()
        times.append(float(dt))
        rss.append(int(r))
        if p != "None":
            pss.append(int(p))
    return {"import_ms": statistics.median(times) * 1000, "rss_kib": statistics.median(rss),
            "pss_kib": statistics.median(pss) if pss else None}


def start_target():
    """(url, json body, headers, stop function, description)."""
    from agent.emulator import Emulator

    logging.getLogger().setLevel(logging.WARNING)
    emu = Emulator(tls=False, throttle=False).start()
    logging.getLogger("pass-emulator").setLevel(logging.WARNING)
    info = "eyJtb2RlbCI6IkJlbmNoIiwidmVyc2lvbiI6IjEiLCJvc05hbWUiOiJMaW51eCIsIm9zVmVyc2lvbiI6IjYiLCJjb25uZWN0aW9uVHlwZSI6IkxBTiJ9"
    body = {"software_statement": emu.mint_statement()}
    headers = {"Content-Type": "application/json;charset=utf-8", "X-Device-Info": info}
    return emu.base_url + "/client/register", body, headers, emu.stop, "emulator POST /o/client/register"


def latency(posts: int) -> tuple[dict[str, float], str]:
    from agent import urequests

    try:
        import requests
    except ImportError:
        requests = None
    url, body, headers, stop, what = start_target()
    clients = {"agent.urequests": lambda: urequests.post(url, json=body, headers=headers, timeout=10)}
    if requests is not None:
        session = requests.Session()
        clients["requests"] = lambda: requests.post(url, json=body, headers=headers, timeout=10)
        clients["requests.Session (keep-alive)"] = lambda: session.post(url, json=body, headers=headers, timeout=10)
    samples: dict[str, list[float]] = {k: [] for k in clients}
    try:
        for _ in range(10):  # warm up every client and the server
            for fn in clients.values():
                fn()
        for _ in range(posts):  # interleaved, so machine noise hits every client alike
            for name, fn in clients.items():
                t0 = time.perf_counter()
                r = fn()
                samples[name].append(time.perf_counter() - t0)
                if r.status_code != 201:
                    raise RuntimeError("%s got HTTP %d from %s" % (name, r.status_code, what))
    finally:
        stop()
    return {k: statistics.median(v) * 1000 for k, v in samples.items()}, what


def _ratio(a: float | None, b: float | None) -> str:
    return "%.2f" % (a / b) if a is not None and b else "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="fresh interpreters per import measurement")
    ap.add_argument("--posts", type=int, default=200, help="timed POSTs per client")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    a = ap.parse_args(argv)

    try:
        import requests  # noqa: F401
        have_requests = True
    except ImportError:
        have_requests = False
        print("note: `requests` is not installed (pip install '.[bench]'); only the shim is measured")

    base = probe([], a.runs)
    imports = {}
    for label, mods in SUBJECTS:
        if mods[0] == "requests" and not have_requests:
            continue
        m = probe(mods, a.runs)
        imports[label] = {"import_ms": m["import_ms"], "rss_kib": m["rss_kib"] - base["rss_kib"],
                          "pss_kib": (m["pss_kib"] - base["pss_kib"]) if m["pss_kib"] is not None
                          and base["pss_kib"] is not None else None}
    lat, target = latency(a.posts)

    print("python %s, %d fresh interpreters per import figure, %d POSTs per client (%s)"
          % (sys.version.split()[0], a.runs, a.posts, target))
    print("baseline interpreter: RSS %d KiB, PSS %s KiB" % (base["rss_kib"], base["pss_kib"]))
    print()
    print("%-32s %10s %12s %12s" % ("import", "time ms", "+RSS KiB", "+PSS KiB"))
    for label, m in imports.items():
        print("%-32s %10.2f %12d %12s" % (label, m["import_ms"], m["rss_kib"],
                                          "n/a" if m["pss_kib"] is None else "%d" % m["pss_kib"]))
    print()
    print("%-32s %10s" % ("POST latency (median)", "ms"))
    for label, ms in lat.items():
        print("%-32s %10.3f" % (label, ms))
    ratios = {}
    if "requests" in imports:
        s, r = imports["agent.urequests"], imports["requests"]
        s_ssl = imports["agent.urequests + ssl"]
        ratios = {
            "import_time": _ratio(s["import_ms"], r["import_ms"]),
            "import_time_with_ssl": _ratio(s_ssl["import_ms"], r["import_ms"]),
            "rss": _ratio(s["rss_kib"], r["rss_kib"]),
            "rss_with_ssl": _ratio(s_ssl["rss_kib"], r["rss_kib"]),
            "pss": _ratio(s["pss_kib"], r["pss_kib"]),
            "pss_with_ssl": _ratio(s_ssl["pss_kib"], r["pss_kib"]),
            "latency": _ratio(lat["agent.urequests"], lat["requests"]),
            "latency_vs_keepalive_session": _ratio(lat["agent.urequests"], lat["requests.Session (keep-alive)"]),
        }
        print()
        print("ratios shim/requests (below 1 = shim better):")
        for k, v in ratios.items():
            print("  %-30s %s" % (k, v))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"python": sys.version.split()[0], "runs": a.runs, "posts": a.posts, "target": target,
                       "baseline": base, "imports": imports, "latency_ms": lat, "ratios": ratios}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
