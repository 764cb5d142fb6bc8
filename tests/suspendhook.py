"""Test-only launcher: runs `pass-agent` with a clock the test can move, to simulate a suspend.

Usage (through AgentProc.argv_prefix): python -m tests.suspendhook FIFO -- PYTHON -m agent ARGS...
The agent's arguments after `-m agent` are run in this process. Each line written to FIFO,
"BOOT MONO", moves the agent's clock (agent.clock, CLOCK_BOOTTIME) forward by BOOT seconds and
time.monotonic by MONO seconds, and re-programs the agent's CLOCK_BOOTTIME alarms the way the
kernel does at resume; then "ok" is written to the FIFO FIFO.ack (the test creates it) so the test
knows the jump has happened. Nothing in the agent reads this: the hook lives in tests/ (never shipped)
and needs the test to start the process, so no configuration or environment can move a box's clock.
Where agent.clock does not exist (the code before it), only time.monotonic moves.
"""

from __future__ import annotations

import os
import sys
import threading
import time


def main() -> int:
    fifo = sys.argv[1]
    rest = sys.argv[sys.argv.index("--") + 1:]
    args = rest[rest.index("agent") + 1:]  # after "PYTHON -m agent"
    shift = {"boot": 0.0, "mono": 0.0}
    real_monotonic = time.monotonic
    time.monotonic = lambda: real_monotonic() + shift["mono"]
    try:
        from agent import clock
    except ImportError:
        clock = None
    if clock is not None:
        kernel = clock._kernel

        def source() -> float:
            return kernel() + shift["boot"]

        clock.set_source(source)

    def listen() -> None:
        while True:
            with open(fifo) as f:  # blocks (idle) until the test opens the FIFO for writing
                for line in f:
                    boot, mono = (float(x) for x in line.split())
                    shift["boot"] += boot
                    shift["mono"] += mono
                    if clock is not None:
                        clock.set_source(source)  # the kernel fires every alarm whose deadline passed
                    if os.path.exists(fifo + ".ack"):
                        with open(fifo + ".ack", "w") as ack:
                            ack.write("ok\n")

    threading.Thread(target=listen, name="suspendhook", daemon=True).start()
    from agent.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
