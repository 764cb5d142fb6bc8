"""Benchmark of the player's API socket (issue 8): latency against the Python echo floor, and throughput.

Measures in one run, each server in its own process (so the client's GIL never measures itself):
  (a) echo:      a raw blocking Unix-socket echo round trip in Python: the floor for any Python server;
  (b) token.get: on one persistent connection against the real agent.server.Server + agent.loop.Loop,
                 with a stand-in Service that returns a cached token (the hot path): p50, p99, ratio;
  (c) throughput: token.get with N concurrent clients, each in its own process, closed loop;
  (d) token.get on the real daemon: `pass-agent run` against the emulator (HTTPS), its token cached,
      the series interleaved with (a) and (b) so that all three see the same machine.

Targets: token.get p50 <= 2.5x echo p50 with the stand-in (issue 8), <= 2.0x on the real daemon
(issue 20), p99 < 1 ms, >= 10,000 requests/s with 32 clients.

    python -m tools.bench_socket [--requests 20000] [--clients 32] [--duration 3] [--no-daemon] [--json FILE]

Must never: leave server processes or socket files behind (both are cleaned up on every exit path).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Callable

from agent.check import fork_as
from agent.errors import AgentError, NotReady
from agent.log import LogBuffer

TOKEN = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." + "x" * 600 + ".signature-" + "y" * 330  # ~1 KB like Adobe's
REQUEST = b'{"jsonrpc":"2.0","id":1,"method":"token.get"}\n'


class CachedService:
    """The Service's hot path as the real one does it: a lock, a cached dict, seconds left computed.
    The rest of the service facade (agent/facade.py, checked by tests/test_facade.py) answers plainly."""

    version = "bench"

    def __init__(self) -> None:
        self.logs = LogBuffer(10)
        self._lock = threading.Lock()
        now = time.time()
        self._tok = {"access_token": TOKEN, "token_type": "bearer", "expires_at": now + 21600.0,
                     "refresh_at": now + 16200.0}

    def apps(self) -> list[str]:
        return ["default"]

    def token(self, min_ttl: float = 0, app: str | None = None) -> dict | None:
        with self._lock:
            t = dict(self._tok)
        left = t["expires_at"] - time.time()
        if left < min_ttl:
            return None
        t["expires_in"] = int(left)
        return t

    def wait_token(self, timeout: float, min_ttl: float = 0, app: str | None = None) -> dict | None:
        return self.token(min_ttl)

    def not_ready_error(self, app: str | None = None) -> AgentError:
        return NotReady("no token with that min_ttl in the benchmark", retry_after=1.0)

    def identity(self, app: str | None = None) -> dict:
        return {"x_device_info": "eyJtb2RlbCI6ImJlbmNoIn0=", "ap_device_identifier": "fingerprint YmVuY2g=",
                "fields": {}}

    def report_error(self, status: int, body: Any = None, access_token: str | None = None,
                     management: bool = False, uid: int | None = None, app: str | None = None) -> dict:
        return {"decision": "ignored", "reason": "benchmark"}

    def status(self, app: str | None = None) -> dict:
        return {"state": "token_valid", "version": self.version, "token": None, "last_error": None}

    def status_line(self) -> str:
        return "holding a valid token"

    def health(self, app: str | None = None) -> dict:
        return {"live": True, "ready": True}

    def subscribe(self, callback: Callable[[dict], None]) -> None:
        pass

    def unsubscribe(self, callback: Callable[[dict], None]) -> None:
        pass

    def request_refresh(self, app: str | None = None) -> None:
        pass

    def force_register(self, app: str | None = None) -> None:
        pass

    def reset_credentials(self, app: str | None = None) -> None:
        pass

    def config_view(self) -> dict:
        return {}


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def _run_agent(path: str, ready, cpu: int | None) -> None:
    _pin(cpu)
    from agent.loop import Loop
    from agent.server import Server

    loop = Loop()
    srv = Server(CachedService(), loop, path, max_connections=1024, max_per_uid=1024)
    srv.start()
    ready.set()
    loop.run()


class RealDaemon:
    """`pass-agent run` against the emulator, holding a token; `path` is its socket. Use as a context
    manager: the daemon, the emulator and the temp dir are gone on every exit path."""

    def __init__(self, cpu: int | None) -> None:
        self.cpu = cpu
        self.path = ""

    def __enter__(self) -> RealDaemon:
        from agent.client import Client
        from tools.bench_coldstart import _spawn_until_ready, agent_against_emulator

        self.tmp, self.emu, cfg, cfg_path = agent_against_emulator("bench-daemon-")
        self.proc = None
        try:
            _, self.proc = _spawn_until_ready([sys.executable, "-m", "agent", "run", "--config", cfg_path], self.tmp)
            self.path = cfg.socket.path
            with Client(self.path, timeout=20) as c:
                c.token(wait=15)
            if self.cpu is not None:
                os.sched_setaffinity(self.proc.pid, {self.cpu})
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        import shutil

        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
        self.emu.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _run_echo(path: str, ready, cpu: int | None) -> None:
    _pin(cpu)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(64)
    ready.set()

    def serve(conn: socket.socket) -> None:
        recv, send = conn.recv, conn.sendall
        while True:
            data = recv(65536)
            if not data:
                return
            send(data)

    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def _start(target, path: str, cpu: int | None) -> mp.Process:
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=target, args=(path, ready, cpu), daemon=True)
    p.start()
    if not ready.wait(20):
        p.kill()
        raise RuntimeError("benchmark server %s did not start" % target.__name__)
    return p


def _roundtrips(path: str, n: int, warmup: int, request: bytes = REQUEST) -> list[float]:
    """Latencies (µs) of n request/answer round trips on one persistent connection."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    send, recv, clock = s.sendall, s.recv, time.perf_counter_ns
    out = []
    for i in range(n + warmup):
        t0 = clock()
        send(request)
        buf = recv(65536)
        while not buf.endswith(b"\n"):
            buf += recv(65536)
        t1 = clock()
        if i >= warmup:
            out.append((t1 - t0) / 1000.0)
    if b'"result"' not in buf and buf != request:
        raise RuntimeError("unexpected answer: %r" % buf[:200])
    s.close()
    return out


def apps_latency(n: int, apps: int = 6, peer_uid: int = 65534) -> dict:
    """token.get p50 on the real daemon with `apps` registered applications against a single-application
    daemon, in the same run, both pinned to one CPU with the client (issue 16: within 10 %).

    As a player does it: a peer allowed exactly one application asks `token.get` without params (the
    hot path). Run as root, the client is a forked child with uid `peer_uid` (root may use every
    application and would have to name one); otherwise both series name the application
    (`{"app": ...}`, the generic path, compared like for like)."""
    from agent import config as configmod
    from agent.client import Client
    from agent.emulator import Emulator
    from tools.bench_coldstart import _spawn_until_ready

    tmp = tempfile.mkdtemp(prefix="bench-apps-", dir="/tmp")
    os.chmod(tmp, 0o755)  # the peer must reach the sockets
    emu = Emulator(state_dir=os.path.join(tmp, "emu"), tls=True).start()
    as_peer = os.geteuid() == 0
    procs, socks, named = [], {}, {}
    saved = os.sched_getaffinity(0)
    try:
        for k in (1, apps):
            d = os.path.join(tmp, "apps%d" % k)
            os.makedirs(d, mode=0o755)
            names = ["default"] if k == 1 else ["app%d" % i for i in range(k)]
            tables = []
            for name in names:
                st = os.path.join(d, name + ".jwt")
                emu.write_statement(st, app_id="com.example.bench." + name)
                tables.append({"name": name, "software_statement": st,
                               "allow_uids": [peer_uid] if name == names[-1] else []})
            cfg = configmod.local(d, emu.base_url, tables[0]["software_statement"], emu.ca_file,
                                  log={"level": "warning"}, socket={"mode": 0o666, "allow_uids": [peer_uid]})
            if k > 1:  # [[app]] tables; the single-application file stays today's form
                cfg = cfg.replace(app=tables)
            path = configmod.write(cfg, os.path.join(d, "agent.toml"))
            _, proc = _spawn_until_ready([sys.executable, "-m", "agent", "run", "--config", path], d)
            procs.append(proc)
            with Client(cfg.socket.path, timeout=30) as c:
                for name in names:
                    c.token(wait=25, app=name)
            socks[k], named[k] = cfg.socket.path, names[-1]
            os.sched_setaffinity(proc.pid, {0})
        warm = max(200, n // 10)

        def series() -> dict:
            out: dict = {1: [], apps: []}
            for _ in range(2):  # interleaved halves: machine noise hits both alike
                for k in (1, apps):
                    req = REQUEST if as_peer else (b'{"jsonrpc":"2.0","id":1,"method":"token.get","params":{"app":"%s"}}\n'
                                                   % named[k].encode())
                    out[k] += _roundtrips(socks[k], n // 2, warm, req)
            return out

        os.sched_setaffinity(0, {0})
        res = _as_uid(peer_uid, series) if as_peer else series()
    finally:
        os.sched_setaffinity(0, saved)
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        emu.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    one, many = _pct(res[1], 0.50), _pct(res[apps], 0.50)
    return {"requests": n, "apps": apps, "client": "uid %d, no params (hot path)" % peer_uid if as_peer
            else "app named in params", "single_p50_us": round(one, 2), "apps_p50_us": round(many, 2),
            "single_p99_us": round(_pct(res[1], 0.99), 2), "apps_p99_us": round(_pct(res[apps], 0.99), 2),
            "ratio_p50": round(many / one, 3), "target_met": many <= 1.10 * one}


def _as_uid(uid: int, fn: Callable[[], dict]) -> dict:
    """fn() in a forked child running as uid/gid `uid` (no supplementary groups); its JSON-able result."""
    res = fork_as(uid, uid, list, lambda: {str(k): v for k, v in fn().items()})
    if res is None:
        raise RuntimeError("the benchmark client as uid %d failed" % uid)
    return {int(k): v for k, v in res.items()}


def _throughput_client(path: str, duration: float, start_at, results) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    send, recv = s.sendall, s.recv
    start_at.wait()
    n = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        for _ in range(50):
            send(REQUEST)
            buf = recv(65536)
            while not buf.endswith(b"\n"):
                buf += recv(65536)
        n += 50
    s.close()
    results.put(n)


def _throughput(path: str, clients: int, duration: float) -> float:
    ctx = mp.get_context("fork")
    start_at = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_throughput_client, args=(path, duration, start_at, results), daemon=True)
             for _ in range(clients)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let every client connect
    t0 = time.monotonic()
    start_at.set()
    total = sum(results.get(timeout=duration + 60) for _ in procs)
    elapsed = time.monotonic() - t0
    for p in procs:
        p.join(10)
    return total / elapsed


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20000, help="round trips per latency series")
    ap.add_argument("--clients", type=int, default=32, help="concurrent client processes for throughput")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of throughput load")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    ap.add_argument("--apps", type=int, default=0, metavar="N",
                    help="only the issue 16 figure: token.get p50 on the real daemon with N applications vs one")
    ap.add_argument("--no-daemon", action="store_true",
                    help="leave out (d), token.get on the real daemon (it starts the emulator and `pass-agent run`)")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not pin the latency series to one CPU (cross-CPU wake-ups then dominate both series)")
    args = ap.parse_args(argv)
    if args.apps:
        fig = apps_latency(args.requests, args.apps)
        print("token.get p50 on the real daemon (%s, %d round trips, one CPU)" % (fig["client"], fig["requests"]))
        print("  1 application:  p50 %7.1f us  p99 %7.1f us" % (fig["single_p50_us"], fig["single_p99_us"]))
        print("  %d applications: p50 %7.1f us  p99 %7.1f us" % (fig["apps"], fig["apps_p50_us"], fig["apps_p99_us"]))
        print("  ratio %.3f  [%s] within 10 %%" % (fig["ratio_p50"], "ok" if fig["target_met"] else "MISSED"))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(fig, f, indent=2)
                f.write("\n")
        return 0 if fig["target_met"] else 1
    # Latency series run with client and server on one CPU: the strict case (the smallest floor),
    # and a stable one; across CPUs this VM's wake-up latency swings between ~5 and ~65 us and
    # would decide the ratio by itself. Throughput clients use every CPU.
    cpu = None if args.no_pin or not hasattr(os, "sched_getaffinity") else min(os.sched_getaffinity(0))
    saved = os.sched_getaffinity(0) if cpu is not None else None

    tmp = tempfile.mkdtemp(prefix="bench-sock-")
    echo_path, agent_path = os.path.join(tmp, "echo.sock"), os.path.join(tmp, "agent.sock")
    procs = []
    stack = contextlib.ExitStack()
    try:
        procs.append(_start(_run_echo, echo_path, cpu))
        procs.append(_start(_run_agent, agent_path, cpu))
        daemon = None if args.no_daemon else stack.enter_context(RealDaemon(cpu))
        warm = max(200, args.requests // 10)
        # Interleave the series in quarters so machine noise hits them alike.
        echo, tok, real = [], [], []
        _pin(cpu)
        for _ in range(4):
            echo += _roundtrips(echo_path, args.requests // 4, warm)
            tok += _roundtrips(agent_path, args.requests // 4, warm)
            if daemon is not None:
                real += _roundtrips(daemon.path, args.requests // 4, warm)
        if saved is not None:
            os.sched_setaffinity(0, saved)
        rps = _throughput(agent_path, args.clients, args.duration)
    finally:
        stack.close()
        for p in procs:
            p.kill()
            p.join(10)
        for f in (echo_path, agent_path):
            try:
                os.unlink(f)
            except OSError:
                pass
        os.rmdir(tmp)

    fig = {
        "echo_p50_us": _pct(echo, 0.50), "echo_p99_us": _pct(echo, 0.99),
        "token_p50_us": _pct(tok, 0.50), "token_p99_us": _pct(tok, 0.99),
        "token_mean_us": statistics.fmean(tok), "echo_mean_us": statistics.fmean(echo),
        "clients": args.clients, "throughput_rps": rps, "requests": args.requests,
        "python": sys.version.split()[0], "cpus": os.cpu_count(), "latency_pinned_cpu": cpu,
    }
    fig["ratio_p50"] = fig["token_p50_us"] / fig["echo_p50_us"]
    checks = [
        ("token.get p50 <= 2.5x echo p50", fig["ratio_p50"] <= 2.5),
        ("token.get p99 < 1000 us", fig["token_p99_us"] < 1000),
        ("throughput >= 10000 req/s", rps >= 10000),
    ]
    if real:
        fig.update(daemon_p50_us=_pct(real, 0.50), daemon_p99_us=_pct(real, 0.99), daemon_mean_us=statistics.fmean(real))
        fig["daemon_ratio_p50"] = fig["daemon_p50_us"] / fig["echo_p50_us"]
        checks[1:1] = [("real daemon token.get p50 <= 2.0x echo p50", fig["daemon_ratio_p50"] <= 2.0),
                       ("real daemon token.get p99 < 1000 us", fig["daemon_p99_us"] < 1000)]
    fig["targets_met"] = all(ok for _, ok in checks)

    where = "one CPU" if cpu is not None else "unpinned"
    print("%-34s %10s %10s %10s" % ("%d round trips, %s" % (len(tok), where), "p50 us", "p99 us", "mean us"))
    print("%-34s %10.1f %10.1f %10.1f" % ("(a) echo floor, Python", fig["echo_p50_us"], fig["echo_p99_us"],
                                        fig["echo_mean_us"]))
    print("%-34s %10.1f %10.1f %10.1f" % ("(b) token.get, persistent conn", fig["token_p50_us"], fig["token_p99_us"],
                                        fig["token_mean_us"]))
    print("%-34s %10.2fx" % ("ratio token.get/echo (p50)", fig["ratio_p50"]))
    if real:
        print("%-34s %10.1f %10.1f %10.1f" % ("(d) token.get, real daemon", fig["daemon_p50_us"],
                                            fig["daemon_p99_us"], fig["daemon_mean_us"]))
        print("%-34s %10.2fx" % ("ratio real daemon/echo (p50)", fig["daemon_ratio_p50"]))
    print("%-34s %10.0f req/s" % ("(c) throughput, %d client procs" % args.clients, rps))
    for name, ok in checks:
        print("  [%s] %s" % ("ok" if ok else "MISSED", name))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=2)
            f.write("\n")
    return 0 if fig["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
