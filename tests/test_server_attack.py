"""Hostile local clients against the real daemon process: memory stays bounded, others keep being served.

Issue 15 item 1 (a parked `wait` followed by pipelined requests that are never read grew the
daemon from 35 MB to 986 MB; 300,000 parked waits took 225 MB) and item 11 (a player's
error.report code with a newline and ANSI escapes forged a log line). The agent runs as a real
process (tests/agentproc.py) against the emulator; the attacker is another real process; the
daemon's memory is read from /proc/PID/status (VmRSS). Latency figures are printed, not asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from agent.client import Client
from agent.emulator import Emulator
from tests.agentproc import AgentProc

MB = 1024 * 1024
HEADROOM = 8 * MB  # "within a few MB of idle"
TOKEN_TTL = 3600

ATTACKER = r"""
import json, select, socket, sys, time
path, mode, duration, nconn, alt_ttl = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])

def req(method, params=None, i=1):
    r = {"jsonrpc": "2.0", "id": i, "method": method}
    if params is not None:
        r["params"] = params
    return (json.dumps(r, separators=(",", ":")) + "\n").encode()

socks = []
for _ in range(nconn):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    socks.append(s)
# Park a wait the agent cannot satisfy: the issue's min_ttl of a week, and (should that be refused
# at once) one just above the token's remaining lifetime while the emulator refuses to refresh.
park = req("token.get", {"min_ttl": 604800, "wait": 300}, "w1") + req("token.get", {"min_ttl": alt_ttl, "wait": 300}, "w2")
for s in socks:
    s.sendall(park)
probe = socks[0]
probe.sendall(req("agent.health", None, "probe"))
probe.settimeout(1.0)
seen = b""
try:
    while True:
        chunk = probe.recv(65536)
        if not chunk:
            break
        seen += chunk
except socket.timeout:
    pass
parked = b'"probe"' not in seen
if mode == "status":
    blob = req("agent.status") * 500
else:  # "waits": the 300,000 parked waits attack
    blob = req("token.get", {"min_ttl": 604800, "wait": 300}, 7) * 500
per_req = len(blob) // 500
for s in socks:
    s.setblocking(False)
pending = [blob] * len(socks)
sent = 0
limit = 300000 * per_req if mode == "waits" else float("inf")
end = time.monotonic() + duration
stalled_since = None
while time.monotonic() < end and sent < limit:
    progress = False
    for i, s in enumerate(socks):
        try:
            n = s.send(pending[i])
        except BlockingIOError:
            continue
        sent += n
        pending[i] = pending[i][n:] or blob
        progress = True
    if progress:
        stalled_since = None
    else:
        stalled_since = stalled_since or time.monotonic()
        select.select([], socks, [], 0.05)
stalled = stalled_since is not None and time.monotonic() - stalled_since > 0.5
print(json.dumps({"sent": sent, "requests": sent // per_req, "parked": parked, "stalled": stalled}), flush=True)
sys.stdin.readline()  # hold the connections until the test has measured
for s in socks:
    s.close()
"""


def rss(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for pid %d" % pid)


@pytest.fixture
def emu(tmp_path):
    e = Emulator(state_dir=str(tmp_path / "emulator"), tls=True, token_ttl=TOKEN_TTL)
    e.start()
    yield e
    e.stop()


@pytest.fixture
def agent(tmp_path, emu):
    a = AgentProc(tmp_path, emu, log__level="info")
    a.start()
    yield a
    a.kill()


def _percentile(values: list, p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def _attack(agent: AgentProc, good: Client, mode: str, nconn: int, alt_ttl: float, duration: float = 4.0) -> dict:
    """Run one attack process; meanwhile a well-behaved client asks for the token and RSS is sampled."""
    pid = agent.proc.pid
    before = rss(pid)
    peak = [before]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.05):
            peak[0] = max(peak[0], rss(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc = subprocess.Popen([sys.executable, "-c", ATTACKER, agent.socket_path, mode, str(duration), str(nconn),
                             str(alt_ttl)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    result: list = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    reader.start()
    latencies = []
    try:
        while reader.is_alive():
            t0 = time.perf_counter()
            tok = good.token()
            latencies.append(time.perf_counter() - t0)
            assert tok["access_token"]
        report = json.loads(result[0])
        held = rss(pid)  # the attacker's connections are still open
        proc.stdin.write("done\n")
        proc.stdin.close()
        assert proc.wait(30) == 0
        for _ in range(200):  # the agent has seen the attacker's connections close and keeps serving
            assert good.token()["access_token"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sampling.set()
        sampler.join()
    after = rss(pid)
    report.update(mode=mode, conns=nconn, before=before, peak=peak[0], held=held, after=after,
                  answers=len(latencies), p50_ms=_percentile(latencies, 0.5) * 1000,
                  p99_ms=_percentile(latencies, 0.99) * 1000, max_ms=max(latencies) * 1000)
    print("\n%(mode)s x%(conns)d: %(requests)d requests sent (parked %(parked)s, attacker stalled %(stalled)s); "
          "RSS %(before)d -> peak %(peak)d, held %(held)d, after %(after)d bytes; good client: %(answers)d "
          "answers, p50 %(p50_ms).2f ms, p99 %(p99_ms).2f ms, max %(max_ms).1f ms" % report)
    return report


def test_parked_wait_and_pipelining_attacks_keep_memory_bounded(agent: AgentProc, emu) -> None:
    with Client(agent.socket_path, timeout=20) as good:
        tok = good.token(wait=15)
        agent.seen_secrets.add(tok["access_token"])
        emu.add_fault("token", status=503, count=-1)  # no fresh token can end the attacker's waits
        for _ in range(2000):  # warm up: the agent's steady state is the baseline
            good.token()
            good.status()
        alt_ttl = TOKEN_TTL - 0.01  # more than the held token has left, less than a token's lifetime
        reports = [
            _attack(agent, good, "status", 1, alt_ttl),    # the attack: wait, then agent.status never read
            _attack(agent, good, "waits", 1, alt_ttl),     # 300,000 parked waits on one connection
            _attack(agent, good, "status", 24, alt_ttl),   # the first attack on many connections of one uid
        ]
    for r in reports:
        assert r["parked"], "the attacker's wait was answered at once: the attack did not happen (%s)" % r
        assert r["stalled"], "the agent kept reading a connection whose answers nobody reads (%s)" % r
        assert r["answers"] > 20, r  # the well-behaved client kept being served during the attack
    for r in reports[:2]:
        assert r["peak"] - r["before"] < HEADROOM, r
        assert r["after"] - r["before"] < HEADROOM, r
    # Many connections hold more, but each one is bounded (64 KiB of answers, one input chunk).
    assert reports[2]["peak"] - reports[0]["before"] < 24 * MB, reports[2]
    # The agent still answers everything normally afterwards, and never logged a secret.
    with Client(agent.socket_path, timeout=20) as c:
        assert c.health()["live"] is True
    assert agent.stop() == 0


def test_error_report_cannot_forge_log_lines(agent: AgentProc) -> None:
    forged = "x\nERROR   forged: the agent is compromised\x1b[2J\x1b]0;owned\x07\r\x9b31m"
    with Client(agent.socket_path, timeout=20) as c:
        agent.seen_secrets.add(c.token(wait=15)["access_token"])
        res = c.report(401, body={"action": "application-registration", "code": forged})
    assert res["decision"] in ("refresh", "reregister"), res  # both are logged with the reported code
    assert agent.stop() == 0
    log = agent.log()
    lines = [line for line in log.splitlines() if "forged" in line]
    assert len(lines) == 1, lines
    assert "player reported" in lines[0]
    assert "\\x1b[2J" in lines[0]  # shown, not executed
    assert not any(line.startswith("ERROR   forged") for line in log.splitlines())
    for raw in ("\x1b", "\x07", "\r", "\x9b"):
        assert raw not in log, repr(raw)
    assert os.path.exists(agent.log_path)
