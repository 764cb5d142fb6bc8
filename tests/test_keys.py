"""Key providers without a token (issue 19): the slot header that names the provider, older slots
still read, the device provider's generation counter in another directory (rollback detected,
accepted on purpose, never after a reset), the [storage] configuration of the providers, and the
kernel provider over a software stand-in of the kernel (and over the real kernel where it offers
trusted keys and AF_ALG keys by serial; skipped with the reason where it does not)."""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import shutil
import struct
import zlib

import pytest

from agent import config, keys, sealing
from agent import slotformat as sf
from agent.errors import ConfigError, StoreError
from agent.keys import kernel
from agent.keys.anchor import decode, encode
from agent.store import SLOT_NAMES, Store

DEV = "serial:0123456789|mac:00:11:22:33:44:55"
A, B = SLOT_NAMES


def make_state(n: int, tok: int | None = None) -> dict:
    return {"client": {"client_id": "client-%d" % n, "client_secret": "secret-%d" % n}, "registered_at": n,
            "token": None if tok is None else {"access_token": "token-%d" % tok, "expires_at": tok}}


class FixedHardware(sealing.WrappedKeys):
    """A software stand-in of a hardware provider: K sealed by XOR with a per-instance secret and an HMAC."""

    name = "pkcs11"
    provider_id = sealing.PROVIDER_PKCS11

    def __init__(self) -> None:
        self.secret = os.urandom(32)

    def _seal(self, k: bytes) -> bytes:
        return hmac.new(self.secret, k, "sha256").digest()[:8] + bytes(a ^ b for a, b in zip(k, self.secret))

    def _unseal(self, sealed: bytes) -> bytes:
        k = bytes(a ^ b for a, b in zip(sealed[8:], self.secret))
        if hmac.new(self.secret, k, "sha256").digest()[:8] != sealed[:8]:
            raise sealing.WrongKey("not ours")
        return k


# -- the slot header --------------------------------------------------------------------------------

def test_a_hardware_sealed_slot_names_its_provider_and_authenticates_the_sealed_key():
    hw = FixedHardware()
    ks = sealing.KeySet(hw)
    salt = os.urandom(16)
    key, check, sealed = ks.new(salt)
    blob = sf.seal(key, check, salt, 7, sf.canonical(make_state(1)), provider=hw.provider_id, sealed=sealed)
    assert blob[:4] == b"PAG2" and blob[52] == sealing.PROVIDER_PKCS11 and sealed in blob[:100]
    r = sf.unseal(blob, sealing.KeySet(hw), sf.KIND_SLOT)  # a fresh cache: the token unseals K
    assert r["status"] == "ok" and r["payload"] == make_state(1) and r["provider"] == 1 and r["sealed"] == sealed
    assert sf.header_generation(blob) == 7
    # Another token (another box): foreign, not damaged.
    assert sf.unseal(blob, sealing.KeySet(FixedHardware()), sf.KIND_SLOT)["status"] == "foreign_device"
    # Not configured here: key_unavailable, with a hint that names the provider.
    r = sf.unseal(blob, sealing.KeySet(sealing.DeviceIdKeys(DEV)), sf.KIND_SLOT)
    assert r["status"] == "key_unavailable" and "pkcs11" in r["hint"]
    # A flipped bit in the sealed key with a recomputed header CRC still fails (the header is the AAD).
    size = 56 + len(sealed) + 4
    head = bytearray(blob[:size - 4])
    head[60] ^= 1
    forged = bytes(head) + struct.pack(">I", zlib.crc32(bytes(head))) + blob[size:]
    assert sf.unseal(forged, sealing.KeySet(hw), sf.KIND_SLOT)["status"] in ("foreign_device", "corrupt")
    # Without the CRC fix: the header checksum catches it first.
    bad = bytearray(blob)
    bad[60] ^= 1
    assert sf.unseal(bytes(bad), sealing.KeySet(hw), sf.KIND_SLOT)["status"] == "corrupt"


def test_the_device_provider_still_writes_and_reads_the_original_header(tmp_path):
    d = str(tmp_path / "s")
    s = Store(d, DEV)
    s.open()
    s.load()
    s.save(make_state(1))
    s.close()
    raw = [open(os.path.join(d, n), "rb").read() for n in SLOT_NAMES if os.path.exists(os.path.join(d, n))]
    assert [b[:4] for b in raw] == [b"PAGS"]
    salt = raw[0][12:28]
    key, check = sealing.derive_key(DEV, salt)  # exactly what agents before key providers derive
    assert sf.unseal(raw[0], lambda s_: (key, check), sf.KIND_SLOT)["payload"] == make_state(1)


def test_a_provider_bug_never_crashes_load(tmp_path):
    hw = FixedHardware()
    d = str(tmp_path / "s")
    s = Store(d, DEV, keys=sealing.KeySet(hw))
    s.open()
    s.load()
    s.save(make_state(2))
    s.close()

    class Broken(FixedHardware):
        def _unseal(self, sealed: bytes) -> bytes:
            raise RuntimeError("binding bug")

    with pytest.raises(StoreError) as ei:
        Store(d, DEV, keys=sealing.KeySet(Broken())).load()
    assert ei.value.code == "store_key_unavailable" and "RuntimeError" in str(ei.value)


# -- the device provider's counter in another directory ------------------------------------------------

def device_store(tmp_path, **kw) -> Store:
    st = config.StorageConfig(dir=str(tmp_path / "store"), anchor_dir=str(tmp_path / "counter"), **kw)
    s = Store(st.dir, DEV, keys=keys.keyset(st, DEV, st.dir))
    s.open()
    return s


def test_the_device_provider_detects_a_rollback_with_the_counter_in_another_directory(tmp_path):
    s = device_store(tmp_path)
    s.load()
    s.save(make_state(1, 1))
    backup = str(tmp_path / "backup")
    shutil.copytree(s.directory, backup)
    s.save(make_state(1, 2))
    s.save(make_state(2))
    s.close()
    counter = os.listdir(str(tmp_path / "counter"))
    assert len(counter) == 1 and counter[0].endswith(".gen")
    assert decode(open(os.path.join(str(tmp_path / "counter"), counter[0]), "rb").read()) == 3
    for n in SLOT_NAMES:  # a backup of the storage directory put back
        os.replace(os.path.join(backup, n), os.path.join(s.directory, n)) if os.path.exists(
            os.path.join(backup, n)) else os.unlink(os.path.join(s.directory, n))
    s = device_store(tmp_path)
    with pytest.raises(StoreError) as ei:
        s.load()
    assert ei.value.code == "store_rollback" and "accept-rollback" in ei.value.hint
    s.close()
    # The operator's command keeps it: python3 -m agent.keys accept-rollback (here through the Store).
    s = device_store(tmp_path)
    assert s.accept_rollback() == 1 and s.load() == make_state(1, 1)
    s.save(make_state(1, 3))
    assert s.stats["generation"] == 2
    s.close()


def test_deleting_every_slot_is_not_a_rollback_and_a_reset_continues_above_the_counter(tmp_path):
    s = device_store(tmp_path)
    s.load()
    for i in range(4):
        s.save(make_state(1, i))
    s.wipe()  # pass-agent reset
    assert s.load() is None and s.problem == "empty"
    s.save(make_state(5))
    assert s.stats["generation"] == 5
    s.close()


def test_a_damaged_counter_is_reported_and_restarts_from_the_slots(tmp_path, caplog):
    s = device_store(tmp_path)
    s.load()
    s.save(make_state(1))
    s.close()
    c = os.path.join(str(tmp_path / "counter"), os.listdir(str(tmp_path / "counter"))[0])
    with open(c, "wb") as f:
        f.write(b"\xff" * 16)
    s = device_store(tmp_path)
    assert s.load() == make_state(1)
    assert "is damaged" in caplog.text
    s.close()


def test_the_anchor_file_format():
    assert decode(encode(0xFFFFFFFF)) == 0xFFFFFFFF and decode(encode(5)) == 5
    assert decode(encode(5)[:-1]) is None and decode(b"PAGC" + bytes(12)) is None


def test_an_unwritable_counter_directory_weakens_detection_loudly_but_keeps_the_save(tmp_path, caplog):
    st = config.StorageConfig(dir=str(tmp_path / "store"), anchor_dir=str(tmp_path / "counter"))
    s = Store(st.dir, DEV, keys=keys.keyset(st, DEV, st.dir))
    s.open()
    s.load()
    (tmp_path / "counter").write_text("a file where the counter directory should be")
    assert s.save(make_state(1)) is True
    assert s.stats_keys["anchor_failures"] == 1 and "rollback detection is weaker" in caplog.text
    s.close()
    assert Store(st.dir, DEV).load() == make_state(1)


# -- configuration ------------------------------------------------------------------------------------

def _load(tmp_path, statement_file, text: str, check_files: bool = False) -> config.Config:
    p = tmp_path / "agent.toml"
    p.write_text('[adobe]\nsoftware_statement = "%s"\n%s' % (statement_file, text))
    return config.load(str(p), check_files=check_files)


def test_the_pkcs11_table_is_typed_and_round_trips(tmp_path, statement_file):
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    os.chmod(str(pin), 0o600)
    mod = tmp_path / "libtoken.so"
    mod.write_bytes(b"\x7fELF")
    cfg = _load(tmp_path, statement_file, '[storage]\nkey_provider = "pkcs11"\nanchor_dir = "/var/lib/pa-counter"\n'
                '[storage.pkcs11]\nmodule = "%s"\ntoken_label = "pass-agent"\npin_file = "%s"\n' % (mod, pin))
    assert cfg.storage.key_provider == "pkcs11" and cfg.storage.pkcs11 == config.Pkcs11Config(
        module=str(mod), token_label="pass-agent", pin_file=str(pin))
    text = config.to_toml(cfg)
    assert "[storage.pkcs11]" in text and "slot" not in text.split("[storage.pkcs11]")[1].split("[")[0]
    again = tmp_path / "again.toml"
    again.write_text(text)
    assert config.load(str(again), check_files=False).storage == cfg.storage
    assert config.defaults().storage.key_provider == "device" and config.defaults().storage.pkcs11.module == ""


@pytest.mark.parametrize("text,needle", [
    ('[storage]\nkey_provider = "tpm"\n', "key_provider"),
    ('[storage.pkcs11]\nmodul = "/x.so"\n', "unknown key 'modul'"),
    ('[storage.pkcs11]\nslot = "0"\n', "slot must be a slot id"),
    ('[storage]\nkey_provider = "pkcs11"\n', "module: not set"),
    ('[storage]\nkey_provider = "pkcs11"\n[storage.pkcs11]\nmodule = "/x.so"\ntoken_label = "a"\nslot = 1\n'
     'pin_file = "/p"\n', "exactly one of token_label and slot"),
    ('[storage]\nkey_provider = "pkcs11"\n[storage.pkcs11]\nmodule = "lib.so"\ntoken_label = "a"\npin_file = "/p"\n',
     "not an absolute path"),
    ('[storage]\ndir = "/var/lib/pa"\nanchor_dir = "/var/lib/pa"\n', "outside the storage directory"),
    ('[storage]\nkey_provider = "kernel"\n[storage.kernel]\nkey_type = "encrypted"\n', "needs its master key"),
])
def test_bad_provider_settings_are_reported_with_the_key(tmp_path, statement_file, text, needle):
    with pytest.raises(ConfigError) as ei:
        _load(tmp_path, statement_file, text)
    assert any(needle in p for p in ei.value.problems), ei.value.problems


def test_a_pin_file_others_can_read_fails_the_configuration_without_showing_the_pin(tmp_path, statement_file):
    pin = tmp_path / "pin"
    pin.write_text("246810\n")
    os.chmod(str(pin), 0o644)
    mod = tmp_path / "lib.so"
    mod.write_bytes(b"")
    with pytest.raises(ConfigError) as ei:
        _load(tmp_path, statement_file, '[storage]\nkey_provider = "pkcs11"\n[storage.pkcs11]\nmodule = "%s"\n'
              'token_label = "t"\npin_file = "%s"\n' % (mod, pin), check_files=True)
    text = "\n".join(ei.value.problems)
    assert "chmod 600" in text and "0644" in text and "246810" not in text


# -- the kernel provider -----------------------------------------------------------------------------

class SoftwareKernel:
    """KernelOps in software: 'trusted' keys whose blob is the key sealed under a per-instance chip
    secret (another instance is another box's TPM)."""

    def __init__(self) -> None:
        self.chip = os.urandom(32)
        self.keys: dict[int, bytes] = {}
        self.calls: list[str] = []

    def add_key(self, key_type: str, description: str, payload: bytes) -> int:
        self.calls.append("add_key %s %s" % (key_type, payload.split(b" ")[0].decode()))
        pad = hashlib.sha256(self.chip).digest()
        if payload.startswith(b"new"):
            secret = os.urandom(32)
        elif payload.startswith(b"load "):
            blob = bytes.fromhex(payload[5:].decode())
            secret = bytes(a ^ b for a, b in zip(blob[32:], pad))
            if not hmac.compare_digest(blob[:32], hmac.new(self.chip, secret, "sha256").digest()):
                raise OSError(errno.EINVAL, "Invalid argument")
        else:
            raise OSError(errno.EINVAL, "Invalid argument")
        serial = len(self.keys) + 1000
        self.keys[serial] = secret
        return serial

    def read(self, serial: int) -> bytes:
        secret = self.keys[serial]
        pad = hashlib.sha256(self.chip).digest()
        return (hmac.new(self.chip, secret, "sha256").digest() + bytes(a ^ b for a, b in zip(secret, pad))).hex().encode()

    def hmac_sha256(self, serial: int, data: bytes) -> bytes:
        return hmac.new(self.keys[serial], data, "sha256").digest()


def kernel_store(d: str, ops, key_type: str = "trusted") -> Store:
    prov = kernel.KernelKeys(key_type, os.path.join(d, kernel.BLOB_NAME), master="trusted:kmk", store_dir=d, ops=ops)
    s = Store(d, DEV, keys=sealing.KeySet(prov, [sealing.DeviceIdKeys(DEV)]))
    s.open()
    return s


def test_the_kernel_provider_keeps_its_blob_and_reopens_the_store_after_a_restart(tmp_path):
    chip = SoftwareKernel()
    d = str(tmp_path / "s")
    s = kernel_store(d, chip)
    s.load()
    s.save(make_state(1, 1))
    s.close()
    blob = os.path.join(d, kernel.BLOB_NAME)
    assert os.stat(blob).st_mode & 0o777 == 0o600 and chip.calls == ["add_key trusted new"]
    restarted = SoftwareKernel()
    restarted.chip = chip.chip  # the same TPM after a reboot: the keyring is empty, the blob loads
    s = kernel_store(d, restarted)
    assert s.load() == make_state(1, 1) and restarted.calls == ["add_key trusted load"]
    assert s.key_provider == "kernel" and s.hardware_backed
    s.close()
    # The same files on another box (another TPM): its kernel refuses the blob; nothing is lost.
    s = kernel_store(d, SoftwareKernel())
    with pytest.raises(StoreError) as ei:
        s.load()
    assert ei.value.code == "store_key_unavailable" and "loading the blob" in str(ei.value)
    s.close()


def test_migration_from_device_to_kernel(tmp_path):
    d = str(tmp_path / "s")
    s = Store(d, DEV)
    s.open()
    s.load()
    s.save(make_state(3))
    s.close()
    s = kernel_store(d, SoftwareKernel())
    assert s.load() == make_state(3)
    s.close()
    assert {open(os.path.join(d, n), "rb").read()[52] for n in SLOT_NAMES} == {sealing.PROVIDER_KERNEL}


def test_the_real_kernel_when_it_offers_trusted_keys(tmp_path):
    why = kernel.unavailable()
    if why:
        pytest.skip(why)
    d = str(tmp_path / "s")
    s = kernel_store(d, None)
    s.load()
    s.save(make_state(4))
    s.close()
    s = kernel_store(d, None)
    assert s.load() == make_state(4)
    s.close()


def test_the_operator_command_shows_the_store_and_accepts_a_rollback(tmp_path, statement_file):
    import subprocess
    import sys

    from tests.agentproc import ROOT

    cfg = config.local(str(tmp_path), "https://127.0.0.1:9/o", statement_file,
                       storage={"anchor_dir": str(tmp_path / "counter")})
    path = config.write(cfg, str(tmp_path / "agent.toml"))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agent.keys", "--config", path] + list(args), cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    from agent import boards

    dev = boards.identify_for(cfg.device)["device_id"]
    s = Store(cfg.storage.dir, dev, keys=keys.keyset(cfg.storage, dev, cfg.storage.dir))
    s.open()
    s.load()
    s.save(make_state(1))
    old = {n: open(os.path.join(cfg.storage.dir, n), "rb").read() for n in SLOT_NAMES
           if os.path.exists(os.path.join(cfg.storage.dir, n))}
    s.save(make_state(2))
    s.close()
    r = run("status")
    assert r.returncode == 0 and "key provider device (software), generation 2, counter 2, client client-2" in r.stdout
    assert "secret-2" not in r.stdout
    for n in SLOT_NAMES:
        p = os.path.join(cfg.storage.dir, n)
        if n in old:
            with open(p, "wb") as f:
                f.write(old[n])
        else:
            os.unlink(p)
    r = run("status")
    assert r.returncode == 1 and "store_rollback" in r.stdout
    r = run("accept-rollback")
    assert r.returncode == 0 and "rollback accepted; the generation counter now says 1" in r.stdout
    r = run("accept-rollback")
    assert r.returncode == 0 and "not rolled back" in r.stdout
    assert "client client-1" in run("status").stdout


def test_pass_agent_keys_is_the_operator_command(tmp_path, capsys):
    # `pass-agent keys ...` is `python3 -m agent.keys ...` (docs/SECURITY.md, Rollback): same parser.
    from agent import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["keys", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pass-agent keys") and "accept-rollback" in out
    assert cli.main(["keys", "--config", str(tmp_path / "missing.toml"), "status"]) == 2
