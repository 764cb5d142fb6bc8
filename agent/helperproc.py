"""The helper process: TLS to Adobe and the store's AES-256-GCM, done in a short-lived child.

Job: keep `ssl`, the urequests TLS path and cryptography's compiled binding out of the resident
daemon. They are needed about once an hour (a token refresh, the store re-sealed after it) but, once
imported, stay mapped for good: +~4.8 MB PSS for ssl/libssl and +3 to +6.6 MB for cryptography, more
than the whole idle daemon. A `Helper` hands each such request to a child process over two pipes;
the child imports what it needs, answers, and exits after `idle_exit` seconds without a request, so
the daemon's idle footprint is that of a daemon that never talked to Adobe.

One module, both sides. The parent side (`Helper`) is imported by the daemon at start, so this
module imports only built-in modules at import time (os, sys, marshal, _thread; select, time and
fcntl when first used) and never threading, subprocess, typing, logging, ssl or cryptography. The
child side (`_serve`) imports agent.dcr/urequests/ssl and cryptography lazily, at its first request.

The child's life:
- Started by `Helper.prefork()` with os.fork() (the daemon's stage 1, while the process is single-
  threaded and holds no secret yet: the first store decrypt then costs a fork, ~1 ms, instead of an
  interpreter start), or on first need with os.posix_spawn of `sys.executable -I -S -c <bootstrap>`
  (not the subprocess module: it would stay imported in the daemon). The bootstrap puts the parent's
  sys.path in place (absolute paths, the directory holding the `agent` package first), which covers
  the editable install, the wheel, a zipapp (agent.__file__ is inside the zip there) and the
  overlay's /usr/lib/pass-agent. With `-B` too when the daemon writes no bytecode (the overlay's
  launcher sets that), so a helper spawned as root never writes __pycache__ into the install.
  Pipes on fds 3 (requests) and 4 (answers), stdin/stdout on /dev/null, stderr inherited (the
  daemon's: the journal), every other descriptor closed, the environment without systemd's
  NOTIFY_SOCKET/LISTEN_*/WATCHDOG_* variables. Nothing secret is in argv or the environment.
- First thing: PR_SET_DUMPABLE 0 (an exec resets it; RLIMIT_CORE 0 is inherited). Then it serves
  one request at a time and exits on EOF or after `idle_exit` seconds (default 30; the environment
  variable PASS_AGENT_HELPER_IDLE overrides it, for tests and tuning).
- The parent reaps it from a small _thread waiting in waitid(), so an idle exit leaves no zombie.

Wire format (both ends are this module; marshal is fine for that): a frame is a 4-byte big-endian
length and a marshal of plain values, at most MAX_FRAME (4 MiB: urequests' max_body is 1 MiB, a
request of ours a few kB) each way; a larger length is a protocol error, never an allocation.
Request (op, args). The child answers one byte ACK as soon as it has read a whole request, then
the answer frame ("ok", value) or ("err", fields). The ACK is what makes retries safe:
- EPIPE on the write, or EOF before the ACK: the child never took the request (it had exited idle,
  or died starting): respawn once and resend.
- EOF after the ACK: it died mid-request. A `send` is never resent (Adobe may have seen it): a
  retryable UpstreamError `helper_failed`. AES-GCM is pure, so it is retried once in a fresh child.
- No answer within the request's timeout + `margin`: the child is killed; `send` raises the
  `timeout` error dcr.send raises.
- A garbage or oversized answer: the child is killed; `helper_failed` (for AES-GCM: a fresh child).
- The helper cannot be started at all (ENOMEM, exec failure, it exits before reading twice): the
  work is done in this process, which then imports what the helper would have (logged once): a box
  must keep working.

Must never: import ssl, cryptography, threading, subprocess or typing in the parent; put a request,
an answer or a secret in a log line, an error message or the child's argv/environment; let the
child print or log anything (it answers the exception TYPE only for unexpected errors: the message
could quote a secret); resend a request the child took; allocate what a length field claims before
checking it against MAX_FRAME.
"""

from __future__ import annotations

import _thread
import marshal
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: select is imported where a deadline is waited for
    import select

MAX_FRAME = 4 * 1024 * 1024
ACK = b"A"
DEFAULT_IDLE_EXIT = 30.0
ENV_IDLE = "PASS_AGENT_HELPER_IDLE"
MARGIN = 5.0           # seconds beyond a request's own timeout before the parent gives up on the child
CRYPTO_WAIT = 30.0     # an AES-GCM request, the child's first import of cryptography included (slow boxes)

REQ_FD, ANS_FD = 3, 4  # the spawned child's pipe ends
_DROP_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID")
# Exception types an AES-GCM call raises for bad arguments: re-raised as the same type (message generic).
_PLAIN_ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "OverflowError": OverflowError}

_BOOTSTRAP = ("import sys\nsys.path[:] = %r\nfrom agent.helperproc import _child_main\n_child_main(%r)\n")


class _NotStarted(Exception):
    """The helper could not be started, or exited twice before reading the request."""


class _Failed(Exception):
    """The child took the request and then died, answered garbage, or did not answer in time."""

    def __init__(self, why: str, timed_out: bool = False) -> None:
        Exception.__init__(self, why)
        self.timed_out = timed_out


def _now() -> float:
    import time

    return time.monotonic()


class _Child:
    """One running helper: its pid, the parent's pipe ends, and the reaper's state."""

    def __init__(self, pid: int, wfd: int, rfd: int, how: str) -> None:
        self.pid, self.wfd, self.rfd, self.how = pid, wfd, rfd, how
        self.mutex = _thread.allocate_lock()   # held while signalling, so a reaped pid is never signalled
        self.done = False                       # set (under mutex) once the child has exited
        self.reaped = _thread.allocate_lock()
        self.reaped.acquire()
        _thread.start_new_thread(self._reap, ())

    def _reap(self) -> None:
        try:  # wait without reaping: the zombie keeps the pid ours until `done` is set under the mutex
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        except (ChildProcessError, OSError):
            pass
        with self.mutex:
            self.done = True
            try:
                os.waitpid(self.pid, 0)
            except (ChildProcessError, OSError):
                pass
        self.reaped.release()

    def kill(self) -> None:
        with self.mutex:
            if not self.done:
                try:
                    os.kill(self.pid, 9)  # SIGKILL
                except OSError:
                    pass

    def close_fds(self) -> None:
        for fd in (self.wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.wfd = self.rfd = -1


def _agent_root() -> str:
    """The sys.path entry that holds the `agent` package (a directory, or the zipapp itself)."""
    import agent

    return os.path.dirname(os.path.dirname(os.path.abspath(agent.__file__)))


def _child_path() -> list:
    root = _agent_root()
    out = [root]
    for p in sys.path:
        p = os.path.abspath(p) if isinstance(p, str) else None
        if p and p not in out:
            out.append(p)
    return out


class Helper:
    """The parent side: `send` (agent.dcr.send's contract), `encrypt`/`decrypt` (agent.sealing's),
    done by the child. Thread-safe: the worker and the main thread may both call; one request at a
    time (a refresh's send holds the helper for up to its timeout; the store's AES-GCM waits)."""

    def __init__(self, *, idle_exit: float | None = None, log: object = None, margin: float = MARGIN,
                 command: list | None = None) -> None:
        if idle_exit is None:
            try:
                idle_exit = float(os.environ.get(ENV_IDLE) or DEFAULT_IDLE_EXIT)
            except ValueError:
                idle_exit = DEFAULT_IDLE_EXIT
        self.idle_exit = max(0.05, idle_exit)
        self.log = log          # a logging.Logger-like object (debug, warning), or None; may be set later
        self.margin = margin
        self._command = command  # tests: another child program speaking the same protocol on fds 3 and 4
        self._lock = _thread.allocate_lock()
        self._child: _Child | None = None
        self._closed = False
        self._fallback_said = False

    @property
    def pid(self) -> int | None:
        """The current child's pid (it may have exited since), or None."""
        c = self._child
        return c.pid if c is not None else None

    # ------------------------------------------------------------------------------- the contracts

    def send(self, req: dict, timeout: float = 15.0, ca_file: str | None = None, wall_now: float = 0.0) -> tuple:
        """agent.dcr.send in the child: (status, headers, body), or its UpstreamError, every field kept."""
        args = ({"method": req["method"], "url": req["url"], "headers": dict(req["headers"]), "body": req["body"]},
                float(timeout), ca_file, float(wall_now))
        try:
            reply = self._call("send", args, float(timeout) + self.margin)
        except _NotStarted as e:
            self._fallback("the Adobe request", str(e))
            from agent import dcr

            return dcr.send(req, timeout=timeout, ca_file=ca_file, wall_now=wall_now)
        except _Failed as e:
            raise self._send_failure(req, e) from None
        if reply[0] == "ok":
            v = reply[1]
            if (isinstance(v, tuple) and len(v) == 3 and isinstance(v[0], int) and isinstance(v[1], dict)
                    and isinstance(v[2], bytes)):
                return v
            self._discard()
            raise self._send_failure(req, _Failed("an answer of the wrong shape"))
        raise _error_from(reply[1], "send")

    def encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
        """agent.sealing.encrypt in the child: the AES-256-GCM ciphertext with its tag."""
        return self._crypto("encrypt", key, nonce, plaintext, associated)

    def decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
        """agent.sealing.decrypt in the child; raises sealing.Damaged when the tag does not authenticate."""
        return self._crypto("decrypt", key, nonce, ciphertext, associated)

    def probe(self) -> dict:
        """The child's own view of itself: {"pid", "dumpable"} (tests, diagnostics)."""
        reply = self._call("probe", (), CRYPTO_WAIT)
        if reply[0] != "ok" or not isinstance(reply[1], dict):
            raise _error_from(reply[1] if isinstance(reply[1], dict) else {}, "probe")
        return reply[1]

    def prefork(self) -> bool:
        """Start the child now with os.fork(). Only legal while this process is single-threaded (the
        daemon's stage 1, before any thread exists and before a secret is loaded): returns False and
        starts nothing when `threading` reports other threads; the child is then spawned on first need."""
        th = sys.modules.get("threading")
        if th is not None and th.active_count() > 1:
            return False
        with self._lock:
            if self._closed or self._child is not None:
                return False
            try:
                self._child = self._fork()
            except OSError as e:
                self._say("debug", "helper process not forked (%s): it starts on first need", _oserror(e))
                return False
        return True

    def close(self) -> None:
        """Stop the child (EOF on its pipe; killed if it is in the middle of something) and refuse
        further requests (they are done in this process)."""
        self._closed = True
        c = self._child
        if c is not None:
            c.kill()
            if self._lock.acquire(True, 1.0):  # a request in flight ends with EOF now; then drop it
                try:
                    if self._child is c:
                        self._child = None
                        c.close_fds()
                finally:
                    self._lock.release()

    # ------------------------------------------------------------------------------- the plumbing

    def _crypto(self, op: str, *args: bytes) -> bytes:
        from agent import sealing

        why = "it failed twice"
        for _ in range(2):  # AES-GCM has no side effect: a fresh child may redo it
            try:
                reply = self._call(op, tuple(bytes(a) for a in args), CRYPTO_WAIT)
            except _NotStarted as e:
                why = str(e)
                break
            except _Failed as e:
                why = str(e)
                continue
            if reply[0] == "ok" and isinstance(reply[1], bytes):
                return reply[1]
            fields = reply[1] if reply[0] == "err" and isinstance(reply[1], dict) else {}
            if fields.get("type") == "Damaged":
                raise sealing.Damaged("authentication tag mismatch")
            exc = fields.get("exc")
            if exc in _PLAIN_ERRORS:
                raise _PLAIN_ERRORS[exc]("AES-GCM refused its arguments (%s, in the helper process)" % exc)
            if exc == "ImportError" or exc == "ModuleNotFoundError":
                why = "cryptography cannot be imported there"
                break
            self._discard()
            why = "an answer of the wrong shape"
        self._fallback("AES-GCM", why)
        return (sealing.local_encrypt if op == "encrypt" else sealing.local_decrypt)(*args)

    def _fallback(self, what: str, why: str) -> None:
        if not self._fallback_said:
            self._fallback_said = True
            self._say("warning", "the helper process cannot do the work (%s): doing %s in this process, which "
                                 "keeps ssl/cryptography loaded from now on", why, what)

    def _say(self, level: str, fmt: str, *args: object) -> None:
        log = self.log
        if log is None and level == "warning":
            from agent import log as agentlog

            log = self.log = agentlog.get("helper")
        if log is not None:
            getattr(log, level)(fmt, *args)

    def _send_failure(self, req: dict, e: _Failed) -> Exception:
        from agent import dcr
        from agent.errors import RETRY, UpstreamError

        url = req["url"]
        host = dcr.printable(url.split("/")[2] if "://" in url else url, 80)
        if e.timed_out:
            return UpstreamError("no answer from %s in time: the helper process did not answer within the request's "
                                 "timeout" % host, code="timeout", kind=RETRY,
                                 hint="check the network path to %s; raise [adobe] timeout if Adobe is slow to "
                                      "answer from here" % host)
        return UpstreamError("the helper process that talks to %s failed during the request (%s); it was not sent "
                             "again" % (host, e), code="helper_failed", kind=RETRY,
                             hint="the next attempt starts a new helper; if this repeats, look for the helper's "
                                  "end in the agent's log and the kernel log (out of memory?)")

    def _discard(self) -> None:
        """Kill and forget the current child (it answered something it must not have)."""
        c = self._child
        if c is not None:
            c.kill()
            with self._lock:
                if self._child is c:
                    self._child = None
                    c.close_fds()

    def _call(self, op: str, args: tuple, wait: float) -> tuple:
        """One request -> the child's ("ok", value) or ("err", fields). Raises _NotStarted (the child
        never took it: safe to do it elsewhere) or _Failed (it took it and then failed)."""
        body = marshal.dumps((op, args))
        if len(body) > MAX_FRAME:
            raise _NotStarted("a request of %d bytes is over the %d-byte frame limit" % (len(body), MAX_FRAME))
        frame = len(body).to_bytes(4, "big") + body
        with self._lock:
            if self._closed:
                raise _NotStarted("the helper is closed")
            for _ in range(2):
                c = self._child
                if c is None or c.done:
                    if c is not None:
                        c.close_fds()
                    self._child = None
                    c = self._child = self._spawn()
                deadline = _now() + wait
                try:
                    _write_all(c.wfd, frame, deadline)
                    ack = _read_exact(c.rfd, 1, deadline)
                except BrokenPipeError:
                    ack = b""
                except _Failed:
                    self._drop(c, kill=True)
                    raise
                if not ack:  # it had exited (idle) or died before reading: it never took the request
                    self._drop(c, kill=True)
                    continue
                try:
                    if ack != ACK:
                        raise _Failed("a garbage answer")
                    head = _read_exact(c.rfd, 4, deadline)
                    if len(head) < 4:
                        raise _Failed("the helper process died during the request")
                    n = int.from_bytes(head, "big")
                    if n > MAX_FRAME:
                        raise _Failed("an answer frame over the %d-byte limit" % MAX_FRAME)
                    data = _read_exact(c.rfd, n, deadline)
                    if len(data) < n:
                        raise _Failed("the helper process died during the request")
                    try:
                        reply = marshal.loads(data)
                    except (ValueError, EOFError, TypeError):
                        raise _Failed("a garbage answer") from None
                    if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] in ("ok", "err")
                            and (reply[0] == "ok" or isinstance(reply[1], dict))):
                        raise _Failed("an answer of the wrong shape")
                except _Failed:
                    self._drop(c, kill=True)
                    raise
                return reply
            raise _NotStarted("the helper process exited twice before it read a request")

    def _drop(self, c: _Child, kill: bool) -> None:
        if kill:
            c.kill()
        c.close_fds()
        if self._child is c:
            self._child = None

    def _started(self, c: _Child) -> _Child:
        self._say("debug", "helper process %d started (%s)", c.pid, c.how)
        return c

    def _spawn(self) -> _Child:
        """posix_spawn the child; _NotStarted when the system cannot (the caller then works in-process)."""
        import fcntl

        req_r, req_w = os.pipe()
        ans_r, ans_w = os.pipe()
        # The child's ends, moved above fd 4 first: a dup2 onto itself would keep O_CLOEXEC.
        cr = fcntl.fcntl(req_r, fcntl.F_DUPFD_CLOEXEC, 10)
        cw = fcntl.fcntl(ans_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(req_r)
        os.close(ans_w)
        flags = ["-I", "-S", "-B"] if sys.dont_write_bytecode else ["-I", "-S"]
        cmd = self._command or [sys.executable] + flags + ["-c", _BOOTSTRAP % (_child_path(), self.idle_exit)]
        env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
        actions = [(os.POSIX_SPAWN_DUP2, cr, REQ_FD), (os.POSIX_SPAWN_DUP2, cw, ANS_FD),
                   (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
        try:
            pid = os.posix_spawn(cmd[0], cmd, env, file_actions=actions, setsigmask=(),
                                 setsigdef=(2, 15, 1))  # SIGINT, SIGTERM, SIGHUP: default in the child
        except OSError as e:
            for fd in (req_w, ans_r):
                os.close(fd)
            raise _NotStarted("cannot start %s: %s" % (os.path.basename(cmd[0]), _oserror(e))) from None
        finally:
            os.close(cr)
            os.close(cw)
        os.set_blocking(req_w, False)
        return self._started(_Child(pid, req_w, ans_r, "spawned"))

    def _fork(self) -> _Child:
        req_r, req_w = os.pipe()
        ans_r, ans_w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (req_r, req_w, ans_r, ans_w):
                os.close(fd)
            raise
        if pid == 0:  # the child: never returns into the parent's code
            code = 1
            try:
                os.close(req_w)
                os.close(ans_r)
                _after_fork()
                _serve(req_r, ans_w, self.idle_exit, preload=True)
                code = 0
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(ans_w)
        os.set_blocking(req_w, False)
        return self._started(_Child(pid, req_w, ans_r, "forked"))


def _oserror(e: OSError) -> str:
    import errno

    return errno.errorcode.get(e.errno or 0, "error") + " " + (e.strerror or "")


def _write_all(fd: int, data: bytes, deadline: float | None = None) -> None:
    """All of data. With a deadline (the daemon's side: the fd is non-blocking, a hung child cannot
    stall us) each write waits for room by poll and _Failed(timed_out) is raised at it; without (the
    child's blocking pipe) writes simply block."""
    view = memoryview(data)
    p = _poller(fd, out=True) if deadline is not None else None
    while view:
        if p is not None:
            _wait(p, deadline)
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            continue
        view = view[n:]


def _read_exact(fd: int, n: int, deadline: float | None = None) -> bytes:
    """n bytes, fewer on EOF. With a deadline each read waits by poll and _Failed(timed_out) is raised
    at it (the daemon's side); without, reads block (the child)."""
    p = _poller(fd, out=False) if deadline is not None else None
    chunks, got = [], 0
    while got < n:
        if p is not None:
            _wait(p, deadline)
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _poller(fd: int, out: bool) -> select.poll:
    """A poll object for fd becoming writable (out) or readable."""
    import select

    p = select.poll()
    p.register(fd, select.POLLOUT if out else select.POLLIN)
    return p


def _wait(p: select.poll, deadline: float) -> None:
    left = deadline - _now()
    if left <= 0 or not p.poll(left * 1000):
        raise _Failed("no answer in time", timed_out=True)


def _error_from(fields: dict, op: str) -> Exception:
    """The exception the child reported, rebuilt on this side."""
    from agent.errors import OPERATOR, AgentError, UpstreamError

    t = fields.get("type")
    if t in ("AgentError", "UpstreamError") and isinstance(fields.get("message"), str):
        kw = {k: fields.get(k) for k in ("code", "kind", "retry_after", "hint")}
        if t == "UpstreamError":
            return UpstreamError(fields["message"], status=fields.get("status"),
                                 undocumented=fields.get("undocumented"), **kw)
        return AgentError(fields["message"], **kw)
    exc = fields.get("exc") if isinstance(fields.get("exc"), str) else "an unreadable error"
    return AgentError("internal error in the helper process during the %s request: %s (a bug in pass-agent, not a "
                      "problem at Adobe or in the configuration)" % (op, exc[:80]), code="internal_error",
                      kind=OPERATOR, hint="report it (journalctl -u pass-agent); the agent retries hourly, or at "
                                          "once on the console's `refresh`")


# ------------------------------------------------------------------------------------- the child


def _no_dumps() -> None:
    """PR_SET_DUMPABLE 0: no core file, no ptrace or /proc/PID/mem for other processes of our user."""
    from agent import dumpable  # not ctypes: its import is on the first decrypt's path

    dumpable.set_not_dumpable()  # not Linux: nothing to do here


def _close_others(keep: tuple) -> None:
    try:
        fds = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 256))
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _after_fork() -> None:
    """The forked child drops the parent's signal handlers and descriptors (sockets, logs, notify)."""
    import _signal as signal  # what `signal` wraps: not its enum import (~2 ms the parent's first decrypt waits for)

    _no_dumps()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:  # not the main thread's fork: nothing was set
        pass


def _child_main(idle_exit: float) -> None:
    """The spawned child's entry point (the bootstrap calls it). Exits quietly whatever happens (a
    parent gone mid-answer is EPIPE: nothing to say, and a traceback is output)."""
    code = 1
    try:
        _no_dumps()
        _serve(REQ_FD, ANS_FD, idle_exit, preload=False)
        code = 0
    finally:
        os._exit(code)


def _serve(rfd: int, wfd: int, idle_exit: float, preload: bool) -> None:
    import select

    _close_others((rfd, wfd))
    if preload:  # forked early: import the AES-GCM binding while the parent opens its stores
        try:
            from agent import sealing

            # One throwaway seal warms OpenSSL's cipher set-up (~0.8 ms), which the store's first decrypt
            # would otherwise wait for: the parent is still reading its configuration now.
            sealing.local_encrypt(bytes(32), bytes(12), b"", b"")
        except Exception:  # noqa: BLE001 - reported by the request that needs it
            pass
    p = select.poll()
    p.register(rfd, select.POLLIN)
    while True:
        if not p.poll(idle_exit * 1000):
            return  # idle: exit; the parent starts another on the next need
        head = _read_exact(rfd, 4)
        if len(head) < 4:
            return  # EOF: the daemon closed us or went away
        n = int.from_bytes(head, "big")
        if n > MAX_FRAME:
            return  # not our parent's frame: stop rather than allocate
        data = _read_exact(rfd, n)
        if len(data) < n:
            return
        os.write(wfd, ACK)
        out = marshal.dumps(_run(data))
        if len(out) > MAX_FRAME:
            out = marshal.dumps(("err", {"type": "internal", "exc": "AnswerTooLarge"}))
        _write_all(wfd, len(out).to_bytes(4, "big") + out)


def _run(data: bytes) -> tuple:
    """One request -> ("ok", value) or ("err", fields). Catches everything; reports an unexpected
    exception by its type only (its message could hold a secret)."""
    try:
        op, args = marshal.loads(data)
        if op == "send":
            from agent import dcr

            req, timeout, ca_file, wall_now = args
            status, headers, body = dcr.send(req, timeout=timeout, ca_file=ca_file, wall_now=wall_now)
            return "ok", (int(status), {str(k): str(v) for k, v in dict(headers).items()}, bytes(body))
        if op in ("encrypt", "decrypt"):
            from agent import sealing

            fn = sealing.local_encrypt if op == "encrypt" else sealing.local_decrypt
            return "ok", bytes(fn(*args))
        if op == "probe":
            from agent import dumpable

            return "ok", {"pid": os.getpid(), "dumpable": dumpable.dumpable()}
        return "err", {"type": "internal", "exc": "UnknownOperation"}
    except BaseException as e:  # noqa: BLE001 - everything becomes an answer
        return "err", _fields(e)


def _fields(e: BaseException) -> dict:
    from agent.errors import AgentError, UpstreamError

    if isinstance(e, AgentError):
        d = {"type": "UpstreamError" if isinstance(e, UpstreamError) else "AgentError",
             "message": str(e.message), "code": e.code, "kind": e.kind, "retry_after": e.retry_after,
             "hint": e.hint}
        if isinstance(e, UpstreamError):
            d["status"] = e.status
            d["undocumented"] = bool(e.undocumented)
        return d
    if type(e).__name__ == "Damaged":
        return {"type": "Damaged"}
    return {"type": "internal", "exc": type(e).__name__}
