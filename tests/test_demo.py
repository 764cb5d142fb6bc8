"""`pass-agent demo --once`: the README's first command, end to end, with nothing configured."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_once_runs_the_whole_flow_and_leaks_nothing():
    r = subprocess.run([sys.executable, "-m", "agent", "demo", "--once"], capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "demo finished: OK" in out
    assert "registered with Adobe Pass as client" in out
    assert "GET /api/v2/demo-sp/configuration -> 200 OK" in out
    assert re.search(r"state:\s+token_valid", out), "the console status did not come back over the pty"
    assert "registrations {'ok': 1" in out and "throttled 0" in out
    # The token is shown masked only: no JWT (three base64url parts) in full anywhere.
    jwts = re.findall(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", out)
    assert jwts == [], "a full JWT (token or statement) leaked into the demo output"
    assert "agent exited with code 0" in out
