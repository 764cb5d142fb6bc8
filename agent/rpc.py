"""JSON-RPC 2.0 message handling for the player's API, without I/O (sans-I/O core).

Job: one request line (bytes) in, one response line (bytes) out, or an `Action` the I/O shell
(agent/server.py) must carry out: park a `wait` request until a token arrives, or change the
connection's subscription. Holds the method table, validates envelopes and params, and maps
agent errors to the documented error codes (docs/PROTOCOL.md is the contract).

Applications (issue 16): every method takes an optional `app`. The shell passes, with each line,
the applications the peer may use (`apps`, from the socket's per-application lists; None: a
trusted in-process caller, which may use every application). `resolve_app` is the decision: a
named application the peer may not use is the same `denied` error as a peer the socket refuses
(the connection stays open); no name means the peer's only application, and is `app_required`
(listing the peer's applications) when it may use several.

Must never: do I/O, block (it calls only the Service's quick methods), log at INFO per request,
or put a token, a client secret or a caller's params into an error message or a log line.
"""

from __future__ import annotations

import json
import json.scanner
import logging
import math
from typing import Any, Callable

from agent.errors import FATAL, OPERATOR, RETRY, AgentError, NotReady, UpstreamError

_log = logging.getLogger("pass-agent.rpc")

# Standard JSON-RPC 2.0 codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Application codes (documented in docs/PROTOCOL.md).
NOT_READY = -32001      # no valid token yet; data.retry_after says when to ask again
DENIED = -32002         # the peer's uid/gid is not allowed (at connect: the connection is closed; for an
                        # application the peer may not use: this answer only)
UPSTREAM = -32003       # Adobe Pass or the network failed; data.kind says retry or operator
TOO_LARGE = -32004      # a request line exceeded MAX_LINE; the connection is closed
AGENT_ERROR = -32005    # another agent failure (store, device identity, configuration)
BUSY = -32006           # connection cap reached; the connection is closed
LIMIT = -32007          # too many parked waits (this connection's or the agent's); the connection stays open

MAX_LINE = 64 * 1024    # bytes per request line, newline excluded
MAX_WAIT = 300.0        # upper bound on a request's `wait` seconds

_ENC = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _reject_constant(name: str) -> Any:
    raise ValueError("%s is not JSON" % name)


# Strict: NaN/Infinity are not JSON and could not be encoded back into an answer.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_DEC = _DECODER.decode
_SCAN = json.scanner.make_scanner(_DECODER)  # the C scanner, without decode()'s two Python frames
# The canonical token.get line (what agent/client.py, token_client.c and the benchmarks send):
# recognised by its bytes, id digits in between, without parsing JSON (issue 20: token.get p50).
_TOKEN_GET_HEAD = b'{"jsonrpc":"2.0","id":'
_TOKEN_GET_TAIL = b',"method":"token.get"}'
_HEAD_LEN, _TAIL_LEN = len(_TOKEN_GET_HEAD), len(_TOKEN_GET_TAIL)
# Every answer with a result starts with these bytes, then the id as JSON, then `,"result":`.
_ANSWER_HEAD = b'{"jsonrpc":"2.0","id":'


def parse(line: bytes) -> Any:
    """One JSON value from a UTF-8 line (surrounding whitespace allowed); ValueError if invalid."""
    s = line.decode("utf-8")
    try:
        obj, end = _SCAN(s, 0)
    except StopIteration:
        return _DEC(s)  # leading whitespace or not JSON: the full decoder parses it or explains why
    if end != len(s) and s[end:].strip():
        raise ValueError("extra data after the JSON value at column %d" % (end + 1))
    return obj


def encode(obj: Any) -> bytes:
    """One compact JSON line (UTF-8, newline-terminated)."""
    return _ENC(obj).encode("utf-8") + b"\n"


def error_obj(req_id: Any, code: int, message: str, data: dict | None = None) -> dict:
    err: dict = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": req_id, "error": err}


def error_line(req_id: Any, code: int, message: str, data: dict | None = None) -> bytes:
    return encode(error_obj(req_id, code, message, data))


def error_data(code: str, kind: str, retry_after: float | None = None, **extra: Any) -> dict:
    d = {"code": code, "kind": kind, "retry_after": retry_after}
    d.update(extra)
    return d


def notification(method: str, params: dict) -> bytes:
    return encode({"jsonrpc": "2.0", "method": method, "params": params})


class RpcError(Exception):
    """A JSON-RPC error answer. `data` always carries code, kind and retry_after."""

    def __init__(self, code: int, message: str, data: dict | None = None) -> None:
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.data = data if data is not None else error_data(_CODE_NAMES.get(code, "error"), FATAL)


_CODE_NAMES = {
    PARSE_ERROR: "parse_error",
    INVALID_REQUEST: "invalid_request",
    METHOD_NOT_FOUND: "method_not_found",
    INVALID_PARAMS: "invalid_params",
    DENIED: "denied",
    INTERNAL_ERROR: "internal_error",
    TOO_LARGE: "too_large",
    LIMIT: "too_many_waits",
}


def from_agent_error(e: AgentError, extra_message: str = "", no_token: bool = False) -> RpcError:
    """Map an AgentError to its documented JSON-RPC code, keeping code/kind/retry_after.

    no_token: `e` explains why there is no token (Service.not_ready_error): anything but
    NotReady is then the upstream failure (or operator problem) that keeps the agent from one.
    """
    if isinstance(e, NotReady) or e.code == "not_ready":
        rpc_code = NOT_READY
    elif e.code in ("app_required", "unknown_app"):
        rpc_code = INVALID_PARAMS
    elif no_token or isinstance(e, UpstreamError):
        rpc_code = UPSTREAM
    else:
        rpc_code = AGENT_ERROR
    data = error_data(e.code, e.kind, e.retry_after)
    if e.hint:
        data["hint"] = e.hint
    status = getattr(e, "status", None)
    if status is not None:
        data["status"] = status
    return RpcError(rpc_code, e.message + extra_message, data)


class Action:
    """Work only the I/O shell can do. kind: "park", "subscribe" or "unsubscribe".

    For "park": `method`, `min_ttl` and `wait` (seconds) describe the token request to retry
    with `Dispatcher.resume()` when the Service announces a token, or when `wait` expires.
    """

    __slots__ = ("kind", "id", "method", "min_ttl", "wait", "reply", "app", "params")

    def __init__(self, kind: str, req_id: Any, method: str = "", min_ttl: float = 0.0, wait: float = 0.0,
                 app: str | None = None):
        self.kind = kind
        self.id = req_id
        self.method = method
        self.min_ttl = min_ttl
        self.wait = wait
        self.reply = True  # False for a notification: act, but send no answer
        self.app = app     # the application (None: the service's only one)
        self.params: Any = None  # "api": the checked api.call params for the gateway


# -- param validation ------------------------------------------------------------------------


def _number(name: str, lo: float, hi: float) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi):
            raise RpcError(
                INVALID_PARAMS,
                "param %r must be a number from %g to %g, got %s; fix the request" % (name, lo, hi, _kind_of(v)),
            )
        return float(v)

    return check


def _status(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not (100 <= v <= 599):
        raise RpcError(
            INVALID_PARAMS,
            "param 'status' must be the integer HTTP status (100-599) the protected API answered, got %s"
            % _kind_of(v),
        )
    return v


def _opt_str(name: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if v is not None and not isinstance(v, str):
            raise RpcError(INVALID_PARAMS, "param %r must be a string, got %s; fix the request" % (name, _kind_of(v)))
        return v

    return check


def _any(v: Any) -> Any:
    return v


def _kind_of(v: Any) -> str:
    # The type (and a number's value) only: params may hold secrets, so strings are never echoed.
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return repr(v)
    return {str: "a string", list: "an array", dict: "an object"}.get(type(v), type(v).__name__)


_APP_PARAM = _opt_str("app")
_TOKEN_PARAMS = {"min_ttl": _number("min_ttl", 0, 86400 * 7), "wait": _number("wait", 0, MAX_WAIT), "app": _APP_PARAM}
_APP_ONLY = {"app": _APP_PARAM}


def resolve_app(method: str, asked: str | None, allowed: tuple | None, configured: tuple, uid: int | None) -> str | None:
    """The application a request is about (the pure decision; docs/PROTOCOL.md "Applications").

    asked: the request's `app` (None: not given); allowed: the applications the peer may use (None:
    a trusted in-process caller, every one); configured: the service's applications. A name the peer
    may not use, configured or not, is `denied` (the same answer either way: a peer learns nothing
    about applications it may not use). No name: the peer's only application (or the service's only
    one); several: `app_required`, listing the peer's. Returns None only when the service has a
    single application and the caller is trusted (the service then uses its only one)."""
    mine = configured if allowed is None else allowed
    if asked is not None:
        if asked in mine:
            return asked
        who = "this caller" if uid is None else "uid %d" % uid
        raise RpcError(DENIED, "%s: %s is not allowed to use the application %r; it may use: %s; ask the integrator to "
                       "add it to that [[app]] table's allow_uids or allow_gids"
                       % (method, who, asked[:64], ", ".join(mine) or "none"),
                       error_data("denied", OPERATOR, None, apps=list(mine)))
    if len(mine) == 1:
        return mine[0]
    raise RpcError(INVALID_PARAMS, "%s: this agent serves several applications and this caller may use %s; name one "
                   "with the param \"app\"" % (method, ", ".join(mine)),
                   error_data("app_required", FATAL, None, apps=list(mine)))
def _opt_bool(name: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if v is not None and not isinstance(v, bool):
            raise RpcError(INVALID_PARAMS, "param %r must be true or false, got %s; fix the request" % (name, _kind_of(v)))
        return bool(v)

    return check


def _headers_param(v: Any) -> Any:
    if v is not None and not (isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str)
                                                           for k, x in v.items())):
        raise RpcError(INVALID_PARAMS, "param 'headers' must be an object of string header values, got %s; fix the "
                       "request" % _kind_of(v))
    return v


_API_PARAMS = {"method": _opt_str("method"), "path": _opt_str("path"), "headers": _headers_param,
               "body": _opt_str("body"), "app": _APP_PARAM}
_REPORT_PARAMS = {"status": _status, "body": _any, "access_token": _opt_str("access_token"),
                  "management": _opt_bool("management"), "app": _APP_PARAM}


def _params(method: str, params: Any, spec: dict, required: tuple = ()) -> dict:
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise RpcError(
            INVALID_PARAMS,
            "%s: params must be an object with named members (by-position arrays are not supported), got %s"
            % (method, _kind_of(params)),
        )
    out = {}
    for k, v in params.items():
        check = spec.get(k)
        if check is None:
            allowed = ", ".join(sorted(spec)) or "none"
            raise RpcError(INVALID_PARAMS, "%s: unknown param %r (allowed: %s)" % (method, k[:64], allowed))
        try:
            out[k] = check(v)
        except RpcError as e:
            raise RpcError(e.code, "%s: %s" % (method, e.message), e.data)
    for k in required:
        if k not in out:
            raise RpcError(INVALID_PARAMS, "%s: missing required param %r" % (method, k))
    return out


# -- the dispatcher ---------------------------------------------------------------------------


class Dispatcher:
    """Turns request lines into response lines against a Service (see agent/service.py).

    `handle_line` returns bytes (the response line), None (a notification: no answer), or an
    Action. Loop-thread only: it keeps one-entry caches of the encoded token/headers results.
    """

    def __init__(self, service: Any) -> None:
        self.service = service
        self.requests = 0
        self.errors = 0
        # Encoded token/headers results per application: (key, bytes), re-encoded only when the key changes.
        self._tok_cache: dict = {}
        self._hdr_cache: dict = {}
        self._peer_uid: int | None = None  # the uid of the peer whose line is being handled
        self._peer_apps: tuple | None = None  # the applications it may use (None: trusted, every one)
        apps = getattr(service, "apps", None)
        self.apps: tuple = tuple(apps()) if apps is not None else ("default",)
        self._report_takes_uid = _accepts_keyword(service.report_error, "uid")
        self._report_takes_app = _accepts_keyword(service.report_error, "app")
        # api.call (issue 17): set by the daemon when [gateway] is enabled; (req_id, params, app, uid,
        # deliver(answer line)) -> None, answering later in the loop thread. None: the gateway is off.
        self.api_call: Callable[..., None] | None = None
        self._methods: dict[str, Callable[[Any, Any], Any]] = {
            "token.get": self._token_get,
            "headers.get": self._headers_get,
            "device.info": self._device_info,
            "error.report": self._error_report,
            "token.subscribe": self._subscribe,
            "token.unsubscribe": self._unsubscribe,
            "agent.status": self._status,
            "agent.health": self._health,
            "api.call": self._api_call,
        }

    @property
    def methods(self) -> list[str]:
        return sorted(self._methods)

    def handle_line(self, line: bytes, uid: int | None = None, apps: tuple | None = None) -> bytes | Action | None:
        """One request line in, its answer out. Never raises: a bug answers internal_error.

        uid: the peer's uid (SO_PEERCRED), passed on with error reports so that the Service can
        rate-limit what each local user may trigger. apps: the applications the peer may use (the
        socket's per-application lists); None for a trusted caller (every application).
        """
        self._peer_uid = uid
        self._peer_apps = apps
        if line[:_HEAD_LEN] == _TOKEN_GET_HEAD and line[-_TAIL_LEN:] == _TOKEN_GET_TAIL:
            digits = line[_HEAD_LEN:-_TAIL_LEN]
            # Exactly what JSON reads as a non-negative int: digits, no leading zero; else parsed below.
            # Those bytes are also how the generic path writes that id back (%d), so the answer reuses
            # them. Inlined (no _token_hot frame): the hot path of issue 20, about 1 us of a 10 us round trip.
            if (0 < len(digits) <= 18 and digits.isdigit() and (digits[0] != 48 or len(digits) == 1)
                    and (apps is None or len(apps) == 1)):  # several applications: app_required, generic
                app = apps[0] if apps else None
                try:
                    tok = self.service.token(0.0, app)
                    if tok is not None:
                        cached = self._tok_cache.get(app)
                        if cached is None or cached[0] != tok:
                            cached = self._token_result(tok, app)
                        self.requests += 1
                        return _ANSWER_HEAD + digits + cached[1]
                except Exception:
                    pass  # no token or any failure: the generic path builds that answer
        try:
            return self._handle_line(line)
        except Exception as e:
            self.errors += 1
            _log.error("JSON-RPC request could not be answered: %s", type(e).__name__)
            return error_line(None, INTERNAL_ERROR, "internal error while reading the request; the agent log has "
                              "details; retry later or report a bug", error_data("internal_error", RETRY, 1.0))

    def _handle_line(self, line: bytes) -> bytes | Action | None:
        self.requests += 1
        try:
            req = parse(line)
        except (ValueError, RecursionError) as e:  # includes UnicodeDecodeError
            if not line.strip():
                self.requests -= 1
                return None  # blank lines are ignored (friendly to socat and telnet users)
            self.errors += 1
            return error_line(
                None,
                PARSE_ERROR,
                "request is not valid UTF-8 JSON (%s); send one JSON object per line" % type(e).__name__,
                error_data("parse_error", FATAL),
            )
        if type(req) is not dict:
            self.errors += 1
            if isinstance(req, list):
                msg = "batch requests are not supported; send one request object per line (pipelining is allowed)"
            else:
                msg = "a request must be a JSON object, got %s" % _kind_of(req)
            return error_line(None, INVALID_REQUEST, msg, error_data("invalid_request", FATAL))
        req_id = req.get("id")
        method = req.get("method")
        if req.get("jsonrpc") != "2.0" or type(method) is not str or not (type(req_id) is int or _valid_id(req_id)):
            self.errors += 1
            return error_line(
                req_id if _valid_id(req_id) else None,
                INVALID_REQUEST,
                'invalid request: need "jsonrpc":"2.0", a string "method" and an "id" that is a string, '
                "a number or null",
                error_data("invalid_request", FATAL),
            )
        if method == "token.get" and type(req_id) is int and req.get("params") is None:
            out = self._token_hot(req_id)
            if out is not None:
                return out
        is_call = "id" in req
        handler = self._methods.get(method)
        try:
            if handler is None:
                raise RpcError(
                    METHOD_NOT_FOUND,
                    "unknown method %r; available: %s" % (method[:64], ", ".join(self.methods)),
                )
            out = handler(req_id, req.get("params"))
        except RpcError as e:
            self.errors += 1
            return error_line(req_id, e.code, e.message, e.data) if is_call else None
        except AgentError as e:
            self.errors += 1
            e2 = from_agent_error(e)
            return error_line(req_id, e2.code, e2.message, e2.data) if is_call else None
        except Exception:
            self.errors += 1
            # Type only: the message of an unexpected error could quote a secret.
            _log.exception("JSON-RPC method %s failed", method)
            return error_line(
                req_id,
                INTERNAL_ERROR,
                "internal error in %s; the agent log has details; retry later or report a bug" % method,
                error_data("internal_error", RETRY, 1.0),
            )
        if not is_call:
            # A notification gets no answer; a subscription change still happens.
            if isinstance(out, Action) and out.kind not in ("park", "api"):
                out.reply = False
                return out
            return None
        if type(out) is bytes:
            return out
        if isinstance(out, Action):
            return out
        return self.result_line(req_id, out)

    def _token_hot(self, req_id: int) -> bytes | None:
        """token.get without params, spelled otherwise than the canonical line (handle_line answers that
        one itself): without the generic dispatch. None on no token or any failure: the generic path
        builds that answer."""
        apps = self._peer_apps
        if apps is None or len(apps) == 1:  # the peer's only application (else: app_required, generic)
            try:
                app = apps[0] if apps else None
                tok = self.service.token(0.0, app)
                if tok is not None:
                    return self._token_line(req_id, tok, app)
            except Exception:
                pass
        return None

    # -- encoding ---------------------------------------------------------------------------

    @staticmethod
    def result_line(req_id: Any, result: Any) -> bytes:
        return encode({"jsonrpc": "2.0", "id": req_id, "result": result})

    @staticmethod
    def _prefix(req_id: Any) -> bytes:
        if type(req_id) is int:
            return b'{"jsonrpc":"2.0","id":%d,"result":' % req_id
        return b'{"jsonrpc":"2.0","id":' + _ENC(req_id).encode("utf-8") + b',"result":'

    def _token_result(self, tok: dict, app: str | None) -> tuple:
        """(a copy of tok, the answer's bytes after the id) for the application, cached until the service
        returns a different token dict (another token, or the seconds left changed: once a second)."""
        body = _ENC(
            {
                "access_token": tok["access_token"],
                "token_type": tok["token_type"],
                "expires_at": tok["expires_at"],
                "expires_in": tok["expires_in"],
                "refresh_at": tok["refresh_at"],
            }
        ).encode("utf-8")
        cached = (dict(tok), b',"result":' + body + b"}\n")  # a copy: a service may reuse its dict
        self._tok_cache[app] = cached
        return cached

    def _token_line(self, req_id: Any, tok: dict, app: str | None) -> bytes:
        cached = self._tok_cache.get(app)
        if cached is None or cached[0] != tok:
            cached = self._token_result(tok, app)
        if type(req_id) is int:
            return b"%s%d%s" % (_ANSWER_HEAD, req_id, cached[1])
        return _ANSWER_HEAD + _ENC(req_id).encode("utf-8") + cached[1]

    def _headers_line(self, req_id: Any, tok: dict, app: str | None) -> bytes:
        ident = self.service.identity(app)
        key = (tok["access_token"], tok["expires_at"], ident["x_device_info"], ident["ap_device_identifier"])
        cached = self._hdr_cache.get(app)
        if cached is None or key != cached[0]:
            cached = (key, _ENC(
                {
                    "headers": {
                        "Authorization": "Bearer " + key[0],
                        "X-Device-Info": key[2],
                        "AP-Device-Identifier": key[3],
                    },
                    "expires_at": key[1],
                }
            ).encode("utf-8"))
            self._hdr_cache[app] = cached
        return self._prefix(req_id) + cached[1] + b"}\n"

    # -- methods ----------------------------------------------------------------------------

    def app_for(self, method: str, asked: str | None) -> str | None:
        """The application of a request from the current peer (resolve_app); raises RpcError."""
        return resolve_app(method, asked, self._peer_apps, self.apps, self._peer_uid)

    def _token_common(self, method: str, req_id: Any, params: Any) -> tuple[dict | Action, str | None]:
        if params:
            p = _params(method, params, _TOKEN_PARAMS)
            min_ttl = p.get("min_ttl", 0.0)
            wait = p.get("wait", 0.0)
            asked = p.get("app")
        else:
            min_ttl = wait = 0.0
            asked = None
        app = self.app_for(method, asked)
        tok = self.service.token(min_ttl, app)
        if tok is not None:
            return tok, app
        if wait > 0:
            return Action("park", req_id, method, min_ttl, wait, app), app
        raise from_agent_error(self.service.not_ready_error(app), no_token=True)

    def _token_get(self, req_id: Any, params: Any) -> bytes | Action:
        tok, app = self._token_common("token.get", req_id, params)
        return tok if isinstance(tok, Action) else self._token_line(req_id, tok, app)

    def _headers_get(self, req_id: Any, params: Any) -> bytes | Action:
        tok, app = self._token_common("headers.get", req_id, params)
        return tok if isinstance(tok, Action) else self._headers_line(req_id, tok, app)

    def resume(self, act: Action, final: bool) -> bytes | None:
        """Retry a parked token request. Returns the answer, or None to keep waiting.

        final=True means the wait expired: answer with the current error instead of None.
        """
        try:
            tok = self.service.token(act.min_ttl, act.app)
            if tok is not None:
                if act.method == "headers.get":
                    return self._headers_line(act.id, tok, act.app)
                return self._token_line(act.id, tok, act.app)
            if not final:
                return None
            e = from_agent_error(self.service.not_ready_error(act.app), " (waited %gs)" % act.wait, no_token=True)
        except AgentError as ae:
            e = from_agent_error(ae)
        except Exception:
            _log.exception("JSON-RPC method %s failed while resuming a wait", act.method)
            e = RpcError(
                INTERNAL_ERROR,
                "internal error in %s; the agent log has details; retry later or report a bug" % act.method,
                error_data("internal_error", RETRY, 1.0),
            )
        self.errors += 1
        return error_line(act.id, e.code, e.message, e.data)

    def _device_info(self, req_id: Any, params: Any) -> dict:
        asked = _params("device.info", params, _APP_ONLY).get("app")
        mine = self.apps if self._peer_apps is None else self._peer_apps
        # Without a name and several applications: the box's own identity (no application's applicationId).
        app = self.app_for("device.info", asked) if asked is not None or len(mine) == 1 else None
        ident = self.service.identity(app)
        return {
            "x_device_info": ident["x_device_info"],
            "fields": ident["fields"],
            "ap_device_identifier": ident["ap_device_identifier"],
        }

    def _error_report(self, req_id: Any, params: Any) -> dict:
        p = _params("error.report", params, _REPORT_PARAMS, required=("status",))
        app = self.app_for("error.report", p.get("app"))
        kw: dict = {}
        if p.get("management"):
            kw["management"] = True
        if self._report_takes_uid:
            kw["uid"] = self._peer_uid
        if app is not None and self._report_takes_app:
            kw["app"] = app
        return self.service.report_error(p["status"], p.get("body"), p.get("access_token"), **kw)

    def _api_call(self, req_id: Any, params: Any) -> Action:
        """api.call: a REST API v2 request through the gateway (docs/GATEWAY.md); the shell carries out the
        returned Action with `api_call` and sends the answer in order."""
        if self.api_call is None:
            raise RpcError(AGENT_ERROR, "api.call: the REST API v2 gateway is not enabled on this agent",
                           error_data("gateway_off", OPERATOR, None,
                                      hint="set [gateway] enabled = true (docs/GATEWAY.md) and restart the agent"))
        p = _params("api.call", params, _API_PARAMS, required=("path",))
        act = Action("api", req_id, "api.call", app=self.app_for("api.call", p.get("app")))
        act.params = p
        return act

    def _subscribe(self, req_id: Any, params: Any) -> Action:
        app = self.app_for("token.subscribe", _params("token.subscribe", params, _APP_ONLY).get("app"))
        return Action("subscribe", req_id, app=app)

    def _unsubscribe(self, req_id: Any, params: Any) -> Action:
        app = self.app_for("token.unsubscribe", _params("token.unsubscribe", params, _APP_ONLY).get("app"))
        return Action("unsubscribe", req_id, app=app)

    def _mine(self, method: str, params: Any) -> tuple[str | None, tuple]:
        """(the application named or the peer's only one, else None; the applications the peer may see)."""
        asked = _params(method, params, _APP_ONLY).get("app")
        mine = self.apps if self._peer_apps is None else self._peer_apps
        app = self.app_for(method, asked) if asked is not None or len(mine) == 1 else None
        if len(self.apps) == 1:
            app = None  # the service's only application: its status()/health() without a name, as before
        return app, mine

    def _status(self, req_id: Any, params: Any) -> dict:
        app, mine = self._mine("agent.status", params)
        st = self.service.status(app) if app is not None else self.service.status()
        if "apps" in st:  # only the applications this peer may use
            st["apps"] = [a for a in st["apps"] if a.get("app") in mine]
        return st

    def _health(self, req_id: Any, params: Any) -> dict:
        app, mine = self._mine("agent.health", params)
        if app is not None or self._peer_apps is None:
            h = self.service.health(app) if app is not None else self.service.health()
            return {"live": bool(h.get("live", True)), "ready": bool(h.get("ready"))}
        hs = [self.service.health(a) for a in mine]  # ready: every application this peer may use
        return {"live": all(bool(h.get("live", True)) for h in hs), "ready": all(bool(h.get("ready")) for h in hs)}


def _accepts_keyword(fn: Any, name: str) -> bool:
    """Whether fn takes keyword `name` (or **kwargs): one look at its signature, not per call. A Python
    function or method is read from its code object: inspect (with ast, dis, tokenize) would cost
    every start ~4 ms and ~1.4 MB (issue 20); other callables are asked through inspect."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is not None and hasattr(code, "co_kwonlyargcount"):
        if code.co_flags & 0x08:  # CO_VARKEYWORDS: **kwargs
            return True
        keywords = code.co_varnames[code.co_posonlyargcount:code.co_argcount + code.co_kwonlyargcount]
        return name in keywords
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _valid_id(v: Any) -> bool:
    """null, an int, a finite float, or a string that can be sent back (no lone surrogates)."""
    if v is None or type(v) is int:
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    return False


def token_changed(event: dict) -> bytes:
    """The `token.changed` notification line for a Service event: the application and the two
    timestamps, nothing else (never the token)."""
    params = event.get("params") or {}
    out = {"expires_at": params.get("expires_at"), "refresh_at": params.get("refresh_at")}
    if isinstance(params.get("app"), str):
        out = {"app": params["app"], **out}
    return notification("token.changed", out)


# Re-exported so callers can refer to the kinds without importing agent.errors.
KINDS = (RETRY, OPERATOR, "reregister", FATAL)
