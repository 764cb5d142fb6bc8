"""Several registered applications in the real daemon against the emulator (issue 16): separate
credentials, a revocation isolated to its application, routing and denial by peer (real other
uids, root only), the upgrade in place of a store written by the single-application agent of
805438f, and the emulator's request log replayed through Adobe's throttle model."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile

import pytest

from agent import config as configmod
from agent import rpc
from agent.check import fork_as
from agent.client import Client, RpcCallError
from agent.emulator.throttle import Throttle
from tests.agentproc import ROOT, AgentProc

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")
BASELINE = "805438f"  # the last single-application main


@pytest.fixture
def agents():
    made: list[AgentProc] = []
    yield made
    for a in made:
        a.kill()


def app_id(name: str) -> str:
    return "com.example." + name


def multi_agent(tmp, emu, names, made, acls: dict | None = None, **overrides) -> AgentProc:
    """An AgentProc whose configuration has one [[app]] table per name, each with its own statement."""
    agent = AgentProc(tmp, emu, **overrides)
    apps = []
    for n in names:
        path = os.path.join(str(tmp), "%s.jwt" % n)
        emu.write_statement(path, app_id=app_id(n))
        apps.append(dict({"name": n, "software_statement": path, "application_id": app_id(n)}, **(acls or {}).get(n, {})))
    agent.cfg = agent.cfg.replace(app=apps)
    agent.write_config()
    agent.app_statements = [a["software_statement"] for a in apps]
    made.append(agent)
    return agent


def tokens(agent: AgentProc, names) -> dict:
    out = {}
    with Client(agent.socket_path, timeout=30) as c:
        for n in names:
            out[n] = c.token(wait=25, app=n)
            agent.seen_secrets.add(out[n]["access_token"])
    return out


def assert_no_statement_in_logs(agent: AgentProc) -> None:
    text = agent.all_logs()
    for p in agent.app_statements:
        with open(p) as f:
            assert f.read().strip() not in text


def replay_through_throttle(requests: list) -> list:
    """Each request the emulator logged, in order, through a fresh Adobe throttle (rate 1, one-time
    burst 10, keyed by the client address as Adobe keys it): the refused ones."""
    t = Throttle()
    return [r for r in requests if not t.take(r["ip"], r["t"])[0]]


@pytest.mark.parametrize("n", [2, 6])
def test_each_application_registers_once_with_its_own_credentials(tmp_path, emu, agents, n):
    names = ["app%d" % i for i in range(n)]
    agent = multi_agent(tmp_path, emu, names, agents).start()
    toks = tokens(agent, names)
    assert len({t["access_token"] for t in toks.values()}) == n
    clients = emu.clients()
    assert sorted(c["app_id"] for c in clients) == sorted(app_id(x) for x in names)  # one client each
    assert len({c["client_id"] for c in clients}) == n
    # one store per application: apps/NAME below the storage directory
    store = agent.cfg.storage.dir
    for x in names:
        assert any(f.startswith("slot-") for f in os.listdir(os.path.join(store, "apps", x))), x
    with Client(agent.socket_path, timeout=10) as c:
        st = c.status()
        assert [a["app"] for a in st["apps"]] == names and all(a["token"] for a in st["apps"])
        assert st["governor"]["throttled"] == 0
        with pytest.raises(RpcCallError) as ei:
            c.token()  # root may use every application: it must name one
        assert ei.value.rpc_code == rpc.INVALID_PARAMS and ei.value.code == "app_required"
        assert ei.value.data["apps"] == names
        # the X-Device-Info of each application carries its applicationId
        for x in names[:2]:
            info = c.device_info(app=x)
            assert info["fields"]["applicationId"] == app_id(x)
    # Every request reached the emulator's throttle within Adobe's budget, across applications: none
    # refused live, and none refused when the log is replayed through a fresh one-time-burst bucket.
    log = emu.requests()
    assert len(log) == 2 * n
    assert [r["status"] for r in log if r["status"] == 429] == []
    assert replay_through_throttle(log) == []
    assert agent.stop() == 0
    assert_no_statement_in_logs(agent)


def test_revocation_stays_with_its_application(tmp_path, emu, agents):
    agent = multi_agent(tmp_path, emu, ["news", "sport"], agents).start()
    before = tokens(agent, ["news", "sport"])
    news_client = [c["client_id"] for c in emu.clients() if c["app_id"] == app_id("news")]
    emu.revoke_statement(app_id("sport"))  # Adobe revokes sport's statement and its clients
    n_log = len(emu.requests())
    with Client(agent.socket_path, timeout=10) as c:
        # sport's player is refused by a management API: the agent registers sport again, which Adobe refuses
        res = c.call("error.report", {"status": 403, "management": True, "app": "sport",
                                      "access_token": before["sport"]["access_token"]})
        assert res["decision"] == "reregister"
    agent.wait_notify("sport: needs an operator", timeout=30)
    with Client(agent.socket_path, timeout=10) as c:
        st = {a["app"]: a for a in c.status()["apps"]}
        assert st["sport"]["state"] == "needs_operator"
        assert st["sport"]["last_error"]["code"] == "invalid_software_statement"
        assert st["news"]["state"] == "token_valid" and st["news"]["last_error"] is None
        assert c.token(app="news")["access_token"] == before["news"]["access_token"]
        assert c.status(app="news")["client_id_hint"] == st["news"]["client_id_hint"]
    # news sent nothing since: its client is the same, not revoked
    after = emu.requests()[n_log:]
    assert after and all(r["client_id"] is None or r["client_id"] not in news_client for r in after)
    assert [c["client_id"] for c in emu.clients() if c["app_id"] == app_id("news")] == news_client
    assert not any(c["revoked"] for c in emu.clients() if c["app_id"] == app_id("news"))
    assert agent.stop() == 0
    assert_no_statement_in_logs(agent)


# -- peers: real other uids (root only) ---------------------------------------------------------------


def as_peer(path: str, uid: int, gid: int, groups: tuple, lines: list[dict]) -> dict:
    """Connect as another user in a forked child (agent.check.fork_as), send `lines`, return the
    answers (or the refusal)."""
    def peer() -> dict:  # in the child: syscalls only
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        answers, eof = [], False
        try:
            s.connect(path)
            f = s.makefile("rb")
            for i, params in enumerate(lines):
                req = {"jsonrpc": "2.0", "id": i + 1, "method": params.pop("method", "token.get")}
                if params:
                    req["params"] = params
                s.sendall(json.dumps(req).encode() + b"\n")
                line = f.readline()
                if not line:
                    eof = True
                    break
                answers.append(json.loads(line))
                if answers[-1].get("id") is None:  # refused at connect: the server closes
                    eof = f.readline() == b""
                    break
            return {"answers": answers, "eof": eof}
        except OSError as e:
            return {"errno": e.errno}

    res = fork_as(uid, gid, lambda: list(groups), peer)
    assert res is not None, "child as uid %d failed" % uid
    return res


@pytest.fixture
def pubdir():
    d = tempfile.mkdtemp(prefix="pa-apps-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@needs_root
def test_peers_are_routed_to_their_applications_and_denied_the_others(tmp_path, emu, agents, pubdir):
    acls = {"news": {"allow_uids": [NOBODY]}, "sport": {"allow_gids": [4242]}}
    agent = multi_agent(tmp_path, emu, ["news", "sport"], agents, acls=acls,
                        socket__path=os.path.join(pubdir, "agent.sock"), socket__mode=0o666).start()
    toks = tokens(agent, ["news", "sport"])
    path = agent.socket_path
    # nobody may use news only: it gets news by default, and the same "denied" for sport or an unknown name,
    # on a connection that stays open
    res = as_peer(path, NOBODY, NOBODY, (), [{}, {"app": "sport"}, {"app": "nope"}, {"method": "agent.status"}, {}])
    news, sport, nope, status, again = res["answers"]
    assert news["result"]["access_token"] == toks["news"]["access_token"]
    for ans in (sport, nope):
        assert ans["error"]["code"] == rpc.DENIED and ans["error"]["data"]["code"] == "denied"
        assert ans["error"]["data"]["apps"] == ["news"]
        assert toks["sport"]["access_token"] not in json.dumps(ans)
    assert [a["app"] for a in status["result"]["apps"]] == ["news"] and status["result"]["app"] == "news"
    assert again["result"]["access_token"] == toks["news"]["access_token"]
    # a member of group 4242 (not nobody's uid... but nobody is in news too): may use both, must name one
    res = as_peer(path, NOBODY, NOBODY, (4242,), [{}, {"app": "sport"}])
    required, sport = res["answers"]
    assert required["error"]["code"] == rpc.INVALID_PARAMS and required["error"]["data"]["code"] == "app_required"
    assert required["error"]["data"]["apps"] == ["news", "sport"]
    assert sport["result"]["access_token"] == toks["sport"]["access_token"]
    # a group member alone gets sport by default
    res = as_peer(path, 65533, 4242, (), [{}])
    assert res["answers"][0]["result"]["access_token"] == toks["sport"]["access_token"]
    # allowed for no application: refused at connect and disconnected, as before issue 16
    res = as_peer(path, 65533, 65533, (), [{}])
    (refused,) = res["answers"]
    assert refused["id"] is None and refused["error"]["code"] == rpc.DENIED and res["eof"] is True
    assert "[[app]]" in refused["error"]["message"]
    assert agent.stop() == 0


# -- the upgrade of a store written by the single-application agent -------------------------------------


def _baseline_tree(dest: str) -> str:
    """The agent package as of BASELINE, extracted with `git archive` (no worktree bookkeeping)."""
    try:
        blob = subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", BASELINE, "agent", "board"],
                              capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip("the baseline commit %s is not in this checkout: %s" % (BASELINE, e))
    os.makedirs(dest, exist_ok=True)
    tar = os.path.join(dest, "base.tar")
    with open(tar, "wb") as f:
        f.write(blob)
    with tarfile.open(tar) as t:
        t.extractall(dest)
    return dest


def test_a_single_application_store_upgrades_in_place_as_default(tmp_path, emu, agents):
    # 1. The baseline (single-application) agent registers and stores its credentials and token.
    old = AgentProc(tmp_path, emu, name="baseline")
    agents.append(old)
    base = _baseline_tree(str(tmp_path / "baseline-src"))
    c = old.cfg
    old.write_config('[adobe]\nbase_url = "%s"\nsoftware_statement = "%s"\nca_file = "%s"\ntimeout = 5.0\n'
                     '[storage]\ndir = "%s"\nruntime_dir = "%s"\n[socket]\npath = "%s"\nmode = 0o600\n'
                     '[log]\nlevel = "debug"\n' % (c.adobe.base_url, old.statement, c.adobe.ca_file, c.storage.dir,
                                                   c.storage.runtime_dir, c.socket.path))
    old.popen_kw = {"cwd": base, "env": dict(os.environ, PYTHONPATH=base, NOTIFY_SOCKET="")}
    old.argv_prefix = []
    proc = subprocess.run([sys.executable, "-c", "import agent, sys; print(agent.__file__)"], cwd=base,
                          env=dict(os.environ, PYTHONPATH=base), capture_output=True, text=True, check=True)
    assert proc.stdout.startswith(base)  # the baseline code runs, not this checkout's
    old.start(wait_ready=False)
    with Client(old.socket_path, timeout=30, connect_wait=20) as cl:
        first = cl.token(wait=25)
        hint = cl.status()["client_id_hint"]
    old.stop()
    registered = [r for r in emu.requests() if r["endpoint"] == "register"]
    assert len(registered) == 1
    assert sorted(os.listdir(c.storage.dir)) >= ["lock"] and any(n.startswith("slot-") for n in os.listdir(c.storage.dir))

    # 2. Today's agent with [[app]] tables: "default" keeps that store and its credentials, "extra" is new.
    new = AgentProc(tmp_path, emu, name="new")
    extra = str(tmp_path / "extra.jwt")
    emu.write_statement(extra, app_id=app_id("extra"))
    new.cfg = new.cfg.replace(app=[{"name": "default", "software_statement": old.statement},
                                   {"name": "extra", "software_statement": extra}])
    new.write_config()
    new.app_statements = [old.statement, extra]
    agents.append(new)
    new.runs = old.runs  # its own notify socket in the same directory
    new.start()
    with Client(new.socket_path, timeout=30) as cl:
        t = cl.token(app="default")  # at once, from the store: no wait, no request
        assert t["access_token"] == first["access_token"]
        assert cl.status(app="default")["client_id_hint"] == hint
        cl.token(app="extra", wait=25)
    regs = [r for r in emu.requests() if r["endpoint"] == "register"]
    assert len(regs) == 2  # the baseline's one, and extra's: default did not register again
    assert sorted(cl["app_id"] for cl in emu.clients()) == sorted([emu.clients()[0]["app_id"], app_id("extra")])
    assert new.stop() == 0
    assert_no_statement_in_logs(new)


def test_a_legacy_file_is_one_application_named_default(tmp_path, emu, agents):
    agent = AgentProc(tmp_path, emu)
    agents.append(agent)
    agent.app_statements = [agent.statement]
    agent.start()
    with Client(agent.socket_path, timeout=30) as c:
        t = c.token(wait=25)  # no app needed, as before
        agent.seen_secrets.add(t["access_token"])
        assert c.token(app="default")["access_token"] == t["access_token"]
        st = c.status()
        assert st["state"] == "token_valid" and [a["app"] for a in st["apps"]] == ["default"]
    assert configmod.load(agent.config_path).apps[0].name == "default"
    assert agent.stop() == 0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli_token_headers_status_and_check_know_applications(tmp_path, emu, agents):
    agent = multi_agent(tmp_path, emu, ["news", "sport"], agents).start()
    toks = tokens(agent, ["news", "sport"])
    sock = agent.socket_path
    r = _cli("token", "--socket", sock, "--app", "sport", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["access_token"] == toks["sport"]["access_token"]
    r = _cli("headers", "--socket", sock, "-a", "news")
    assert r.returncode == 0 and "Authorization: Bearer " + toks["news"]["access_token"] in r.stdout
    r = _cli("token", "--socket", sock)
    assert r.returncode == 1 and "app_required" in r.stderr and "news, sport" in r.stderr
    r = _cli("status", "--socket", sock)
    assert r.returncode == 0, r.stderr
    assert "[news]" in r.stdout and "[sport]" in r.stdout and "[agent]" in r.stdout
    assert toks["news"]["access_token"] not in r.stdout
    r = _cli("status", "--socket", sock, "--app", "sport")
    assert r.returncode == 0 and "[news]" not in r.stdout and "holding a valid token" in r.stdout
    r = _cli("check", "--config", agent.config_path)
    for name in ("statement news", "statement sport", "storage news", "storage sport"):
        assert any(line.startswith("ok") and name in line for line in r.stdout.splitlines()), (name, r.stdout)
    r = _cli("reset", "--config", agent.config_path, "--yes")
    assert r.returncode == 2 and "--app NAME" in r.stderr and "news, sport" in r.stderr
    for t in toks.values():
        agent.seen_secrets.add(t["access_token"])
    assert agent.stop() == 0


def test_c_client_names_the_application(tmp_path, emu, agents):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = str(tmp_path / "token_client")
    subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Werror", "-o", exe,
                    os.path.join(ROOT, "tools", "clients", "token_client.c")], check=True)
    agent = multi_agent(tmp_path, emu, ["news", "sport"], agents).start()
    toks = tokens(agent, ["news", "sport"])
    for n in ("news", "sport"):
        r = subprocess.run([exe, "-s", agent.socket_path, "-a", n, "-m", "10"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip() == toks[n]["access_token"], r.stderr
    r = subprocess.run([exe, "-s", agent.socket_path], capture_output=True, text=True)
    assert r.returncode == 1 and "news, sport" in r.stderr
    r = subprocess.run([exe, "-s", agent.socket_path, "-a", 'x","y'], capture_output=True, text=True)
    assert r.returncode == 2 and "application name" in r.stderr  # never pasted into the request
    for t in toks.values():
        agent.seen_secrets.add(t["access_token"])
    assert agent.stop() == 0
