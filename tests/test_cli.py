"""The command line as a user runs it: real subprocesses, exit codes and messages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SUBCOMMANDS = ["run", "demo", "emulator", "device-info", "token", "headers", "status", "check", "reset"]


def cli(*args, input=None, env=None):
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, input=input,
                          timeout=60, env=env)


def test_help_lists_every_subcommand():
    r = cli("--help")
    assert r.returncode == 0
    for name in SUBCOMMANDS + ["console-hash"]:
        assert name in r.stdout


@pytest.mark.parametrize("name", [s for s in SUBCOMMANDS if s != "emulator"])
def test_each_subcommand_has_help(name):
    r = cli(name, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: pass-agent " + name in r.stdout


def test_no_command_is_a_usage_error():
    r = cli()
    assert r.returncode == 2


def test_unknown_command_is_a_usage_error():
    r = cli("frobnicate")
    assert r.returncode == 2
    assert "invalid choice" in r.stderr


def test_check_reports_each_problem_and_exits_2(write_config):
    path = write_config('[adobe]\nsoftware_statement = "missing.jwt"\ntimeout = "ten"\n[socket]\nbogus = 1\n')
    r = cli("check", "--config", path)
    assert r.returncode == 2
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("fail")]
    assert len(lines) == 3
    assert any("[adobe] timeout: found 'ten'" in ln for ln in lines)
    assert any("[socket] unknown key 'bogus'" in ln for ln in lines)
    assert any("missing.jwt does not exist" in ln for ln in lines)
    assert "Traceback" not in r.stdout + r.stderr


def test_check_missing_config_file(tmp_path):
    r = cli("check", "--config", str(tmp_path / "none.toml"))
    assert r.returncode == 2
    assert "file not found" in r.stdout


def test_run_with_invalid_config_exits_2_without_traceback(write_config):
    path = write_config("[log]\nlevel = \"loud\"\n")
    r = cli("run", "--config", path)
    assert r.returncode == 2
    assert "[log] level: found 'loud'" in r.stderr
    assert "Traceback" not in r.stderr


def test_client_commands_fail_cleanly_without_an_agent(tmp_path):
    sock = str(tmp_path / "nothing.sock")
    for name in ("token", "headers", "status"):
        r = cli(name, "--socket", sock)
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        assert sock in r.stdout + r.stderr
        assert "Traceback" not in r.stderr


def test_emulator_and_console_hash_receive_their_own_arguments():
    r = cli("emulator", "--help")
    assert r.returncode == 0 and "--statement-out" in r.stdout
    r = cli("console-hash", "--stdin", input="s3cret-pass\n")
    assert r.returncode == 0
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith(("scrypt$", "pbkdf2_sha256$")) and "s3cret-pass" not in r.stdout
    from agent.consolehash import verify

    assert verify("s3cret-pass", line) and not verify("other", line)


def _check_config(tmp_path, statement_file, **extra):
    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "boards", "raspberrypi")
    lines = ['[adobe]', 'software_statement = "%s"' % statement_file, '[device]', 'board = "raspberrypi"',
             'root = "%s"' % fixture, '[storage]', 'dir = "%s"' % extra.get("store", tmp_path / "store"),
             '[socket]', 'path = "%s"' % (tmp_path / "run" / "agent.sock")]
    p = tmp_path / "agent.toml"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_check_all_pass_exits_0(tmp_path, statement_file):
    r = cli("check", "--config", _check_config(tmp_path, statement_file))
    assert r.returncode == 0, r.stdout
    names = [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("ok")]
    assert names == ["config", "statement", "board", "device-info", "storage", "socket", "clock"]
    assert "Raspberry Pi" in r.stdout and "all checks passed" in r.stdout


def test_check_environment_failure_exits_1_with_a_fix(tmp_path, statement_file):
    blocker = tmp_path / "flash"
    blocker.write_text("not a directory")
    (tmp_path / "bad.jwt").write_text("this is not a JWT")
    path = _check_config(tmp_path, str(tmp_path / "bad.jwt"), store=blocker / "store")
    r = cli("check", "--config", path)
    assert r.returncode == 1, r.stdout
    fails = [ln for ln in r.stdout.splitlines() if ln.startswith("fail")]
    assert any("statement" in ln and "not a JWT" in ln for ln in fails)
    assert any("storage" in ln and "is not a directory" in ln for ln in fails)
    assert r.stdout.count("fix:") == 2 and "2 check(s) failed" in r.stdout
