"""Shared fixtures: a valid statement file and config writer for tests that need a configuration."""

from __future__ import annotations

import base64
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Hypothesis: no example database, so every run explores fresh examples and a failure found once
# cannot replay silently from a local .hypothesis/ directory; failures print a reproduction blob, and
# what they found is pinned in the test file (@example / test_fixed_*). docs/TESTING.md has the policy.
try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # the fuzz tests need it; the rest of the suite does not
    _hypothesis_settings = None
if _hypothesis_settings is not None:
    _hypothesis_settings.register_profile("pass-agent", database=None, print_blob=True)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "pass-agent"))


def fake_statement(sub: str = "demo-app") -> str:
    """A well-formed (unsigned-looking) RS256 JWT, enough for config checks that parse but do not verify."""
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return "%s.%s.%s" % (b64({"alg": "RS256", "typ": "JWT"}), b64({"sub": sub, "iss": "auth.adobe.com", "iat": 1}),
                         base64.urlsafe_b64encode(b"x" * 64).decode().rstrip("="))


@pytest.fixture
def statement_file(tmp_path):
    p = tmp_path / "statement.jwt"
    p.write_text(fake_statement())
    return str(p)


@pytest.fixture
def write_config(tmp_path):
    def write(text: str, name: str = "agent.toml") -> str:
        p = tmp_path / name
        p.write_text(text)
        return str(p)

    return write


@pytest.fixture
def emu(tmp_path):
    """A started TLS emulator (Adobe's throttle on) under tmp_path/emulator, stopped at teardown.
    A test file that needs another emulator defines its own `emu`."""
    from agent.emulator import Emulator

    e = Emulator(state_dir=str(tmp_path / "emulator"), tls=True)
    e.start()
    yield e
    e.stop()


@pytest.fixture
def make_agent(tmp_path):
    """make_agent(emu, **overrides) -> tests.agentproc.AgentProc under tmp_path, killed at teardown
    whatever the test did."""
    from tests.agentproc import AgentProc

    made = []

    def make(emu, **kw) -> AgentProc:
        made.append(AgentProc(tmp_path, emu, **kw))
        return made[-1]

    yield make
    for agent in made:
        agent.kill()


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    """One emulator state directory per test module: its keys are generated once, not per test."""
    return str(tmp_path_factory.mktemp("emukeys"))


# The Service tests' device identity and hand-moved clocks (tests/test_service*.py).
IDENTITY = {"x_device_info": "eyJtb2RlbCI6IngifQ==", "ap_device_identifier": "fingerprint eA==",
            "device_id": "serial:1", "fields": {"model": "x"}, "sources": {}, "warnings": []}


class Clocks:
    """Monotonic (m) and wall (w) clocks for agent.service.Service that the test sets by hand."""

    def __init__(self) -> None:
        self.mono, self.wall = 1000.0, 1.8e9

    def m(self) -> float:
        return self.mono

    def w(self) -> float:
        return self.wall


def app_statement(app_id: str) -> str:
    """A statement-shaped JWT whose subject is `app_id` (for multi-application Service tests)."""
    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return "%s.%s.c2ln" % (b64({"alg": "RS256"}), b64({"sub": app_id, "iss": "auth.adobe.com"}))


def machine_identity(root: str) -> dict:
    """The device identity agent.deviceinfo derives under `root` from a machine-id alone (fallbacks
    otherwise: a complete, valid header)."""
    from agent import deviceinfo

    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    with open(os.path.join(root, "etc", "machine-id"), "w") as f:
        f.write("0123456789abcdef0123456789abcdef\n")
    return deviceinfo.identify(root=root)
