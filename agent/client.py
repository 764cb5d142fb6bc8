"""A small blocking client for the agent's socket (the `pass-agent token|headers|status` commands are
in agent/commands.py).

Job: connect to the Unix socket, send JSON-RPC requests one line each, read the matching answer
(keeping `token.changed` notifications for `subscribe()`), and turn error answers back into
`AgentError`s carrying the server's code, kind and retry_after.

Connecting: a full listen backlog (EAGAIN: the agent is busy, e.g. under a connect flood) is
retried with a short backoff until the timeout; a missing socket or one nobody listens on
(ENOENT, ECONNREFUSED: the agent is not running, or still starting) is retried only for as long
as the caller said it would wait (`connect_wait`, the commands' `--wait`), then reported.

Must never: print or log a token except where the user asked for it (`pass-agent token` and
`headers` print it, that is their job; `status` never does), or hide which socket it tried.
"""

from __future__ import annotations

import collections
import errno
import json
import socket
import time
from typing import Any, Iterator

from agent.errors import OPERATOR, RETRY, AgentError

DEFAULT_SOCKET = "/run/pass-agent/agent.sock"
_sleep = time.sleep       # module-level: tests count the connect retries through it
_BUSY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)   # the backlog is full: retry within the timeout
_STARTING = (errno.ENOENT, errno.ECONNREFUSED)            # not (yet) running: retry within connect_wait
_SECRET_KEYS = {"access_token", "client_secret", "secret", "software_statement", "authorization"}


class RpcCallError(AgentError):
    """The agent answered a call with a JSON-RPC error. `rpc_code` is the numeric code."""

    def __init__(self, message: str, rpc_code: int, data: dict | None) -> None:
        data = data if isinstance(data, dict) else {}
        AgentError.__init__(
            self, message, code=data.get("code") or "rpc_error", kind=data.get("kind") or "fatal",
            retry_after=data.get("retry_after"), hint=data.get("hint"),
        )
        self.rpc_code = rpc_code
        self.data = data


def connect_error(path: str, e: OSError, waited: float = 0.0) -> AgentError:
    """The one place that turns a failed connect() into a message naming the socket and the fix."""
    n = e.errno
    after = " (waited %.1f s)" % waited if waited >= 0.05 else ""
    if n == errno.ENOENT:
        return AgentError("pass-agent is not running: no socket at %s%s" % (path, after), code="agent_unavailable",
                          kind=RETRY, hint="start the agent (systemctl start pass-agent) or pass --socket with the "
                          "right path; --wait S waits for an agent that is starting")
    if n == errno.ECONNREFUSED:
        return AgentError("pass-agent is not running: nothing listens on %s%s" % (path, after),
                          code="agent_unavailable", kind=RETRY,
                          hint="start the agent (systemctl start pass-agent); the socket file is a leftover")
    if n in (errno.EACCES, errno.EPERM):
        return AgentError("permission denied opening %s" % path, code="denied", kind=OPERATOR,
                          hint="run as a user or group the agent allows (socket.allow_uids / socket.allow_gids)")
    if n in _BUSY:
        return AgentError("pass-agent at %s is busy: its queue of new connections stayed full%s" % (path, after),
                          code="agent_unavailable", kind=RETRY,
                          hint="retry in a second; keep one persistent connection instead of one per request")
    if isinstance(e, socket.timeout):
        return AgentError("pass-agent at %s did not accept the connection%s" % (path, after),
                          code="timeout", kind=RETRY, hint="the agent may be overloaded or stopped; retry")
    return AgentError("cannot connect to pass-agent at %s: %s" % (path, e.strerror or e), code="agent_unavailable",
                      kind=RETRY, hint="check that the agent runs and that --socket names its socket")


def connect(path: str, timeout: float, connect_wait: float = 0.0) -> socket.socket:
    """A connected socket; raises the connect_error() of the last attempt.

    Busy (EAGAIN) is retried until `timeout`, not running (ENOENT, ECONNREFUSED) until
    `connect_wait`, with a backoff from 2 ms to 50 ms.
    """
    start = time.monotonic()
    delay = 0.002
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(timeout - (time.monotonic() - start), 0.001))
        try:
            sock.connect(path)
            return sock
        except OSError as e:
            sock.close()
            if e.errno in _BUSY:
                budget = max(timeout, connect_wait)
            elif e.errno in _STARTING:
                budget = connect_wait
            else:
                budget = 0.0
            left = budget - (time.monotonic() - start)
            if left <= 0:
                raise connect_error(path, e, time.monotonic() - start)
        _sleep(min(delay, left))
        delay = min(delay * 2, 0.05)


class Client:
    """One persistent connection to the agent. Not thread-safe: one Client per thread.

    timeout: seconds for connecting (a busy agent) and for each answer; connect_wait: seconds to
    wait for an agent that is not running yet (no socket, or nothing listening on it).
    """

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 5.0, connect_wait: float = 0.0,
                 app: str | None = None) -> None:
        """app: the registered application every call is about (None: the caller's only one; a caller
        allowed several must name one, issue 16). Each method's own `app` overrides it."""
        self.path = path
        self.app = app
        self.timeout = timeout
        self._next_id = 1
        self._buf = b""
        self._notes: collections.deque[dict] = collections.deque()
        self._sock = connect(path, timeout, connect_wait)
        self._sock.settimeout(timeout)

    # -- plumbing ---------------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _read_line(self) -> bytes:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, self._buf = self._buf[:nl], self._buf[nl + 1:]
                return line
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise AgentError(
                    "pass-agent at %s did not answer within %g s" % (self.path, self._sock.gettimeout() or 0),
                    code="timeout", kind=RETRY, hint="the agent may be overloaded or stopped; retry",
                )
            except OSError as e:
                chunk = b""
                if not isinstance(e, ConnectionResetError):
                    raise AgentError("reading from pass-agent at %s failed: %s" % (self.path, e.strerror or e),
                                     code="agent_unavailable", kind=RETRY, hint="retry; reconnect if it persists")
            if not chunk:
                raise AgentError(
                    "pass-agent at %s closed the connection" % self.path, code="agent_unavailable", kind=RETRY,
                    hint="the agent restarted or dropped an idle connection; reconnect",
                )
            self._buf += chunk

    def call(self, method: str, params: dict | None = None, timeout: float | None = None) -> Any:
        """Send one request and return its result; raise RpcCallError/AgentError on failure."""
        req_id = self._next_id
        self._next_id += 1
        req: dict = {"jsonrpc": "2.0", "id": req_id, "method": method}
        if params:
            req["params"] = params
        self._sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            self._sock.sendall(json.dumps(req, separators=(",", ":")).encode("utf-8") + b"\n")
        except OSError as e:
            raise AgentError("sending to pass-agent at %s failed: %s" % (self.path, e.strerror or e),
                             code="agent_unavailable", kind=RETRY, hint="reconnect and retry")
        while True:
            msg = json.loads(self._read_line())
            if "id" not in msg:
                self._notes.append(msg)  # a notification arriving before our answer
                continue
            if msg["id"] != req_id and msg["id"] is not None:
                continue  # an answer to a call abandoned after a timeout
            if "error" in msg:
                err = msg["error"]
                raise RpcCallError(str(err.get("message")), int(err.get("code", 0)), err.get("data"))
            return msg.get("result")

    # -- methods ----------------------------------------------------------------------------

    def _app(self, app: str | None, p: dict | None = None) -> dict:
        p = {} if p is None else p
        app = app if app is not None else self.app
        if app is not None:
            p["app"] = app
        return p

    def _ttl_wait(self, min_ttl: float | None, wait: float | None, app: str | None) -> dict:
        p: dict = {}
        if min_ttl is not None:
            p["min_ttl"] = min_ttl
        if wait is not None:
            p["wait"] = wait
        return self._app(app, p)

    def token(self, min_ttl: float | None = None, wait: float | None = None, app: str | None = None) -> dict:
        return self.call("token.get", self._ttl_wait(min_ttl, wait, app), timeout=self.timeout + (wait or 0))

    def headers(self, min_ttl: float | None = None, wait: float | None = None, app: str | None = None) -> dict:
        return self.call("headers.get", self._ttl_wait(min_ttl, wait, app), timeout=self.timeout + (wait or 0))

    def status(self, app: str | None = None) -> dict:
        return self.call("agent.status", self._app(app))

    def health(self, app: str | None = None) -> dict:
        return self.call("agent.health", self._app(app))

    def device_info(self, app: str | None = None) -> dict:
        return self.call("device.info", self._app(app))

    def report(self, status: int, body: Any = None, access_token: str | None = None, app: str | None = None) -> dict:
        p: dict = {"status": status}
        if body is not None:
            p["body"] = body
        if access_token is not None:
            p["access_token"] = access_token
        return self.call("error.report", self._app(app, p))

    def subscribe(self, timeout: float | None = None, app: str | None = None) -> Iterator[dict]:
        """Subscribe (to `app`'s token), then yield `token.changed` notifications ({"method", "params"},
        params.app naming the application) as they come.

        Blocks between notifications (forever unless `timeout`, which raises AgentError "timeout").
        """
        self.call("token.subscribe", self._app(app))
        while True:
            while self._notes:
                yield self._notes.popleft()
            self._sock.settimeout(timeout)
            msg = json.loads(self._read_line())
            if "id" not in msg:
                yield msg
            elif "error" in msg:  # e.g. the agent denied us after a configuration reload
                err = msg["error"]
                raise RpcCallError(str(err.get("message")), int(err.get("code", 0)), err.get("data"))


def scrub(obj: Any) -> Any:
    """A copy of `obj` without secret-named keys: status output must never carry a secret."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if str(k).lower() not in _SECRET_KEYS}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj
