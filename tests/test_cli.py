"""The command line as a user runs it: real subprocesses, exit codes and messages."""

from __future__ import annotations

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
