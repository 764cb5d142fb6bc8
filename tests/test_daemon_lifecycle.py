"""End-to-end lifecycle behaviour of the real daemon process against the real emulator: a replaced
statement file is noticed without SIGHUP (issue 14 item 2), and the `token` command's answer when
min_ttl exceeds what Adobe's tokens live (issue 15 items 5 and 17)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from agent.client import Client
from agent.emulator import Emulator
from tests.agentproc import ROOT


def _emulator(tmp_path, **kw):
    return Emulator(state_dir=str(tmp_path / "emulator"), tls=True, **kw).start()


def _until(predicate, timeout: float) -> bool:
    """Poll `predicate` (the daemon offers no event for a statement adopted without a request)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _replace(path: str, text: str) -> None:
    """As an installer does: write a temporary file, then rename it over the old one."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@pytest.mark.parametrize("other_app", [True, False])
def test_a_replaced_statement_is_noticed_without_sighup(make_agent, emu, other_app):
    agent = make_agent(emu)
    agent.start()
    with Client(agent.socket_path, timeout=20) as c:
        first = c.token(wait=15)
        agent.seen_secrets.add(first["access_token"])
        # Let the worker finish with that token (saved, then asleep until the refresh hours away), so
        # that only a watch on the file can notice what follows.
        assert _until(lambda: c.status()["store"]["saves"] >= 2 and c.status()["in_flight"] is None, timeout=15)
        before = c.status()["statement_sha256"]
        statement = emu.mint_statement("other-app" if other_app else None)
        _replace(agent.statement, statement)
        if other_app:
            # Exactly one registration, then the new client's token arrives: token.changed.
            for note in c.subscribe(timeout=15):
                assert note["method"] == "token.changed"
                break
            assert c.status()["statement_app"].endswith("|other-app")
        else:
            # Same application: the new file is adopted (status shows its hash) and nothing is asked.
            assert _until(lambda: c.status()["statement_sha256"] != before, timeout=15)
        agent.seen_secrets.add(c.token()["access_token"])
    stats = emu.stats()
    assert stats["register"]["ok"] == (2 if other_app else 1)
    assert stats["token"]["ok"] == (2 if other_app else 1)
    assert agent.stop() == 0
    agent.assert_no_secrets()


def test_token_min_ttl_longer_than_the_token_lifetime_says_so(make_agent, tmp_path):
    emu = _emulator(tmp_path, token_ttl=8)
    try:
        agent = make_agent(emu)
        agent.start()
        with Client(agent.socket_path, timeout=20) as c:
            agent.seen_secrets.add(c.token(wait=15)["access_token"])
        r = subprocess.run([sys.executable, "-m", "agent", "token", "--socket", agent.socket_path,
                            "--min-ttl", "600"], capture_output=True, text=True, timeout=60, cwd=ROOT)
        out = r.stdout + r.stderr
        assert r.returncode != 0
        assert "holding a valid token" not in out
        assert "min_ttl" in out and "600" in out and "8 s" in out, out
        assert emu.stats()["token"]["ok"] == 1  # answered at once: no refresh forced
        assert agent.stop() == 0
    finally:
        emu.stop()
