"""End-to-end: the daemon as a real process with systemd notifications, signals and a real emulator."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from agent.client import Client


def test_ready_status_watchdog_and_sigterm(make_agent, emu):
    agent = make_agent(emu, watchdog_usec=200000)
    ready = agent.start().notifications
    t = agent.token(wait=15)
    assert t["token_type"] == "bearer" and t["expires_in"] > 0
    # Watchdog pings keep coming while the agent is idle.
    agent.wait_notify("WATCHDOG=1", timeout=5)
    agent.wait_notify("WATCHDOG=1", timeout=5)
    status = agent.wait_notify("STATUS=holding a valid token", timeout=10)
    assert "token valid for" in status
    assert ready is not None
    rc = agent.stop(signal.SIGTERM)
    assert rc == 0
    assert any("STOPPING=1" in m for m in agent.notifications)
    st = emu.stats()
    assert st["register"]["ok"] == 1 and st["token"]["ok"] == 1 and st["throttled"] == 0


def test_sigint_exits_zero(make_agent, emu):
    agent = make_agent(emu)
    agent.start()
    assert agent.stop(signal.SIGINT) == 0


def test_sighup_reload_good_and_bad_config_keeps_token_and_connection(make_agent, emu):
    agent = make_agent(emu)
    agent.start()
    with Client(agent.socket_path, timeout=20) as c:
        first = c.token(wait=15)
        agent.seen_secrets.add(first["access_token"])
        # A good new config: log level and allow-list change.
        agent.cfg = agent.cfg.replace(log={"level": "warning"}, socket={"allow_uids": [4242]})
        agent.write_config()
        agent.send(signal.SIGHUP)
        agent.wait_notify("RELOADING=1")
        agent.wait_notify("READY=1")
        assert c.token()["access_token"] == first["access_token"]  # same connection, same token
        # A bad one: reported, not applied, nothing dropped.
        agent.write_config("[socket]\nmode = \"rw\"\n")
        agent.send(signal.SIGHUP)
        agent.wait_notify("RELOADING=1")
        msg = agent.wait_notify("READY=1")
        assert "reload rejected" in msg
        assert c.token()["access_token"] == first["access_token"]
    log = agent.log()
    assert "configuration reloaded" in log
    assert "NOT applied" in log and "[socket] mode" in log
    assert agent.stop() == 0
    assert emu.stats()["register"]["ok"] == 1


def test_restart_offline_serves_stored_token_at_once(make_agent, emu):
    agent = make_agent(emu)
    agent.start()
    first = agent.token(wait=15)
    assert agent.stop() == 0
    emu.stop()  # Adobe unreachable from now on
    agent.start()  # READY must come without the network
    again = agent.token()  # no wait: it must be there at once
    assert again["access_token"] == first["access_token"]
    assert abs(again["expires_at"] - first["expires_at"]) < 5
    assert agent.stop() == 0


def test_restart_with_expired_token_refreshes_without_registering(make_agent, emu):
    emu.configure(token_ttl=2)
    agent = make_agent(emu)
    agent.start()
    first = agent.token(wait=15)
    assert agent.stop() == 0
    time.sleep(2.5)  # the stored token expires while the agent is down
    emu.configure(token_ttl=3600)
    agent.start()
    second = agent.token(wait=15)
    assert second["access_token"] != first["access_token"]
    assert second["expires_in"] > 3000
    assert agent.stop() == 0
    st = emu.stats()
    assert st["register"]["ok"] == 1, "a restart must never register again"
    assert st["token"]["ok"] >= 2


def test_store_survives_sigkill(make_agent, emu):
    agent = make_agent(emu)
    agent.start()
    first = agent.token(wait=15)
    agent.send(signal.SIGKILL)
    agent.proc.wait()
    agent.start()
    assert agent.token()["access_token"] == first["access_token"]
    assert agent.stop() == 0
    assert emu.stats()["register"]["ok"] == 1


def test_socket_file_mode_and_health(make_agent, emu):
    agent = make_agent(emu)
    agent.start()
    assert oct(os.stat(agent.socket_path).st_mode & 0o777) == oct(0o600)
    agent.token(wait=15)
    with Client(agent.socket_path) as c:
        assert c.health() == {"live": True, "ready": True}
        st = c.status()
    assert st["state"] == "token_valid"
    assert "client_secret" not in str(st)
    assert agent.stop() == 0


def _wakeups(pid: int) -> int:
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


@pytest.mark.parametrize("with_console", [False, True])
def test_idle_is_idle_no_periodic_wakeups(make_agent, emu, with_console):
    """With a valid token, no clients and no watchdog, the process sleeps until the scheduled refresh,
    also with the serial console open on a pty."""
    master = slave = None
    overrides = {}
    if with_console:
        master, slave = os.openpty()
        overrides["console__port"] = os.ttyname(slave)
    agent = make_agent(emu, **overrides)
    try:
        agent.start()
        agent.token(wait=15)
        time.sleep(0.5)  # let the client's connection close and the loop settle
        before = _wakeups(agent.proc.pid)
        time.sleep(3.0)
        after = _wakeups(agent.proc.pid)
        assert after - before <= 2, "the idle agent woke up %d times in 3 s" % (after - before)
        if with_console:
            os.write(master, b"version\r")
            out = b""
            deadline = time.monotonic() + 10
            while b"pass-agent" not in out and time.monotonic() < deadline:
                out += os.read(master, 4096)
            assert b"0.1" in out or b"pass-agent" in out
        assert agent.stop() == 0
    finally:
        for fd in (master, slave):
            if fd is not None:
                os.close(fd)


# -- hardening: core dumps, read-only storage, the runtime token and the player's socket -----------

def _core_files(directory: str) -> list[str]:
    return [n for n in os.listdir(directory) if n == "core" or n.startswith("core.")]


@pytest.mark.skipif(os.geteuid() != 0, reason="raising RLIMIT_CORE's hard limit and changing gid need root")
def test_daemon_is_not_dumpable_and_leaves_no_core_file(make_agent, emu, tmp_path):
    """A crash must not write the secrets to disk: RLIMIT_CORE 0 and PR_SET_DUMPABLE 0.

    Observables from outside: /proc/PID/limits, and the group of /proc/PID/environ, which is the
    process's gid while it is dumpable and root's once it is not (the agent runs with gid 65534 here
    so the two differ); finally a real SIGABRT in a directory where a core would land."""
    import resource

    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def allow_cores() -> None:  # what a careless unit or shell could give the agent
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        os.setgid(65534)

    agent = make_agent(emu)
    agent.popen_kw = {"preexec_fn": allow_cores, "cwd": str(cwd)}
    agent.start()
    agent.token(wait=15)
    pid = agent.proc.pid
    with open("/proc/%d/limits" % pid) as f:
        core = [ln.split()[4:6] for ln in f if ln.startswith("Max core file size")]
    assert core == [["0", "0"]], core
    assert os.stat("/proc/%d/environ" % pid).st_gid == 0, "the agent is still dumpable"
    agent.send(signal.SIGABRT)
    assert agent.proc.wait() == -signal.SIGABRT
    assert _core_files(str(cwd)) == [] and _core_files(tmp_path) == []


def _ro_prefix(directory: str) -> list[str]:
    """Run the agent in a private mount namespace where `directory` is a read-only bind mount."""
    sh = 'set -e; mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; shift; exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", sh, "sh", directory]


def _ro_refusal() -> str | None:
    import shutil
    import subprocess

    if os.geteuid() != 0:
        return "a read-only bind mount needs root (CAP_SYS_ADMIN)"
    if not shutil.which("unshare") or not shutil.which("mount"):
        return "unshare(1) or mount(8) is not installed"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "mount --bind / /"],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else "this machine refuses mounts in a private namespace: " + r.stderr.strip()


needs_ro_mount = pytest.mark.skipif(_ro_refusal() is not None, reason=str(_ro_refusal()))


def _files(directory: str) -> dict:
    return {n: open(os.path.join(directory, n), "rb").read() for n in sorted(os.listdir(directory))}


@needs_ro_mount
def test_read_only_store_starts_and_serves_the_stored_token(make_agent, emu):
    agent = make_agent(emu)
    agent.start()
    first = agent.token(wait=15)
    assert agent.stop() == 0
    store_dir = agent.cfg.storage.dir
    before = _files(store_dir)
    agent.argv_prefix = _ro_prefix(store_dir)  # the eMMC came back read-only after errors
    agent.start()  # before the fix: exit 1, "cannot open the store lock file ... Read-only file system"
    assert agent.token()["access_token"] == first["access_token"]  # at once, from the store
    with Client(agent.socket_path, timeout=20) as c:
        st = c.status()
    assert st["store"]["problem"] == "read_only" and st["store"]["read_only"] is True
    assert agent.stop() == 0
    assert "read-only file system" in agent.log()
    assert _files(store_dir) == before
    assert emu.stats()["register"]["ok"] == 1


@needs_ro_mount
def test_read_only_store_fetches_tokens_in_memory_with_the_stored_credentials(make_agent, emu):
    emu.add_fault("token", status=503)  # the first run registers (saved) but gets no token
    agent = make_agent(emu)
    agent.start()
    agent.wait_notify("STATUS=backing off")  # after the registration was saved
    assert agent.stop() == 0
    emu.clear_faults()
    store_dir = agent.cfg.storage.dir
    before = _files(store_dir)
    agent.argv_prefix = _ro_prefix(store_dir)
    agent.start()
    t = agent.token(wait=15)  # fetched with the stored credentials, kept in memory
    assert t["expires_in"] > 0
    with Client(agent.socket_path, timeout=20) as c:
        assert c.status()["store"]["problem"] == "read_only"
    assert agent.stop() == 0
    assert "kept in memory" in agent.log()
    assert _files(store_dir) == before
    assert emu.stats()["register"]["ok"] == 1  # no second registration


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another uid needs root")
def test_runtime_token_cache_leaves_the_player_its_socket(make_agent, emu, tmp_path):
    """token_cache = "runtime" with runtime_dir = the socket's directory (the default layout)."""
    import shutil
    import tempfile

    from tests.test_server_security import NOBODY, as_user

    pub = tempfile.mkdtemp(prefix="pa-run-", dir="/tmp")
    os.chmod(pub, 0o755)
    try:
        agent = make_agent(emu, storage__token_cache="runtime", storage__runtime_dir=pub,
                           socket__path=os.path.join(pub, "agent.sock"), socket__mode=0o666,
                           socket__allow_uids=[NOBODY])
        agent.start()
        agent.token(wait=15)  # the token has been saved to the runtime directory by now
        assert os.stat(pub).st_mode & 0o777 == 0o755
        res = as_user(agent.socket_path, NOBODY, NOBODY)
        assert res["status"] == "ok", res
        msg = json.loads(res["line"])
        assert msg["result"]["access_token"]
        agent.seen_secrets.add(msg["result"]["access_token"])
        assert agent.stop() == 0
    finally:
        shutil.rmtree(pub, ignore_errors=True)


def test_the_daemon_never_imports_the_emulator(make_agent, emu):
    # agent.emulator ships in the wheel for `demo` and `emulator` only (issue 15 item 14): a running
    # `pass-agent run` that registered, fetched a token, served it and reloaded has not imported it.
    agent = make_agent(emu)
    agent.argv_prefix = ["env", "PYTHONPROFILEIMPORTTIME=1"]  # python -X importtime: every import, on stderr
    agent.start()
    agent.token(wait=15)
    agent.send(signal.SIGHUP)
    agent.wait_notify("READY=1")
    with Client(agent.socket_path, timeout=20) as c:
        assert c.call("agent.status")
    assert agent.stop() == 0
    imported = {line.rsplit("|", 1)[1].strip() for line in agent.log().splitlines() if line.startswith("import time:")}
    assert {"agent.daemon", "agent.service", "agent.server", "agent.dcr"} <= imported  # the profile is real
    assert not [m for m in imported if m == "agent.emulator" or m.startswith(("agent.emulator.", "agent.demo"))]
