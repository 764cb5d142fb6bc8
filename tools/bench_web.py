"""The web endpoint's latency against the Unix socket, same daemon, same run (issue 18):
`python -m tools.bench_web [--requests N]` prints JSON.

One real `pass-agent run` process against the emulator, with `[web] listen` on loopback and a fake
SecurityAgent (a local HTTP server that calls every token valid). With the agent and this client
pinned to CPU 0, it measures sequential round trips on one persistent connection each:
`PassAgent.1.headers` over WebSocket and `headers.get` over the Unix socket. Target: WebSocket p50
within 3x of the Unix socket's.

The WebSocket client is minimal on purpose (a fixed masked frame out, the unmasked answer's header
read in), so that the figure is the agent's cost, not a client library's.

Must never: leave processes or sockets behind, or report a figure it did not measure in this run.
"""

from __future__ import annotations

import argparse
import base64
import http.server
import json
import os
import socket
import statistics
import struct
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ORIGIN = "http://127.0.0.1:8000"
TOKEN = "bench-web-token"


def _fake_securityagent() -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            data = json.dumps({"jsonrpc": "2.0", "id": body.get("id"), "result": {"valid": True}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _masked_text_frame(payload: bytes) -> bytes:
    mask = b"\x11\x22\x33\x44"
    n = len(payload)
    head = b"\x81" + (bytes([0x80 | n]) if n < 126 else b"\xfe" + struct.pack("!H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _ws_connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /jsonrpc?token=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: %s\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
               % (TOKEN, port, ORIGIN, key)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError("upgrade refused: %r" % head[:300])
    return s


def _ws_roundtrips(port: int, n: int, warmup: int) -> list:
    s = _ws_connect(port)
    frame = _masked_text_frame(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "PassAgent.1.headers"}).encode())
    send, recv, clock = s.sendall, s.recv, time.perf_counter_ns
    out = []
    buf = b""
    for i in range(n + warmup):
        t0 = clock()
        send(frame)
        buf = recv(65536)
        while True:  # one unmasked text frame: its length is in the header
            if len(buf) >= 2:
                ln = buf[1] & 0x7F
                hl = 2 if ln < 126 else 4 if ln == 126 else 10
                if len(buf) >= hl:
                    if ln == 126:
                        ln = struct.unpack("!H", buf[2:4])[0]
                    elif ln == 127:
                        ln = struct.unpack("!Q", buf[2:10])[0]
                    if len(buf) >= hl + ln:
                        break
            buf += recv(65536)
        t1 = clock()
        if i >= warmup:
            out.append((t1 - t0) / 1000.0)
    if b'"result"' not in buf:
        raise RuntimeError("unexpected answer: %r" % buf[:200])
    s.close()
    return out


def measure(n: int) -> dict:
    from agent import config as configmod
    from agent.client import Client
    from tools import bench_socket as bs
    from tools.bench_coldstart import _spawn_until_ready, agent_against_emulator

    tmp, emu, cfg, _ = agent_against_emulator("bench-web-")
    sa = _fake_securityagent()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = cfg.replace(web={"listen": "127.0.0.1:%d" % port, "allowed_origins": [ORIGIN],
                           "securityagent": "http://127.0.0.1:%d/jsonrpc" % sa.server_address[1]})
    cfg_path = configmod.write(cfg, os.path.join(tmp, "agent-web.toml"))
    _, agent = _spawn_until_ready([sys.executable, "-m", "agent", "run", "--config", cfg_path], tmp)
    saved = os.sched_getaffinity(0)
    request = b'{"jsonrpc":"2.0","id":1,"method":"headers.get"}\n'
    try:
        with Client(cfg.socket.path, timeout=20) as c:
            c.token(wait=15)
        os.sched_setaffinity(agent.pid, {0})
        os.sched_setaffinity(0, {0})
        unix_us = bs._roundtrips(cfg.socket.path, n, 2000, request)
        ws_us = _ws_roundtrips(port, n, 2000)
    finally:
        os.sched_setaffinity(0, saved)
        agent.terminate()
        agent.wait(10)
        sa.shutdown()
        sa.server_close()
        emu.stop()
    u50, w50 = statistics.median(unix_us), statistics.median(ws_us)
    return {"requests": n, "unix_headers_p50_us": round(u50, 2), "ws_headers_p50_us": round(w50, 2),
            "unix_headers_p99_us": round(bs._pct(unix_us, 0.99), 2), "ws_headers_p99_us": round(bs._pct(ws_us, 0.99), 2),
            "ratio_p50": round(w50 / u50, 2), "target": "ws p50 <= 3x unix p50", "met": w50 <= 3 * u50}


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args(argv)
    res = measure(args.requests)
    print(json.dumps(res, indent=1))
    return 0 if res["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
