"""`python -m agent.emulator.bench`: start-up time of the emulator process and its request rate.

Measures what integrators and CI care about: wall time from exec to the `ready` line (cold state
dir, then warm), and sequential register+token round trips per second over HTTPS and HTTP. Must
never: leave a child process running (each is terminated and waited for).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse

from .client import device_info, request


def startup(state_dir: str, *extra: str) -> tuple[float, list[str], subprocess.Popen]:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "agent.emulator", "--state-dir", state_dir, "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buf = b""
    while b"ready\n" not in buf:
        chunk = os.read(proc.stdout.fileno(), 4096)  # type: ignore[union-attr]
        if not chunk:
            raise SystemExit("emulator exited before ready (rc %s)" % proc.wait())
        buf += chunk
    return time.monotonic() - t0, buf.decode().splitlines(), proc


def round_trips(origin: str, ca_file: str | None, statement: str, n: int) -> float:
    t0 = time.monotonic()
    for _ in range(n):
        _, _, body = request(origin, "POST", "/o/client/register", json.dumps({"software_statement": statement}),
                             {"Content-Type": "application/json;charset=utf-8", "X-Device-Info": device_info()},
                             ca_file=ca_file)
        reg = json.loads(body)
        form = urllib.parse.urlencode({"client_id": reg["client_id"], "client_secret": reg["client_secret"],
                                       "grant_type": "client_credentials"})
        status, _, _ = request(origin, "POST", "/o/client/token", form,
                               {"Content-Type": "application/x-www-form-urlencoded"}, ca_file=ca_file)
        assert status == 201
    return n / (time.monotonic() - t0)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as d:
        for label, state, extra in (("cold https", "cold", ()), ("warm https", "cold", ()),
                                    ("plain http", "http", ("--no-tls",))):
            st_file = os.path.join(d, "st-%s.jwt" % state)
            secs, lines, proc = startup(os.path.join(d, state), "--no-throttle", "--statement-out", st_file, *extra)
            try:
                origin = lines[0].split(" ", 1)[1][:-2]
                ca = lines[1].split(" ", 1)[1] if lines[1].startswith("ca-file ") else None
                with open(st_file) as f:
                    rate = round_trips(origin, ca, f.read(), n)
            finally:
                proc.terminate()
                proc.wait()
            print("%-10s start-to-ready %4.0f ms   register+token %5.1f round trips/s (%d, new connection each)"
                  % (label, secs * 1000, rate, n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
