"""The store's directories: symlinks, ownership, modes whatever the umask, the runtime token's own
directory, and a store on a read-only file system (a real read-only bind mount in a private mount
namespace).

Real directories and files; the read-only cases run a child process under `unshare -m` because
root ignores permission bits: only a read-only mount stops root from writing.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

from agent import store as st
from agent.errors import StoreError
from agent.store import SLOT_NAMES, Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "s3cr3t-client-secret-ro-77"


def make_state(n: int = 0, client_id: str = "client-1") -> dict:
    return {
        "client": {"client_id": client_id, "client_secret": SECRET},
        "statement_hash": "cd" * 32,
        "registered_at": 1700000000.5,
        "token": {"access_token": "tok-%d" % n, "token_type": "bearer", "expires_in": 21600,
                  "received_at": 1700000100.0 + n, "expires_at": 1700021700.0 + n},
    }


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def refused(directory: str, **kw) -> StoreError:
    s = Store(directory, "dev-A", **kw)
    with pytest.raises(StoreError) as ei:
        s.open()
    s.close()
    return ei.value


# -- symlinks --------------------------------------------------------------------------------------

def test_planted_lock_symlink_is_refused_and_nothing_is_created_elsewhere(tmp_path):
    d = tmp_path / "store"
    d.mkdir(mode=0o700)
    target = tmp_path / "elsewhere" / "owned-by-root"
    target.parent.mkdir()
    os.symlink(str(target), str(d / "lock"))
    e = refused(str(d))
    assert e.code == "store_dir_unsafe"
    assert str(d / "lock") in str(e) and "symbolic link" in str(e)
    assert not os.path.lexists(str(target)), "the store followed a planted link and created its target"


def test_planted_slot_and_temp_symlinks_are_never_followed(tmp_path):
    d = tmp_path / "store"
    d.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    for name in ("slot-a.bin.tmp", "slot-b.bin"):
        os.symlink(str(victim), str(d / name))
    s = Store(str(d), "dev-A")
    s.open()
    s.load()
    s.save(make_state())
    s.close()
    assert victim.read_bytes() == b"precious"


def test_symlinked_storage_dir_is_refused_and_its_target_left_alone(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.chmod(str(real), 0o755)
    link = tmp_path / "store"
    os.symlink(str(real), str(link))
    e = refused(str(link))
    assert e.code == "store_dir_unsafe"
    assert str(link) in str(e) and "symbolic link" in str(e) and str(real) in str(e)
    assert e.hint and "[storage] dir" in e.hint
    assert mode(str(real)) == 0o755 and os.listdir(str(real)) == []


# -- ownership and modes ---------------------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another uid needs root")
def test_foreign_owned_storage_dir_is_refused(tmp_path):
    d = tmp_path / "store"
    d.mkdir(mode=0o700)
    os.chown(str(d), 4242, 4242)
    e = refused(str(d))
    assert e.code == "store_dir_unsafe"
    assert str(d) in str(e) and "uid 4242" in str(e)
    assert e.hint and "chown" in e.hint
    assert os.listdir(str(d)) == []


def test_world_writable_storage_dir_is_refused_not_repaired(tmp_path):
    d = tmp_path / "store"
    d.mkdir()
    os.chmod(str(d), 0o777)
    e = refused(str(d))
    assert e.code == "store_dir_unsafe"
    assert str(d) in str(e) and "world-writable" in str(e)
    assert e.hint and "chmod" in e.hint
    assert mode(str(d)) == 0o777 and os.listdir(str(d)) == []


def test_an_existing_directory_mode_is_never_changed(tmp_path):
    d = tmp_path / "store"
    d.mkdir()
    os.chmod(str(d), 0o750)
    s = Store(str(d), "dev-A")
    s.open()
    s.close()
    assert mode(str(d)) == 0o750


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_created_directories_have_explicit_modes_whatever_the_umask(tmp_path, umask):
    d = tmp_path / "var" / "lib" / "pass-agent"
    rd = tmp_path / "run" / "pass-agent"
    old = os.umask(umask)
    try:
        s = Store(str(d), "dev-A", token_cache="runtime", runtime_dir=str(rd))
        s.open()
        s.load()
        s.save(make_state())
        s.close()
    finally:
        os.umask(old)
    assert mode(str(d)) == 0o700
    assert mode(str(tmp_path / "var")) == 0o755 and mode(str(tmp_path / "var" / "lib")) == 0o755
    assert mode(str(rd)) == 0o755 and mode(str(tmp_path / "run")) == 0o755
    assert mode(str(rd / st.RUNTIME_SUBDIR)) == 0o700
    for n in SLOT_NAMES[:1] + ("lock",):
        assert mode(str(d / n)) == 0o600, n
    assert mode(str(rd / st.RUNTIME_SUBDIR / st.TOKEN_NAME)) == 0o600


# -- the runtime token never changes the socket directory ------------------------------------------

def test_runtime_token_keeps_out_of_the_socket_directory_mode(tmp_path):
    rd = tmp_path / "run" / "pass-agent"  # the default layout: runtime_dir is the socket's directory
    rd.mkdir(parents=True)
    os.chmod(str(rd), 0o755)
    s = Store(str(tmp_path / "store"), "dev-A", token_cache="runtime", runtime_dir=str(rd))
    s.open()
    s.load()
    s.save(make_state(0))
    s.save(make_state(1))
    s.close()
    assert mode(str(rd)) == 0o755
    assert os.listdir(str(rd)) == [st.RUNTIME_SUBDIR]
    assert mode(str(rd / st.RUNTIME_SUBDIR)) == 0o700
    s2 = Store(str(tmp_path / "store"), "dev-A", token_cache="runtime", runtime_dir=str(rd))
    s2.open()
    assert s2.load()["token"]["access_token"] == "tok-1"
    s2.wipe()
    s2.close()
    assert os.listdir(str(rd / st.RUNTIME_SUBDIR)) == []


def test_symlinked_runtime_token_dir_is_refused(tmp_path):
    rd = tmp_path / "run"
    rd.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(str(elsewhere), str(rd / st.RUNTIME_SUBDIR))
    s = Store(str(tmp_path / "store"), "dev-A", token_cache="runtime", runtime_dir=str(rd))
    s.open()
    s.load()
    with pytest.raises(StoreError) as ei:
        s.save(make_state())
    s.close()
    assert ei.value.code == "store_dir_unsafe" and str(rd / st.RUNTIME_SUBDIR) in str(ei.value)
    assert os.listdir(str(elsewhere)) == []


# -- read-only storage -----------------------------------------------------------------------------

def _ro_script(directory: str, code: str) -> list[str]:
    """argv running `code` in a private mount namespace where `directory` is a read-only bind mount."""
    sh = ('set -e; mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; shift; exec "$@"')
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", sh, "sh", directory,
            sys.executable, "-c", textwrap.dedent(code)]


def read_only_refusal() -> str | None:
    """Why this machine cannot make a read-only bind mount in a private namespace (None: it can)."""
    if os.geteuid() != 0:
        return "a read-only bind mount needs root (CAP_SYS_ADMIN)"
    if not shutil.which("unshare") or not shutil.which("mount"):
        return "unshare(1) or mount(8) is not installed"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o ro none /mnt 2>&1 || mount --bind / / 2>&1"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return "this machine refuses mounts in a private namespace: %s" % (probe.stdout + probe.stderr).strip()
    return None


needs_ro_mount = pytest.mark.skipif(read_only_refusal() is not None, reason=str(read_only_refusal()))


@needs_ro_mount
def test_store_on_a_read_only_file_system_serves_what_is_stored(tmp_path):
    d = str(tmp_path / "store")
    s = Store(d, "dev-A")
    s.open()
    s.load()
    s.save(make_state(0))
    s.close()
    before = {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}
    code = """
        import json, sys
        sys.path.insert(0, %r)
        from agent.store import Store
        from agent.errors import StoreError
        s = Store(%r, "dev-A")
        s.open()
        out = {"state": s.load(), "problem": s.problem, "read_only": s.stats["read_only"],
               "detail": s.problem_detail}
        try:
            s.save(dict(out["state"], token=dict(out["state"]["token"], access_token="tok-new")))
        except StoreError as e:
            out["save_error"] = [e.code, str(e)]
        out["after"] = [s.problem, s.stats["read_only"], s.state["token"]["access_token"] if s.state else None]
        s.close()
        print(json.dumps(out))
    """ % (ROOT, d)
    r = subprocess.run(_ro_script(d, code), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["state"]["token"]["access_token"] == "tok-0"
    assert out["problem"] == "read_only" and out["read_only"] is True
    assert d in out["detail"] and "read-only" in out["detail"]
    assert out["save_error"][0] == "store_read_only" and "read-only" in out["save_error"][1]
    assert out["after"] == ["read_only", True, "tok-0"]
    assert SECRET not in r.stderr
    assert {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))} == before


@needs_ro_mount
def test_read_only_store_without_a_lock_file_still_opens(tmp_path):
    d = tmp_path / "store"
    d.mkdir(mode=0o700)  # never opened before: no lock file, and it cannot be created now
    code = """
        import json, sys
        sys.path.insert(0, %r)
        from agent.store import Store
        s = Store(%r, "dev-A")
        s.open()
        print(json.dumps([s.load(), s.problem, s.stats["read_only"]]))
        s.close()
    """ % (ROOT, str(d))
    r = subprocess.run(_ro_script(str(d), code), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [None, "empty", True]
    assert os.listdir(str(d)) == []


@needs_ro_mount
@pytest.mark.parametrize("had_lock", [True, False])
def test_read_only_store_saves_again_once_remounted_read_write(tmp_path, had_lock):
    d = str(tmp_path / "store")
    if had_lock:
        s = Store(d, "dev-A")
        s.open()
        s.load()
        s.save(make_state(0))
        s.close()
    else:
        os.mkdir(d, 0o700)
    code = """
        import json, subprocess, sys
        sys.path.insert(0, %r)
        from agent.store import Store
        from agent.errors import StoreError
        s = Store(%r, "dev-A")
        s.open()
        s.load()
        try:
            s.save(%r)
            out = ["saved while read-only"]
        except StoreError as e:
            out = [e.code]
        subprocess.run(["mount", "-o", "remount,bind,rw", %r], check=True)
        out += [s.save(%r), s.problem, s.stats["read_only"]]
        s.close()
        print(json.dumps(out))
    """ % (ROOT, d, make_state(1), d, make_state(1))
    r = subprocess.run(_ro_script(d, code), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == ["store_read_only", True, None, False]
    s = Store(d, "dev-A")
    s.open()
    assert s.load() == make_state(1)
    s.close()
