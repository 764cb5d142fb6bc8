"""The Python client, the `pass-agent token|headers|status` commands and the C client, against a live server."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from agent import rpc
from agent.client import Client, RpcCallError
from agent.commands import client_command
from agent.errors import AgentError, UpstreamError

try:
    from tests.fakes import APDI, TOKEN, XDI, FakeService, ServerHarness, wait_for
except ImportError:  # tests/ on sys.path instead of the repo root
    from fakes import APDI, TOKEN, XDI, FakeService, ServerHarness, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_SOURCE = os.path.join(REPO, "tools", "clients", "token_client.c")


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "agent.sock")


@pytest.fixture
def h(path):
    with ServerHarness(path) as harness:
        yield harness


def test_client_methods(h: ServerHarness, path: str) -> None:
    with Client(path) as c:
        assert c.token()["access_token"] == TOKEN
        assert c.token(min_ttl=60, wait=1)["token_type"] == "bearer"
        assert c.headers()["headers"]["Authorization"] == "Bearer " + TOKEN
        assert c.device_info() == {"x_device_info": XDI, "fields": {"model": "FakeBox", "osName": "Linux"},
                                   "ap_device_identifier": APDI}
        assert c.status()["state"] == "ready"
        assert c.health() == {"live": True, "ready": True}
        assert c.report(401, body={"x": 1}, access_token=TOKEN)["decision"] == "refresh"
        assert c.call("agent.health") == {"live": True, "ready": True}
    assert h.service.reports == [(401, {"x": 1}, TOKEN)]
    assert h.service.report_uids == [os.getuid()]  # the server passes the peer's SO_PEERCRED uid on


def test_client_raises_agent_errors_with_retry_advice(path: str) -> None:
    svc = FakeService(token=None)
    with ServerHarness(path, svc), Client(path) as c:
        with pytest.raises(RpcCallError) as ei:
            c.token()
        e = ei.value
        assert isinstance(e, AgentError)
        assert (e.rpc_code, e.code, e.kind, e.retry_after) == (rpc.NOT_READY, "not_ready", "retry", 2.0)
        svc.error = UpstreamError("software statement rejected", code="invalid_software_statement", kind="operator")
        with pytest.raises(RpcCallError) as ei:
            c.headers()
        assert (ei.value.rpc_code, ei.value.code, ei.value.kind) == (rpc.UPSTREAM, "invalid_software_statement",
                                                                     "operator")
        with pytest.raises(RpcCallError) as ei:
            c.call("nope")
        assert ei.value.rpc_code == rpc.METHOD_NOT_FOUND
        assert c.health()["ready"] is False  # the connection survives errors


def test_client_wait_gets_first_token(path: str) -> None:
    svc = FakeService(token=None)
    with ServerHarness(path, svc) as h, Client(path, timeout=5) as c:
        t = threading.Timer(0.0, lambda: wait_for(lambda: h.stats()["waiting"] == 1) and svc.set_token(TOKEN))
        t.start()
        assert c.token(wait=20)["access_token"] == TOKEN
        t.join()


def test_client_subscribe(h: ServerHarness, path: str) -> None:
    with Client(path) as c:
        notes = c.subscribe(timeout=10)
        t = threading.Timer(0.0, lambda: wait_for(lambda: h.stats()["subscribers"] == 1)
                            and h.service.set_token("rotated-token-xyz-123"))
        t.start()
        note = next(notes)
        t.join()
        assert note["method"] == "token.changed" and set(note["params"]) == {"expires_at", "refresh_at"}


def test_client_not_running_names_the_socket(tmp_path) -> None:
    missing = str(tmp_path / "nope.sock")
    with pytest.raises(AgentError, match="no socket at " + missing) as ei:
        Client(missing)
    assert ei.value.code == "agent_unavailable" and ei.value.kind == "retry"
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    with pytest.raises(AgentError, match="nothing listens on " + stale):
        Client(stale)


def test_client_timeout(tmp_path) -> None:
    p = str(tmp_path / "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(p)
    mute.listen(1)
    try:
        with Client(p, timeout=0.2) as c, pytest.raises(AgentError, match="did not answer") as ei:
            c.health()
        assert ei.value.code == "timeout"
    finally:
        mute.close()


def test_command_token_human_and_json(h: ServerHarness, path: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert client_command("token", path, False, out, err=err) == 0
    assert "access_token: " + TOKEN in out.getvalue() and "expires_at:" in out.getvalue()
    out = io.StringIO()
    assert client_command("token", path, True, out, min_ttl=10, wait=1) == 0
    assert json.loads(out.getvalue())["access_token"] == TOKEN


def test_command_headers(h: ServerHarness, path: str) -> None:
    out = io.StringIO()
    assert client_command("headers", path, False, out) == 0
    assert out.getvalue().splitlines() == ["Authorization: Bearer " + TOKEN, "X-Device-Info: " + XDI,
                                           "AP-Device-Identifier: " + APDI]


def test_command_status_never_prints_secrets(h: ServerHarness, path: str) -> None:
    real = h.service.status

    def leaky() -> dict:  # even a Service that wrongly includes secrets must not leak through
        st = real()
        st["access_token"] = TOKEN
        st["store"]["client_secret"] = "s3cr3t-client-secret"
        return st

    h.service.status = leaky
    for as_json in (False, True):
        out = io.StringIO()
        assert client_command("status", path, as_json, out) == 0
        text = out.getvalue()
        assert TOKEN not in text and "s3cr3t" not in text
        assert "ready" in text and "abcd" in text
    out = io.StringIO()
    client_command("status", path, False, out)
    assert "state:" in out.getvalue() and "token expires:" in out.getvalue()


def test_command_failures_exit_1_with_the_path(tmp_path, path: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert client_command("token", str(tmp_path / "none.sock"), False, out, err=err) == 1
    assert str(tmp_path / "none.sock") in err.getvalue() and "not running" in err.getvalue()
    assert out.getvalue() == ""
    with ServerHarness(path, FakeService(token=None)):
        err = io.StringIO()
        assert client_command("headers", path, False, io.StringIO(), err=err) == 1
        assert "not_ready" in err.getvalue() and "retry in 2s" in err.getvalue()
    assert client_command("bogus", path, False, io.StringIO(), err=io.StringIO()) == 2


# -- the C client --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def c_client(tmp_path_factory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    exe = str(tmp_path_factory.mktemp("cclient") / "token_client")
    res = subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o", exe, C_SOURCE],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return exe


def test_c_client_token_and_headers(c_client: str, h: ServerHarness, path: str) -> None:
    res = subprocess.run([c_client, "-s", path], capture_output=True, text=True, timeout=30)
    assert (res.returncode, res.stdout, res.stderr) == (0, TOKEN + "\n", "")
    res = subprocess.run([c_client, "-s", path, "-H", "-m", "60"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["Authorization: Bearer " + TOKEN, "X-Device-Info: " + XDI,
                                       "AP-Device-Identifier: " + APDI]


def test_c_client_waits_and_reports_errors(c_client: str, path: str) -> None:
    svc = FakeService(token=None)
    with ServerHarness(path, svc) as h:
        res = subprocess.run([c_client, "-s", path], capture_output=True, text=True, timeout=30)
        assert res.returncode == 1 and "no access token yet" in res.stderr and "kind retry" in res.stderr
        p = subprocess.Popen([c_client, "-s", path, "-w", "20"], stdout=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: h.stats()["waiting"] == 1)
            svc.set_token("token-for-the-c-client-1")
            assert p.communicate(timeout=30)[0] == "token-for-the-c-client-1\n" and p.returncode == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    res = subprocess.run([c_client, "-s", path], capture_output=True, text=True, timeout=30)
    assert res.returncode == 3 and path in res.stderr


def test_c_client_wait_covers_an_agent_that_is_still_starting(c_client: str, path: str) -> None:
    """`token_client -w N` at boot, before the agent has bound its socket: it waits for the socket
    within the same N seconds, as `pass-agent token --wait` does (it failed at once with exit 3)."""
    started: list = []

    def start_agent() -> None:
        h = ServerHarness(path)
        h.__enter__()
        started.append(h)

    p = subprocess.Popen([c_client, "-s", path, "-w", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        time.sleep(0.3)  # pacing, not synchronisation: the client has found no socket yet
        assert p.poll() is None, p.communicate()
        start_agent()
        out, err = p.communicate(timeout=30)
        assert (p.returncode, out, err) == (0, TOKEN + "\n", "")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for h in started:
            h.close()


def test_c_client_wait_ends_on_a_socket_that_never_appears(c_client: str, tmp_path) -> None:
    """The wait is bounded: no socket within -w seconds is the same exit 3 and message as without -w."""
    missing = str(tmp_path / "nope.sock")
    t0 = time.monotonic()
    res = subprocess.run([c_client, "-s", missing, "-w", "0.5"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 3 and "cannot connect to pass-agent at " + missing in res.stderr, res.stderr
    assert time.monotonic() - t0 >= 0.5, "it did not wait"
    res = subprocess.run([c_client, "-s", missing], capture_output=True, text=True, timeout=30)
    assert res.returncode == 3 and "No such file or directory" in res.stderr, res.stderr


@pytest.mark.parametrize("args,words", [
    (["-w", "abc"], "-w abc: a number of seconds from 0 to 300"),
    (["-w", "inf"], "-w inf: a number of seconds from 0 to 300"),
    (["-w", "301"], "-w 301: a number of seconds from 0 to 300"),
    (["-w", "5s"], "-w 5s: a number of seconds"),
    (["-m", "-1"], "-m -1: a number of seconds from 0 to 604800"),
    (["-m", "nan"], "-m nan: a number of seconds"),
])
def test_c_client_refuses_a_number_the_agent_would_refuse(c_client: str, tmp_path, args, words) -> None:
    """`-w abc` was read as 0 and `-w inf` (no socket yet) would have waited for ever: usage, exit 2."""
    res = subprocess.run([c_client, "-s", str(tmp_path / "nope.sock")] + args, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2 and words in res.stderr, res.stderr


# -- connecting under load and while the agent starts (issue 15 items 6 and 17) ---------------------


def test_connect_flood_every_call_succeeds(path: str, monkeypatch) -> None:
    """A full listen backlog (EAGAIN on connect) is retried within the timeout, not fatal."""
    import agent.client as clientmod

    retries = []
    real_sleep = getattr(clientmod, "_sleep", time.sleep)

    def counting_sleep(s: float) -> None:
        retries.append(s)
        real_sleep(s)

    monkeypatch.setattr(clientmod, "_sleep", counting_sleep, raising=False)
    n = 24
    with ServerHarness(path, backlog=1) as h:
        gate = threading.Event()
        h.loop.call_soon_threadsafe(lambda: gate.wait(30))  # the loop stops accepting: the backlog fills
        results: list = []

        def one() -> None:
            try:
                with Client(path, timeout=20) as c:
                    results.append(c.token()["access_token"])
            except AgentError as e:
                results.append(e)

        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        # Open the gate once most clients found the backlog full (or, before the fix, gave up).
        assert wait_for(lambda: len(retries) >= n // 2 or len(results) >= n // 2, timeout=20)
        gate.set()
        for t in threads:
            t.join(30)
        failures = [r for r in results if not isinstance(r, str)]
        assert not failures, "%d of %d clients failed: %s" % (len(failures), n, failures[0])
        assert results == [TOKEN] * n
        assert retries, "the backlog never filled: the test did not exercise the retry"


def test_command_wait_covers_a_socket_that_appears_later(path: str) -> None:
    """`pass-agent token --wait 2` while the agent is still starting: no socket yet, then one."""
    started: list = []

    def start_agent() -> None:
        h = ServerHarness(path)
        h.__enter__()
        started.append(h)

    timer = threading.Timer(0.5, start_agent)
    timer.start()
    out, err = io.StringIO(), io.StringIO()
    try:
        assert client_command("token", path, True, out, wait=2, err=err) == 0, err.getvalue()
        assert json.loads(out.getvalue())["access_token"] == TOKEN
    finally:
        timer.join()
        for h in started:
            h.close()


def test_without_wait_a_missing_socket_fails_at_once(tmp_path) -> None:
    missing = str(tmp_path / "nope.sock")
    err = io.StringIO()
    assert client_command("token", missing, False, io.StringIO(), err=err) == 1
    assert "no socket at " + missing in err.getvalue()
    with pytest.raises(AgentError, match="no socket at " + missing):
        Client(missing, timeout=5, connect_wait=0.3)  # waited, still nothing: the same clear error


@pytest.mark.parametrize("err,code,kind,words", [
    (errno.ENOENT, "agent_unavailable", "retry", "no socket at"),
    (errno.ECONNREFUSED, "agent_unavailable", "retry", "nothing listens on"),
    (errno.EACCES, "denied", "operator", "permission denied"),
    (errno.EAGAIN, "agent_unavailable", "retry", "busy"),
    (errno.ENOTSOCK, "agent_unavailable", "retry", "cannot connect"),
])
def test_connect_errors_share_one_handler(err: int, code: str, kind: str, words: str) -> None:
    from agent.client import connect_error

    e = connect_error("/run/x/agent.sock", OSError(err, os.strerror(err)))
    assert (e.code, e.kind) == (code, kind) and words in str(e) and "/run/x/agent.sock" in str(e)
    assert e.hint
