"""The helper process (agent/helperproc.py): TLS and AES-GCM out of the resident daemon (issue 20).

Real processes throughout: the daemon against the TLS emulator, the Helper's child spawned or forked,
fake children (small Python programs) for a helper that answers garbage.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

import pytest

from agent import dcr, helperproc, sealing
from agent.client import Client
from agent.errors import RETRY, UpstreamError

HEAVY_MAPS = ("_ssl", "cryptography", "_rust", "libssl")


def _maps(pid: int) -> list[str]:
    with open("/proc/%d/maps" % pid) as f:
        return sorted({line.split()[-1] for line in f if len(line.split()) >= 6 and any(
            h in line.split()[-1] for h in HEAVY_MAPS)})


def _wait_exit(pid: int) -> None:
    """Block until process pid has exited (pidfd: an event, not a poll loop)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def _children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def _started(log: str) -> list[int]:
    """Helper children the daemon started, from its debug log ("helper process <pid> started")."""
    out = []
    for line in log.splitlines():
        if "helper process " in line and " started" in line:
            out.append(int(line.split("helper process ", 1)[1].split()[0]))
    return out


# ------------------------------------------------------------------------------------- the daemon


def test_daemon_after_a_fetch_holds_no_tls_or_cryptography(make_agent, emu):
    """The daemon registers and fetches through the helper: afterwards its memory maps hold no _ssl,
    no cryptography binding and no libssl (on 4bdc2b1 they stayed resident for good)."""
    agent = make_agent(emu)
    agent.start()
    agent.token(wait=15)
    assert _maps(agent.proc.pid) == []
    assert agent.stop() == 0
    agent.start()  # the store written through the helper opens through it again
    agent.token()
    assert _maps(agent.proc.pid) == []
    assert agent.stop() == 0
    st = emu.stats()
    assert st["register"]["ok"] == 1 and st["token"]["ok"] == 1


def test_helper_exits_when_idle_and_the_next_upstream_round_starts_another(make_agent, emu, monkeypatch):
    """Adobe answers the first token request 503: the agent retries at least 1 s later (its least
    backoff), by when the helper (idle exit 0.3 s) is gone, so a new helper does the retry. (A
    scheduled refresh takes the same path; it is at least 30 s away: lifecycle.min_token_interval.)"""
    emu.add_fault("token", status=503)
    monkeypatch.setenv("PASS_AGENT_HELPER_IDLE", "0.3")
    agent = make_agent(emu)
    agent.start()
    with Client(agent.socket_path, timeout=30) as c:
        token = c.token(wait=20)["access_token"]
        agent.seen_secrets.add(token)
    st = emu.stats()
    assert st["token"]["ok"] == 1 and st["register"]["ok"] == 1, st
    spawned = _started(agent.log())
    assert spawned, agent.log()  # the first helper (forked at start) exited idle: a new one was spawned
    for pid in spawned:
        _wait_exit(pid)
    # Every helper exits on its own once idle and is reaped (no zombie either); the store's save after
    # the token may have spawned one more after the client got its answer: wait for those too.
    # An exited child stays listed until the daemon's reaper thread has collected it: a few ms.
    deadline = time.monotonic() + 10.0
    while _children(agent.proc.pid) and time.monotonic() < deadline:
        for pid in _children(agent.proc.pid):
            _wait_exit(pid)
        time.sleep(0.01)
    assert _children(agent.proc.pid) == [], "a helper was not reaped"
    assert _maps(agent.proc.pid) == []
    assert agent.stop() == 0


def test_the_daemon_side_imports_are_light():
    """What the daemon imports for the helper and the store's sealing: no ssl, cryptography, typing,
    threading or subprocess (on 4bdc2b1 sealing imported typing)."""
    import subprocess

    code = ("import sys\nfrom agent import helperproc, sealing\nh = helperproc.Helper()\n"
            "print(' '.join(m for m in ('ssl', '_ssl', 'cryptography', 'typing', 'threading', 'subprocess')"
            " if m in sys.modules))\nh.close()\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and out.stdout.split() == [], (out.stdout, out.stderr)


# ------------------------------------------------------------------------------------- the Helper


@pytest.fixture
def helper():
    h = helperproc.Helper(idle_exit=30.0)
    yield h
    h.close()


def _req(emu):
    return dcr.token_request(emu.base_url, "nobody", "not-a-secret", "eyJ4IjoxfQ==")


def test_encrypt_decrypt_through_the_helper_are_byte_identical(helper):
    key, nonce, aad = os.urandom(32), os.urandom(12), b"header"
    sealed = helper.encrypt(key, nonce, b"plain text", aad)
    assert sealed == sealing.local_encrypt(key, nonce, b"plain text", aad)
    assert helper.decrypt(key, nonce, sealed, aad) == b"plain text"
    with pytest.raises(sealing.Damaged):
        helper.decrypt(key, nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), aad)
    assert helper.pid is not None


def test_a_request_larger_than_a_pipe_buffer_crosses(helper):
    key, nonce, big = os.urandom(32), os.urandom(12), os.urandom(300 * 1024)
    sealed = helper.encrypt(key, nonce, big, b"aad")
    assert sealed == sealing.local_encrypt(key, nonce, big, b"aad")
    assert helper.decrypt(key, nonce, sealed, b"aad") == big


def test_send_answers_and_errors_cross_the_process_boundary_unchanged(helper, emu, tmp_path, capfd):
    status, headers, body = helper.send(_req(emu), timeout=5, ca_file=emu.ca_file)
    assert (status, body) == dcr.send(_req(emu), timeout=5, ca_file=emu.ca_file)[::2]
    assert status == 400 and isinstance(headers, dict) and b"invalid_client" in body
    # A refused certificate: the same UpstreamError as in-process, every field.
    other_ca = str(tmp_path / "other-ca.pem")
    with open(other_ca, "w") as f:
        f.write(_self_signed_pem())
    errs = []
    for send in (dcr.send, helper.send):
        with pytest.raises(UpstreamError) as ei:
            send(_req(emu), timeout=5, ca_file=other_ca)
        errs.append(ei.value)
    a, b = errs
    assert (type(a), a.code, a.kind, a.status, a.retry_after, a.undocumented, a.hint, a.message) == \
           (type(b), b.code, b.kind, b.status, b.retry_after, b.undocumented, b.hint, b.message)
    assert b.code == "tls_verify"
    helper.close()
    assert capfd.readouterr().err == ""  # the child (stderr inherited) printed nothing


def _self_signed_pem() -> str:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another ca")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(k, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_the_helper_is_not_dumpable_while_it_runs(helper):
    probe = helper.probe()
    assert probe["pid"] == helper.pid != os.getpid()
    assert probe["dumpable"] == 0


def test_a_helper_spawned_from_the_zipapp_finds_the_agent_inside_it(tmp_path):
    """As installed: agent.__file__ is inside the zipapp; the child's sys.path must hold the zip."""
    import subprocess

    from tools import build_overlay

    pyz = str(tmp_path / "pass-agent.pyz")
    with open(pyz, "wb") as f:
        f.write(build_overlay.build_zipapp(0)[0])
    code = ("import os, sys\nsys.path.insert(0, %r)\nfrom agent import helperproc, sealing\n"
            "assert sealing.__file__.startswith(%r)\n"
            "h = helperproc.Helper()\nk, n = os.urandom(32), os.urandom(12)\n"
            "assert h.decrypt(k, n, h.encrypt(k, n, b'x', b''), b'') == b'x'\n"
            "print(h.probe()['dumpable'], 'cryptography' in sys.modules)\nh.close()\n" % (pyz, pyz))
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=str(tmp_path))
    assert out.returncode == 0 and out.stdout.split() == ["0", "False"], (out.stdout, out.stderr)


def test_a_forked_helper_works_and_is_not_dumpable():
    h = helperproc.Helper(idle_exit=30.0)
    try:
        h.prefork()
        pid = h.pid
        assert pid is not None
        key, nonce = os.urandom(32), os.urandom(12)
        assert h.decrypt(key, nonce, h.encrypt(key, nonce, b"x", b""), b"") == b"x"
        assert h.pid == pid  # the forked child served it
        assert h.probe()["dumpable"] == 0
    finally:
        h.close()


def test_an_idle_helper_exits_and_the_next_request_starts_another():
    h = helperproc.Helper(idle_exit=0.2)
    try:
        key, nonce = os.urandom(32), os.urandom(12)
        h.encrypt(key, nonce, b"x", b"")
        first = h.pid
        _wait_exit(first)
        assert h._child.reaped.acquire(True, 30)  # the reaper thread waited for it: no zombie left
        assert not os.path.exists("/proc/%d" % first)
        assert h.encrypt(key, nonce, b"x", b"") == sealing.local_encrypt(key, nonce, b"x", b"")
        assert h.pid != first
    finally:
        h.close()


def test_killing_the_helper_mid_request_is_a_retryable_error_and_the_next_attempt_works(helper, emu):
    emu.add_fault("token", hang=True, count=1)
    out: dict = {}

    def call() -> None:
        try:
            out["answer"] = helper.send(_req(emu), timeout=30, ca_file=emu.ca_file)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            out["error"] = e

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 20
    while emu.stats()["faults_pending"] and time.monotonic() < deadline:  # the request reached Adobe
        time.sleep(0.02)
    assert emu.stats()["faults_pending"] == 0
    os.kill(helper.pid, signal.SIGKILL)
    t.join()
    err = out.get("error")
    assert isinstance(err, UpstreamError) and err.code == "helper_failed" and err.kind == RETRY, out
    assert "not-a-secret" not in str(err)
    status, _, _ = helper.send(_req(emu), timeout=5, ca_file=emu.ca_file)
    assert status == 400
    assert len(emu.requests("token")) == 2  # the hung one (logged once its connection closed), then one more: never resent


FAKE_CHILD = r'''
import os, sys, struct
mode = sys.argv[1]
r, w = 3, 4
n = struct.unpack(">I", os.read(r, 4))[0]
while n:
    n -= len(os.read(r, n))
os.write(w, b"A")
if mode == "huge":
    os.write(w, struct.pack(">I", 0xFFFFFFF0))
elif mode == "garbage":
    os.write(w, struct.pack(">I", 8) + b"\xff\xfe garbage"[:8])
elif mode == "shape":
    import marshal
    m = marshal.dumps(["ok", "not a tuple"])
    os.write(w, struct.pack(">I", len(m)) + m)
elif mode == "silent":
    os.read(r, 1)
'''


@pytest.mark.parametrize("mode", ["huge", "garbage", "shape"])
def test_a_helper_answering_garbage_is_an_error_not_a_crash(mode, emu):
    h = helperproc.Helper(command=[sys.executable, "-I", "-c", FAKE_CHILD, mode])
    try:
        with pytest.raises(UpstreamError) as ei:
            h.send(_req(emu), timeout=5, ca_file=emu.ca_file)
        assert ei.value.code == "helper_failed" and ei.value.kind == RETRY
        assert "not-a-secret" not in str(ei.value)
        # AES-GCM does not depend on a working helper: it falls back to doing the work here.
        key, nonce = os.urandom(32), os.urandom(12)
        assert h.encrypt(key, nonce, b"x", b"") == sealing.local_encrypt(key, nonce, b"x", b"")
    finally:
        h.close()


def test_a_helper_that_never_answers_is_killed_after_the_timeout(emu):
    h = helperproc.Helper(command=[sys.executable, "-I", "-c", FAKE_CHILD, "silent"], margin=0.2)
    try:
        with pytest.raises(UpstreamError) as ei:
            h.send(_req(emu), timeout=0.3, ca_file=emu.ca_file)
        assert ei.value.code == "timeout" and ei.value.kind == RETRY
        assert "127.0.0.1" in ei.value.message
    finally:
        h.close()


def test_a_helper_that_cannot_start_falls_back_to_working_in_process(emu):
    logged = []

    class Log:
        def warning(self, fmt, *args):
            logged.append(fmt % args)

        def debug(self, *a):
            pass

    h = helperproc.Helper(command=["/nonexistent/python"], log=Log())
    try:
        status, _, _ = h.send(_req(emu), timeout=5, ca_file=emu.ca_file)
        assert status == 400
        key, nonce = os.urandom(32), os.urandom(12)
        assert h.encrypt(key, nonce, b"x", b"") == sealing.local_encrypt(key, nonce, b"x", b"")
        assert len(logged) == 1 and "in this process" in logged[0]
    finally:
        h.close()


def test_sealing_routes_through_an_installed_backend():
    calls = []

    class Backend:
        def encrypt(self, *a):
            calls.append("e")
            return sealing.local_encrypt(*a)

        def decrypt(self, *a):
            calls.append("d")
            return sealing.local_decrypt(*a)

    prev = sealing.use_backend(Backend())
    try:
        key, nonce = os.urandom(32), os.urandom(12)
        assert sealing.decrypt(key, nonce, sealing.encrypt(key, nonce, b"x", b""), b"") == b"x"
    finally:
        sealing.use_backend(prev)
    assert calls == ["e", "d"]


def test_a_daemon_that_writes_no_bytecode_spawns_a_helper_that_writes_none(tmp_path):
    """The overlay's launcher sets sys.dont_write_bytecode: a helper spawned by that daemon (as root on
    a box) must not write __pycache__ into the installed agent either (it did before -B was passed)."""
    import shutil
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lib = tmp_path / "lib"
    shutil.copytree(os.path.join(root, "agent"), lib / "agent",
                    ignore=shutil.ignore_patterns("__pycache__", "emulator", "web", "gateway"))
    code = ("import os, sys\nsys.dont_write_bytecode = True\nsys.path.insert(0, %r)\n"
            "from agent import helperproc\nh = helperproc.Helper()\nk, n = os.urandom(32), os.urandom(12)\n"
            "assert h.decrypt(k, n, h.encrypt(k, n, b'x', b''), b'') == b'x'\nh.close()\n" % str(lib))
    r = subprocess.run([sys.executable, "-I", "-B", "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(str(p.relative_to(lib)) for p in lib.rglob("__pycache__")) == []
