"""Run the real daemon with a piece of code executed in its own process at READY=1 (tests only).

`at_ready(code, arg)` is an AgentProc.argv_prefix: the daemon's command line (agent/__main__.py does
exactly this: agent.cli.main) under an audit hook that, at the first sendto() to NOTIFY_SOCKET (the
READY=1 datagram, sent by stage 1, agent/startup.py), runs `code` with `os`, `sys` and `arg` bound.
The code runs inside the sendto, before stage 2 starts: an exact point, no sleep. It must import
nothing itself when it inspects sys.modules.
"""

from __future__ import annotations

import sys

_WRAPPER = r"""
import os, sys
arg, code, notify = sys.argv[1], sys.argv[2], os.environ["NOTIFY_SOCKET"]
done = []
def hook(event, args):
    if event == "socket.sendto" and not done and args[1] == notify:
        done.append(1)
        exec(code, {"os": os, "sys": sys, "arg": arg})
sys.addaudithook(hook)
from agent.cli import main
sys.exit(main(sys.argv[6:]))
"""


def at_ready(code: str, arg: str, env: tuple = ()) -> list[str]:
    """The argv prefix (AgentProc runs prefix + [python, -m, agent, run, --config, FILE]; the wrapper
    takes the arguments from `run` on). `env`: NAME=VALUE settings for the daemon, through env(1)."""
    return (["env", *env] if env else []) + [sys.executable, "-c", _WRAPPER, arg, code]
