"""The key providers in the real daemon (issue 19): a first registration sealed by a SoftHSM2 token,
a restart that registers nothing again, migration of a running box's store to the token and back,
a wrong PIN that stops the start with a clear error and loses nothing, `pass-agent check` saying
whether the key is hardware-backed, and the default daemon never importing the pkcs11 provider."""

from __future__ import annotations

import os
import subprocess
import sys

from agent import config
from agent.store import SLOT_NAMES
from tests import softhsm
from tests.agentproc import ROOT, AgentProc


def _providers(store_dir: str) -> set:
    out = set()
    for n in SLOT_NAMES:
        p = os.path.join(store_dir, n)
        if os.path.exists(p):
            b = open(p, "rb").read()
            out.add("device" if b[:4] == b"PAGS" else {1: "pkcs11", 2: "kernel"}[b[52]])
    return out


def _imports(agent: AgentProc) -> set:
    return {line.rsplit("|", 1)[1].strip() for line in agent.log().splitlines() if line.startswith("import time:")}


def test_the_default_daemon_never_imports_the_pkcs11_provider(make_agent, emu):
    agent = make_agent(emu)
    agent.argv_prefix = ["env", "PYTHONPROFILEIMPORTTIME=1"]
    agent.start()
    agent.token(wait=15)
    assert agent.stop() == 0
    imported = _imports(agent)
    assert {"agent.daemon", "agent.store", "agent.keys", "agent.sealing"} <= imported  # the profile is real
    assert not [m for m in imported if m in ("pkcs11", "agent.keys.pkcs11", "agent.keys.kernel")
                or m.startswith("pkcs11.")]


def _pkcs11_agent(make_agent, emu, tmp_path) -> AgentProc:
    t = softhsm.tokens()
    pf = softhsm.pin_file(tmp_path, softhsm.TOKENS["pa-main"])
    return make_agent(emu, storage__key_provider="pkcs11", storage__pkcs11=config.Pkcs11Config(
        module=t["module"], token_label="pa-main", pin_file=pf))


def test_the_daemon_registers_sealed_by_the_token_and_a_restart_does_not_register_again(make_agent, emu, tmp_path):
    agent = _pkcs11_agent(make_agent, emu, tmp_path)
    agent.argv_prefix = ["env", "PYTHONPROFILEIMPORTTIME=1"]
    agent.start()
    first = agent.token(wait=15)
    assert agent.stop() == 0
    assert {"pkcs11", "agent.keys.pkcs11"} <= _imports(agent)
    store_dir = agent.cfg.storage.dir
    assert _providers(store_dir) == {"pkcs11"}
    agent.argv_prefix = []
    agent.start()
    assert agent.token()["access_token"] == first["access_token"]
    assert agent.stop() == 0
    assert emu.stats()["register"]["ok"] == 1
    r = subprocess.run([sys.executable, "-m", "agent", "check", "--config", agent.config_path], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    line = [ln for ln in r.stdout.splitlines() if ln.split()[1:2] == ["keys"]]
    assert line and line[0].startswith("ok") and "hardware-backed: yes" in line[0], r.stdout
    assert softhsm.TOKENS["pa-main"] not in r.stdout + r.stderr


def test_a_running_box_migrates_to_the_token_and_back_without_registering_again(make_agent, emu, tmp_path):
    agent = make_agent(emu)
    agent.start()
    first = agent.token(wait=15)
    assert agent.stop() == 0
    store_dir = agent.cfg.storage.dir
    assert _providers(store_dir) == {"device"}
    t = softhsm.tokens()
    p11 = config.Pkcs11Config(module=t["module"], token_label="pa-main",
                              pin_file=softhsm.pin_file(tmp_path, softhsm.TOKENS["pa-main"]))
    agent.cfg = agent.cfg.replace(storage={"key_provider": "pkcs11", "pkcs11": p11})
    agent.write_config()
    agent.start()
    assert agent.token()["access_token"] == first["access_token"]
    assert agent.stop() == 0
    assert _providers(store_dir) == {"pkcs11"} and "re-sealing" in agent.log()
    agent.cfg = agent.cfg.replace(storage={"key_provider": "device"})  # [storage.pkcs11] kept: it reads the slots
    agent.write_config()
    agent.start()
    assert agent.token()["access_token"] == first["access_token"]
    assert agent.stop() == 0
    assert _providers(store_dir) == {"device"}
    assert emu.stats()["register"]["ok"] == 1


def test_a_wrong_pin_stops_the_start_with_a_clear_error_and_loses_nothing(make_agent, emu, tmp_path):
    agent = _pkcs11_agent(make_agent, emu, tmp_path)
    agent.start()
    first = agent.token(wait=15)
    assert agent.stop() == 0
    store_dir = agent.cfg.storage.dir
    before = {n: open(os.path.join(store_dir, n), "rb").read() for n in SLOT_NAMES
              if os.path.exists(os.path.join(store_dir, n))}
    good = agent.cfg
    bad_pin = softhsm.pin_file(tmp_path, "000000", name="wrong.pin")
    agent.cfg = good.replace(storage={"pkcs11": config.Pkcs11Config(
        module=good.storage.pkcs11.module, token_label="pa-main", pin_file=bad_pin)})
    agent.write_config()
    agent.start(wait_ready=False)
    assert agent.proc.wait(60) == 1
    agent.stop()
    log = agent.log()
    assert "cannot start" in log and "is not the user PIN" in log and "000000" not in log
    assert softhsm.TOKENS["pa-main"] not in log
    after = {n: open(os.path.join(store_dir, n), "rb").read() for n in SLOT_NAMES
             if os.path.exists(os.path.join(store_dir, n))}
    assert after == before
    agent.cfg = good
    agent.write_config()
    agent.start()
    assert agent.token()["access_token"] == first["access_token"]
    assert agent.stop() == 0
    assert emu.stats()["register"]["ok"] == 1
