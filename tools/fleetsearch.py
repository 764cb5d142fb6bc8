"""Policy search: which 429 policy of the lifecycle gets a crowd its tokens in time with the fewest 429s?

Runs tools/fleetsim.py's city herd (the real agent.lifecycle behind the real agent.governor, Adobe's
bucket as documented: a one-time burst of 10, then 1 request/s per public address) for many values
of the lifecycle's throttle parameters on small cases (10 and 100 boxes per address by default),
and reports, per crowd size, the fewest 429s among the policies that meet issue 20's time target
(max(1.3x the floor, the floor + 5 s)), and the policies that meet it at every size searched.
docs/FLEET.md ("What the search found") discusses the result; `python -m tools.fleetsim` prints the
best figures from the JSON next to the agent's.

The space (every policy the lifecycle can express with these parameters; see its 'Backoff policy'):
  throttle_spread  W = spread x the 429 streak's age (the elapsed-time rule); or null: exponential
  throttle_growth  x growth per 429 when spread is null (capped at throttle_cap)
  throttle_min     the least window (s)
  throttle_first   the window of a streak's first retry (s; null: the rule above)
  token_spread     the token request after a register admitted within a streak: after max(1 s, x W)

Usage: python -m tools.fleetsearch [--samples N] [--ratios 10,100] [--boxes 10:3000,100:2000]
         [--seed S] [--jobs J] [--json FILE]
       python -m tools.fleetsearch --dead-time   (what retries that look random to the bucket cost)
Takes about 1.5 minutes with the defaults on 2 cores (--jobs 2; 91 s in the last run). The grid (--grid) is the random
sample's corners plus the defaults. Must never: change the lifecycle's defaults (it only measures),
use wall-clock time inside the simulation.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

from agent import lifecycle
from tools import fleetsim

SPACE: dict[str, list[Any]] = {
    "throttle_spread": [None, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.18, 0.25],
    "throttle_growth": [1.3, 1.6, 2.0],
    "throttle_min": [1.0, 1.2, 2.0, 3.0, 5.0],
    "throttle_first": [None, 2.0, 5.0, 10.0, 20.0],
    "token_spread": [0.0, 0.5, 1.0],
}


def sample(rng: random.Random, n: int) -> list[dict]:
    """n distinct policies drawn from SPACE (growth only where spread is null), the shipped defaults first."""
    seen, out = set(), [{}]
    while len(out) < n:
        p = {k: rng.choice(v) for k, v in SPACE.items()}
        if p["throttle_spread"] is not None:
            del p["throttle_growth"]
        else:
            p["throttle_cap"] = 900.0
        key = json.dumps(p, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def evaluate(policy: dict, cases: list[tuple[int, int]], seed: int) -> dict:
    """The city herd for each (boxes per address, boxes) with `policy` on the lifecycle's defaults."""
    fleetsim.POLICY.clear()
    fleetsim.POLICY.update(policy)
    out = {}
    for ratio, boxes in cases:
        sc = fleetsim.scenario_city(boxes, ratio)
        agent, served, _, totals = fleetsim.run_case(sc, "agent", seed)
        floor, _ = fleetsim.floor_case(sc, totals, served)
        allowed = fleetsim.time_target(sc, floor["time_to_all_s"])
        tta = agent["time_to_all_s"]
        out[str(ratio)] = {"time_to_all_s": tta, "floor_s": floor["time_to_all_s"],
                           "x_floor": None if tta is None else round(tta / floor["time_to_all_s"], 3),
                           "in_time": tta is not None and tta <= allowed, "share_429": agent["share_429"],
                           "requests_per_box": agent["requests_per_device"], "gave_up": agent["gave_up"]}
    return {"policy": policy, "cases": out}


def _run(args: tuple) -> dict:
    return evaluate(*args)


def best(results: list[dict], ratios: list[str]) -> dict:
    """Per crowd size: the fewest 429s in time there; and among the policies in time at every size, the
    one whose worst share (relative to issue 20's target, else absolute) is least."""
    out: dict[str, Any] = {}
    for r in ratios:
        ok = [x for x in results if x["cases"][r]["in_time"] and x["cases"][r]["gave_up"] == 0]
        if ok:
            b = min(ok, key=lambda x: x["cases"][r]["share_429"])
            out[r] = {"policy": b["policy"], **b["cases"][r]}
    every = [x for x in results if all(x["cases"][r]["in_time"] and x["cases"][r]["gave_up"] == 0 for r in ratios)]

    def worst(x: dict) -> float:
        return max(x["cases"][r]["share_429"] / fleetsim.SHARE_TARGETS.get(int(r), 1.0) for r in ratios)
    if every:
        b = min(every, key=worst)
        out["all"] = {"policy": b["policy"], "cases": b["cases"]}
    return out


def dead_time(rates: list[float], addresses: int = 2000, seed: int = 1) -> list[dict]:
    """The cost of retries that look random to Adobe's bucket (docs/FLEET.md, "Why 40 %"): at 10 boxes
    per address the 10 registers spend the one-time burst at once (RTT1/2); then the crowd's token
    requests reach the emulator's Throttle as a Poisson stream of `rate` per second until 10 are
    admitted. Every admission opens a 1 s dead time (the bucket refills to one token only), so each
    costs about `rate` refusals and 1/rate s of lost time. Returns, per rate, the 429 share over
    all requests (registers included), the mean and the slowest address's last token (s)."""
    h = fleetsim.RTT[1] / 2
    out = []
    for rate in rates:
        rng = random.Random(seed)
        refused, last = 0, []
        for _ in range(addresses):
            bucket = fleetsim.Throttle(fleetsim.RATE, fleetsim.BURST)
            for _ in range(10):
                bucket.take("address", h)
            t, got = 3 * h, 0
            while got < 10:
                t += rng.expovariate(rate)
                if bucket.take("address", t)[0]:
                    got += 1
                else:
                    refused += 1
            last.append(t + h)
        out.append({"rate": rate, "share_429": round(refused / float(refused + 20 * addresses), 4),
                    "mean_last_s": round(sum(last) / addresses, 1), "slowest_last_s": round(max(last), 1)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fleetsearch", description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=120, help="policies to try (default 120, the defaults included)")
    p.add_argument("--boxes", default="10:3000,100:2000",
                   help="boxes per address:boxes for each case (default 10:3000,100:2000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    p.add_argument("--json", metavar="FILE", help="write every result and the best as JSON")
    p.add_argument("--dead-time", action="store_true",
                   help="print only the random-retry reference at 10 boxes per address (a few seconds)")
    a = p.parse_args(argv)
    if a.dead_time:
        allowed = fleetsim.time_target(fleetsim.scenario_city(10, 10), fleetsim.floor_one_time(10)[-1])
        print("random retries at 10 boxes per address, Adobe's one-time burst, 2000 addresses (time allowed %.2f s):"
              % allowed)
        for r in dead_time([1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0], seed=a.seed):
            print("  %.1f requests/s: 429 share %.1f%%, last token %.1f s on average, %.1f s at the slowest address"
                  % (r["rate"], 100 * r["share_429"], r["mean_last_s"], r["slowest_last_s"]))
        return 0
    try:
        cases = [(int(x.split(":")[0]), int(x.split(":")[1])) for x in a.boxes.split(",") if x.strip()]
    except (ValueError, IndexError):
        p.error("--boxes must look like 10:3000,100:2000")
    policies = sample(random.Random(a.seed), a.samples)
    t0 = time.monotonic()
    work = [(pol, cases, a.seed) for pol in policies]
    if a.jobs > 1:
        import multiprocessing
        with multiprocessing.Pool(a.jobs) as pool:
            results = pool.map(_run, work, chunksize=1)
    else:
        results = [_run(w) for w in work]
    ratios = [str(r) for r, _ in cases]
    top = best(results, ratios)
    defaults = lifecycle.Lifecycle()
    print("policy search: %d policies x %s boxes per address (boxes %s), Adobe's one-time burst, seed %d, %.0f s"
          % (len(policies), "/".join(ratios), "/".join(str(b) for _, b in cases), a.seed, time.monotonic() - t0))
    for r in ratios:
        if r in top:
            c = top[r]
            print("  %s per address: fewest 429s in time: %.1f%% at %.2fx the floor, %.1f requests per box; %s"
                  % (r, 100 * c["share_429"], c["x_floor"], c["requests_per_box"], json.dumps(c["policy"])))
        else:
            print("  %s per address: no policy in time" % r)
    if "all" in top:
        c = top["all"]
        print("  in time at every size, least 429s: %s; %s" % (", ".join(
            "%s: %.2fx, %.1f%%" % (r, c["cases"][r]["x_floor"], 100 * c["cases"][r]["share_429"]) for r in ratios),
            json.dumps(c["policy"])))
    d = results[0]["cases"]
    print("  the lifecycle's defaults (spread %s, min %s, first %s): %s" % (
        defaults.throttle_spread, defaults.throttle_min, defaults.throttle_first,
        ", ".join("%s: %s, %.1f%%" % (r, "-" if d[r]["x_floor"] is None else "%.2fx" % d[r]["x_floor"],
                                       100 * d[r]["share_429"]) for r in ratios)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cases": [{"ratio": r, "boxes": b} for r, b in cases], "seed": a.seed, "model": "one-time",
                       "samples": len(policies), "space": SPACE, "best": top, "results": results}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
