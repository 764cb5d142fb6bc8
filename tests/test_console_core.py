"""The console core, driven directly: bytes in, bytes out, a fake clock, a fake Service."""

from __future__ import annotations

import hashlib
import random
import re

import pytest
from console_fakes import FAKE_SECRET, FAKE_TOKEN, OPAQUE_TOKEN, FakeClock, FakeService
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.console import COMMANDS, HISTORY, LOCKOUT_MAX, MAX_LINE, Console, mask_token
from agent.consolehash import hash_password
from agent.errors import ConfigError, DeviceInfoError

PASSWORD = "bench-Pa55 wörd"


@pytest.fixture(scope="module")
def pw_hash():
    return hash_password(PASSWORD)


def mk(dumb=False, **kw):
    svc = kw.pop("service", None) or FakeService()
    clock = kw.pop("clock", None) or FakeClock()
    con = Console(svc, dumb=dumb, clock=clock, **kw)
    con.banner()
    return con, svc, clock


def run(con, text) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return con.feed(data).decode("utf-8")


# --- commands -------------------------------------------------------------------------------

def test_banner_names_version_and_prompt():
    con = Console(FakeService())
    out = con.banner().decode()
    assert "pass-agent 0.1.0 serial console" in out and out.endswith("pass-agent> ")
    assert "\r\nagent: token valid, token valid for 21000 s\r\n" in out


def test_help_lists_every_command_and_usage():
    con, _, _ = mk()
    out = run(con, "help\r")
    for name in COMMANDS:
        assert "\r\n  " + name in out
    assert "device-info [--decode]" in out
    out = run(con, "help log\r")
    assert "usage: log [N] | log follow" in out
    out = run(con, "help stat\r")
    assert "did you mean 'status'" in out and "[unknown_command]" in out


def test_version():
    con, _, _ = mk(dumb=True)
    assert run(con, "version\r") == "pass-agent 0.1.0\r\nOK\r\npass-agent>\r\n"


def test_status_formats_times_and_counters():
    con, _, _ = mk()
    out = run(con, "status\r")
    assert re.search(r"state: +ready", out)
    assert re.search(r"token.expires_at: +2023-11-15 04:13:20Z", out)
    assert re.search(r"uptime: +3723 s \(1h02m03s\)", out)
    assert re.search(r"upstream.requests: +3", out)
    assert re.search(r"last_error: +none", out)


def test_device_info_plain_and_decoded():
    con, svc, _ = mk()
    out = run(con, "device-info\r")
    assert "X-Device-Info: " + svc.identity()["x_device_info"] in out
    assert "AP-Device-Identifier: fingerprint ZmFrZS1kZXZpY2UtaWQ=" in out
    assert "warning: displayWidth unknown" in out
    out = run(con, "device-info --decode\r")
    assert re.search(r"model +STB-9000 +\[/proc/device-tree/model\]", out)
    assert re.search(r"primaryHardwareType +SetTopBox", out)
    out = run(con, "device-info --bogus\r")
    assert "usage: device-info [--decode]" in out


def test_device_info_errors_are_reported():
    con, svc, _ = mk(dumb=True)
    svc.identity = lambda: {"x_device_info": "!!notbase64", "ap_device_identifier": "x", "device_id": "y"}
    assert run(con, "device-info --decode\r").startswith("ERR device_info_invalid X-Device-Info does not decode")

    def broken():
        raise DeviceInfoError("model: /proc/device-tree/model is missing", hint="check board/<name>/board.toml")
    svc.identity = broken
    out = run(con, "device-info\r")
    assert "ERR device_info_invalid model: /proc/device-tree/model is missing (check board" in out


def test_token_is_masked():
    con, _, _ = mk()
    out = run(con, "token\r")
    fp = hashlib.sha256(FAKE_TOKEN.encode()).hexdigest()[:12]
    assert "%s... (%d chars, sha256:%s)" % (FAKE_TOKEN[:8], len(FAKE_TOKEN), fp) in out
    assert FAKE_TOKEN[:9] not in out
    assert re.search(r"expires_in: +21000 s", out) and re.search(r"token_type: +bearer", out)


def test_mask_token_never_shows_more_than_a_quarter():
    assert mask_token("abcdefgh").startswith("ab...")
    assert mask_token("").startswith("... (0 chars")
    assert mask_token(OPAQUE_TOKEN).startswith(OPAQUE_TOKEN[:8] + "...")


def test_token_not_ready_reports_why():
    con, _, _ = mk(dumb=True, service=FakeService(token=None))
    out = run(con, "token\r")
    assert "ERR not_ready no valid token: no token yet: registration in progress" in out
    assert "(retry in 5 s)" in out


def test_refresh_calls_service():
    con, svc, _ = mk(dumb=True)
    assert "OK" in run(con, "refresh\r")
    assert svc.calls == ["refresh"]


@pytest.mark.parametrize("cmd", ["register", "reset"])
def test_register_and_reset_need_yes(cmd):
    con, svc, _ = mk(dumb=True)
    out = run(con, cmd + "\r")
    assert "type yes to confirm:" in out and "OK" not in out
    assert "ERR cancelled" in run(con, "y\r")
    assert svc.calls == []
    run(con, cmd + "\r")
    out = run(con, "\x03")
    assert "ERR cancelled cancelled with Ctrl-C" in out and svc.calls == []
    run(con, cmd + "\r")
    assert run(con, "YES\r").endswith("OK\r\npass-agent>\r\n")
    assert svc.calls == [cmd]


def test_confirmed_action_failure_is_an_error():
    con, svc, _ = mk(dumb=True)

    def boom():
        raise RuntimeError("disk on fire " + FAKE_SECRET)
    svc.reset_credentials = boom
    run(con, "reset\r")
    out = run(con, "yes\r")
    assert "ERR internal_error confirmed action failed (RuntimeError); see the agent log" in out
    assert FAKE_SECRET not in out


def test_log_tail_and_bounds():
    con, svc, _ = mk(dumb=True)
    assert "(the log is empty)" in run(con, "log\r")
    for i in range(30):
        svc.logs.append("INFO    line %d" % i)
    out = run(con, "log\r")
    assert "line 9\r\n" not in out and "line 10\r\n" in out and "line 29\r\nOK" in out
    assert run(con, "log 2\r") == "INFO    line 28\r\nINFO    line 29\r\nOK\r\npass-agent>\r\n"
    assert "ERR usage" in run(con, "log 0\r")
    assert "ERR usage" in run(con, "log lots\r")
    assert "ERR usage" in run(con, "log 100000\r")


def test_log_follow_streams_drops_oldest_and_stops_on_ctrl_c():
    con, svc, clock = mk(dumb=True)
    out = run(con, "log follow\r")
    assert "following the log; press Ctrl-C to stop" in out and "OK" not in out
    assert con.following and con.wants_poll_at() is None
    svc.logs.append("INFO    first")
    assert con.wants_poll_at() == clock()
    assert con.poll() == b"INFO    first\r\n"
    for i in range(1000):  # far more than the queue holds
        svc.logs.append("INFO    burst %d" % i)
    out = con.poll().decode()
    lines = out.split("\r\n")
    assert lines[0] == "[744 older log lines dropped: the console is slower than the log]"
    assert lines[1] == "INFO    burst 744" and lines[-2] == "INFO    burst 999"
    assert run(con, "status\r") == ""  # typing does nothing while following
    out = run(con, "\x03")
    assert out.endswith("stopped following the log\r\nOK\r\npass-agent>\r\n")
    svc.logs.append("INFO    after")
    assert con.poll() == b"" and not con.following
    assert con.stats["follow_dropped"] == 744


def test_config_masks_secrets():
    con, _, _ = mk(service=FakeService(leaky=True))
    out = run(con, "config\r")
    assert re.search(r"adobe.client_secret += \[REDACTED\] \(%d chars\)" % len(FAKE_SECRET), out)
    assert re.search(r"console.baudrate += 115200", out)
    assert re.search(r"socket.allow_uids += 0, 1000", out)


def test_unknown_command_hint():
    con, _, _ = mk(dumb=True)
    out = run(con, "stauts\r")
    assert out == ("ERR unknown_command unknown command 'stauts'; did you mean 'status'? (help lists the "
                   "commands)\r\npass-agent>\r\n")
    assert "type help for the list" in run(con, "xyzzy\r")


def test_service_bug_does_not_kill_console():
    con, svc, _ = mk(dumb=True)
    svc.status = lambda: 1 / 0
    assert "ERR internal_error status failed (ZeroDivisionError)" in run(con, "status\r")
    assert "pass-agent 0.1.0" in run(con, "version\r")


# --- secrets never leak -----------------------------------------------------------------------

# token first: from then on the console scrubs that token even from a leaky service's free text
ALL_INPUT = ["token", "help", "status", "device-info", "device-info --decode", "token", "refresh", "register", "yes",
             "reset", "yes", "log", "log 500", "config", "version", "lock", "unlock", "help token"]


@pytest.mark.parametrize("dumb", [False, True])
@pytest.mark.parametrize("token", [FAKE_TOKEN, OPAQUE_TOKEN])
def test_no_secret_in_any_output(dumb, token):
    svc = FakeService(token=token, leaky=True)
    svc.logs.append("INFO    got token " + token)  # a log line that escaped redaction upstream
    con, _, _ = mk(dumb=dumb, service=svc)
    out = con.banner().decode()
    for cmd in ALL_INPUT:
        out += run(con, cmd + "\r")
    out += run(con, "log follow\r")
    svc.logs.append("INFO    client_secret=" + FAKE_SECRET)
    out += con.poll().decode() + run(con, "\x03")
    for secret in (token, FAKE_SECRET):
        assert secret not in out
        for i in range(0, len(secret) - 12, 4):  # nor any 12-char piece of it
            assert secret[i:i + 12] not in out, secret[i:i + 12]
    assert "[REDACTED" in out  # the second net did catch the leaky service


# --- the production lock --------------------------------------------------------------------

def test_locked_console_allows_only_help_version_unlock(pw_hash):
    con, svc, _ = mk(dumb=True, password_hash=pw_hash)
    assert con.locked
    for cmd in ("status", "token", "refresh", "config", "log", "lock", "register", "reset", "device-info"):
        out = run(con, cmd + "\r")
        assert out.startswith("ERR locked '%s' needs the console unlocked" % cmd), out
    assert svc.calls == []
    assert "OK" in run(con, "version\r") and "the console is locked" in run(con, "help\r")


def test_unlock_masks_password_and_unlocks(pw_hash):
    con, _, _ = mk(password_hash=pw_hash)
    assert run(con, "unlock\r").endswith("Password: ")
    out = run(con, PASSWORD + "\r")
    assert PASSWORD not in out and "*" not in out  # nothing echoed: not even the length
    assert "unlocked; the console locks again after 5m00s without input" in out
    assert not con.locked and "state:" in run(con, "status\r")
    # never in history
    out = run(con, "\x1b[A")
    assert PASSWORD not in out and "status" in out


def test_unlock_dumb_has_no_echo(pw_hash):
    con, _, _ = mk(dumb=True, password_hash=pw_hash)
    assert run(con, "unlock\r") == "Password:\r\n"
    out = run(con, PASSWORD + "\r")
    assert PASSWORD not in out and "*" not in out and "\r\nOK\r\n" in out


def test_wrong_passwords_back_off_exponentially(pw_hash):
    con, _, clock = mk(dumb=True, password_hash=pw_hash)
    run(con, "unlock\r")
    out = run(con, "guess1\r")
    assert "ERR bad_password wrong password (1 in a row); wait 1 s before the next attempt" in out
    out = run(con, "unlock\r")
    assert "ERR locked_out 1 wrong password(s); wait 1 s before the next attempt" in out
    delays = [1]
    for n in range(2, 11):
        clock.advance(delays[-1])
        assert run(con, "unlock\r") == "Password:\r\n"
        out = run(con, "guess%d\r" % n)
        m = re.search(r"wrong password \(%d in a row\); wait (\d+) s" % n, out)
        delays.append(int(m.group(1)))
        clock.advance(delays[-1] - 0.5)
        assert "ERR locked_out" in run(con, "unlock\r")  # still too early
        clock.advance(-(delays[-1] - 0.5))
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, LOCKOUT_MAX]
    assert con.locked and con.stats["unlock_failures"] == 10
    clock.advance(LOCKOUT_MAX)
    run(con, "unlock\r")
    assert "OK" in run(con, PASSWORD + "\r")
    assert not con.locked
    # the counter restarts after success
    run(con, "lock\r")
    run(con, "unlock\r")
    assert "wait 1 s" in run(con, "nope\r")


def test_idle_relock_by_poll_and_by_input(pw_hash):
    con, _, clock = mk(dumb=True, password_hash=pw_hash, idle_lock=60)
    assert con.wants_poll_at() is None  # locked: nothing to time
    run(con, "unlock\r" + PASSWORD + "\r")
    assert con.wants_poll_at() == clock() + 60
    clock.advance(59)
    assert con.poll() == b""
    run(con, "version\r")  # activity pushes it out
    assert con.wants_poll_at() == clock() + 60
    clock.advance(60)
    assert con.poll() == b"console locked after 1m00s without input; type unlock\r\npass-agent>\r\n"
    assert con.locked
    run(con, "unlock\r" + PASSWORD + "\r")
    run(con, "log follow\r")
    clock.advance(61)
    out = run(con, "status\r")  # input after the deadline: locked first, then refused
    assert out.startswith("console locked after") and "ERR locked 'status'" in out
    assert not con.following


def test_garbage_does_not_keep_console_unlocked(pw_hash):
    con, _, clock = mk(dumb=True, password_hash=pw_hash, idle_lock=60)
    run(con, "unlock\r" + PASSWORD + "\r")
    clock.advance(30)
    run(con, b"\xff\xfe\x00\x01")
    clock.advance(30)
    assert b"console locked" in con.poll()


def test_lock_command_and_no_password():
    con, _, _ = mk(dumb=True)
    assert run(con, "lock\r").startswith("ERR no_password")
    assert "nothing to unlock" in run(con, "unlock\r")


def test_lock_command_locks(pw_hash):
    con, _, _ = mk(dumb=True, password_hash=pw_hash)
    run(con, "unlock\r" + PASSWORD + "\r")
    assert "console locked" in run(con, "lock\r") and con.locked
    assert "ERR usage" in run(con, "unlock " + PASSWORD + "\r")  # never on the command line


def test_malformed_hash_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        Console(FakeService(), password_hash="scrypt$1$2$3")
    assert "console.password_hash" in str(e.value)


def test_new_session_relocks(pw_hash):
    con, _, _ = mk(password_hash=pw_hash)
    run(con, "unlock\r" + PASSWORD + "\r")
    run(con, "stat")
    con.new_session()
    assert con.locked and "[locked] pass-agent> " in con.banner().decode()


# --- line editing -----------------------------------------------------------------------------

def test_echo_and_backspace_both_codes():
    con, _, _ = mk()
    out = run(con, "verx\x08sion\r")
    assert out.startswith("verx\b \bsion\r\n") and "pass-agent 0.1.0" in out
    out = run(con, "verx\x7fsion\r")
    assert "pass-agent 0.1.0" in out
    assert run(con, "\x08") == ""  # nothing to erase


def test_ctrl_c_and_ctrl_u():
    con, _, _ = mk()
    assert run(con, "stat\x03") == "stat^C\r\npass-agent> "
    assert run(con, "\r") == "\r\npass-agent> "  # the cancelled text is gone
    out = run(con, "garbage\x15version\r")
    assert "\r\x1b[Kpass-agent> " in out and "pass-agent 0.1.0" in out and "unknown" not in out


@pytest.mark.parametrize("eol", ["\r", "\n", "\r\n"])
def test_each_line_ending_ends_exactly_one_line(eol):
    con, _, _ = mk(dumb=True)
    out = run(con, "version" + eol + "version" + eol)
    assert out.count("OK\r\n") == 2 and out.count("pass-agent>\r\n") == 2
    assert con.stats["commands"] == 2


def test_crlf_split_across_reads():
    con, _, _ = mk(dumb=True)
    out = run(con, "version\r") + run(con, "\nversion\r") + run(con, "\n")
    assert out.count("OK\r\n") == 2 and out.count("pass-agent>\r\n") == 2


def test_lf_lf_is_two_lines():
    con, _, _ = mk(dumb=True)
    assert run(con, "\n\n").count("pass-agent>\r\n") == 2


@pytest.mark.parametrize("up", ["\x1b[A", "\x1bOA"])
def test_history_up_down(up):
    con, _, _ = mk()
    run(con, "version\r")
    run(con, "help log\r")
    down = up.replace("A", "B")
    assert run(con, "dra" + up).endswith("\r\x1b[Kpass-agent> help log")
    assert run(con, up).endswith("\r\x1b[Kpass-agent> version")
    assert run(con, up) == "\x07"  # nothing older
    assert run(con, down).endswith("pass-agent> help log")
    assert run(con, down).endswith("pass-agent> dra")  # the draft comes back
    out = run(con, "\x15" + up + up + "\r")
    assert "pass-agent 0.1.0" in out


def test_history_is_bounded_and_skips_repeats():
    con, _, _ = mk()
    for i in range(HISTORY + 20):
        run(con, "log %d\r" % (i + 1))
        run(con, "log %d\r" % (i + 1))
    assert len(con._history) == HISTORY and con._history[0] == "log 21"


def test_arrows_left_right_and_other_sequences_are_ignored():
    con, _, _ = mk()
    out = run(con, "vers\x1b[C\x1b[D\x1b[3~\x1b[1;5Dion\r")
    assert "pass-agent 0.1.0" in out and "\x1b[C" not in out


def test_tab_completion():
    con, _, _ = mk()
    assert run(con, "sta\t") == "sta" + "tus "
    assert run(con, "\r").count("state:") == 1
    out = run(con, "re\t")  # refresh, register, reset: common prefix "re" → list them
    assert "\r\nrefresh  register  reset\r\n" in out and out.endswith("\r\x1b[Kpass-agent> re")
    assert run(con, "g") == "g"
    assert run(con, "\t") == "ister "  # "reg": unique now
    run(con, "\x15")
    assert run(con, "lo\t").startswith("lo\r\nlog  lock\r\n")  # "lo" is already the common prefix: list
    run(con, "\x15")
    assert run(con, "r\t") == "re"  # several matches: complete their common prefix first
    run(con, "\x15")
    assert run(con, "zz\t").endswith("\x07")
    assert run(con, "\x15log fo\t").endswith("\x07")  # only the command name completes


def test_overlong_line_is_refused_and_bounded():
    con, _, _ = mk(dumb=True)
    out = run(con, "x" * 100000 + "\r")
    assert out.startswith("ERR line_too_long input longer than %d characters" % MAX_LINE)
    assert len(con._buf) == 0
    run(con, "y" * 10000)
    assert len(con._buf) == MAX_LINE
    assert "OK" in run(con, "\x15version\r")


def test_interactive_overlong_rings_bell():
    con, _, _ = mk()
    out = run(con, "a" * (MAX_LINE + 3))
    assert out.endswith("\x07\x07\x07") and out.count("a") == MAX_LINE


def test_garbage_and_invalid_utf8():
    con, _, _ = mk(dumb=True)
    out = run(con, b"\x00\x01\x02\xff\xfe\xc3\x28\x80\x1b\x1b[99999999999999999999\x9b\x05\x06")
    assert "\x1b" not in out
    assert con.stats["garbage_chars"] > 0
    assert "pass-agent 0.1.0" in run(con, "\x15version\r")


def test_utf8_split_across_reads():
    con, _, _ = mk()
    out = run(con, b"help \xc3") + run(con, b"\xa9\r")
    assert "unknown command 'é'" in out


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_fuzz_never_crashes_and_recovers(data, dumb):
    con, _, _ = mk(dumb=dumb)
    out = con.feed(data)
    assert isinstance(out, bytes)
    if dumb:
        assert b"\x1b" not in out
    assert len(con._buf) <= MAX_LINE and len(con._esc) <= 16
    out = con.feed(b"\x03\x03\x15\rversion\r").decode()
    assert "pass-agent 0.1.0" in out


FLOOD = random.Random(15).randbytes(1 << 20)  # the junk of test_console_stuck's megabyte test
# Where a read can leave the core mid-sequence: after an ESC, an ESC [ or ESC O, a UTF-8 lead byte.
FLOOD_CUTS = {
    "esc": [i + 1 for i in range(len(FLOOD)) if FLOOD[i] == 0x1b],
    "csi": [i + 2 for i in range(len(FLOOD) - 1) if FLOOD[i] == 0x1b and FLOOD[i + 1] in b"[O"],
    "utf8": [i + 1 for i in range(1 << 16) if 0xc2 <= FLOOD[i] <= 0xf4],
}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(FLOOD) - 1), st.integers(1, 4096)), max_size=20),
       st.one_of([st.sampled_from(v) for v in FLOOD_CUTS.values()]), st.integers(0, 6), st.integers(1, 600), st.booleans(), st.booleans())
def test_no_part_of_a_flood_keeps_ctrl_c_ctrl_u_and_a_command_from_being_answered(
        pieces, cut, extra, last, dumb, keywise):
    """Which parts of a flood reach the core depends on the input limiter's timing (H7): whichever
    pieces arrive, in whatever reads, the last one ending anywhere (in an escape sequence, in a UTF-8
    character), the exact keys a technician types afterwards are answered: no escape sequence, mode,
    half character or line state outlives ^C ^U."""
    con, _, clock = mk(dumb=dumb)
    for at, n in pieces:
        con.feed(FLOOD[at:at + n])
        clock.advance(0.001)
    con.feed(FLOOD[max(0, cut + extra - last):cut + extra])
    keys = b"\x03\x15version\r"
    out = b"".join(con.feed(bytes([k])) for k in keys) if keywise else con.feed(keys)
    assert b"pass-agent 0.1.0\r\n" in out

# --- dumb mode ------------------------------------------------------------------------------

def test_dumb_mode_is_parsable():
    con, _, _ = mk(dumb=True)
    out = ""
    for cmd in ("help", "status", "token", "config", "device-info --decode", "log 5", "nope", "log x", ""):
        out += run(con, cmd + "\r")
    assert "\x1b" not in out and "\x07" not in out
    assert out.count("\n") == out.count("\r\n") and out.endswith("\r\n")
    lines = out.split("\r\n")[:-1]
    ends = [line for line in lines if line == "OK" or line.startswith("ERR ")]
    assert len(ends) == 8
    assert all(re.match(r"ERR [a-z_]+ \S", line) for line in ends if line != "OK")
    assert lines.count("pass-agent>") == 9


def test_dumb_mode_ignores_its_own_output_echoed_back():
    con, _, _ = mk(dumb=True)
    out = con.banner() + con.feed(b"version\r")
    # a loopback plug: everything it says comes back as input; it must go quiet, not loop
    for _ in range(5):
        out = con.feed(out)
    assert out == b""
    assert con.stats["echo_suppressed"] > 0 and con.stats["commands"] == 1


def test_interactive_prompt_shows_lock_state(pw_hash):
    con, _, _ = mk(password_hash=pw_hash)
    assert run(con, "\r").endswith("[locked] pass-agent> ")
    run(con, "unlock\r" + PASSWORD + "\r")
    assert run(con, "\r").endswith("\r\npass-agent> ")
