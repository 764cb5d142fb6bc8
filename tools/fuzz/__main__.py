"""`python -m tools.fuzz TARGET [--runs N] [--seconds S] [--strict] [--artifacts DIR] [--seed N]`.

Runs one harness of tools/fuzz under atheris (libFuzzer, coverage-guided; instruments the agent's
modules) or, when atheris is not installed, under a random-bytes loop. Known bugs (each harness's
KNOWN) are counted and printed once instead of stopping the run, unless --strict. Exit status 0
when no new defect was found, 1 when one was (atheris writes the input to `crash-*` in
--artifacts), 2 for a usage error.

Must never: run without a bound (either --runs or --seconds is always set).
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import sys
import time
import traceback
from typing import Callable

from tools.fuzz import TARGETS

_seen: dict[str, int] = {}


def guarded(target: Callable[[bytes], None], known: list, strict: bool) -> Callable[[bytes], None]:
    """The harness, with already-reported bugs counted instead of raised."""

    def one(data: bytes) -> None:
        try:
            target(data)
        except Exception as e:
            for name, pred in known:
                if pred(e, data):
                    _seen[name] = _seen.get(name, 0) + 1
                    if _seen[name] == 1:
                        print("known bug hit: %s (%s); input %r" % (name, type(e).__name__, data[:80]),
                              file=sys.stderr, flush=True)
                    if strict:
                        raise
                    return
            raise

    return one


def fallback(one: Callable[[bytes], None], runs: int, seconds: float, seed: int) -> int:
    """Random bytes and simple mutations of earlier inputs, when atheris is missing."""
    rnd = random.Random(seed)
    pool = [b"", b"{}", b"\n", b"\x1b[A\r", b"HTTP/1.1 200 OK\r\n\r\n"]
    end = time.monotonic() + seconds if seconds else None
    n = 0
    while (not runs or n < runs) and (end is None or time.monotonic() < end):
        base = bytearray(rnd.choice(pool))
        for _ in range(rnd.randint(1, 8)):
            op = rnd.random()
            if op < 0.4 or not base:
                base[rnd.randint(0, len(base)):0] = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 16)))
            elif op < 0.7:
                base[rnd.randrange(len(base))] = rnd.getrandbits(8)
            else:
                i = rnd.randrange(len(base))
                del base[i:i + rnd.randint(1, 8)]
        data = bytes(base[:4096])
        try:
            one(data)
        except Exception:
            traceback.print_exc()
            print("defect found after %d runs; input: %r" % (n, data), file=sys.stderr)
            return 1
        if len(pool) < 1000 and rnd.random() < 0.05:
            pool.append(data)
        n += 1
    print("fallback loop: %d runs, known bugs hit: %s" % (n, _seen or "none"), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.fuzz", description="Run one fuzzing harness.")
    ap.add_argument("target", choices=TARGETS)
    ap.add_argument("--runs", type=int, default=0, help="stop after N inputs")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after S seconds (default 60 without --runs)")
    ap.add_argument("--strict", action="store_true", help="stop on known bugs too")
    ap.add_argument("--artifacts", default=".", help="directory for crash-* files (atheris)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-atheris", action="store_true", help="use the random-bytes loop even if atheris is installed")
    args, extra = ap.parse_known_args(argv)
    if not args.runs and not args.seconds:
        args.seconds = 60.0
    try:
        if args.no_atheris:
            raise ImportError
        import atheris
    except ImportError:
        atheris = None
    name = "tools.fuzz.fuzz_" + args.target
    if atheris is not None:
        with atheris.instrument_imports(include=["agent", "tools.fuzz.fuzz_" + args.target, "tomllib"]):
            mod = importlib.import_module(name)
    else:
        mod = importlib.import_module(name)
    one = guarded(mod.test_one_input, getattr(mod, "KNOWN", []), args.strict)
    if atheris is None:
        print("atheris not installed or --no-atheris: using the random-bytes loop", file=sys.stderr)
        return fallback(one, args.runs, args.seconds, args.seed)
    os.makedirs(args.artifacts, exist_ok=True)
    flags = [sys.argv[0], "-seed=%d" % args.seed, "-print_final_stats=1",
             "-artifact_prefix=%s/" % os.path.abspath(args.artifacts).rstrip("/")]
    words = getattr(mod, "DICT", ())
    if words and not any(f.startswith("-dict=") for f in extra):
        # libFuzzer dictionary: tokens the target's grammar needs (escaped as C strings).
        path = os.path.join(os.path.abspath(args.artifacts), "%s.dict" % args.target)
        with open(path, "w") as f:
            for w in words:
                f.write('"%s"\n' % "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else "\\x%02x" % b
                                           for b in w))
        flags.append("-dict=" + path)
    if args.runs:
        flags.append("-runs=%d" % args.runs)
    if args.seconds:
        flags.append("-max_total_time=%d" % max(1, int(args.seconds)))
    atheris.Setup(flags + extra, one)
    atheris.Fuzz()  # exits the process when done
    return 0


if __name__ == "__main__":
    sys.exit(main())
