"""Soak test: the real daemon, many socket clients, the emulator cycling through its faults.

Job: start the Adobe Pass emulator (in this process, TLS, short token lifetime so tokens rotate
often), start the real agent (`python -m agent run --config ...`) pointed at it, hammer the agent's
socket from N client threads (token.get, headers.get, error.report, agent.status/health, parked
waits, pipelined bursts, a subscriber), and cycle the emulator through its faults (5xx, hang,
latency, malformed JSON, 429 bursts, resets, truncated bodies, a revoked client) with healthy gaps
in between. At the end it checks:

- no crash: the agent is alive until the end, exits 0 on SIGTERM, printed no traceback;
- memory flat: the agent's RSS sampled every few seconds; the last quarter's median against the
  second quarter's, and the least-squares slope; open file descriptors likewise;
- a valid token whenever one could exist: no `not_ready` answer while a token the agent served
  earlier is still unexpired, and none once the emulator has been healthy for `--grace` seconds;
- upstream never above the throttle: the emulator's request log replayed through a reference
  bucket (rate 1/s, burst 10) admits every request, and no 429 came from the emulator's throttle;
- no secret (client secret, access token, statement) in the agent's output.

Prints a summary, writes it as JSON with `--json FILE`, exits 0 when every check passed, 1 if not.
Usage: python -m tools.soak --minutes 10 --clients 8 [--json soak.json] [--token-ttl 60]

Must never: run without an end (the deadline is fixed at start), leave the agent process or the
emulator running, talk to anything but loopback, or print a token or secret.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from agent import config as configmod  # noqa: E402
from agent.emulator import Emulator  # noqa: E402
from agent.emulator.throttle import Throttle  # noqa: E402

NOT_READY = -32001
RATE, BURST = 1.0, 10  # Adobe's documented throttle, which the emulator enforces

# One fault phase: (name, how to inject it, how long the window stays open at most (s)).
# Count-limited faults close when consumed; duration faults are cleared at the end of the window.
FAULTS: list[tuple[str, dict, float]] = [
    ("5xx", {"endpoint": "any", "status": 503, "count": -1}, 12.0),
    ("hang", {"endpoint": "any", "hang": True, "count": -1}, 12.0),
    ("latency", {"endpoint": "any", "latency": 2.0, "count": -1}, 20.0),
    ("malformed_json", {"endpoint": "token", "malformed_json": True, "count": 2}, 40.0),
    ("429_burst", {"endpoint": "any", "status": 429, "count": 2}, 40.0),
    ("reset", {"endpoint": "any", "reset": True, "count": 2}, 40.0),
    ("truncate", {"endpoint": "token", "truncate": True, "count": 2}, 40.0),
    ("revoked_client", {}, 40.0),
]


class Recorder:
    """Thread-safe counters and events shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.not_ready: list[float] = []          # monotonic times of not_ready answers
        self.bad: list[str] = []                  # protocol violations seen by clients (capped)
        self.tokens: set[str] = set()
        self.best_expiry = 0.0                    # latest wall expiry of any token served so far
        self.first_token: float | None = None     # monotonic time of the first token served
        self.nr_with_valid = 0
        self.notifications = 0
        self.reconnects = 0
        self.max_skew, self.min_skew = float("-inf"), float("inf")

    def call(self, method: str) -> None:
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1

    def problem(self, text: str) -> None:
        with self.lock:
            if len(self.bad) < 50:
                self.bad.append(text)

    def token(self, tok: str, expires_at: float) -> None:
        with self.lock:
            self.tokens.add(tok)
            self.best_expiry = max(self.best_expiry, expires_at)
            if self.first_token is None:
                self.first_token = time.monotonic()

    def skew(self, seconds: float) -> None:
        # expires_at (agent: receipt time + expires_in) minus the JWT's exp (issuer's clock).
        with self.lock:
            self.max_skew = max(self.max_skew, seconds)
            self.min_skew = min(self.min_skew, seconds)

    def got_not_ready(self) -> None:
        now_wall, now = time.time(), time.monotonic()
        with self.lock:
            self.not_ready.append(now)
            # A token the agent served earlier is still valid by a clear margin: it should have served it.
            if self.best_expiry - now_wall > 1.0:
                self.nr_with_valid += 1

    def error(self, code: Any) -> None:
        with self.lock:
            key = str(code)
            self.errors[key] = self.errors.get(key, 0) + 1


def jwt_exp(tok: str) -> float | None:
    try:
        part = tok.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class Client(threading.Thread):
    """One player app: a connection to the agent's socket and a random mix of calls."""

    METHODS = (("token.get", 50), ("headers.get", 20), ("error.report", 10), ("agent.status", 5),
               ("agent.health", 5), ("device.info", 2), ("wait", 3), ("pipeline", 5))

    def __init__(self, n: int, path: str, rec: Recorder, stop: threading.Event, rate: float, seed: int) -> None:
        threading.Thread.__init__(self, name="soak-client-%d" % n, daemon=True)
        self.path, self.rec, self.stop, self.rate = path, rec, stop, rate
        self.rnd = random.Random(seed)
        self.sock: socket.socket | None = None
        self.buf = b""
        self.next_id = 1
        names, weights = zip(*self.METHODS)
        self.names, self.weights = names, weights

    def connect(self) -> None:
        self.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30.0)
        s.connect(self.path)
        self.sock, self.buf = s, b""
        with self.rec.lock:
            self.rec.reconnects += 1

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def line(self) -> dict:
        assert self.sock is not None
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the agent closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def request(self, method: str, params: dict | None = None) -> bytes:
        req: dict = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        self.next_id += 1
        if params is not None:
            req["params"] = params
        return json.dumps(req).encode() + b"\n"

    def check(self, method: str, ans: dict) -> None:
        self.rec.call(method)
        if "error" in ans:
            code = ans["error"].get("code")
            if code == NOT_READY:
                self.rec.got_not_ready()
            self.rec.error(code)
            return
        res = ans.get("result")
        if method in ("token.get", "wait"):
            tok = res.get("access_token") if isinstance(res, dict) else None
            exp = jwt_exp(tok) if isinstance(tok, str) else None
            if not tok or exp is None:
                self.rec.problem("token.get answered without a JWT access token")
                return
            if exp < time.time() - 1.0:
                self.rec.problem("token.get served a token past its JWT exp")
            self.rec.skew(float(res.get("expires_at", 0)) - exp)
            self.rec.token(tok, exp)
        elif method == "headers.get":
            h = res.get("headers", {}) if isinstance(res, dict) else {}
            if not str(h.get("Authorization", "")).startswith("Bearer ") or not h.get("X-Device-Info"):
                self.rec.problem("headers.get answered without Authorization or X-Device-Info")

    def one(self) -> None:
        method = self.rnd.choices(self.names, self.weights)[0]
        assert self.sock is not None
        if method == "pipeline":
            n = self.rnd.randint(2, 12)
            self.sock.sendall(b"".join(self.request("token.get") for _ in range(n)))
            for _ in range(n):
                self.check("token.get", self.line())
            return
        if method == "wait":
            self.sock.sendall(self.request("token.get", {"wait": 5.0}))
        elif method == "error.report":
            # Statuses the agent must ignore (a 404 with an Enhanced Error body, a 200): no upstream call.
            status = self.rnd.choice((200, 404, 500))
            body = {"action": "none", "status": status, "code": "unknown_resource", "message": "soak"}
            self.sock.sendall(self.request("error.report", {"status": status, "body": body}))
        else:
            self.sock.sendall(self.request(method))
        self.check(method, self.line())

    def run(self) -> None:
        done = 0
        while not self.stop.is_set():
            try:
                if self.sock is None or done % 300 == 299:
                    self.connect()
                self.one()
                done += 1
            except (OSError, EOFError, ValueError) as e:
                if self.stop.is_set():
                    break
                self.rec.problem("client error: %s" % type(e).__name__)
                self.close()
                self.stop.wait(0.5)
            self.stop.wait(self.rnd.expovariate(self.rate))
        self.close()


class Subscriber(threading.Thread):
    """Holds a token.subscribe connection and counts token.changed notifications."""

    def __init__(self, path: str, rec: Recorder, stop: threading.Event) -> None:
        threading.Thread.__init__(self, name="soak-subscriber", daemon=True)
        self.path, self.rec, self.stop = path, rec, stop

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(self.path)
                    s.settimeout(1.0)
                    s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"token.subscribe"}\n')
                    buf = b""
                    while not self.stop.is_set():
                        try:
                            chunk = s.recv(65536)
                        except socket.timeout:
                            continue
                        if not chunk:
                            break
                        buf += chunk
                        while b"\n" in buf:
                            line, _, buf = buf.partition(b"\n")
                            if json.loads(line).get("method") == "token.changed":
                                with self.rec.lock:
                                    self.rec.notifications += 1
            except (OSError, ValueError):
                self.stop.wait(0.5)


def proc_sample(pid: int) -> tuple[int, int, int] | None:
    """(RSS kB, open fds, threads) of a process, or None when it is gone."""
    try:
        rss = threads = 0
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        return rss, len(os.listdir("/proc/%d/fd" % pid)), threads
    except (OSError, ValueError):
        return None


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else 60.0 * sum((t - mt) * (v - mv) for t, v in points) / den


def memory_report(samples: list[tuple[float, int, int, int]]) -> dict:
    if len(samples) < 8:
        return {"samples": len(samples), "flat": False, "why": "too few samples"}
    q = len(samples) // 4
    q2 = statistics.median(s[1] for s in samples[q:2 * q])
    q4 = statistics.median(s[1] for s in samples[3 * q:])
    growth = q4 - q2
    fds_q2 = statistics.median(s[2] for s in samples[q:2 * q])
    fds_q4 = statistics.median(s[2] for s in samples[3 * q:])
    limit = max(1024.0, 0.05 * q2)  # kB: 1 MiB or 5 %, whichever is larger (allocator noise)
    return {
        "samples": len(samples), "rss_kb_first": samples[0][1], "rss_kb_max": max(s[1] for s in samples),
        "rss_kb_last": samples[-1][1], "q2_median_kb": q2, "q4_median_kb": q4, "growth_kb": growth,
        "growth_limit_kb": round(limit), "slope_kb_per_min": round(slope_per_minute([(s[0], s[1]) for s in samples]), 1),
        "fds_q2": fds_q2, "fds_q4": fds_q4, "threads_max": max(s[3] for s in samples),
        "flat": growth <= limit and fds_q4 <= fds_q2 + 4,
    }


def upstream_report(log: list[dict], windows: list[dict]) -> dict:
    def in_window(t: float) -> bool:
        return any(w["start"] <= t <= w["end"] for w in windows)

    model = Throttle(rate=RATE, burst=BURST)
    refused = [r for r in log if not model.take(r["ip"], r["t"])[0]]
    throttled = [r for r in log if r["status"] == 429 and not r.get("fault")]
    by: dict[str, int] = {}
    for r in log:
        key = "%s %s%s" % (r["endpoint"], r["status"], " (fault %s)" % r["fault"] if r.get("fault") else "")
        by[key] = by.get(key, 0) + 1
    # The most requests in any 10 s window, against the bucket's bound burst + rate * 10.
    ts = sorted(r["t"] for r in log)
    j, peak10 = 0, 0
    for i, t in enumerate(ts):
        while ts[j] < t - 10.0:
            j += 1
        peak10 = max(peak10, i - j + 1)
    return {"requests": len(log), "by_endpoint_status": dict(sorted(by.items())),
            "bucket_violations": len(refused), "throttle_429": len(throttled),
            "throttle_429_outside_faults": sum(1 for r in throttled if not in_window(r["t"])),
            "peak_requests_in_10s": peak10, "bound_in_10s": BURST + RATE * 10.0,
            "log_truncated": len(log) >= 10000}


def write_config(tmp: str, emu: Emulator, statement: str, ttl: int, backoff_cap: float) -> tuple[str, str]:
    """Write the agent's config file; returns (socket path, config path)."""
    cfg = configmod.defaults().replace(
        adobe={"base_url": emu.base_url, "software_statement": statement, "ca_file": emu.ca_file, "timeout": 3.0},
        storage={"dir": os.path.join(tmp, "store"), "runtime_dir": os.path.join(tmp, "run")},
        socket={"path": os.path.join(tmp, "agent.sock"), "mode": 0o600, "idle_timeout": 60.0},
        refresh={"backoff_cap": backoff_cap}, log={"level": "info"})
    path = os.path.join(tmp, "agent.toml")
    with open(path, "w") as f:
        f.write(configmod.to_toml(cfg))
    return cfg.socket.path, path


def wait_socket(path: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("the agent exited with %s during start-up" % proc.returncode)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2.0)
                s.connect(path)
                s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"agent.health"}\n')
                if s.recv(4096):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the agent's socket %s did not answer within %.0f s" % (path, timeout))


def run(minutes: float, clients: int, *, token_ttl: int = 60, rate: float = 20.0, seed: int = 1,
        grace: float | None = None, backoff_cap: float = 8.0, keep: str | None = None,
        progress: bool = True) -> dict:
    """Run one soak and return the summary dict (see the module docstring)."""
    rnd = random.Random(seed)
    # After a fault the agent may wait out its backoff (cap), a request timeout, and the 429 window
    # it learned (4**2 s after a burst of two); a token then comes within one more round trip.
    grace = grace if grace is not None else max(backoff_cap, 16.0) + 2 * 3.0 + 4.0
    tmp = keep or tempfile.mkdtemp(prefix="pass-soak-")
    os.makedirs(tmp, exist_ok=True)
    emu = Emulator(tls=True, token_ttl=token_ttl, rate=RATE, burst=BURST, state_dir=os.path.join(tmp, "emu"))
    emu.start()
    proc: subprocess.Popen | None = None
    stop = threading.Event()
    rec = Recorder()
    samples: list[tuple[float, int, int, int]] = []
    windows: list[dict] = []
    failures: list[str] = []
    log_path = os.path.join(tmp, "agent.log")
    t0 = time.monotonic()
    deadline = t0 + minutes * 60.0
    exit_code = None
    alive = True
    try:
        statement = os.path.join(tmp, "statement.jwt")
        emu.write_statement(statement)
        sock_path, cfg_path = write_config(tmp, emu, statement, token_ttl, backoff_cap)
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", cfg_path], cwd=ROOT,
                                    stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"))
        wait_socket(sock_path, proc)
        threads: list[threading.Thread] = [Subscriber(sock_path, rec, stop)]
        threads += [Client(i, sock_path, rec, stop, rate, seed * 1000 + i) for i in range(clients)]
        for t in threads:
            t.start()
        # Healthy warm-up, then fault phases separated by healthy gaps long enough for `grace`.
        next_fault = time.monotonic() + min(20.0, minutes * 60.0 / 4)
        order = list(FAULTS)
        rnd.shuffle(order)
        phase = 0
        current: dict | None = None
        last_sample = 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if proc.poll() is not None:
                alive = False
                failures.append("the agent exited with %s during the soak" % proc.returncode)
                break
            if now - last_sample >= 2.0:
                s = proc_sample(proc.pid)
                if s is not None:
                    samples.append((now - t0, s[0], s[1], s[2]))
                last_sample = now
            if current is None and now >= next_fault and deadline - now > current_budget(grace):
                name, knobs, dur = order[phase % len(order)]
                phase += 1
                current = {"fault": name, "start": now, "max_end": now + dur}
                if name == "revoked_client":
                    current["old"] = {c["client_id"] for c in emu.clients()}
                    for cid in current["old"]:
                        emu.revoke_client(cid)
                else:
                    emu.add_fault(**knobs)
                if progress:
                    print("[%5.0fs] fault %s" % (now - t0, name), flush=True)
            elif current is not None:
                if current["fault"] == "revoked_client":
                    # Over when the agent registered a new client (after invalid_client on its next refresh).
                    consumed = any(c["client_id"] not in current["old"] for c in emu.clients())
                else:
                    consumed = emu.stats()["faults_pending"] == 0
                if consumed or now >= current["max_end"]:
                    emu.clear_faults()
                    # A hung or slow request may still be in flight: the window covers its timeout.
                    windows.append({"fault": current["fault"], "start": current["start"], "end": now + 3.5,
                                    "consumed": consumed})
                    current = None
                    next_fault = now + grace + rnd.uniform(5.0, 15.0)
            stop.wait(0.25)
        if current is not None:
            emu.clear_faults()
            windows.append({"fault": current["fault"], "start": current["start"], "end": time.monotonic() + 3.5,
                            "consumed": False})
        stop.set()
        for t in threads:
            t.join(35.0)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                exit_code = proc.wait(15.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                exit_code = proc.wait()
                failures.append("the agent did not exit within 15 s of SIGTERM")
        else:
            exit_code = proc.returncode
        stats = emu.stats()
        secrets = {c["secret"] for c in emu._service.clients.values() if c.get("secret")}  # emulator-side view
    finally:
        stop.set()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        emu.stop()
    elapsed = time.monotonic() - t0
    with open(log_path, "rb") as f:
        agent_log = f.read().decode("utf-8", "replace")
    with open(statement) as f:
        secrets.add(f.read().strip())
    leaked = sum(1 for s in secrets | rec.tokens if s and s in agent_log)

    # not_ready while the emulator had been healthy for `grace` s (and a token had been served before).
    def healthy_for(t: float) -> float:
        last_end = t0
        for w in windows:
            if w["start"] <= t <= w["end"]:
                return 0.0
            if w["end"] < t:
                last_end = max(last_end, w["end"])
        return t - last_end

    first = rec.first_token
    nr_healthy = [t for t in rec.not_ready if first is not None and t > first and healthy_for(t) >= grace]
    mem = memory_report(samples)
    up = upstream_report(stats["requests"], windows)
    total_calls = sum(rec.calls.values())
    summary = {
        "minutes": round(elapsed / 60.0, 2), "clients": clients, "token_ttl": token_ttl, "grace_s": grace,
        "calls": total_calls, "calls_per_s": round(total_calls / max(elapsed, 1e-9), 1),
        "by_method": dict(sorted(rec.calls.items())), "errors_by_code": dict(sorted(rec.errors.items())),
        "distinct_tokens": len(rec.tokens), "token_changed_notifications": rec.notifications,
        "reconnects": rec.reconnects, "client_problems": rec.bad,
        "expires_at_minus_jwt_exp_s": [round(rec.min_skew, 2), round(rec.max_skew, 2)] if rec.tokens else None,
        "not_ready": {"total": len(rec.not_ready), "with_valid_token": rec.nr_with_valid,
                      "while_healthy": len(nr_healthy)},
        "memory": mem, "upstream": up,
        "faults": [{"fault": w["fault"], "at_s": round(w["start"] - t0, 1), "len_s": round(w["end"] - w["start"], 1),
                    "consumed": w["consumed"]} for w in windows],
        "agent": {"alive_until_end": alive, "exit_code": exit_code, "tracebacks": agent_log.count("Traceback"),
                  "secrets_in_log": leaked, "log": log_path if keep else None},
        "emulator": {"throttled": stats["throttled"], "faults_served": stats["faults_served"],
                     "register": stats["register"], "token": stats["token"], "clients": stats["clients"]},
    }
    if not alive or exit_code != 0:
        failures.append("agent crashed or exited with %s" % exit_code)
    if summary["agent"]["tracebacks"]:
        failures.append("the agent printed %d traceback(s)" % summary["agent"]["tracebacks"])
    if leaked:
        failures.append("%d secret(s) or token(s) appear in the agent's output" % leaked)
    if not mem.get("flat"):
        failures.append("memory or fds not flat: %s" % json.dumps(mem))
    if rec.nr_with_valid:
        failures.append("%d not_ready answers while a served token was still valid" % rec.nr_with_valid)
    if nr_healthy:
        failures.append("%d not_ready answers after %.0f s of a healthy upstream" % (len(nr_healthy), grace))
    if up["bucket_violations"] or up["throttle_429_outside_faults"]:
        failures.append("upstream above the throttle: %d bucket violations, %d throttle 429s outside faults"
                        % (up["bucket_violations"], up["throttle_429_outside_faults"]))
    if rec.bad:
        failures.append("%d client-side protocol problems, first: %s" % (len(rec.bad), rec.bad[0]))
    if not rec.tokens:
        failures.append("no token was ever served")
    summary["failures"] = failures
    summary["passed"] = not failures
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def current_budget(grace: float) -> float:
    """Time left before the deadline that a new fault phase needs: a recovery plus some healthy calls."""
    return grace + 10.0


def format_summary(s: dict) -> str:
    m, u, nr = s["memory"], s["upstream"], s["not_ready"]
    lines = [
        "soak: %.1f min, %d clients, token TTL %d s: %s" % (s["minutes"], s["clients"], s["token_ttl"],
                                                           "PASSED" if s["passed"] else "FAILED"),
        "  calls %d (%.0f/s), distinct tokens %d, token.changed notifications %d, reconnects %d"
        % (s["calls"], s["calls_per_s"], s["distinct_tokens"], s["token_changed_notifications"], s["reconnects"]),
        "  errors by JSON-RPC code: %s" % (s["errors_by_code"] or "none"),
        "  expires_at - JWT exp: %s s (min, max)" % (s["expires_at_minus_jwt_exp_s"],),
        "  not_ready: %d total, %d while a served token was valid, %d after %.0f s healthy"
        % (nr["total"], nr["with_valid_token"], nr["while_healthy"], s["grace_s"]),
        "  faults: %s" % ", ".join("%s@%.0fs" % (f["fault"], f["at_s"]) for f in s["faults"]),
        "  upstream: %d requests, %d bucket violations, %d throttle 429s (%d outside faults), peak %d in 10 s "
        "(bound %.0f)" % (u["requests"], u["bucket_violations"], u["throttle_429"], u["throttle_429_outside_faults"],
                          u["peak_requests_in_10s"], u["bound_in_10s"]),
        "  upstream answers: %s" % ", ".join("%s x%d" % kv for kv in u["by_endpoint_status"].items()),
    ]
    if "q2_median_kb" in m:
        lines.append("  memory: RSS %d -> %d kB (max %d), median Q2 %d kB, Q4 %d kB, growth %+d kB (limit %d), "
                     "slope %+.1f kB/min; fds Q2 %d Q4 %d; threads max %d; %d samples"
                     % (m["rss_kb_first"], m["rss_kb_last"], m["rss_kb_max"], m["q2_median_kb"], m["q4_median_kb"],
                        m["growth_kb"], m["growth_limit_kb"], m["slope_kb_per_min"], m["fds_q2"], m["fds_q4"],
                        m["threads_max"], m["samples"]))
    a = s["agent"]
    lines.append("  agent: alive %s, exit %s, tracebacks %d, secrets in log %d"
                 % (a["alive_until_end"], a["exit_code"], a["tracebacks"], a["secrets_in_log"]))
    for f in s["failures"]:
        lines.append("  FAIL: " + f)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    ap.add_argument("--clients", type=int, default=8, help="client threads calling the socket (default 8)")
    ap.add_argument("--rate", type=float, default=20.0, help="mean calls per second per client (default 20)")
    ap.add_argument("--token-ttl", type=int, default=60,
                    help="emulator token lifetime in s (default 60; the agent asks for a token at most "
                         "every 30 s, so lifetimes under ~40 s leave gaps by design)")
    ap.add_argument("--backoff-cap", type=float, default=8.0, help="agent refresh.backoff_cap in s (default 8)")
    ap.add_argument("--grace", type=float, default=None, help="healthy seconds after which not_ready is a failure")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="FILE", help="write the summary as JSON")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep the agent log there")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.clients < 1:
        ap.error("--minutes must be > 0 and --clients >= 1")
    s = run(args.minutes, args.clients, token_ttl=args.token_ttl, rate=args.rate, seed=args.seed,
            grace=args.grace, backoff_cap=args.backoff_cap, keep=args.keep)
    print(format_summary(s))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1, sort_keys=True)
            f.write("\n")
    return 0 if s["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
