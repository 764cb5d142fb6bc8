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


def _agents_using(tmp: str) -> list[str]:
    """pids of processes whose command line names the demo's temp dir (the agent and its helper)."""
    import os

    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    if tmp.encode() in f.read():
                        out.append(pid)
            except OSError:
                pass
    return out


def test_demo_stopped_with_sigterm_stops_its_agent_and_removes_its_files():
    """`timeout`, a service manager or `kill` stop the running demo with SIGTERM, not Ctrl-C: it must
    clean up as for Ctrl-C (the agent process and the temp dir were left behind)."""
    import os
    import signal

    p = subprocess.Popen([sys.executable, "-m", "agent", "demo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, stdin=subprocess.DEVNULL)
    tmp, lines = None, []
    try:
        for line in p.stdout:
            lines.append(line)
            m = re.search(r"emulator, in (\S+)", line)
            if m:
                tmp = m.group(1)
            if "Ctrl-C stops the demo" in line:
                break
        assert tmp is not None and _agents_using(tmp), "".join(lines)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        left = _agents_using(tmp)
        for pid in left:  # the test's own clean-up; the assertion below reports it
            os.kill(int(pid), signal.SIGKILL)
        assert left == [], "the demo left its agent running"
        assert not os.path.exists(tmp), "the demo left %s behind" % tmp
        out = "".join(lines) + p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
    assert p.returncode == 0 and "agent exited with code 0" in out and "demo finished: OK" in out, out
