"""The serial debug console's core: bytes in, bytes out, a command table, no I/O of its own.

Theory of operation. The transport (agent/serialconsole.py, or a test) calls `feed(data)` with the
bytes it read and writes back what it returns; it calls `poll()` when `wants_poll_at()` says so, for
output nobody typed for (followed log lines, the idle re-lock notice). Input is decoded as UTF-8
(invalid bytes become U+FFFD and are dropped), then each character goes through a small line
editor: echo, backspace (BS and DEL), Ctrl-C, Ctrl-U, history on ESC[A/ESC[B (and ESC OA/OB), tab
completion of command names. CR, LF and CRLF each end one line, even when CR and LF arrive in two
reads. A finished line is looked up in COMMANDS (name, one-line help, usage, handler).

Modes: "line" (normal), "password" (after `unlock`: nothing is echoed, not even a '*' per character,
which would tell an onlooker the password's length; never in history), "confirm"
(after `register`/`reset`: `yes` runs the action), "follow" (`log follow`: log lines stream through a
bounded queue until Ctrl-C; the oldest are dropped and counted).

Dumb mode (raw monitors, scripts): no echo, no escape sequences, no line editing, a fixed prompt
line, and every command ends with exactly one `OK` or `ERR <code> <message>` line.

Production lock: with a password hash, only help, version and unlock run until unlocked. Wrong
passwords push the next allowed attempt out exponentially on the injected clock (the core never
sleeps); no input for `idle_lock` seconds locks it again. The transport's clock is agent.clock.now
(CLOCK_BOOTTIME), so time spent in suspend counts toward the idle lock.

Must never: output an access token, client secret or password (tokens are shown masked, secret-like
keys masked, every output line passes the log redactor as a second net); sleep or block; grow memory
with input (line, history, escape sequence and follow queue are all bounded); raise out of feed().
"""

from __future__ import annotations

import base64
import binascii
import codecs
import collections
import difflib
import hashlib
import json
import re
import threading
import time
from typing import Callable

from agent import __version__, consolehash
from agent import clock as clockmod
from agent import log as agent_log
from agent.errors import AgentError
from agent.facade import ServiceFacade

CRLF = "\r\n"
MAX_LINE = 256          # characters per input line; longer lines are refused, never stored
HISTORY = 50
FOLLOW_QUEUE = 256      # log lines buffered while following; the oldest are dropped beyond this
LOG_DEFAULT, LOG_MAX = 20, 500
LOCKOUT_BASE, LOCKOUT_MAX = 1.0, 300.0   # seconds: 1, 2, 4 ... 300 after consecutive wrong passwords
ECHO_GUARD = 32         # recent output lines; an input line equal to one is our own echo coming back
_ESC_MAX = 16           # longest escape sequence we keep collecting before giving up
ALWAYS_ALLOWED = ("help", "version", "unlock")

Command = collections.namedtuple("Command", "name help usage handler")

_log = agent_log.get("console")

# Keys whose string values are secrets wherever they appear in status/config dicts.
_SECRET_KEY = re.compile(r"(?i)secret|password|passphrase|private|^software_statement$|access_token|"
                         r"refresh_token|^token$|bearer|signature|credential")
_DURATION_KEYS = ("uptime", "expires_in", "retry_after", "age")


class CommandError(Exception):
    """A command failed: `code` is stable (scripts match it), `message` says what and what to do."""

    def __init__(self, code: str, message: str) -> None:
        Exception.__init__(self, message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------
# Formatting helpers (pure)

def mask_token(tok: str) -> str:
    """Prefix (at most 8 chars, at most a quarter of it), length and a SHA-256 fingerprint prefix."""
    k = min(8, len(tok) // 4)
    fp = hashlib.sha256(tok.encode("utf-8", "replace")).hexdigest()[:12]
    return "%s... (%d chars, sha256:%s)" % (tok[:k], len(tok), fp)


def _iso(epoch: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return str(epoch)


def _duration(s: float) -> str:
    s = int(s)
    sign, s = ("-", -s) if s < 0 else ("", s)
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return "%s%dd%02dh%02dm" % (sign, d, h, m)
    if h:
        return "%s%dh%02dm%02ds" % (sign, h, m, sec)
    return "%s%dm%02ds" % (sign, m, sec) if m else "%s%ds" % (sign, sec)


def _fmt(key: str, v) -> str:
    if isinstance(v, str) and v and _SECRET_KEY.search(key):
        return "[REDACTED] (%d chars)" % len(v)
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if key.endswith("_at") and v > 0:
            return _iso(v)
        if key in _DURATION_KEYS:
            return "%d s (%s)" % (v, _duration(v))
        return ("%.3f" % v).rstrip("0").rstrip(".") if isinstance(v, float) else str(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(key, x) for x in v) or "-"
    return " ".join(str(v).split())  # one line, whatever it holds


def _flatten(d: dict, prefix: str = "") -> list:
    rows = []
    for k, v in d.items():
        name = prefix + str(k)
        if isinstance(v, dict) and v:
            rows.extend(_flatten(v, name + "."))
        else:
            rows.append((name, _fmt(str(k), v if not isinstance(v, dict) else None)))
    return rows


def _table(rows: list, sep: str = ": ") -> list:
    width = min(max((len(k) for k, _ in rows), default=0), 28)
    if sep == ": ":
        return ["%s %s" % ((k + ":").ljust(width + 1), v) for k, v in rows]
    return ["%s%s%s" % (k.ljust(width), sep, v) for k, v in rows]


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


# ---------------------------------------------------------------------------------------------
# Commands: handler(console, args) -> list of output lines; raise CommandError or AgentError.

def _cmd_help(con: Console, args: list) -> list:
    if len(args) > 1:
        raise CommandError("usage", "usage: help [command]")
    if args:
        cmd = COMMANDS.get(args[0])
        if cmd is None:
            raise CommandError("unknown_command", _unknown(args[0]))
        return ["usage: " + cmd.usage, "  " + cmd.help]
    lines = ["commands (help <command> shows its usage):"]
    lines += ["  %-22s %s" % (c.usage if len(c.usage) <= 22 else c.name, c.help) for c in COMMANDS.values()]
    if con.locked:
        lines.append("the console is locked: only help, version and unlock work; type unlock")
    return lines


def _cmd_version(con: Console, args: list) -> list:
    return ["pass-agent " + str(getattr(con.service, "version", __version__))]


def _app_arg(con: Console, args: list, usage: str, required: bool = False) -> str | None:
    """The optional APP argument of a command (issue 16: several registered applications). With
    `required`, a console of an agent with several applications must name one."""
    names = list(con.service.apps())
    if len(args) > 1:
        raise CommandError("usage", "usage: " + usage)
    if args:
        if args[0] not in names:
            raise CommandError("unknown_app", "no application named %r; this agent serves %s"
                               % (args[0][:40], ", ".join(names)))
        return args[0]
    if required and len(names) > 1:
        raise CommandError("app_required", "this agent serves several applications (%s); %s"
                           % (", ".join(names), "usage: " + usage))
    return None


def _cmd_status(con: Console, args: list) -> list:
    app = _app_arg(con, args, "status [APP]")
    st = dict(con.service.status(app) if app is not None else con.service.status())
    rows = _flatten({k: st.pop(k) for k in ("state", "version") if k in st})
    if st.get("last_error") is None and "last_error" in st:
        st["last_error"] = "none"
    return _table(rows + _flatten(st))


def _cmd_device_info(con: Console, args: list) -> list:
    if args not in ([], ["--decode"]):
        raise CommandError("usage", "usage: device-info [--decode]")
    ident = con.service.identity()
    xdi = str(ident.get("x_device_info", ""))
    lines = ["X-Device-Info: " + xdi,
             "AP-Device-Identifier: " + str(ident.get("ap_device_identifier", "-")),
             "device_id: " + str(ident.get("device_id", "-"))]
    if args:
        try:
            fields = json.loads(base64.b64decode(xdi.encode("ascii"), validate=True).decode("utf-8"))
            if not isinstance(fields, dict):
                raise ValueError("not a JSON object")
        except (binascii.Error, ValueError, UnicodeError) as e:
            raise CommandError("device_info_invalid", "X-Device-Info does not decode to a JSON object (%s); "
                               "check the board profile and the agent log" % _one_line(e))
        sources = ident.get("sources") or {}
        lines.append("decoded X-Device-Info:")
        width = max((len(k) for k in fields), default=0)
        for k in sorted(fields):
            src = sources.get(k)
            lines.append("  %s  %s%s" % (k.ljust(width), _fmt(k, fields[k]), ("   [%s]" % _one_line(src)) if src else ""))
    else:
        lines.append("(device-info --decode lists the fields and where each came from)")
    lines += ["warning: " + _one_line(w) for w in ident.get("warnings") or []]
    return lines


def _cmd_token(con: Console, args: list) -> list:
    app = _app_arg(con, args, "token [APP] (the token is always shown masked)", required=True)
    tok = con.service.token(0, app) if app is not None else con.service.token()
    if not tok:
        e = con.service.not_ready_error(app) if app is not None else con.service.not_ready_error()
        extra = (" (retry in %d s)" % e.retry_after) if getattr(e, "retry_after", None) else ""
        raise CommandError(getattr(e, "code", "not_ready"), "no valid token: %s%s [%s]" % (
            _one_line(e), extra, getattr(e, "kind", "retry")))
    con._seen_secret(str(tok.get("access_token", "")))
    rows = [("token", mask_token(str(tok.get("access_token", "")))),
            ("token_type", _fmt("token_type", tok.get("token_type")))]
    rows += [(k, _fmt(k, tok.get(k))) for k in ("expires_in", "expires_at", "refresh_at") if k in tok]
    return _table(rows)


def _cmd_refresh(con: Console, args: list) -> list:
    app = _app_arg(con, args, "refresh [APP] (no APP: every application)")
    if app is not None:
        con.service.request_refresh(app)
    else:
        con.service.request_refresh()
    return ["refresh requested: the agent fetches a new token in the background (watch status or log follow)"]


def _cmd_register(con: Console, args: list) -> list:
    app = _app_arg(con, args, "register [APP] (asks for confirmation)", required=True)
    con._ask_confirm(
        ["register: asks Adobe Pass for new client credentials that replace the stored ones%s;"
         % (" of " + app if app else ""),
         "viewers may have to sign in again. Do this only when the credentials are rejected."],
        (lambda: con.service.force_register(app)) if app is not None else con.service.force_register,
        "re-registration requested: watch status or log follow")
    return []


def _cmd_reset(con: Console, args: list) -> list:
    app = _app_arg(con, args, "reset [APP] (asks for confirmation)", required=True)
    con._ask_confirm(
        ["reset: WIPES the stored client credentials and token%s; the agent then registers again"
         % (" of " + app if app else ""),
         "and viewers may have to sign in again."],
        (lambda: con.service.reset_credentials(app)) if app is not None else con.service.reset_credentials,
        "credentials wiped: the agent registers again in the background")
    return []


def _cmd_log(con: Console, args: list) -> list:
    if args == ["follow"]:
        con._start_follow()
        return []
    if len(args) > 1 or (args and not (args[0].isdecimal() and len(args[0]) < 7)):
        raise CommandError("usage", "usage: log [N] (1..%d, default %d) or log follow" % (LOG_MAX, LOG_DEFAULT))
    n = int(args[0]) if args else LOG_DEFAULT
    if not 1 <= n <= LOG_MAX:
        raise CommandError("usage", "log: N must be 1..%d, got %d" % (LOG_MAX, n))
    lines = con.service.logs.tail(n)
    return list(lines) if lines else ["(the log is empty)"]


def _cmd_config(con: Console, args: list) -> list:
    if args:
        raise CommandError("usage", "usage: config (no arguments)")
    rows = _flatten(con.service.config_view())
    return _table(rows, " = ") if rows else ["(no configuration)"]


def _cmd_lock(con: Console, args: list) -> list:
    if con._hash is None:
        raise CommandError("no_password", "the console has no password (console.password_hash is unset) so it "
                           "cannot lock; make one with pass-agent console-hash")
    con._lock()
    return ["console locked; type unlock to use it again"]


def _cmd_unlock(con: Console, args: list) -> list:
    if args:
        raise CommandError("usage", "usage: unlock (then type the password on the next line; "
                           "never put it on the command line)")
    if con._hash is None:
        return ["the console has no password (console.password_hash is unset); nothing to unlock"]
    if not con.locked:
        return ["already unlocked"]
    con._ask_password()
    return []


_TABLE = [
    Command("help", "show the commands, or one command's usage", "help [command]", _cmd_help),
    Command("status", "agent state, token times, last error, counters", "status [APP]", _cmd_status),
    Command("device-info", "X-Device-Info and AP-Device-Identifier sent upstream", "device-info [--decode]",
            _cmd_device_info),
    Command("token", "the current access token, masked (prefix, length, fingerprint)", "token [APP]", _cmd_token),
    Command("refresh", "fetch a new access token now (in the background)", "refresh [APP]", _cmd_refresh),
    Command("register", "register the box again with Adobe Pass (asks to confirm)", "register [APP]", _cmd_register),
    Command("reset", "wipe the stored credentials and register again (asks to confirm)", "reset [APP]", _cmd_reset),
    Command("log", "last N log lines, or follow the log until Ctrl-C", "log [N] | log follow", _cmd_log),
    Command("config", "effective configuration, secrets masked", "config", _cmd_config),
    Command("version", "agent version", "version", _cmd_version),
    Command("lock", "lock the console now", "lock", _cmd_lock),
    Command("unlock", "unlock with the console password (asked on the next line)", "unlock", _cmd_unlock),
]
COMMANDS = collections.OrderedDict((c.name, c) for c in _TABLE)


def _unknown(name: str) -> str:
    shown = name if len(name) <= 32 else name[:32] + "..."
    close = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.5) or \
        [c for c in COMMANDS if c.startswith(name[:3])][:1]
    if close:
        return "unknown command '%s'; did you mean '%s'? (help lists the commands)" % (shown, close[0])
    return "unknown command '%s'; type help for the list of commands" % shown


# ---------------------------------------------------------------------------------------------

class Console:
    """One console session over one byte stream. Not thread-safe except the log-follow queue:
    call feed/poll/banner from a single thread."""

    def __init__(self, service: ServiceFacade, *, password_hash: str | None = None, dumb: bool = False,
                 clock: Callable[[], float] = clockmod.now, idle_lock: float = 300.0,
                 prompt: str = "pass-agent> ") -> None:
        self.service = service
        self._hash = consolehash.parse(password_hash) if password_hash else None  # ConfigError if malformed
        self.dumb = dumb
        self._clock = clock
        self.idle_lock = float(idle_lock)
        self.prompt = prompt
        self.locked = self._hash is not None
        self._failures = 0
        self._retry_at = 0.0
        self._last_input = clock()
        self._buf: list = []
        self._overflow = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._esc = ""
        self._last_cr = False
        self._history: collections.deque = collections.deque(maxlen=HISTORY)
        self._hist_pos: int | None = None
        self._draft = ""
        self._mode = "line"
        self._cur_prompt = prompt
        self._confirm: tuple | None = None
        self._recent: collections.deque = collections.deque(maxlen=ECHO_GUARD)
        self._follow_q: collections.deque = collections.deque(maxlen=FOLLOW_QUEUE)
        self._follow_dropped = 0
        self._follow_lock = threading.Lock()
        self._out: list = []
        self._secrets: collections.deque = collections.deque(maxlen=4)
        self.stats = {"commands": 0, "errors": 0, "garbage_chars": 0, "echo_suppressed": 0,
                      "unlock_failures": 0, "follow_dropped": 0}

    # --- public API -------------------------------------------------------------------------

    def banner(self) -> bytes:
        lines = ["pass-agent %s serial console" % getattr(self.service, "version", __version__)]
        if self.locked:
            lines.append("locked: type unlock, then the console password (help and version work while locked)")
        else:
            summary = getattr(self.service, "status_line", None)
            try:
                if summary is not None:
                    lines.append("agent: " + summary())
            except Exception:  # the banner must come up even when the service is unwell
                pass
            lines.append("type help for the commands")
        if self.dumb:
            lines.append("dumb mode: each command ends with a line OK or ERR <code> <message>")
        self._lines(lines)
        self._prompt()
        return self._take()

    def feed(self, data: bytes) -> bytes:
        now = self._clock()
        self._check_idle(now)
        try:
            for ch in self._decoder.decode(bytes(data)):
                if self._key(ch):
                    self._last_input = now
        except Exception:  # a bug here must not kill the transport; log it (redacted) and reset
            _log.exception("console: internal error while handling input; line discarded")
            self._reset_line()
            self._mode = "line"
            self._lines(["error: internal error in the console; the line was discarded (see the agent log)"])
            self._prompt()
        return self._take()

    def poll(self, now: float | None = None) -> bytes:
        now = self._clock() if now is None else now
        self._check_idle(now)
        if self._mode == "follow":
            self._drain_follow()
        return self._take()

    def wants_poll_at(self) -> float | None:
        at = []
        if self._mode == "follow" and self._follow_q:
            at.append(self._clock())
        if self._hash is not None and not self.locked:
            at.append(self._last_input + self.idle_lock)
        return min(at) if at else None

    @property
    def following(self) -> bool:
        """True while `log follow` streams (the transport then polls often)."""
        return self._mode == "follow"

    def new_session(self) -> None:
        """The line was (re)connected: forget half-typed input and modes, lock again if locking is on."""
        self._stop_follow()
        self._reset_line()
        self._esc, self._last_cr, self._mode, self._confirm = "", False, "line", None
        self._decoder.reset()
        if self._hash is not None:
            self.locked = True
        self._last_input = self._clock()
        self._out = []

    def close(self) -> None:
        self._stop_follow()

    # --- output -----------------------------------------------------------------------------

    def _take(self) -> bytes:
        out, self._out = "".join(self._out), []
        return out.encode("utf-8", "replace")

    def _raw(self, s: str) -> None:
        if not self.dumb:
            self._out.append(s)

    def _lines(self, lines: list) -> None:
        for line in lines:
            line = str(line).replace("\r", " ").replace("\n", " ")
            for secret in self._secrets:
                line = line.replace(secret, "[REDACTED]")
            line = agent_log.REDACTOR.redact(line)
            if self.dumb:
                line = line.replace("\x1b", "")
            self._recent.append(line.strip())
            self._out.append(line + CRLF)

    def _seen_secret(self, secret: str) -> None:
        # A token this console has seen is scrubbed from everything it prints afterwards, even from
        # a log line that escaped the agent's redactor.
        if len(secret) >= 6 and secret not in self._secrets:
            self._secrets.append(secret)

    def _prompt(self, text: str | None = None) -> None:
        if self.dumb:  # a stable prompt line, whatever the state
            line = (text if text is not None else self.prompt).strip()
            self._cur_prompt = line
            self._recent.append(line)
            self._out.append(line + CRLF)
        else:
            text = text if text is not None else (("[locked] " if self.locked else "") + self.prompt)
            self._cur_prompt = text
            self._out.append(text)

    def _finish(self, err: tuple | None = None) -> None:
        """End a command: the OK/ERR line (dumb) or an error line (human), then the prompt."""
        if err:
            self.stats["errors"] += 1
            code, msg = err[0], _one_line(err[1])
            self._lines(["ERR %s %s" % (code, msg) if self.dumb else "error: %s [%s]" % (msg, code)])
        elif self.dumb:
            self._lines(["OK"])
        self._mode = "line"
        self._prompt()

    def _bell(self) -> None:
        self._raw("\x07")

    def _redraw(self) -> None:
        shown = "" if self._mode == "password" else "".join(self._buf)  # never the password's length
        self._raw("\r\x1b[K" + self._cur_prompt + shown)

    # --- input ------------------------------------------------------------------------------

    def _key(self, ch: str) -> bool:
        """Handle one character; False when it was garbage (does not count as activity)."""
        if self._mode == "follow":
            if ch == "\x03":
                self._stop_follow(report=True)
            return ch == "\x03"
        if self._esc:
            if self._escape(ch):
                return True
        if ch == "\r":
            self._last_cr = True
            self._enter()
            return True
        if ch == "\n":
            if not self._last_cr:
                self._enter()
            self._last_cr = False
            return True
        self._last_cr = False
        if ch == "\x1b":
            self._esc = ch
        elif ch == "\x03":
            self._ctrl_c()
        elif ch in ("\x08", "\x7f"):
            if self._buf:
                self._buf.pop()
                if self._mode != "password":  # nothing was echoed there: nothing to erase
                    self._raw("\b \b")
        elif ch == "\x15":
            self._reset_line()
            self._redraw()
        elif ch == "\t":
            if self._mode == "line" and not self.dumb:
                self._complete()
        elif ch == "\ufffd" or not ch.isprintable():
            self.stats["garbage_chars"] += 1
            return False
        else:
            self._insert(ch)
        return True

    def _escape(self, ch: str) -> bool:
        """Collect ESC [ ... final / ESC O x. True when `ch` was consumed by the sequence."""
        if self._esc == "\x1b":
            if ch in "[O":
                self._esc += ch
                return True
            self._esc = ""
            return False  # a lone ESC: drop it, handle ch normally
        o = ord(ch)
        if o > 0x7e or o < 0x20 or len(self._esc) >= _ESC_MAX:
            self._esc = ""
            return False
        if self._esc == "\x1bO" or 0x40 <= o <= 0x7e:  # final byte
            self._esc = ""
            if ch in "AB" and self._mode == "line" and not self.dumb:
                self._history_move(-1 if ch == "A" else 1)
            return True
        self._esc += ch  # parameter / intermediate byte
        return True

    def _insert(self, ch: str) -> None:
        if len(self._buf) >= MAX_LINE:
            if not self._overflow:
                self._overflow = True
            self._bell()
            return
        self._buf.append(ch)
        if self._mode != "password":  # a password echoes nothing: even '*'s would give away its length
            self._raw(ch)

    def _reset_line(self) -> None:
        self._buf = []
        self._overflow = False
        self._hist_pos = None

    def _ctrl_c(self) -> None:
        self._raw("^C" + CRLF)
        self._reset_line()
        if self._mode in ("password", "confirm"):
            self._confirm = None
            self._finish(("cancelled", "cancelled with Ctrl-C; nothing was done"))
        else:
            self._prompt()

    def _enter(self) -> None:
        line = "".join(self._buf)
        overflow = self._overflow
        self._reset_line()
        self._raw(CRLF)
        if overflow:
            self._confirm = None
            self._finish(("line_too_long", "input longer than %d characters was discarded; type a shorter "
                          "line" % MAX_LINE))
        elif self._mode == "password":
            self._check_password(line)
        elif self._mode == "confirm":
            self._answer_confirm(line)
        else:
            self._run(line)

    def _complete(self) -> None:
        text = "".join(self._buf)
        if " " in text:
            return self._bell()
        matches = [n for n in COMMANDS if n.startswith(text)]
        if not matches:
            return self._bell()
        if len(matches) == 1:
            add = matches[0][len(text):] + " "
        else:
            common = matches[0]
            for m in matches[1:]:
                while not m.startswith(common):
                    common = common[:-1]
            add = common[len(text):]
            if not add:
                self._raw(CRLF + "  ".join(matches) + CRLF)
                self._redraw()
                return
        self._buf.extend(add)
        self._raw(add)

    def _history_move(self, step: int) -> None:
        if not self._history:
            return self._bell()
        if self._hist_pos is None:
            if step > 0:
                return self._bell()
            self._draft = "".join(self._buf)
            self._hist_pos = len(self._history)
        pos = self._hist_pos + step
        if pos < 0:
            return self._bell()
        if pos >= len(self._history):
            self._buf, self._hist_pos = list(self._draft), None
        else:
            self._buf, self._hist_pos = list(self._history[pos]), pos
        self._redraw()

    # --- commands ---------------------------------------------------------------------------

    def _run(self, line: str) -> None:
        words = line.split()
        if not words:
            return self._prompt()
        if line.strip() in self._recent:
            # Our own output came back (loopback plug, echoing peer): answering it would loop forever.
            self.stats["echo_suppressed"] += 1
            return None if self.dumb else self._prompt()
        if not self.dumb and (not self._history or self._history[-1] != line):
            self._history.append(line)
        self.stats["commands"] += 1
        name, args = words[0], words[1:]
        cmd = COMMANDS.get(name)
        err = None
        if cmd is None:
            err = ("unknown_command", _unknown(name))
        elif self.locked and name not in ALWAYS_ALLOWED:
            err = ("locked", "'%s' needs the console unlocked; type unlock (help and version work while "
                   "locked)" % name)
        else:
            err = self._call(cmd.name, lambda: cmd.handler(self, args))
        if self._mode == "line":
            self._finish(err)
        elif err:  # a handler that failed after switching mode
            self._mode = "line"
            self._finish(err)

    def _call(self, what: str, fn: Callable) -> tuple | None:
        try:
            self._lines(fn() or [])
        except CommandError as e:
            return (e.code, e.message)
        except AgentError as e:
            return (e.code, str(e))
        except Exception as e:
            _log.error("console: command %s failed: %s", what, type(e).__name__)
            return ("internal_error", "%s failed (%s); see the agent log" % (what, type(e).__name__))
        return None

    def _ask_confirm(self, warning: list, action: Callable, done: str) -> None:
        self._lines(warning)
        self._confirm = (action, done)
        self._mode = "confirm"
        self._prompt("type yes to confirm: ")

    def _answer_confirm(self, line: str) -> None:
        action, done = self._confirm or (None, "")
        self._confirm = None
        if action is None or line.strip().lower() != "yes":
            return self._finish(("cancelled", "not confirmed (only yes confirms); nothing was done"))
        self._finish(self._call("confirmed action", lambda: (action(), [done])[1]))

    def _ask_password(self) -> None:
        now = self._clock()
        if now < self._retry_at:
            raise CommandError("locked_out", "%d wrong password(s); wait %d s before the next attempt" % (
                self._failures, int(self._retry_at - now + 0.999)))
        self._mode = "password"
        self._prompt("Password: ")

    def _check_password(self, pw: str) -> None:
        now = self._clock()
        if not pw:
            return self._finish(("cancelled", "empty password; nothing was checked"))
        if now < self._retry_at:  # cannot normally happen; never verify early
            return self._finish(("locked_out", "wait %d s before the next attempt" % int(self._retry_at - now + 0.999)))
        ok = consolehash.verify(pw, self._hash)
        now = self._clock()  # verifying takes time; count idle from here
        if ok:
            self.locked, self._failures, self._retry_at = False, 0, 0.0
            self._last_input = now
            self._lines(["unlocked; the console locks again after %s without input" % _duration(self.idle_lock)])
            _log.info("console: unlocked")
            return self._finish()
        self._failures += 1
        self.stats["unlock_failures"] += 1
        delay = min(LOCKOUT_BASE * (2 ** min(self._failures - 1, 30)), LOCKOUT_MAX)
        self._retry_at = now + delay
        _log.warning("console: wrong console password (%d in a row); next attempt allowed in %d s",
                     self._failures, int(delay))
        self._finish(("bad_password", "wrong password (%d in a row); wait %d s before the next attempt" % (
            self._failures, int(delay))))

    def _lock(self) -> None:
        self.locked = True

    def _check_idle(self, now: float) -> None:
        if self._hash is None or self.locked or now - self._last_input < self.idle_lock:
            return
        self.locked = True
        self._stop_follow()
        self._reset_line()
        self._confirm = None
        self._mode = "line"
        self._raw(CRLF)
        self._lines(["console locked after %s without input; type unlock" % _duration(self.idle_lock)])
        self._prompt()

    # --- log follow -------------------------------------------------------------------------

    def _on_log(self, line: str) -> None:
        # Called from whichever thread logs (possibly the token service): append and return, never block.
        with self._follow_lock:
            if len(self._follow_q) == self._follow_q.maxlen:
                self._follow_dropped += 1
            self._follow_q.append(line)

    def _start_follow(self) -> None:
        with self._follow_lock:
            self._follow_q.clear()
            self._follow_dropped = 0
        self._lines(["following the log; press Ctrl-C to stop"])
        self._mode = "follow"
        self.service.logs.subscribe(self._on_log)

    def _drain_follow(self) -> None:
        with self._follow_lock:
            lines, dropped = list(self._follow_q), self._follow_dropped
            self._follow_q.clear()
            self._follow_dropped = 0
        if dropped:
            self.stats["follow_dropped"] += dropped
            self._lines(["[%d older log lines dropped: the console is slower than the log]" % dropped])
        self._lines(lines)

    def _stop_follow(self, report: bool = False) -> None:
        if self._mode != "follow":
            return
        try:
            self.service.logs.unsubscribe(self._on_log)
        finally:
            self._mode = "line"
        if report:
            self._raw("^C" + CRLF)
            self._drain_follow()
            self._lines(["stopped following the log"])
            self._finish()
