"""Test doubles and harness for the socket server tests.

FakeService implements the service facade (agent/facade.py, checked by tests/test_facade.py) with
settable state; it is a fake only because the lifecycle is not what these tests exercise. `ServerHarness` runs a real Loop in
a real thread with a real Server on a real Unix socket.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import socket
import threading
import time
from typing import Any, Callable

from agent.errors import AgentError, NotReady
from agent.log import LogBuffer
from agent.loop import Loop
from agent.server import Server

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJmYWtlLWNsaWVudCJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
XDI = "eyJtb2RlbCI6IkZha2VCb3gifQ=="
APDI = "fingerprint ZmFrZS1kZXZpY2UtaWQ="


class FakeService:
    """Thread-safe stand-in for agent.service.Service with a cached token."""

    version = "0.1.0-test"

    def __init__(self, token: str | None = TOKEN, lifetime: float = 21600.0) -> None:
        self._lock = threading.Lock()
        self._subs: list[Callable[[dict], None]] = []
        self.error: AgentError = NotReady("no access token yet: registration is in progress", retry_after=2.0)
        self.logs = LogBuffer(100)
        self.reports: list[tuple] = []
        self.report_uids: list = []  # the peer uid passed with each report (None: not passed)
        self.report_management: list[bool] = []
        self.refresh_requests = 0
        self.token_calls: list[float] = []
        self.record_calls = False
        self._tok: dict | None = None
        if token is not None:
            self.set_token(token, lifetime, notify=False)

    # -- test controls --------------------------------------------------------------------

    def set_token(self, token: str | None, lifetime: float = 21600.0, notify: bool = True) -> None:
        now = time.time()
        with self._lock:
            if token is None:
                self._tok = None
            else:
                self._tok = {"access_token": token, "token_type": "bearer", "expires_at": now + lifetime,
                             "refresh_at": now + lifetime * 0.75}
        if notify and token is not None:
            self.fire({"method": "token.changed",
                       "params": {"expires_at": now + lifetime, "refresh_at": now + lifetime * 0.75}})

    def fire(self, event: dict) -> None:
        """Deliver an event from another thread, like the lifecycle thread does."""
        with self._lock:
            subs = list(self._subs)
        t = threading.Thread(target=lambda: [cb(event) for cb in subs])
        t.start()
        t.join()

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    # -- the facade ------------------------------------------------------------------------

    def apps(self) -> list[str]:
        return ["default"]

    def token(self, min_ttl: float = 0, app: str | None = None) -> dict | None:
        if self.record_calls:
            self.token_calls.append(min_ttl)
        tok = self._tok
        if tok is None:
            return None
        left = tok["expires_at"] - time.time()
        if left < max(min_ttl, 0.001):
            self.refresh_requests += 1
            return None
        t = dict(tok)
        t["expires_in"] = int(left)
        return t

    def not_ready_error(self, app: str | None = None) -> AgentError:
        return self.error

    def wait_token(self, timeout: float, min_ttl: float = 0, app: str | None = None) -> dict | None:
        raise AssertionError("servers must not call the blocking wait_token")

    def identity(self, app: str | None = None) -> dict:
        return {"fields": {"model": "FakeBox", "osName": "Linux"}, "x_device_info": XDI,
                "ap_device_identifier": APDI, "device_id": "fake-device-id", "sources": {}, "warnings": []}

    def report_error(self, status: int, body: Any = None, access_token: str | None = None,
                     management: bool = False, uid: int | None = None, app: str | None = None) -> dict:
        self.reports.append((status, body, access_token))
        self.report_uids.append(uid)
        self.report_management.append(management)
        if status == 401:
            return {"decision": "refresh", "reason": "401 from a protected API: getting a new access token"}
        return {"decision": "ignored", "reason": "status %d needs no action" % status}

    def status(self, app: str | None = None) -> dict:
        tok = self._tok
        return {"state": "ready" if tok else "registering", "version": self.version, "uptime": 1.0,
                "registered_at": 1700000000.0, "client_id_hint": "abcd…(36 chars)",
                "token": None if tok is None else {"expires_at": tok["expires_at"], "refresh_at": tok["refresh_at"],
                                                    "expires_in": int(tok["expires_at"] - time.time())},
                "last_error": None, "upstream": {"requests": 2}, "store": {"writes": 1}}

    def status_line(self) -> str:
        return "holding a valid token" if self._tok else "registering with Adobe Pass, no valid token"

    def health(self, app: str | None = None) -> dict:
        return {"live": True, "ready": self._tok is not None}

    def subscribe(self, callback: Callable[[dict], None]) -> None:
        with self._lock:
            self._subs.append(callback)

    def unsubscribe(self, callback: Callable[[dict], None]) -> None:
        with self._lock:
            if callback in self._subs:
                self._subs.remove(callback)

    def request_refresh(self, app: str | None = None) -> None:
        self.refresh_requests += 1

    def force_register(self, app: str | None = None) -> None:
        pass

    def reset_credentials(self, app: str | None = None) -> None:
        pass

    def config_view(self) -> dict:
        return {"socket": {"path": "/run/pass-agent/agent.sock"}}


class ServerHarness:
    """A Server in a Loop running in a background thread. Use as a context manager."""

    def __init__(self, path: str, service: FakeService | None = None, **kw: Any) -> None:
        self.service = service or FakeService()
        self.loop = Loop()
        self.server = Server(self.service, self.loop, path, **kw)
        self.path = path
        self.thread = threading.Thread(target=self.loop.run, daemon=True)

    def __enter__(self) -> ServerHarness:
        self.server.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run fn in the loop thread and return its result."""
        done = threading.Event()
        box: list = []

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as e:  # handed back to the test thread
                box.append((False, e))
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(timeout), "loop thread did not run the callback"
        ok, val = box[0]
        if not ok:
            raise val
        return val

    def stats(self) -> dict:
        return self.call(self.server.stats)

    def close(self) -> None:
        if self.thread.is_alive():
            self.call(self.server.close)
            self.loop.stop()
            self.thread.join(10)
        else:
            self.server.close()
        self.loop.close()


def connect(path: str, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


class LineReader:
    """Reads newline-terminated JSON lines from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed; unread bytes: %r" % self.buf[:200])
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def json(self) -> dict:
        return json.loads(self.line())

    def eof(self) -> bool:
        """True when the peer closed (after any buffered data was consumed)."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def request(method: str, params: dict | None = None, req_id: Any = 1) -> bytes:
    req: dict = {"jsonrpc": "2.0", "id": req_id, "method": method}
    if params is not None:
        req["params"] = params
    return json.dumps(req).encode() + b"\n"


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll pred until true (the tests' only way to wait for a background effect)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


@contextlib.contextmanager
def no_free_fds() -> Any:
    """The process out of file descriptors, for real: RLIMIT_NOFILE lowered to the highest fd in use
    + 1 and every free fd below it taken, so the next accept() fails with EMFILE. Make the sockets a
    test needs before entering (connect() needs no new fd); both are given back on exit."""
    import gc

    # A socket left in a reference cycle by an earlier test, collected inside the window, would free
    # an fd for the accept(): collect first, no collection inside (a precaution: the CI runs that saw
    # no EMFILE failed because caplog missed the records, see connect_while_out_of_fds).
    gc.collect()
    gc.disable()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    filler: list = []
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        try:
            while True:
                filler.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as e:
            assert e.errno == errno.EMFILE, e
        yield
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        gc.enable()


def connect_while_out_of_fds(make_peer: Callable[[], socket.socket], address: Any, log: Any,
                             seconds: float = 1.2, attempts: int = 3) -> tuple[socket.socket, list]:
    """Connect a new peer to `address` while the process has no free fd, and stay out of fds for
    `seconds` (pacing: long enough for a spinning accept loop to log thousands of times). Returns the
    peer and the records at WARNING or above that mention "accept", taken from the listener's own
    logger `log` by a handler of this helper (caplog sees nothing once a test of the suite has run
    agent.log.setup(), which stops propagation: two 3.9 CI runs failed so). Should another thread
    free an fd just before the first accept() (a precaution, not seen), nothing fails at all, and the
    window is tried again; a spinning listener fails in the first window."""
    import logging

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING and "accept" in record.getMessage():
                seen.append(record)

    seen: list = []
    keep, level = Keep(logging.DEBUG), log.level
    log.addHandler(keep)
    log.setLevel(logging.DEBUG)
    try:
        for _ in range(attempts):
            del seen[:]
            peer = make_peer()  # made while fds are free: connect() needs none
            with no_free_fds():
                peer.connect(address)
                time.sleep(seconds)
                failed = list(seen)
            if failed:
                return peer, failed
            peer.close()
        return peer, failed
    finally:
        log.removeHandler(keep)
        log.setLevel(level)


def assert_accepts_paused(failed: list) -> None:
    """What connect_while_out_of_fds saw from a listener that pauses accepts as it should: one error
    per 0.5 s pause (1-4 in 1.2 s; a spinning accept loop logs thousands), saying what to change."""
    import logging

    assert 1 <= len(failed) <= 4, "%d accept failures logged in 1.2 s: %r" % (len(failed), failed[:3])
    msg = failed[0].getMessage()
    assert failed[0].levelno == logging.ERROR and "pausing accepts" in msg and "LimitNOFILE" in msg, msg
