"""A bug in the agent's own code during an upstream request is reported as what it is.

Not as a retryable upstream error with an endless backoff (issue 21): the state is needs_operator
with code `internal_error`, the traceback is logged once (secrets redacted), and the request is
retried after the operator wait (hourly) or at once when an operator asks, so a transient bug does
not brick the box.
"""

from __future__ import annotations

import io
import json
import threading

import pytest

from agent import config as configmod
from agent import log as agentlog
from agent.service import Service
from tests.conftest import IDENTITY, Clocks, fake_statement


class BuggySend:
    """dcr.send stand-in whose first `bugs` calls fail with a plain Python exception (a bug, not an
    upstream answer); the exception text quotes the software statement, a registered secret."""

    def __init__(self, statement: str, bugs: int) -> None:
        self.statement, self.bugs = statement, bugs
        self.calls: list[str] = []

    def __call__(self, req: dict, timeout: float, ca_file: str | None, wall_now: float) -> tuple:
        self.calls.append(req["url"])
        if len(self.calls) <= self.bugs:
            return int(self.statement)  # ValueError quoting the statement: a bug in our code
        if req["url"].endswith("/client/register"):
            body = {"client_id": "cid-123456789", "client_secret": "sec-abcdef-123456"}
        else:
            body = {"access_token": "tok-abcdefgh-%d" % len(self.calls), "token_type": "bearer", "expires_in": 3600}
        return 201, {}, json.dumps(body).encode()


@pytest.fixture
def buggy(tmp_path):
    statement = fake_statement("internal-error-app")
    st = tmp_path / "statement.jwt"
    st.write_text(statement)
    cfg = configmod.defaults().replace(adobe={"software_statement": str(st)})
    buf = agentlog.LogBuffer(200)
    agentlog.setup("info", buf, stream=io.StringIO())
    clocks = Clocks()
    send = BuggySend(statement, bugs=1)
    s = Service(cfg, identity=IDENTITY, clock=clocks.m, wall=clocks.w, send=send, logbuf=buf)
    outcome = threading.Event()
    s.add_listener(outcome.set)
    s.start()
    assert outcome.wait(10), "the worker never reported the first outcome"
    s.clocks, s.send, s.buf, s.outcome, s.statement = clocks, send, buf, outcome, statement
    yield s
    s.stop()


def test_a_bug_in_our_code_needs_an_operator_not_an_upstream_retry(buggy):
    st = buggy.status()
    err = st["last_error"]
    assert st["state"] == "needs_operator", st
    assert err["code"] == "internal_error" and err["kind"] == "operator", err
    assert "ValueError" in err["message"] and "bug" in err["message"]
    assert "Adobe" not in err["message"].split("(")[0]  # not blamed on upstream
    assert err["hint"]
    # The slow retry: the operator wait (hourly), not the upstream backoff (at most a minute or five).
    assert st["next_request_in"] >= 3000, st
    e = buggy.not_ready_error()
    assert e.code == "internal_error" and e.kind == "operator"


def test_the_traceback_is_logged_once_and_secrets_are_redacted(buggy):
    lines = buggy.buf.tail(200)
    hits = [ln for ln in lines if "internal_error" in ln or "Traceback" in ln]
    assert len(hits) == 1, lines  # one record, not a warning plus an error
    record = hits[0]
    assert "Traceback (most recent call last)" in record and "test_service_internal_error.py" in record
    assert "ValueError" in record
    everything = "\n".join(lines) + json.dumps(buggy.status()) + str(buggy.not_ready_error())
    assert buggy.statement not in everything
    assert buggy.statement.split(".")[1] not in everything


def test_an_operator_retry_recovers_from_a_transient_bug(buggy):
    buggy.outcome.clear()
    buggy.request_refresh()  # the console's `refresh`: an operator retries at once
    assert buggy.outcome.wait(10)
    got = threading.Event()
    buggy.add_listener(lambda: got.set() if buggy.status()["token"] else None)
    assert buggy.status()["token"] is not None or got.wait(10)
    assert buggy.status()["state"] == "token_valid"
