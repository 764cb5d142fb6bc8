"""The REST API v2 gateway in the real daemon (`pass-agent run`) against the real emulator (issue 17):
the whole second-screen user story through the gateway socket with curl and with Python, `pass-agent
login`, JSON-RPC api.call, two players hammering the gateway within Adobe's throttle, a C client
(libcurl's CURLOPT_UNIX_SOCKET_PATH) when a compiler and libcurl are present, and a daemon without
[gateway] that never imports agent.gateway or h11."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from agent.client import Client
from agent.emulator.throttle import Throttle
from agent.gateway import client as gwclient
from tests.agentproc import ROOT, AgentProc

pytest.importorskip("h11")
SP = "REF30"
CURL = shutil.which("curl")


@pytest.fixture
def agent(tmp_path, emu):
    made = []

    def make(**kw) -> AgentProc:
        kw.setdefault("gateway__enabled", True)
        kw.setdefault("gateway__path", str(tmp_path / "api.sock"))
        kw.setdefault("gateway__mode", 0o600)
        a = AgentProc(tmp_path, emu, **kw).start()
        with Client(a.socket_path, timeout=20) as c:
            a.seen_secrets.add(c.token(wait=15)["access_token"])
        made.append(a)
        return a

    yield make
    for a in made:
        a.kill()


def _curl(sock: str, *args: str) -> tuple[int, dict]:
    """curl --unix-socket: (HTTP status, JSON body)."""
    r = subprocess.run([CURL, "-sS", "--unix-socket", sock, "-w", "\n%{http_code}", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    body, _, code = r.stdout.rpartition("\n")
    return int(code), (json.loads(body) if body.strip().startswith("{") else {"_text": body})


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_the_user_story_with_curl(agent, emu):
    a = agent()
    s, u = a.cfg.gateway.path, "http://localhost/api/v2/%s/" % SP
    code, cfg = _curl(s, u + "configuration")
    assert code == 200 and [m["id"] for m in cfg["requestor"]["mvpds"]][:1] == ["Cablevision"]
    code, sess = _curl(s, "-d", "mvpd=Cablevision&domainName=adobe.com&redirectUrl=https%3A%2F%2Fadobe.com",
                       u + "sessions")
    assert code == 200 and sess["actionName"] == "authenticate", sess
    code, prof = _curl(s, u + "profiles")
    assert code == 200 and prof["profiles"] == {}
    code, page = _curl(s, "http://localhost%s?complete=1" % sess["url"])  # the emulated second screen
    assert code == 200 and 'id="result"' in page["_text"]
    code, prof = _curl(s, u + "profiles/Cablevision")
    assert code == 200 and "Cablevision" in prof["profiles"]
    code, dec = _curl(s, "-H", "Content-Type: application/json", "-d", '{"resources":["REF30"]}',
                      u + "decisions/authorize/Cablevision")
    assert code == 200 and dec["decisions"][0]["authorized"] and dec["decisions"][0]["token"]["serializedToken"]
    code, lo = _curl(s, u + "logout/Cablevision?redirectUrl=https%3A%2F%2Fadobe.com")
    assert code == 200 and lo["logouts"]["Cablevision"]["actionName"] == "complete"
    code, prof = _curl(s, u + "profiles")
    assert code == 200 and prof["profiles"] == {}
    code, err = _curl(s, "http://localhost/o/client/token")
    assert code == 404 and err["code"] == "not_rest_v2"
    calls = [e["call"] for e in emu.requests() if e["endpoint"] == "protected"]
    assert calls == ["configuration", "sessions.create", "profiles", "authenticate", "profiles.mvpd",
                     "decisions.authorize", "logout", "profiles"]
    assert a.stop() == 0


def test_the_user_story_with_python_and_api_call(agent, emu):
    a = agent()
    c = gwclient.UnixHTTPConnection(a.cfg.gateway.path)
    base = "/api/v2/%s/" % SP
    st, _, body = gwclient.call(c, "POST", base + "sessions",
                                form={"mvpd": "Comcast_SSO", "domainName": "adobe.com", "redirectUrl": "https://adobe.com"})
    assert st == 200
    code = json.loads(body)["code"]
    st, _, _ = gwclient.call(c, "GET", "/api/v2/authenticate/%s/%s?complete=1" % (SP, code))
    assert st == 200
    st, _, body = gwclient.call(c, "GET", base + "profiles/code/%s" % code)
    assert st == 200 and "Comcast_SSO" in json.loads(body)["profiles"]
    c.close()
    # The same calls over JSON-RPC api.call on the player socket (one implementation behind both).
    with Client(a.socket_path, timeout=30) as rc:
        r = rc.call("api.call", {"method": "POST", "path": base + "decisions/preauthorize/Comcast_SSO",
                                 "headers": {"Content-Type": "application/json"},
                                 "body": json.dumps({"resources": ["REF30", "REF31"]})})
        assert r["status"] == 200
        assert [d["authorized"] for d in json.loads(r["body"])["decisions"]] == [True, True]
        r = rc.call("api.call", {"path": base + "logout/Comcast_SSO?redirectUrl=https%3A%2F%2Fadobe.com"})
        assert json.loads(r["body"])["logouts"]["Comcast_SSO"]["actionName"] == "complete"
        with pytest.raises(Exception) as info:
            rc.call("api.call", {"path": "/o/client/register", "method": "POST"})
        assert "not_rest_v2" in str(info.value) or "REST API v2" in str(info.value)
    assert a.stop() == 0


def test_pass_agent_login_runs_the_whole_story(agent, emu):
    a = agent()
    r = subprocess.run([sys.executable, "-m", "agent", "login", "--config", a.config_path, "--emulate-browser"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "registration code: " in out and "/api/v2/authenticate/%s/" % SP in out
    assert "emulated browser: signed in" in out and "profile: Cablevision" in out
    assert "authorize REF30: authorized, media token " in out and "logout Cablevision: complete" in out
    calls = [e["call"] for e in emu.requests() if e["endpoint"] == "protected"]
    assert calls[:4] == ["configuration", "sessions.create", "authenticate", "profiles.mvpd"]
    assert calls[-2:] == ["decisions.authorize", "logout"]
    assert a.stop() == 0


def test_two_players_hammer_the_gateway_within_adobes_throttle(agent, emu):
    a = agent()
    results: list = []
    lock = threading.Lock()

    def player(n: int) -> None:
        c = gwclient.UnixHTTPConnection(a.cfg.gateway.path)
        try:
            for _ in range(n):
                st, hs, _ = gwclient.call(c, "GET", "/api/v2/%s/configuration" % SP,
                                          headers={"Cache-Control": "no-cache"})
                with lock:
                    results.append((st, hs.get("retry-after")))
        finally:
            c.close()

    ts = [threading.Thread(target=player, args=(40,)) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert len(results) == 80
    refused = [ra for s, ra in results if s == 429]
    assert refused and all(ra is not None and int(ra) >= 1 for ra in refused)  # 429 + Retry-After, at once
    assert all(s in (200, 429, 503) for s, _ in results)
    log = emu.requests()
    model = Throttle(rate=1.0, burst=10)
    assert all(model.take(e["ip"], e["t"])[0] for e in log), "a request Adobe's bucket would have refused"
    assert emu.stats()["throttled"] == 0 and all(e["status"] != 429 for e in log)
    assert a.stop() == 0


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_a_c_player(agent, emu, tmp_path):
    src = os.path.join(ROOT, "tools", "clients", "gateway_client.c")
    exe = str(tmp_path / "gateway_client")
    r = subprocess.run(["cc", "-O1", "-Wall", "-Werror", "-o", exe, src], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a = agent()
    sock = a.cfg.gateway.path
    r = subprocess.run([exe, sock, "/api/v2/%s/configuration" % SP], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["requestor"]["id"] == SP
    r = subprocess.run([exe, "-t", "application/json", "-d", '{"resources":["REF30"]}', sock,
                        "/api/v2/%s/decisions/authorize/Cablevision" % SP], capture_output=True, text=True, timeout=60)
    assert r.returncode == 22 and "403" in r.stderr  # no login yet: authenticated_profile_missing
    assert json.loads(r.stdout)["code"] == "authenticated_profile_missing"
    r = subprocess.run([exe, sock, "/o/client/token"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 22 and "404" in r.stderr
    assert a.stop() == 0


def test_the_daemon_without_gateway_never_imports_it(tmp_path, emu):
    a = AgentProc(tmp_path, emu)
    a.argv_prefix = ["env", "PYTHONPROFILEIMPORTTIME=1"]
    try:
        a.start()
        with Client(a.socket_path, timeout=20) as c:
            a.seen_secrets.add(c.token(wait=15)["access_token"])
            with pytest.raises(Exception) as info:
                c.call("api.call", {"path": "/api/v2/%s/configuration" % SP})
            assert "gateway" in str(info.value)
        a.send(signal.SIGHUP)
        a.wait_notify("READY=1")
        assert a.stop() == 0
    finally:
        a.kill()
    imported = {line.rsplit("|", 1)[1].strip() for line in a.log().splitlines() if line.startswith("import time:")}
    assert {"agent.daemon", "agent.service", "agent.server"} <= imported
    assert not [m for m in imported if m.startswith("agent.gateway") or m == "h11" or m.startswith("h11.")]
