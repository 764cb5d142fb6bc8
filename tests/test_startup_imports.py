"""What `pass-agent run` imports before READY=1 when it starts from a stored token (issue 20).

Start-up time and idle memory are mostly imports (docs/bench/weight.txt measures each module), so
the real daemon must reach READY=1 without what serving a stored token does not need. Stage 1
(agent/startup.py) reaches READY=1 from the validated-configuration cache without typing, re,
tomllib, datetime, logging, json, ipaddress, urllib, threading, cryptography or ssl (the store's
AES-GCM runs in the helper process); stage 2 imports the rest after READY=1. Also never before
READY=1: argparse (the `run` command line is parsed by hand), hashlib/hmac (OpenSSL; the store's
HKDF uses the built-in SHA-256), ctypes.util (runs ldconfig in a subprocess), dataclasses and inspect
(the configuration's records are agent/record.py), and none of the optional capabilities.

How the profile is taken: the real daemon (`agent.cli.main`, as `python -m agent run` runs it)
under an audit hook that writes sys.modules to a file when the process sends its first datagram to
NOTIFY_SOCKET, which is READY=1. That is exact (what python -X importtime prints mixes in the
helper process's imports, which share stderr, and stage 2's, which run after READY=1). Benchmarks
give the figures; this test keeps the causes from coming back.
"""

from __future__ import annotations

import os

from agent.client import Client

try:
    from tests.atready import at_ready
except ImportError:  # tests/ on sys.path instead of the repo root
    from atready import at_ready

NOT_BEFORE_READY = {
    "argparse": "the run command line is parsed without argparse (agent/cli.py)",
    "hashlib": "hashlib loads the system's OpenSSL; the store uses the built-in SHA-256",
    "_hashlib": "the system's OpenSSL (~1 MB PSS)",
    "hmac": "hmac imports _hashlib",
    "ctypes.util": "find_library runs ldconfig in a subprocess",
    "subprocess": "nothing on the start path runs a program",
    "tempfile": "nothing on the start path makes temp files",
    "dataclasses": "the configuration's records are agent/record.py (dataclasses compiles methods with exec)",
    "inspect": "inspect (with ast, dis, tokenize) is ~4 ms and ~1.4 MB",
    "agent.facade": "the service facade is an annotation for the server",
}
# Stage 1 on a configuration-cache hit (issue 20): each of these is imported by stage 2, after READY=1.
NOT_IN_STAGE_1 = {
    "typing": "annotations only (TYPE_CHECKING = False blocks)",
    "re": "json, logging, urllib and tomllib bring it",
    "tomllib": "the validated-configuration cache (agent/configcache.py)",
    "tomli": "the validated-configuration cache (agent/configcache.py)",
    "datetime": "tomllib brings it",
    "logging": "stage 1 logs through agent/startup.py StageLog, which sets logging up at its first line",
    "json": "the store's canonical JSON goes through _json directly (agent/slotformat.py)",
    "ipaddress": "agent/config.py imports it inside is_loopback",
    "urllib": "agent/config.py imports urllib.parse inside validate",
    "threading": "the service's worker thread is stage 2",
    "ssl": "TLS is in the helper process",
    "cryptography": "AES-GCM is in the helper process (agent/helperproc.py)",
    "signal": "stage 1 records signals through _signal (signal imports enum)",
    "agent.daemon": "stage 2",
    "agent.service": "stage 2",
    "agent.server": "stage 2",
    "agent.log": "stage 2 (or a stage-1 log line, which a quiet start has none of)",
}
OPTIONAL = ("agent.web", "agent.gateway", "agent.keys.pkcs11", "pkcs11", "agent.emulator", "agent.demo", "h11",
            "wsproto")

# At READY=1, in the daemon's own process (tests/atready.py): sys.modules into the file named by `arg`.
_WRITE_MODULES = """
fd = os.open(arg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, "\\n".join(sorted(sys.modules)).encode())
os.close(fd)
"""


def _profiled(agent, out: str, state_dir: str) -> None:
    agent.argv_prefix = at_ready(_WRITE_MODULES, out, env=("STATE_DIRECTORY=" + state_dir,))


def _modules(out: str) -> set:
    with open(out) as f:
        return set(f.read().split())


def _top(mods: set, names) -> dict:
    return {m: names[m] for m in names if m in mods or any(x.startswith(m + ".") for x in mods)}


def test_a_start_from_a_stored_token_and_a_cached_configuration_imports_only_what_ready_needs(make_agent, emu,
                                                                                         tmp_path):
    state = str(tmp_path / "state")
    os.mkdir(state, 0o700)
    agent = make_agent(emu, log__level="info")
    _profiled(agent, str(tmp_path / "first"), state)
    agent.start()  # a miss: validated in full (tomllib), cache written after READY=1
    with Client(agent.socket_path, timeout=20) as c:
        agent.seen_secrets.add(c.token(wait=15)["access_token"])  # registered, token stored
    assert agent.stop() == 0
    first = _modules(str(tmp_path / "first"))
    assert "tomllib" in first or "tomli" in first  # the profile sees what this test forbids on a hit
    assert os.path.isfile(os.path.join(state, "config.cache"))

    _profiled(agent, str(tmp_path / "hit"), state)
    agent.start()  # returns at READY=1
    with Client(agent.socket_path, timeout=20) as c:
        assert c.token()["access_token"] in agent.seen_secrets  # served from the store, Adobe not asked
    assert agent.stop() == 0
    at_ready = _modules(str(tmp_path / "hit"))

    assert {"agent.startup", "agent.store", "agent.config", "agent.configcache"} <= at_ready  # the profile is real
    assert _top(at_ready, NOT_IN_STAGE_1) == {}
    assert _top(at_ready, NOT_BEFORE_READY) == {}
    assert not [m for m in at_ready if m in OPTIONAL or m.startswith(tuple(o + "." for o in OPTIONAL))]
    assert "configuration cache" not in agent.log()  # nothing was wrong with it
    agent.assert_no_secrets()


def test_a_client_connecting_right_at_ready_is_served_the_stored_token(make_agent, emu, tmp_path):
    # READY=1 comes from stage 1; the loop runs only after stage 2 built the daemon. A player that
    # connects at once waits in the listen backlog and gets the stored token (docs/ARCHITECTURE.md).
    state = str(tmp_path / "state")
    os.mkdir(state, 0o700)
    agent = make_agent(emu)
    agent.argv_prefix = ["env", "STATE_DIRECTORY=" + state]
    agent.start()
    stored = agent.token(wait=15)["access_token"]
    assert agent.stop() == 0
    emu.stop()  # Adobe unreachable: only the store can answer
    for _ in range(3):  # a miss was written on the first start; these two are hits
        agent.start()  # returns as READY=1 arrives
        with Client(agent.socket_path, timeout=20) as c:
            assert c.token()["access_token"] == stored
        assert agent.stop() == 0
    agent.assert_no_secrets()


def test_signals_sent_right_at_ready_are_acted_on_once_the_loop_runs(make_agent, emu):
    # Between READY=1 (stage 1) and the loop's signal handlers (stage 2) SIGHUP and SIGTERM are recorded,
    # then replayed: a reload is done, not fatal (SIGHUP's default action), and a stop exits 0.
    import signal

    agent = make_agent(emu)
    agent.start()
    agent.token(wait=15)
    assert agent.stop() == 0
    agent.start()
    agent.send(signal.SIGHUP)
    agent.wait_notify("RELOADING=1")
    assert agent.token()["access_token"] in agent.seen_secrets
    assert agent.stop() == 0 and "configuration reloaded" in agent.log()
    agent.start()
    assert agent.stop(signal.SIGTERM) == 0
    assert any("STOPPING=1" in m for m in agent.notifications)
    agent.assert_no_secrets()
