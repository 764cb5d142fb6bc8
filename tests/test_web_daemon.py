"""The web endpoint in the real daemon (`pass-agent run` as a process) against the emulator: what a web
app gets over WebSocket is what the Unix socket serves; the listener stays out of a default daemon
(not even imported); a non-loopback listen address stops the daemon at start with a clear message."""

from __future__ import annotations

import os
import signal

import pytest

pytest.importorskip("h11", reason="the web endpoint needs the optional packages h11 and wsproto (pass-agent[web])")
pytest.importorskip("wsproto", reason="the web endpoint needs the optional packages h11 and wsproto (pass-agent[web])")

from agent.client import Client  # noqa: E402
from agent.emulator import Emulator  # noqa: E402
from tests.agentproc import AgentProc  # noqa: E402
from tests.test_web import GOOD, IS_ROOT, ORIGIN, FakeSecurityAgent, free_port, token_line, write_tokens  # noqa: E402
from tests.webclient import Refused, connect  # noqa: E402

EVENT_ID = "client.PassAgent.events"


@pytest.fixture
def sa():
    with FakeSecurityAgent({GOOD}) as s:
        yield s


def _web_agent(make_agent, emu, **web) -> tuple:
    port = free_port()
    agent = make_agent(emu, web__listen="127.0.0.1:%d" % port, web__allowed_origins=[ORIGIN],
                       **{"web__" + k: v for k, v in web.items()})
    agent.seen_secrets.add(GOOD)
    return agent, port


def _serves_the_socket_api(agent: AgentProc, emu: Emulator, port: int, token: str) -> None:
    """The agent was started with the emulator's token endpoint hanging: the page registers and parks
    a headers request first; then the token arrives, and with it the event and the answer."""
    with connect(port, token) as c:
        assert c.call("PassAgent.1.register", {"event": "tokenchanged", "id": EVENT_ID})["result"] == 0
        c.send({"jsonrpc": "2.0", "id": "h", "method": "PassAgent.1.headers", "params": {"wait": 60}})
        emu.clear_faults()  # the next token request succeeds
        got = {}
        while len(got) < 2:
            msg = c.recv()
            got["answer" if msg.get("id") == "h" else "event"] = msg
        note, hdr = got["event"], got["answer"]["result"]
        assert note["method"] == EVENT_ID + ".tokenchanged"
        assert note["params"]["app"] == "default" and {"expires_at", "refresh_at"} <= set(note["params"])
        tok = c.call("PassAgent.1.token")["result"]
        agent.seen_secrets.add(tok["access_token"])
        assert hdr["headers"]["Authorization"] == "Bearer " + tok["access_token"]
        with Client(agent.socket_path, timeout=20) as unix:
            assert unix.call("headers.get") == hdr  # the same method answers both dialects
        rep = c.call("PassAgent.1.reporterror", {"status": 401, "access_token": tok["access_token"]})["result"]
        assert rep["decision"] == "refresh"


def test_the_daemon_serves_web_apps_through_securityagent(make_agent, emu, sa):
    agent, port = _web_agent(make_agent, emu, securityagent=sa.url)
    emu.add_fault("token", hang=True, count=-1)
    agent.start()
    _serves_the_socket_api(agent, emu, port, GOOD)
    with pytest.raises(Refused) as e:
        connect(port, "forged-token")
    assert e.value.code == "web_bad_token"
    agent.send(signal.SIGHUP)  # a reload keeps the endpoint
    agent.wait_notify("READY=1")
    with connect(port, GOOD) as c:
        assert c.call("PassAgent.1.health")["result"]["ready"] is True
    assert agent.stop() == 0
    log = agent.log()
    assert "web apps: WebSocket on ws://127.0.0.1:%d/jsonrpc" % port in log
    assert "refused an upgrade request (1 so far): web_bad_token" in log


@pytest.mark.skipif(not IS_ROOT, reason="a tokens file must be owned by root: creating one needs root")
def test_the_daemon_serves_web_apps_through_the_tokens_file(make_agent, emu, tmp_path):
    path = write_tokens(str(tmp_path / "web-tokens"), token_line(GOOD))
    agent, port = _web_agent(make_agent, emu, tokens_file=path)
    emu.add_fault("token", hang=True, count=-1)
    agent.start()
    _serves_the_socket_api(agent, emu, port, GOOD)
    assert agent.stop() == 0


def test_a_non_loopback_listen_address_stops_the_daemon_at_start(make_agent, emu, sa):
    agent = make_agent(emu, web__listen="0.0.0.0:%d" % free_port(), web__allowed_origins=[ORIGIN],
                       web__securityagent=sa.url)
    agent.start(wait_ready=False)
    assert agent.proc.wait(60) == 2
    log = agent.log()
    assert "invalid configuration" in log and "[web] listen: '0.0.0.0:" in log and "not a loopback address" in log
    agent.stop()


@pytest.mark.skipif(not IS_ROOT, reason="a tokens file must be owned by root: creating one needs root")
def test_a_tokens_file_others_can_read_stops_the_daemon_at_start(make_agent, emu, tmp_path):
    path = write_tokens(str(tmp_path / "web-tokens"), token_line(GOOD), mode=0o644)
    agent, _ = _web_agent(make_agent, emu, tokens_file=path)
    agent.start(wait_ready=False)
    assert agent.proc.wait(60) == 2
    assert "[web] tokens_file %s has mode 0644" % path in agent.log()
    agent.stop()


def test_the_default_daemon_never_imports_the_web_endpoint(make_agent, emu):
    # Listener off (the default): start-up and idle memory are unchanged because nothing of it loads.
    agent = make_agent(emu)
    agent.argv_prefix = ["env", "PYTHONPROFILEIMPORTTIME=1"]  # python -X importtime: every import, on stderr
    agent.start()
    with Client(agent.socket_path, timeout=20) as c:
        agent.seen_secrets.add(c.token(wait=15)["access_token"])
    agent.send(signal.SIGHUP)
    agent.wait_notify("READY=1")
    assert agent.stop() == 0
    imported = {line.rsplit("|", 1)[1].strip() for line in agent.log().splitlines() if line.startswith("import time:")}
    assert {"agent.daemon", "agent.server"} <= imported  # the profile is real
    web = [m for m in imported if m.split(".")[0] in ("h11", "wsproto") or m == "agent.web" or m.startswith("agent.web.")]
    assert not web, web
    assert os.path.exists(agent.config_path)
