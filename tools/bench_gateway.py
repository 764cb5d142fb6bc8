"""Benchmark of the REST API v2 gateway (issue 17), every figure against a baseline measured in the same run.

1. Overhead: `GET /api/v2/{sp}/configuration` through the real daemon's gateway socket against the same
   request made directly with the urequests shim to the emulator (same TLS, same headers: the direct
   client takes them from `headers.get`), interleaved call by call. The proxied calls send
   `Cache-Control: no-cache`, so every one goes to the emulator (the cache-bypassing path); cache hits
   are measured separately. Target: the gateway adds <= 1 ms at p50.
2. Gateway not configured: spawn -> READY=1 and idle PSS of `pass-agent run` without [gateway], against
   the same agent from the commit before the gateway (`git archive` of it, the baseline), and with the
   gateway enabled for information, runs interleaved. Target: unchanged (within noise).

The agent under test runs through a small launcher that raises the box-wide governor's budget (its
try_acquire still runs on every call): this measures the gateway, not Adobe's 1 request/s. The emulator
runs without its throttle, over HTTPS.

Usage: python -m tools.bench_gateway [--requests N] [--runs N] [--baseline REV] [--json FILE]
Must never: leave processes or files behind; report a figure it did not measure in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.bench_coldstart import _mem  # noqa: E402

SP = "REF30"
# Raise the governor's budget in the agent under test (a benchmark of the gateway, not of Adobe's budget).
LAUNCHER = ("import sys\n"
            "from agent import governor\n"
            "_init = governor.Governor.__init__\n"
            "def init(self, *a, **kw):\n"
            "    kw.update(rate=1e6, burst=10**9)\n"
            "    _init(self, *a, **kw)\n"
            "governor.Governor.__init__ = init\n"
            "from agent.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")


def _pct(xs: list, p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def _spawn(cmd: list, tmp: str, cwd: str) -> tuple:
    path = os.path.join(tmp, "notify-%d.sock" % time.monotonic_ns())
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    env.pop("WATCHDOG_USEC", None)
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    try:
        while "READY=1" not in s.recv(4096).decode():
            pass
    except socket.timeout:
        p.kill()
        raise RuntimeError("no READY=1 from %s" % " ".join(cmd))
    dt = time.perf_counter() - t0
    s.close()
    os.unlink(path)
    return dt, p


def _stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def overhead(tmp: str, emu, n: int) -> dict:
    from agent import config as configmod
    from agent import urequests
    from agent.client import Client
    from agent.gateway import client as gwclient

    statement = os.path.join(tmp, "statement.jwt")
    emu.write_statement(statement)
    cfg = configmod.local(os.path.join(tmp, "gw"), emu.base_url, statement, emu.ca_file, log={"level": "warning"},
                          gateway={"enabled": True, "path": os.path.join(tmp, "gw", "api.sock"), "mode": 0o600})
    os.makedirs(os.path.join(tmp, "gw"))
    cfg_path = configmod.write(cfg, os.path.join(tmp, "gw", "agent.toml"))
    _, agent = _spawn([sys.executable, "-c", LAUNCHER, "run", "--config", cfg_path], tmp, ROOT)
    try:
        with Client(cfg.socket.path, timeout=20) as c:
            hdrs = c.call("headers.get", {"wait": 15})["headers"]
        url = configmod.gateway_origin(emu.base_url) + "/api/v2/%s/configuration" % SP
        gw = gwclient.UnixHTTPConnection(cfg.gateway.path)
        direct_ms, proxied_ms, cached_ms = [], [], []

        def direct() -> None:
            r = urequests.request("GET", url, headers=dict(hdrs, Accept="application/json"), timeout=10,
                                  ca_file=emu.ca_file, max_redirects=0)
            assert r.status_code == 200, r.status_code

        def proxied(fresh: bool) -> None:
            st, _, _ = gwclient.call(gw, "GET", "/api/v2/%s/configuration" % SP,
                                     headers={"Accept": "application/json",
                                              **({"Cache-Control": "no-cache"} if fresh else {})})
            assert st == 200, st

        for _ in range(20):  # warm both paths (TLS contexts, the gateway's thread, caches)
            direct()
            proxied(True)
        for _ in range(n):
            t0 = time.perf_counter()
            direct()
            t1 = time.perf_counter()
            proxied(True)
            t2 = time.perf_counter()
            proxied(False)
            t3 = time.perf_counter()
            direct_ms.append((t1 - t0) * 1e3)
            proxied_ms.append((t2 - t1) * 1e3)
            cached_ms.append((t3 - t2) * 1e3)
        gw.close()
    finally:
        _stop(agent)
    d50, p50, c50 = statistics.median(direct_ms), statistics.median(proxied_ms), statistics.median(cached_ms)
    return {"requests": n, "direct_p50_ms": round(d50, 3), "proxied_p50_ms": round(p50, 3),
            "added_p50_ms": round(p50 - d50, 3), "direct_p99_ms": round(_pct(direct_ms, 0.99), 3),
            "proxied_p99_ms": round(_pct(proxied_ms, 0.99), 3), "cache_hit_p50_ms": round(c50, 3)}


def _baseline_tree(tmp: str, rev: str | None) -> tuple[str, str]:
    """The agent from before the gateway: `rev`, else the parent of the first commit that added agent/gateway."""
    if rev is None:
        first = subprocess.run(["git", "rev-list", "--reverse", "HEAD", "--", "agent/gateway"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
        if not first:
            raise RuntimeError("no commit adds agent/gateway; pass --baseline REV")
        rev = first[0] + "^"
    rev = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    dest = os.path.join(tmp, "baseline")
    os.makedirs(dest)
    archive = subprocess.run(["git", "archive", rev, "agent", "board"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", dest], input=archive.stdout, check=True)
    return dest, rev


def startup(tmp: str, emu, runs: int, rev: str | None) -> dict:
    from agent import config as configmod
    from agent.client import Client

    base_dir, rev = _baseline_tree(tmp, rev)
    variants = {}
    for name, cwd, gateway in (("baseline", base_dir, False), ("off", ROOT, False), ("on", ROOT, True)):
        d = os.path.join(tmp, "start-" + name)
        os.makedirs(d)
        statement = os.path.join(d, "statement.jwt")
        emu.write_statement(statement)
        cfg = configmod.local(d, emu.base_url, statement, emu.ca_file, log={"level": "warning"})
        text = configmod.to_toml({k: v for k, v in cfg.to_dict().items() if k != "gateway" and k != "upstream"})
        if gateway:
            text += '\n[gateway]\nenabled = true\npath = "%s"\nmode = 0o600\n' % os.path.join(d, "api.sock")
        path = os.path.join(d, "agent.toml")
        with open(path, "w") as f:
            f.write(text)
        cmd = [sys.executable, "-m", "agent", "run", "--config", path]
        _, p = _spawn(cmd, tmp, cwd)  # prime: register and store a token
        with Client(cfg.socket.path, timeout=20) as c:
            c.token(wait=15)
        _stop(p)
        variants[name] = (cmd, cwd, cfg.socket.path)
    times: dict = {k: [] for k in variants}
    pss: dict = {k: [] for k in variants}
    for i in range(runs):
        for name, (cmd, cwd, sock) in variants.items():
            dt, p = _spawn(cmd, tmp, cwd)
            times[name].append(dt * 1e3)
            if i >= runs - 3:  # idle memory: the last three runs, after the agent settled
                with Client(sock) as c:
                    assert c.health()["ready"]
                time.sleep(1.0)
                pss[name].append(_mem(p.pid).get("pss_kb") or 0)
            _stop(p)
    out: dict = {"runs": runs, "baseline_rev": rev}
    for name in variants:
        out[name + "_ready_ms"] = round(statistics.median(times[name]), 2)
        out[name + "_pss_kb"] = int(statistics.median(pss[name]))
    out["off_vs_baseline_ready_ratio"] = round(out["off_ready_ms"] / out["baseline_ready_ms"], 3)
    out["off_minus_baseline_pss_kb"] = out["off_pss_kb"] - out["baseline_pss_kb"]
    return out


def main(argv: list | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--baseline", metavar="REV", help="git revision of the agent without the gateway")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    from agent.emulator import Emulator

    tmp = tempfile.mkdtemp(prefix="bench-gateway-")
    emu = Emulator(state_dir=os.path.join(tmp, "emu"), tls=True, throttle=False).start()
    try:
        res = {"overhead": overhead(tmp, emu, args.requests), "startup": startup(tmp, emu, args.runs, args.baseline)}
    finally:
        emu.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    o, s = res["overhead"], res["startup"]
    print("gateway GET configuration p50: direct %.3f ms, proxied %.3f ms (+%.3f ms; target <= 1 ms), cache hit "
          "%.3f ms; p99 direct %.3f, proxied %.3f" % (o["direct_p50_ms"], o["proxied_p50_ms"], o["added_p50_ms"],
                                                      o["cache_hit_p50_ms"], o["direct_p99_ms"], o["proxied_p99_ms"]))
    print("spawn -> READY (ms): baseline %s %.1f, gateway off %.1f (x%.3f), gateway on %.1f" % (
        s["baseline_rev"], s["baseline_ready_ms"], s["off_ready_ms"], s["off_vs_baseline_ready_ratio"],
        s["on_ready_ms"]))
    print("idle PSS (kB): baseline %d, gateway off %d (%+d), gateway on %d" % (
        s["baseline_pss_kb"], s["off_pss_kb"], s["off_minus_baseline_pss_kb"], s["on_pss_kb"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
