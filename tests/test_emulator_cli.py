"""`python -m agent.emulator` as a real process: start-up lines, signals, logging, options, mint."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.parse

import pytest

from agent.emulator import cli
from agent.emulator.client import device_info, request

SAFETY = 60  # seconds before a stuck child is declared broken (a guard, not a speed assertion)


def spawn(*args, cwd=None):
    return subprocess.Popen([sys.executable, "-m", "agent.emulator", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd)


def read_until_ready(proc):
    """Lines printed up to `ready` (raw fd reads: a buffered readline would hide lines from select)."""
    buf = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while b"ready\n" not in buf:
        assert sel.select(SAFETY), "emulator printed nothing for %d s: %r" % (SAFETY, buf)
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, "emulator exited early (rc %s): %s" % (proc.wait(), proc.stderr.read())
        buf += chunk
    sel.close()
    return buf.decode().splitlines()


@pytest.fixture
def running():
    procs = []

    def start(*args):
        proc = spawn(*args)
        procs.append(proc)
        return proc, read_until_ready(proc)

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(SAFETY) == 0
    return proc.stderr.read()


def test_startup_lines_then_serves_https_and_stops_on_sigterm(running, tmp_path):
    statement_file = tmp_path / "statement.jwt"
    proc, lines = running("--port", "0", "--state-dir", str(tmp_path / "state"), "--statement-out", str(statement_file))
    assert len(lines) == 4
    assert lines[0].startswith("listening https://127.0.0.1:") and lines[0].endswith("/o")
    assert lines[1] == "ca-file %s" % (tmp_path / "state" / "ca.pem")
    assert lines[2] == "statement-file %s" % statement_file
    assert lines[3] == "ready"
    base, ca = lines[0].split(" ", 1)[1], lines[1].split(" ", 1)[1]
    origin = base[: -len("/o")]
    status, _, body = request(origin, "POST", "/o/client/register",
                              json.dumps({"software_statement": statement_file.read_text()}),
                              {"Content-Type": "application/json;charset=utf-8", "X-Device-Info": device_info()},
                              ca_file=ca)
    assert status == 201
    reg = json.loads(body)
    q = urllib.parse.urlencode({"client_id": reg["client_id"], "client_secret": reg["client_secret"],
                                "grant_type": "client_credentials"})
    status, _, body = request(origin, "POST", "/o/client/token?" + q, ca_file=ca)
    assert status == 201
    err = stop(proc)
    assert "POST /o/client/register -> 201" in err and "POST /o/client/token?" in err
    for secret in (reg["client_secret"], json.loads(body)["access_token"], statement_file.read_text()):
        assert secret not in err
    assert "client_secret=%s…" % reg["client_secret"][:4] in err


def test_plain_http_prints_no_ca_line_and_temp_state_is_removed(running):
    proc, lines = running("--no-tls")
    assert len(lines) == 2 and lines[0].startswith("listening http://127.0.0.1:") and lines[1] == "ready"
    origin = lines[0].split(" ", 1)[1][:-2]
    status, body = request(origin, "GET", "/_emulator/config")[0::2]
    assert status == 200 and json.loads(body)["throttle"] is True
    stop(proc)


def test_options_reach_the_running_emulator(running, tmp_path):
    log = tmp_path / "emu.log"
    proc, lines = running("--no-tls", "--token-ttl", "60", "--legacy", "--strict-device-info", "--rate", "3",
                          "--burst", "4", "--retry-after", "date", "--trust-forwarded-for", "--log-file", str(log),
                          "--fault", "register:status=503,count=2", "--fault", '{"endpoint": "token", "hang": true}')
    origin = lines[0].split(" ", 1)[1][:-2]
    status, body = request(origin, "GET", "/_emulator/config")[0::2]
    cfg = json.loads(body)
    assert (cfg["token_ttl"], cfg["legacy"], cfg["strict_device_info"], cfg["rate"], cfg["burst"],
            cfg["retry_after"], cfg["trust_forwarded_for"]) == (60, True, True, 3.0, 4, "date", True)
    faults = json.loads(request(origin, "GET", "/_emulator/faults")[2])["faults"]
    assert [(f["endpoint"], f.get("status"), f.get("hang")) for f in faults] == [("register", 503, None),
                                                                               ("token", None, True)]
    assert request(origin, "POST", "/o/client/register", "{}")[0] == 503
    err = stop(proc)
    assert "POST /o/client/register" not in err and "POST /o/client/register -> 503" in log.read_text()


@pytest.mark.parametrize("args,fragment", [
    (["--fault", "nowhere:status=500"], "endpoint"),
    (["--retry-after", "sometimes"], "invalid choice"),
    (["--rate", "0"], "rate"),
    (["--burst", "0"], "burst"),
    (["--port", "abc"], "invalid int"),
])
def test_bad_options_exit_2_with_a_message(args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # make mkdtemp read TMPDIR again
    assert cli.main(args) == 2
    assert fragment in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # no temp state dir (with a private key) left behind


def test_busy_port_exits_1_with_advice(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert cli.main(["--no-tls", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1 port %d" % port in err and "--port" in err


def test_mint_offline_and_online(running, tmp_path, capsys):
    state = tmp_path / "state"
    out = tmp_path / "st.jwt"
    proc, lines = running("--state-dir", str(state))
    base, ca = lines[0].split(" ", 1)[1], lines[1].split(" ", 1)[1]
    assert cli.main(["mint", "--state-dir", str(state), "--out", str(out)]) == 0  # same key as the server
    assert cli.main(["mint", "--url", base, "--ca-file", ca, "--app-id", "online-app"]) == 0
    online = capsys.readouterr().out.strip().splitlines()[-1]
    for statement in (out.read_text(), online):
        status, _, body = request(base[:-2], "POST", "/o/client/register",
                                  json.dumps({"software_statement": statement}),
                                  {"Content-Type": "application/json;charset=utf-8"}, ca_file=ca)
        assert status == 201, body
    assert cli.main(["mint"]) == 2
    assert cli.main(["mint", "--url", "http://127.0.0.1:9/o"]) == 1
    assert "could not mint" in capsys.readouterr().err
    stop(proc)
    assert os.path.exists(state / "signing-key.pem")  # a given state dir is kept
