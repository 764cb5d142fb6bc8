"""The REST API v2 gateway's sans-I/O core: request policy, header injection, reaction to Adobe's
answers, and the configuration cache.

Read this header first. A player sends a REST API v2 request without credentials; the shells
(agent/gateway/server.py for HTTP, agent/rpc.py `api.call` for JSON-RPC) turn it into a `Request`
with `check_request`, and agent/gateway/runner.py drives one `Exchange` per request: the exchange
says what to send, and each of Adobe's answers comes back in as (status, headers, body) and leads to
the next `Step`. Nothing here does I/O, reads a clock or sleeps: time comes in as `now`, randomness
from the injected `random`. Must never: let a request leave for any host but the configured one or
for a path outside /api/v2/, forward a player's Authorization (or its own device headers), retry a
401 more than once, retry anything but items (or whole answers) Adobe marked `retry`, retry more than
`item_retries` times, or cache anything user-specific (only `GET configuration`).

Theory of operation
-------------------
Policy (`check_request`): methods GET and POST (HEAD, PUT... are not REST v2 calls: 405; CONNECT
and absolute-form or authority-form targets are a proxy's business: 400), an origin-form target whose
path starts with /api/v2/ and names at least a service provider, no `.`/`..` segment (raw or
percent-encoded), no empty segment, no encoded `/` or `\\` (`%2F`, `%5C`), no encoded control
character, only RFC 3986 path characters, valid percent escapes. The path and query are forwarded
byte for byte as checked (never decoded and re-encoded), so what was checked is what Adobe sees.

Headers (`upstream_headers`): the player's, minus hop-by-hop headers (and those its Connection
header names), minus Host and the framing (the shim sets them), minus Authorization, Cookie,
AP-Device-Identifier, X-Device-Info (the agent's own are set), Forwarded/X-Forwarded-*/X-Real-IP
(Adobe's throttle counts the box's address; a local player must not pose as another), Accept-Encoding
(answers must come uncompressed to be read for Enhanced Error Codes), Expect and X-Pass-App (ours);
plus `Authorization: Bearer <the application's token>`, `AP-Device-Identifier`, `X-Device-Info`.

Answers (`Exchange.on_answer`; the classification is agent/dcr.py's, reference section 5):
| answer                                        | step                                                     |
|-----------------------------------------------|----------------------------------------------------------|
| 429                                           | reply it (the shell pauses the governor first)           |
| refresh (401, a token-validity code), 1st     | report; refresh: wait for a new token, then resend once  |
| refresh, after the one retry                  | report; reply (never a second retry)                     |
| reregister (invalid_access_token_*)           | report; reply (a registration takes longer than a call)  |
| 200 with items marked retry (decisions)       | wait, resend for those resources alone; merge; bounded   |
| a whole answer marked retry (top-level EEC)   | wait, resend the request; bounded                        |
| anything else                                 | reply                                                    |
"Report" means the shell hands the answer to the lifecycle (Service.report_error) as a player's
error.report would: the player no longer needs to. Retries of items wait retry_backoff x 2^n x
U(0.5, 1] (at least a Retry-After the answer carried, capped at 30 s), at most `item_retries` times.

Cache (`ConfigCache`): only 200 answers to `GET /api/v2/{sp}/configuration`, keyed by (application,
path and query), for `ttl` seconds (Adobe: 3-5 minutes; the configuration caps it at 300). A request
with `Cache-Control: no-cache` (or no-store) bypasses it and refreshes it. At most `max_entries`
entries (the oldest goes). Profiles, sessions, decisions, logout: never cached.
"""

from __future__ import annotations

import json
import random as _random
from typing import Any, Callable, Sequence

from agent import dcr

API_PREFIX = "/api/v2/"
METHODS = ("GET", "POST")
MAX_TARGET = 4096                 # bytes of path and query (longer: 414)
MAX_RETRY_WAIT = 30.0             # longest wait before an item retry, whatever Retry-After says
INSPECT_TYPES = ("application/json", "application/problem+json")

# Hop-by-hop headers (RFC 9110 7.6.1) and the framing this side decides.
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authorization", "proxy-authenticate"))
_DROP_REQUEST = HOP_BY_HOP | frozenset((
    "host", "content-length", "authorization", "cookie", "ap-device-identifier", "x-device-info", "forwarded",
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "x-real-ip",
    "accept-encoding", "expect", "x-pass-app"))
_DROP_RESPONSE = HOP_BY_HOP | frozenset(("content-length", "set-cookie"))

_HEX = "0123456789abcdefABCDEF"
# RFC 3986 pchar minus "%" (checked separately), plus "/".
_PATH_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/")
_QUERY_CHARS = _PATH_CHARS | frozenset("?")


class Refusal(Exception):
    """A request the gateway answers itself: `status`, a stable `code`, a message saying what was wrong
    and a hint saying what to do; `retry_after` seconds for refusals that pass (budget, busy)."""

    def __init__(self, status: int, code: str, message: str, hint: str = "", retry_after: float | None = None,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        Exception.__init__(self, message)
        self.status, self.code, self.message, self.hint = status, code, message, hint
        self.retry_after = retry_after
        self.headers = list(headers)

    def reply(self) -> Reply:
        body: dict = {"code": self.code, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                   ("X-Pass-Agent-Error", self.code)] + self.headers
        if self.retry_after is not None:
            body["retry_after"] = retry_after_seconds(self.retry_after)
            headers.append(("Retry-After", str(body["retry_after"])))
        return Reply(self.status, headers, json.dumps(body).encode("utf-8"), origin="agent", code=self.code,
                     retry_after=self.retry_after)


def retry_after_seconds(delay: float) -> int:
    """A Retry-After value: whole seconds, at least 1 (never tells a player to come back at once)."""
    return max(1, int(-(-float(delay) // 1)))


class Reply:
    """What the player gets: status, headers (without framing: the shell adds it), body. origin "agent"
    for the gateway's own answers (refusals), "adobe" for Adobe's (possibly merged after item retries)."""

    __slots__ = ("status", "headers", "body", "origin", "code", "retry_after")

    def __init__(self, status: int, headers: list, body: bytes, origin: str = "adobe", code: str | None = None,
                 retry_after: float | None = None) -> None:
        self.status, self.headers, self.body = status, headers, body
        self.origin, self.code, self.retry_after = origin, code, retry_after

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


class Request:
    """A checked player request: method, target (path and query as sent), the segments of the path,
    the player's headers (name, value) and body, the application and the peer's uid."""

    __slots__ = ("method", "target", "path", "query", "segments", "headers", "body", "app", "uid")

    def __init__(self, method: str, target: str, path: str, query: str, headers: list, body: bytes,
                 app: str | None = None, uid: int | None = None) -> None:
        self.method, self.target, self.path, self.query = method, target, path, query
        self.segments = path.split("/")[3:]   # after "", "api", "v2": [sp, ...]
        self.headers, self.body, self.app, self.uid = headers, body, app, uid

    @property
    def service_provider(self) -> str:
        return self.segments[0]

    def is_configuration(self) -> bool:
        return self.method == "GET" and len(self.segments) == 2 and self.segments[1] == "configuration"

    def is_decisions(self) -> bool:
        s = self.segments
        return (self.method == "POST" and len(s) == 4 and s[1] == "decisions"
                and s[2] in ("authorize", "preauthorize"))

    def wants_fresh(self) -> bool:
        """Cache-Control: no-cache / no-store / max-age=0 from the player: skip the configuration cache."""
        for k, v in self.headers:
            if k.lower() == "cache-control":
                words = [w.strip().lower() for w in v.split(",")]
                if "no-cache" in words or "no-store" in words or "max-age=0" in words:
                    return True
        return False


def _check_escapes(text: str, where: str) -> None:
    i = text.find("%")
    while i >= 0:
        pair = text[i + 1:i + 3]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise Refusal(400, "bad_escape", "the %s has a %% not followed by two hex digits" % where,
                          "percent-encode the character (e.g. %25 for %)")
        value = int(pair, 16)
        if value < 0x20 or value == 0x7F:
            raise Refusal(400, "encoded_control", "the %s holds a percent-encoded control character (%%%s)"
                          % (where, pair.upper()), "REST API v2 paths and queries have no control characters")
        if where == "path" and pair.upper() in ("2F", "5C"):
            raise Refusal(400, "encoded_separator", "the path holds an encoded slash or backslash (%%%s): it could "
                          "name another path at Adobe than the one checked" % pair.upper(),
                          "send the path with plain / separators")
        i = text.find("%", i + 1)


def check_request(method: str, target: str, headers: list, body: bytes) -> Request:
    """The policy: a Request to forward, or Refusal (see the header). `target` as the request line had it."""
    if method == "CONNECT":
        raise Refusal(405, "connect_refused", "CONNECT is refused: the gateway is not a proxy",
                      "send REST API v2 requests (GET/POST /api/v2/...) to this socket", headers=[("Allow", "GET, POST")])
    if method not in METHODS:
        raise Refusal(405, "method_not_allowed", "method %s is not a REST API v2 call (GET and POST are)" % method[:16],
                      "use GET or POST", headers=[("Allow", "GET, POST")])
    if not target.startswith("/"):
        if "://" in target:
            raise Refusal(400, "absolute_form", "absolute-form request targets (a URL with a host) are refused: the "
                          "gateway forwards only to the configured Adobe host",
                          "send the path only: GET /api/v2/{serviceProvider}/... (curl: --unix-socket PATH "
                          "http://localhost/api/v2/...)")
        raise Refusal(400, "bad_target", "the request target must be a path starting with /api/v2/",
                      "send GET /api/v2/{serviceProvider}/...")
    if len(target) > MAX_TARGET:
        raise Refusal(414, "target_too_long", "the request target is %d bytes; at most %d are forwarded"
                      % (len(target), MAX_TARGET), "REST API v2 paths are short: check the request")
    if "#" in target:
        raise Refusal(400, "bad_target", "the request target holds a fragment (#)", "leave the fragment out")
    path, sep, query = target.partition("?")
    if not path.startswith(API_PREFIX):
        raise Refusal(404, "not_rest_v2", "only REST API v2 paths (/api/v2/...) are forwarded, not %s"
                      % dcr.printable(path, 60),
                      "call GET/POST /api/v2/{serviceProvider}/...; DCR (/o/client/...) is the agent's own business")
    bad = [c for c in path if c not in _PATH_CHARS and c != "%"]
    if bad:
        raise Refusal(400, "bad_path", "the path holds a character that must be percent-encoded (%r)" % bad[0][:1],
                      "percent-encode it")
    _check_escapes(path, "path")
    segments = path.split("/")[3:]
    if not segments or not segments[0]:
        raise Refusal(404, "not_rest_v2", "the path names no service provider (/api/v2/{serviceProvider}/...)",
                      "add the service provider (requestor id) after /api/v2/")
    for seg in segments[:-1] if path.endswith("/") else segments:
        low = seg.lower().replace("%2e", ".")
        if low in (".", ".."):
            raise Refusal(400, "dot_segment", "the path holds a . or .. segment (plain or percent-encoded)",
                          "send the path without dot segments")
        if seg == "":
            raise Refusal(400, "empty_segment", "the path holds an empty segment (//)", "remove the doubled /")
    if sep:
        badq = [c for c in query if c not in _QUERY_CHARS and c != "%"]
        if badq:
            raise Refusal(400, "bad_query", "the query holds a character that must be percent-encoded (%r)"
                          % badq[0][:1], "percent-encode it")
        _check_escapes(query, "query")
    return Request(method, target, path, query, list(headers), body)


def upstream_headers(player: Sequence[tuple[str, str]], token: str, identity: dict) -> dict:
    """The headers sent to Adobe (see the header): the player's, filtered, plus the agent's three."""
    named = set()
    for k, v in player:
        if k.lower() == "connection":
            named.update(w.strip().lower() for w in v.split(","))
    out: dict = {}
    lower: dict = {}
    for k, v in player:
        lk = k.lower()
        if lk in _DROP_REQUEST or lk in named:
            continue
        if lk in lower:  # a repeated header: one field, values joined (RFC 9110 5.3)
            out[lower[lk]] = out[lower[lk]] + ", " + v
        else:
            lower[lk] = k
            out[k] = v
    out["Authorization"] = "Bearer " + token
    out["AP-Device-Identifier"] = identity["ap_device_identifier"]
    out["X-Device-Info"] = identity["x_device_info"]
    return out


def reply_headers(upstream: Sequence[tuple[str, str]] | dict) -> list:
    """Adobe's answer headers for the player: minus hop-by-hop, framing and Set-Cookie."""
    items = upstream.items() if isinstance(upstream, dict) else upstream
    named = set()
    for k, v in items:
        if k.lower() == "connection":
            named.update(w.strip().lower() for w in v.split(","))
    items = upstream.items() if isinstance(upstream, dict) else upstream
    return [(k, v) for k, v in items if k.lower() not in _DROP_RESPONSE and k.lower() not in named]


def inspectable(headers: Sequence[tuple[str, str]] | dict) -> bool:
    """Whether an answer is read whole for Enhanced Error Codes: a JSON media type."""
    items = headers.items() if isinstance(headers, dict) else headers
    for k, v in items:
        if k.lower() == "content-type":
            return v.split(";", 1)[0].strip().lower() in INSPECT_TYPES
    return False


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


class Step:
    """What the shell does next. kind: "send" (the request, with `body` for this attempt), "refresh"
    (wait up to the refresh wait for a token other than the one used, then `Exchange.on_token`), "wait"
    (`delay` seconds, then send `body`), "reply" (`reply`, done). `report`: hand the answer just
    received to the lifecycle first."""

    __slots__ = ("kind", "body", "delay", "reply", "report")

    def __init__(self, kind: str, body: bytes | None = None, delay: float = 0.0, reply: Reply | None = None,
                 report: bool = False) -> None:
        self.kind, self.body, self.delay, self.reply, self.report = kind, body, delay, reply, report

    def __repr__(self) -> str:
        return "Step(%s%s%s)" % (self.kind, ", report" if self.report else "",
                                 ", %d" % self.reply.status if self.reply else "")


class Exchange:
    """One player request, from the first send to the reply (see the table in the header)."""

    def __init__(self, req: Request, *, item_retries: int = 2, backoff: float = 1.0,
                 random: Callable[[], float] | None = None) -> None:
        self.req = req
        self.item_retries = item_retries
        self.backoff = backoff
        self.random = random or _random.random
        self.refreshed = False      # the one 401 retry is spent
        self.retries = 0            # item (or whole-answer) retries so far
        self.sends = 0
        self.merged: Any = None     # the decisions answer being completed by item retries
        self.merged_headers: list = []
        self.pending: list = []     # resources being retried
        self.kept: tuple | None = None  # the 401 answered while a refreshed token is awaited

    def first(self) -> Step:
        self.sends = 1
        return Step("send", self.req.body)

    def _again(self, body: bytes, retry_after: float | None) -> Step:
        self.retries += 1
        self.sends += 1
        delay = self.backoff * (2 ** (self.retries - 1)) * (0.5 + 0.5 * self.random())
        if retry_after is not None:
            delay = max(delay, retry_after)
        return Step("wait", body, delay=min(delay, MAX_RETRY_WAIT))

    def _reply(self, status: int, headers: list, body: bytes, report: bool = False) -> Step:
        headers = reply_headers(headers)
        if self.sends > 1:  # what the gateway did, for the player's logs and the tests
            headers.append(("X-Pass-Agent-Retries", "%d" % (self.sends - 1)))
        return Step("reply", reply=Reply(status, headers, body), report=report)

    def on_token(self, renewed: bool) -> Step:
        """After a "refresh" step: `renewed` is whether a new token arrived in time. The one retry uses it;
        without one the 401 the player would have got is sent (the shell kept it)."""
        if not renewed:
            status, headers, body = self.kept or (401, [], b"")
            return self._reply(status, headers, body)
        self.sends += 1
        return Step("send", self.req.body)

    def on_answer(self, status: int, headers: list, body: bytes | None, retry_after: float | None = None) -> Step:
        """Adobe's answer to the last send. `body` None: the answer was not read whole (not JSON, or larger
        than the shell inspects); it is streamed to the player as it is."""
        if self.merged is not None:
            return self._merge(status, headers, body)
        data = _json(body) if body is not None else None
        decision = "ignore"
        if status != 429 and (data is not None or status == 401):
            decision = dcr.classify_protected_error(status, data)[0]
        if decision == "refresh":
            if not self.refreshed:
                self.refreshed = True
                self.kept = (status, list(headers), body or b"")
                return Step("refresh", report=True)
            return self._reply(status, headers, body or b"", report=True)
        if decision == "reregister":
            return self._reply(status, headers, body or b"", report=True)
        if data is None or status == 429:
            return self._reply(status, headers, body or b"")
        items = dcr.classify_protected_items(data)
        retry = [i for i in items if i["decision"] == "retry"]
        if not retry or self.retries >= self.item_retries:
            return self._reply(status, headers, body)
        if status == 200 and self.req.is_decisions() and isinstance(data, dict) and isinstance(
                data.get("decisions"), list):
            failed = []
            for i in retry:
                idx = i["index"]
                if isinstance(idx, int) and 0 <= idx < len(data["decisions"]):
                    res = data["decisions"][idx].get("resource") if isinstance(data["decisions"][idx], dict) else None
                    if isinstance(res, str) and res not in failed:
                        failed.append(res)
            if not failed:
                return self._reply(status, headers, body)
            self.merged, self.merged_headers, self.pending = data, list(headers), failed
            return self._again(json.dumps({"resources": failed}).encode("utf-8"), retry_after)
        if status != 200 and any(i["path"] == "" or i["path"] == "error" for i in retry):
            return self._again(self.req.body, retry_after)  # the whole answer is the item marked retry
        return self._reply(status, headers, body)

    def _merge(self, status: int, headers: list, body: bytes | None) -> Step:
        """An answer to an item retry: its decisions replace the failed ones; items still marked retry go again
        (bounded). Anything but a 200 decisions answer ends the retries: the player gets what is known."""
        data = _json(body) if body is not None else None
        if status == 200 and isinstance(data, dict) and isinstance(data.get("decisions"), list):
            fresh = {d.get("resource"): d for d in data["decisions"] if isinstance(d, dict)}
            out = self.merged["decisions"]
            for n, d in enumerate(out):
                if isinstance(d, dict) and d.get("resource") in fresh and d.get("resource") in self.pending:
                    out[n] = fresh[d["resource"]]
            again = [i for i in dcr.classify_protected_items(data) if i["decision"] == "retry"]
            still = []
            for i in again:
                idx = i["index"]
                if isinstance(idx, int) and 0 <= idx < len(data["decisions"]):
                    res = data["decisions"][idx].get("resource")
                    if isinstance(res, str) and res not in still:
                        still.append(res)
            if still and self.retries < self.item_retries:
                self.pending = still
                return self._again(json.dumps({"resources": still}).encode("utf-8"), None)
        body = json.dumps(self.merged).encode("utf-8")
        hdrs = [(k, v) for k, v in self.merged_headers if k.lower() != "content-length"]
        self.merged = None
        return self._reply(200, hdrs, body)


class ConfigCache:
    """GET configuration answers per (application, target), for `ttl` seconds (see the header)."""

    def __init__(self, ttl: float, max_entries: int = 64) -> None:
        self.ttl = float(ttl)
        self.max_entries = max_entries
        self._d: dict = {}      # key -> (stored at, Reply)
        self.hits = self.misses = self.bypassed = 0

    @staticmethod
    def key(req: Request) -> tuple:
        return (req.app, req.target)

    def get(self, req: Request, now: float) -> Reply | None:
        """A cached answer with its Age, or None (a miss, or a bypass the caller decided)."""
        if self.ttl <= 0 or not req.is_configuration():
            return None
        if req.wants_fresh():
            self.bypassed += 1
            return None
        hit = self._d.get(self.key(req))
        if hit is None or now - hit[0] >= self.ttl:
            self.misses += 1
            return None
        self.hits += 1
        r = hit[1]
        headers = [(k, v) for k, v in r.headers if k.lower() not in ("age", "x-pass-agent-cache")]
        headers += [("Age", "%d" % int(now - hit[0])), ("X-Pass-Agent-Cache", "hit")]
        return Reply(r.status, headers, r.body)

    def put(self, req: Request, reply: Reply, now: float) -> None:
        if self.ttl <= 0 or not req.is_configuration() or reply.status != 200 or reply.origin != "adobe":
            return
        if len(self._d) >= self.max_entries and self.key(req) not in self._d:
            del self._d[min(self._d, key=lambda k: self._d[k][0])]
        self._d[self.key(req)] = (now, reply)

    def view(self) -> dict:
        return {"entries": len(self._d), "hits": self.hits, "misses": self.misses, "bypassed": self.bypassed,
                "ttl": self.ttl}
