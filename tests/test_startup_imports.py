"""What `pass-agent run` imports before READY=1 when it starts from a stored token (issue 20).

Start-up time and idle memory are mostly imports (docs/bench/weight.txt measures each module), so
the real daemon, profiled by `python -X importtime`, must reach READY without what serving a stored
token does not need: argparse (the `run` command line is parsed by hand), hashlib/hmac (OpenSSL;
the store's HKDF uses the built-in SHA-256), ctypes.util (runs ldconfig in a subprocess),
cryptography's Python layers (only its compiled AES-GCM), and none of the optional capabilities
(web endpoint, gateway, pkcs11 provider, emulator), dataclasses and inspect (the configuration's
records are agent/record.py). Benchmarks give the figures; this test keeps
the causes from coming back.
"""

from __future__ import annotations

from agent.client import Client

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
    "cryptography.hazmat.bindings._rust": "AES-GCM runs in the helper process (agent/helperproc.py)",
    "ssl": "TLS runs in the helper process (agent/helperproc.py)",
}
OPTIONAL = ("agent.web", "agent.gateway", "agent.keys.pkcs11", "pkcs11", "agent.emulator", "agent.demo", "h11",
            "wsproto")


def _imported(log: str) -> list[str]:
    return [line.rsplit("|", 1)[1].strip() for line in log.splitlines() if line.startswith("import time:")
            and "[us]" not in line]


def test_a_start_from_a_stored_token_imports_only_what_serving_it_needs(make_agent, emu):
    agent = make_agent(emu, log__level="info")
    agent.start()
    with Client(agent.socket_path, timeout=20) as c:
        agent.seen_secrets.add(c.token(wait=15)["access_token"])  # registered, token stored
    assert agent.stop() == 0

    agent.argv_prefix = ["env", "PYTHONPROFILEIMPORTTIME=1"]  # python -X importtime: every import, on stderr
    agent.start()  # returns at READY=1
    at_ready = _imported(agent.log())
    with Client(agent.socket_path, timeout=20) as c:
        assert c.token()["access_token"] in agent.seen_secrets  # served from the store, Adobe not asked
    assert agent.stop() == 0

    assert {"agent.daemon", "agent.store", "agent.server", "agent.helperproc"} <= set(at_ready)
    heavy = {m: why for m, why in NOT_BEFORE_READY.items() if m in at_ready}
    assert not heavy
    assert not [m for m in at_ready if m.startswith("cryptography.hazmat.primitives")]
    assert not [m for m in at_ready if m in OPTIONAL or m.startswith(tuple(o + "." for o in OPTIONAL))]
    agent.assert_no_secrets()
