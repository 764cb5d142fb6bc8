"""The emulated Adobe Pass service: DCR register/token, REST API v2, throttle, faults, stats.

Sans-I/O core. `Service.handle(request)` takes a plain dict (method, path, query, lower-case
headers, body bytes, peer ip, monotonic `t`, wall-clock `now`) and returns a plain response dict
(status, headers, body, plus `endpoint`, `call`, `fault`, `code`, `reason`, `client_id` for the shell
and the log). Delivery faults (latency, hang, reset, truncate, chunked) are carried out by the shell;
everything else, including the choice of fault, happens here. The shell serialises calls with one
lock, so this file needs none.

Request order: classify the path; throttle (register, token, /api/*); take the next matching
fault; then emulate the endpoint. Under /api/ the second-screen authenticate page needs no header;
every other call first passes the access-token checks here (plain 401 or the 2023 codes, per
`error_style`), then `restv2.RestV2` checks the call's own headers and answers it. The emulated MVPD
login page (/adobe-services/) is not Adobe's API: neither throttled nor in the request log. Hang and reset faults fire before the request is processed (the
service never saw it); malformed_json, truncate and chunked damage a response that was processed.

Adobe's documented behaviour is the default, quirks included (docs/EMULATOR.md quotes the wording,
docs/ADOBE.md the sections): the one-time burst (section 6), the throttle keyed by
X-Forwarded-For, the required register Content-Type (section 1), the current Enhanced Error Code
pairing (section 5), explicit X-Device-Info values merged over extracted ones (section 4). Settings
select the other documented variants (2023 pairing, wrapped and item-level errors, refilling burst).

Every throttled request (register, token, /api/*) lands in the request log with its method, path,
REST v2 call name, headers and body, secrets masked (`mask_secrets`), and the effective X-Device-Info.

Must never: put a client secret, access token or statement into a log line, the request log, a
reason or an error body; or answer a throttled request with anything but the documented 429 HTML.
"""

from __future__ import annotations

import collections
import copy
import email.utils
import hmac
import json
import re
import uuid
from typing import Any
from urllib.parse import parse_qsl

from . import deviceinfo, jwtutil, restv2
from .eec import check_item_errors, eec_object
from .faults import FaultQueue
from .throttle import Throttle

ISSUER = "auth.adobe.com"
DEFAULT_APP_ID = "pass-agent-dev-app"
RETRY_AFTER_MODES = ("none", "seconds", "date")
# Register Content-Type checks. strict: what Adobe's table requires ("It must be
# application/json;charset=utf-8"), read as HTTP reads media types (case-insensitive, spaces allowed);
# exact: those bytes and no others; relaxed: any application/json with an optional UTF-8 charset
# (Adobe's own request sample sends plain `application/json`).
CONTENT_TYPE_MODES = ("strict", "exact", "relaxed")
REGISTER_CONTENT_TYPE = "application/json;charset=utf-8"
# Protected-API error pairings (reference section 5). current: today's REST API v2 list, where only
# invalid_access_token_* carry `application-registration` and an invalid or expired token is a plain
# 401; 2023: the older page, which paired access_token_expired and invalid_access_token_signature
# (and invalid_client_id) with `application-registration`.
ERROR_STYLES = ("current", "2023")
# Where an Enhanced Error Code sits: top (the whole body, Adobe's REST v2 sample), wrapped
# ({"error": {...}}), item (HTTP 200, on each item of a decisions answer; elsewhere top).
ERROR_FORMS = ("top", "wrapped", "item")
MASK = "[masked]"
LOG_BODY_MAX = 8192  # characters of a request body kept in the request log
_JSON_SECRET = re.compile(r'("(?:client_secret|access_token|software_statement|refresh_token)"\s*:\s*")'
                          r'((?:[^"\\]|\\.)*)"')
_FORM_SECRET = re.compile(r"(?i)((?:^|[&?])(?:client_secret|access_token|software_statement|refresh_token)=)"
                          r"([^&]+)")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
REQUEST_LOG_SIZE = 10000
PROBLEM_LOG_SIZE = 1000
NBF_LEEWAY = 60.0  # seconds a statement's nbf may lie in the future (device and server clocks differ)
REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
THROTTLE_HTML = (b"<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n"
                 b"<center><h1>429 Too Many Requests</h1></center>\r\n</body>\r\n</html>\r\n")


def endpoint_of(path: str) -> str:
    if path == "/o/client/register":
        return "register"
    if path == "/o/client/token":
        return "token"
    if path.startswith("/api/"):
        return "protected"
    if path == "/_emulator" or path.startswith("/_emulator/"):
        return "admin"
    if path.startswith("/adobe-services/"):
        return "mvpd"  # the emulated MVPD login page the authenticate page redirects to
    return "other"


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    parts = [p.strip() for p in value.split(";")]
    params = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        params[k.strip().lower()] = v.strip().strip('"')
    return parts[0].lower(), params


def _header_safe(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii").replace("\r", " ").replace("\n", " ")[:300]


def mask_secrets(text: str) -> str:
    """Hide secret values in a query string, form or JSON body; every other byte stays as sent, so a
    test can compare the rest exactly. Also hides anything shaped like a JWT (statements, tokens)."""
    text = _JSON_SECRET.sub(lambda m: m.group(1) + MASK + '"', text)
    text = _FORM_SECRET.sub(lambda m: m.group(1) + MASK, text)
    return _JWT.sub(MASK, text)


def mask_header(name: str, value: str) -> str:
    """Authorization keeps its scheme (`Bearer [masked]`); other headers hold no secret of the DCR flow,
    but a stray JWT or secret parameter in any of them is masked too."""
    if name.lower() in ("authorization", "proxy-authorization", "cookie"):
        scheme, sep, rest = value.partition(" ")
        return scheme + " " + MASK if sep and rest else MASK
    return mask_secrets(value)


class _Reject(Exception):
    """An emulated error answer; carries the response dict."""

    def __init__(self, resp: dict[str, Any]) -> None:
        Exception.__init__(self, resp.get("reason"))
        self.resp = resp


def _oauth_error(status: int, error: str, reason: str, **extra: Any) -> _Reject:
    body = json.dumps({"error": error}).encode()
    headers = [("Content-Type", "application/json;charset=utf-8"), ("Cache-Control", "no-store"),
               ("Pragma", "no-cache"), ("X-Emulator-Reason", _header_safe(reason))]
    if status == 405:
        headers.append(("Allow", "POST"))
    return _Reject(dict(status=status, headers=headers, body=body, code=error, reason=reason, **extra))


def _plain_401(reason: str, **extra: Any) -> _Reject:
    """A 401 without a body: what the current REST API v2 answers for an invalid or expired access
    token (reference sections 5 and 8: "get a new access token, then retry")."""
    return _Reject(dict(status=401, headers=[("X-Emulator-Reason", _header_safe(reason))], body=b"",
                        code="unauthorized", reason=reason, **extra))


def _ok(status: int, obj: dict[str, Any], **extra: Any) -> dict[str, Any]:
    headers = [("Content-Type", "application/json;charset=utf-8"), ("Cache-Control", "no-store"),
               ("Pragma", "no-cache")]
    return dict(status=status, headers=headers, body=json.dumps(obj).encode(), code=None, reason=None, **extra)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError("parameter %r appears more than once" % k)
        seen[k] = v
    return seen


def _new_stats() -> dict[str, Any]:
    return {
        "register": {"ok": 0, "error": 0, "codes": {}},
        "token": {"ok": 0, "error": 0, "codes": {}},
        "protected": {"ok": 0, "error": 0, "codes": {}},
        "throttled": 0,
        "faults_served": 0,
        "other": 0,
        "mvpd": 0,
        "device_info_problems": collections.deque(maxlen=PROBLEM_LOG_SIZE),
        "per_client_ip": {},
        "per_client_id": {},
        "requests": collections.deque(maxlen=REQUEST_LOG_SIZE),
    }


class Service:
    """All emulator state and behaviour. Call only with the shell's lock held."""

    def __init__(self, signing_key: Any, *, token_ttl: int = 21600, legacy: bool = False,
                 strict_device_info: bool = False, rate: float = 1.0, burst: int = 10,
                 retry_after: str | None = None, trust_forwarded_for: bool = True,
                 throttle: bool = True, redirect_uri_prefixes: tuple[str, ...] = ("http://localhost",),
                 burst_refill: bool = False, register_content_type: str = "strict", error_style: str = "current",
                 error_form: str = "top", item_errors: dict[str, Any] | None = None,
                 invalid_service_providers: tuple[str, ...] = ()) -> None:
        self.key = signing_key
        self.public_key = signing_key.public_key()
        self.kid = jwtutil.key_id(signing_key)
        self.throttle = Throttle(rate, burst, throttle, refill_burst=burst_refill)
        self.faults = FaultQueue()
        self.apps: dict[str, dict[str, Any]] = {DEFAULT_APP_ID: {"redirect_uris": None}}
        self.statements: dict[str, str] = {}  # fingerprint -> app id, for statements minted here
        self.revoked_statements: set[str] = set()
        self.clients: dict[str, dict[str, Any]] = {}
        self.ca_pem: bytes | None = None
        self.token_ttl, self.legacy, self.strict_device_info = 21600, False, False
        self.retry_after, self.trust_forwarded_for = "none", True
        self.redirect_uri_prefixes: list[str] = []
        self.register_content_type, self.error_style, self.error_form = "strict", "current", "top"
        self.item_errors: dict[str, Any] = {}
        self.invalid_service_providers: list[str] = []
        self.rest = restv2.RestV2()  # REST API v2 sessions and profiles; its settings join config()
        self.configure(token_ttl=token_ttl, legacy=legacy, strict_device_info=strict_device_info,
                       retry_after=retry_after, trust_forwarded_for=trust_forwarded_for,
                       redirect_uri_prefixes=list(redirect_uri_prefixes), register_content_type=register_content_type,
                       error_style=error_style, error_form=error_form, item_errors=dict(item_errors or {}),
                       invalid_service_providers=list(invalid_service_providers))
        self._stats = _new_stats()

    # ----- configuration and administration -------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {"token_ttl": self.token_ttl, "legacy": self.legacy, "strict_device_info": self.strict_device_info,
                "rate": self.throttle.rate, "burst": self.throttle.burst, "throttle": self.throttle.enabled,
                "burst_refill": self.throttle.refill_burst,
                "retry_after": self.retry_after, "trust_forwarded_for": self.trust_forwarded_for,
                "redirect_uri_prefixes": list(self.redirect_uri_prefixes),
                "register_content_type": self.register_content_type, "error_style": self.error_style,
                "error_form": self.error_form, "item_errors": copy.deepcopy(self.item_errors),
                "invalid_service_providers": list(self.invalid_service_providers), "default_app_id": DEFAULT_APP_ID,
                **self.rest.config()}

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Apply runtime changes (all or nothing); ValueError names the first bad key."""
        if "strict" in changes:
            changes["strict_device_info"] = changes.pop("strict")
        known = set(self.config()) - {"default_app_id"}
        for key, value in changes.items():
            if key not in known:
                raise ValueError("unknown setting %r; known settings: %s" % (key, ", ".join(sorted(known))))
            if key in ("legacy", "strict_device_info", "throttle", "trust_forwarded_for", "burst_refill") \
                    and not isinstance(value, bool):
                raise ValueError("setting %r must be true or false, got %r" % (key, value))
        for key, allowed in (("register_content_type", CONTENT_TYPE_MODES), ("error_style", ERROR_STYLES),
                             ("error_form", ERROR_FORMS)):
            if key in changes and changes[key] not in allowed:
                raise ValueError("setting %r must be one of %s; got %r" % (key, ", ".join(allowed), changes[key]))
        items = changes.get("item_errors", self.item_errors)
        check_item_errors(items)
        self.rest.validate(changes)
        sps = changes.get("invalid_service_providers", self.invalid_service_providers)
        if not isinstance(sps, list) or not all(isinstance(x, str) and x for x in sps):
            raise ValueError("setting 'invalid_service_providers' must be a list of service provider ids")
        ttl = changes.get("token_ttl", self.token_ttl)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise ValueError("setting 'token_ttl' must be a whole number of seconds >= 1, got %r" % (ttl,))
        mode = changes.get("retry_after", self.retry_after)
        mode = "none" if mode is None else mode
        if mode not in RETRY_AFTER_MODES:
            raise ValueError("setting 'retry_after' must be one of none, seconds, date; got %r" % (mode,))
        prefixes = changes.get("redirect_uri_prefixes", self.redirect_uri_prefixes)
        if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes):
            raise ValueError("setting 'redirect_uri_prefixes' must be a list of non-empty strings")
        # A changed client key also changes what a bucket means: every bucket starts full again.
        if any(k in changes for k in ("rate", "burst", "throttle", "burst_refill", "trust_forwarded_for")):
            rate, burst = changes.get("rate", self.throttle.rate), changes.get("burst", self.throttle.burst)
            if isinstance(rate, bool) or not isinstance(rate, (int, float)):
                raise ValueError("setting 'rate' must be a number of requests per second, got %r" % (rate,))
            if isinstance(burst, bool) or not isinstance(burst, int):
                raise ValueError("setting 'burst' must be a whole number of requests, got %r" % (burst,))
            self.throttle.configure(rate, burst, changes.get("throttle"), changes.get("burst_refill"))
        self.token_ttl, self.retry_after, self.redirect_uri_prefixes = ttl, mode, list(prefixes)
        self.legacy = changes.get("legacy", self.legacy)
        self.strict_device_info = changes.get("strict_device_info", self.strict_device_info)
        self.trust_forwarded_for = changes.get("trust_forwarded_for", self.trust_forwarded_for)
        self.register_content_type = changes.get("register_content_type", self.register_content_type)
        self.error_style = changes.get("error_style", self.error_style)
        self.error_form = changes.get("error_form", self.error_form)
        self.item_errors, self.invalid_service_providers = copy.deepcopy(items), list(sps)
        self.rest.apply(changes)
        return self.config()

    def mint_statement(self, app_id: str | None, now: float, approved: bool = True,
                       redirect_uris: list[str] | None = None) -> str:
        """A software statement as the TVE Dashboard gives it; registers (approves) the app unless told not to."""
        app_id = app_id or DEFAULT_APP_ID
        if not isinstance(app_id, str):
            raise ValueError("app_id must be a string, got %r" % (app_id,))
        if redirect_uris is not None and (not isinstance(redirect_uris, list)
                                          or not all(isinstance(u, str) for u in redirect_uris)):
            raise ValueError("redirect_uris must be a list of strings")
        if approved:
            app = self.apps.setdefault(app_id, {"redirect_uris": None})
            if redirect_uris is not None:
                app["redirect_uris"] = list(redirect_uris)
        iat = int(now)
        # jti is not in Adobe's samples; it keeps two statements minted in the same second distinct.
        statement = jwtutil.sign({"sub": app_id, "iss": ISSUER, "iat": iat, "nbf": iat, "jti": str(uuid.uuid4())},
                                 self.key, self.kid)
        self.statements[jwtutil.fingerprint(statement)] = app_id
        return statement

    def revoke_statement(self, statement_or_app_id: str, clients: bool = True) -> dict[str, int]:
        """Revoke one statement (JWT) or every statement minted for an app id; by default also the
        clients registered with them, as Adobe's revocation blocks every device using a statement."""
        target = statement_or_app_id
        if not isinstance(target, str) or not target:
            raise ValueError("give a software statement (JWT) or an app id to revoke")
        if target.count(".") == 2 and target.startswith("eyJ"):
            fps = {jwtutil.fingerprint(target)}
        else:
            fps = {fp for fp, app in self.statements.items() if app == target}
            if not fps:
                raise ValueError("no statement was minted for app id %r; mint one first or pass the JWT" % target)
        self.revoked_statements |= fps
        n_clients = 0
        if clients:
            for c in self.clients.values():
                if c["statement"] in fps and not c["revoked"]:
                    c["revoked"] = True
                    n_clients += 1
        return {"statements": len(fps), "clients": n_clients}

    def _client(self, client_id: str) -> dict[str, Any]:
        if client_id not in self.clients:
            raise ValueError("unknown client_id %r; GET /_emulator/clients lists the registered ones" % (client_id,))
        return self.clients[client_id]

    def revoke_client(self, client_id: str) -> None:
        self._client(client_id)["revoked"] = True

    def set_client_allowed(self, client_id: str, allowed: bool) -> None:
        self._client(client_id)["allowed"] = bool(allowed)

    def list_clients(self) -> list[dict[str, Any]]:
        return [{"client_id": cid, "app_id": c["app_id"], "revoked": c["revoked"], "allowed": c["allowed"],
                 "issued_at": c["issued_at"], "redirect_uris": c["redirect_uris"],
                 "client_secret": c["secret"][:4] + "…"} for cid, c in self.clients.items()]

    def stats(self) -> dict[str, Any]:
        s = copy.deepcopy(self._stats)
        s["device_info_problems"] = list(s["device_info_problems"])
        s["requests"] = list(s["requests"])
        s["clients"] = len(self.clients)
        s["faults_pending"] = len(self.faults.list())
        return s

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """The request log (oldest first), optionally only one endpoint's requests."""
        return [copy.deepcopy(r) for r in self._stats["requests"] if endpoint in (None, r["endpoint"])]

    def reset_stats(self) -> None:
        self._stats = _new_stats()

    # ----- request handling -------------------------------------------------------------------------

    def client_key(self, req: dict[str, Any]) -> str:
        if self.trust_forwarded_for:
            xff = req["headers"].get("x-forwarded-for", "")
            first = xff.split(",")[0].strip()
            if first:
                return first
        return req["ip"]

    def _effective_device_info(self, req: dict[str, Any], ip: str) -> None:
        """Decode X-Device-Info once and merge it over what the connection shows (reference section 4)."""
        explicit, problems = deviceinfo.check(req["headers"].get("x-device-info"))
        extracted = {"connectionIp": ip, "connectionPort": req.get("port"), "connectionSecure": req.get("tls"),
                     "userAgent": req["headers"].get("user-agent")}
        req["device_info"] = (explicit, problems, deviceinfo.effective(explicit, extracted))

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        endpoint = endpoint_of(req["path"])
        ip = self.client_key(req)
        meta = {"endpoint": endpoint, "fault": None, "client_id": None,
                "call": restv2.call_name(req["path"], req["method"]) if endpoint == "protected" else None}
        if endpoint == "mvpd":  # the MVPD's page, not Adobe's API: neither throttled nor in the request log
            self._stats["mvpd"] += 1
            return self.rest.mvpd_page(req, meta)
        if endpoint != "other":
            self._effective_device_info(req, ip)
        if endpoint == "other":
            resp = dict(status=404, headers=[("Content-Type", "text/plain;charset=utf-8")],
                        body=b"Not Found: the emulator serves /o/client/register, /o/client/token, /api/v2/... "
                             b"and /_emulator/\n", code="not_found", reason="unknown path", **meta)
            self._stats["other"] += 1  # kept out of the request log: it holds exactly the throttled traffic
            return resp
        per_ip = self._stats["per_client_ip"].setdefault(ip, {"requests": 0, "throttled": 0})
        per_ip["requests"] += 1
        admitted, wait = self.throttle.take(ip, req["t"])
        if not admitted:
            self._stats["throttled"] += 1
            per_ip["throttled"] += 1
            resp = self._throttled(wait, req["now"], meta)
            self._record(req, ip, resp)
            return resp
        fault = self.faults.take(endpoint)
        if fault is not None:
            self._stats["faults_served"] += 1
        if fault is not None and (fault.get("reset") or fault.get("hang")):
            resp = dict(status=0, headers=[], body=b"", code=None, reason="no answer (fault)", **meta)
        elif fault is not None and "status" in fault:
            resp = self._fault_answer(fault, meta)
        else:
            skew = fault.get("clock_skew", 0.0) if fault else 0.0
            handler = {"register": self._register, "token": self._token, "protected": self._protected}[endpoint]
            try:
                resp = handler(req, ip, req["now"], skew, meta)
            except _Reject as r:
                resp = r.resp
            counts = self._stats[endpoint]
            # Item-level errors come with a 200; the authenticate page's redirect (302) is a success.
            if 200 <= resp["status"] < 400 and resp.get("code") is None:
                counts["ok"] += 1
            else:
                counts["error"] += 1
                counts["codes"][resp["code"]] = counts["codes"].get(resp["code"], 0) + 1
        if fault is not None:
            resp["fault"] = fault
            if fault.get("malformed_json"):
                resp["body"] = resp["body"][: max(1, len(resp["body"]) // 2)]
            if "retry_after" in fault:
                resp["headers"].append(("Retry-After", fault["retry_after"]))
        self._record(req, ip, resp)
        return resp

    def _record(self, req: dict[str, Any], ip: str, resp: dict[str, Any]) -> None:
        fault = resp.get("fault")
        kinds = "+".join(k for k in fault if k not in ("endpoint", "count", "id")) if fault else None
        header_list = req.get("header_list")
        if header_list is None:  # sans-I/O callers pass only the lower-case dict
            header_list = list(req["headers"].items())
        body = req["body"].decode("utf-8", "backslashreplace")
        _, _, effective = req.get("device_info") or (None, None, {})
        ip_seen = effective.get("connectionIp")
        self._stats["requests"].append({
            "t": req["t"], "endpoint": resp["endpoint"], "call": resp.get("call"), "status": resp["status"], "ip": ip,
            "code": resp.get("code"),
            "fault": kinds, "client_id": resp.get("client_id"),
            "method": req["method"], "path": req["path"], "query": mask_secrets(req.get("query") or ""),
            "headers": [[name, mask_header(name, value)] for name, value in header_list],
            "body": mask_secrets(body[:LOG_BODY_MAX]), "body_bytes": len(req["body"]),
            "body_truncated": len(body) > LOG_BODY_MAX,
            "connection_ip": ip_seen if isinstance(ip_seen, str) else None,
            "connection_port": effective.get("connectionPort"),
            "device_info": effective, "unknown_platform": deviceinfo.unknown_platform(effective)})

    def _throttled(self, wait: float, now: float, meta: dict[str, Any]) -> dict[str, Any]:
        headers = [("Content-Type", "text/html")]
        secs = Throttle.retry_after_seconds(wait)
        if self.retry_after == "seconds":
            headers.append(("Retry-After", str(secs)))
        elif self.retry_after == "date":
            headers.append(("Retry-After", email.utils.formatdate(now + secs, usegmt=True)))
        return dict(status=429, headers=headers, body=THROTTLE_HTML, code="throttled",
                    reason="over %g req/s after a burst of %d" % (self.throttle.rate, self.throttle.burst), **meta)

    def _fault_answer(self, fault: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        status = fault["status"]
        if fault.get("no_body"):  # e.g. a bare 401/403 from a gateway in front of the DCR endpoints
            return dict(status=status, headers=[], body=b"", code="fault_%d" % status,
                        reason="injected status %d without a body" % status, **meta)
        body = fault.get("body")
        ctype = fault.get("content_type")
        if body is None:
            phrase = REASONS.get(status, "Error")
            body = ("<html><head><title>%d %s</title></head><body><h1>%d %s</h1>"
                    "<p>Injected by the pass-agent emulator.</p></body></html>" % (status, phrase, status, phrase))
            ctype = ctype or "text/html"
        elif ctype is None:
            try:
                json.loads(body)
                ctype = "application/json;charset=utf-8"
            except ValueError:
                ctype = "text/plain;charset=utf-8"
        return dict(status=status, headers=[("Content-Type", ctype)], body=body.encode("utf-8"),
                    code="fault_%d" % status, reason="injected status %d" % status, **meta)

    def _device_info(self, req: dict[str, Any], ip: str, endpoint: str) -> list[str]:
        if "device_info" not in req:
            self._effective_device_info(req, ip)
        _, problems, _ = req["device_info"]
        if problems:
            self._stats["device_info_problems"].append(
                {"t": req["t"], "endpoint": endpoint, "ip": ip, "problems": problems})
        return problems

    def _register_content_type_ok(self, value: str) -> bool:
        if self.register_content_type == "exact":
            return value == REGISTER_CONTENT_TYPE
        mtype, params = _media_type(value)
        charset = params.get("charset")
        if mtype != "application/json":
            return False
        if self.register_content_type == "strict":
            return charset is not None and charset.lower() == "utf-8"
        return charset is None or charset.lower() in ("utf-8", "utf8")

    def _register(self, req: dict[str, Any], ip: str, now: float, skew: float,
                  meta: dict[str, Any]) -> dict[str, Any]:
        if req["method"] != "POST":
            raise _oauth_error(405, "invalid_request", "client/register accepts only POST", **meta)
        ctype = req["headers"].get("content-type", "")
        if not self._register_content_type_ok(ctype):
            # Adobe documents only 400 invalid_request for this endpoint ("The request includes an
            # unsupported parameter value" / "The request is malformed"), never 415.
            raise _oauth_error(400, "invalid_request", "Content-Type is %r; Adobe requires %s (check: %s)"
                               % (ctype[:80], REGISTER_CONTENT_TYPE, self.register_content_type), **meta)
        problems = self._device_info(req, ip, "register")
        if problems and self.strict_device_info:
            raise _oauth_error(400, "invalid_request", "strict mode: " + problems[0], **meta)
        try:
            body = json.loads(req["body"].decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError) as e:
            raise _oauth_error(400, "invalid_request", "body is not a UTF-8 JSON object without repeated "
                               "keys (%s)" % str(e)[:80], **meta)
        if not isinstance(body, dict):
            raise _oauth_error(400, "invalid_request", "body must be a JSON object", **meta)
        statement = body.get("software_statement")
        if not isinstance(statement, str) or not statement:
            raise _oauth_error(400, "invalid_request", "software_statement is missing or not a string", **meta)
        redirect_uri = body.get("redirect_uri")
        if redirect_uri is not None and not isinstance(redirect_uri, str):
            raise _oauth_error(400, "invalid_request", "redirect_uri must be a string when present", **meta)
        try:
            claims = jwtutil.verify(statement, self.public_key)
        except jwtutil.JWTError as e:
            raise _oauth_error(400, "invalid_software_statement", "software_statement: %s" % e, **meta)
        if claims.get("iss") != ISSUER or not isinstance(claims.get("sub"), str):
            raise _oauth_error(400, "invalid_software_statement",
                               "software_statement needs iss %r and a string sub" % ISSUER, **meta)
        for claim in ("nbf", "iat"):
            if isinstance(claims.get(claim), (int, float)) and claims[claim] > now + NBF_LEEWAY:
                raise _oauth_error(400, "invalid_software_statement",
                                   "software_statement %s lies in the future" % claim, **meta)
        if isinstance(claims.get("exp"), (int, float)) and claims["exp"] <= now:
            raise _oauth_error(400, "invalid_software_statement", "software_statement has expired", **meta)
        fp = jwtutil.fingerprint(statement)
        if fp in self.revoked_statements:
            raise _oauth_error(400, "invalid_software_statement",
                               "software_statement %s was revoked; mint a new one" % fp[:8], **meta)
        app = self.apps.get(claims["sub"])
        if app is None:
            raise _oauth_error(400, "unapproved_software_statement",
                               "application %r is not approved on this server" % claims["sub"], **meta)
        if redirect_uri is not None:
            allowed = app["redirect_uris"]
            ok = redirect_uri in allowed if allowed is not None else any(
                redirect_uri.startswith(p) for p in self.redirect_uri_prefixes)
            if not ok:
                raise _oauth_error(400, "invalid_redirect_uri", "redirect_uri %r is not allowed for application %r"
                                   % (redirect_uri[:80], claims["sub"]), **meta)
        client_id, secret = str(uuid.uuid4()), str(uuid.uuid4())
        issued = int(now + skew) if self.legacy else int((now + skew) * 1000)
        uris = [redirect_uri] if redirect_uri is not None else []
        self.clients[client_id] = {"secret": secret, "app_id": claims["sub"], "statement": fp, "revoked": False,
                                   "allowed": True, "issued_at": issued, "redirect_uris": uris}
        meta["client_id"] = client_id
        return _ok(201, {"client_id": client_id, "client_secret": secret, "client_id_issued_at": issued,
                         "redirect_uris": uris, "grant_types": ["client_credentials"], "scopes": ["api:client:v2"]},
                   **meta)

    def _token(self, req: dict[str, Any], ip: str, now: float, skew: float,
               meta: dict[str, Any]) -> dict[str, Any]:
        if req["method"] != "POST":
            raise _oauth_error(405, "invalid_request", "client/token accepts only POST", **meta)
        try:
            pairs = parse_qsl(req["query"], keep_blank_values=True, strict_parsing=bool(req["query"]))
            if req["body"]:
                mtype, _ = _media_type(req["headers"].get("content-type", ""))
                if mtype != "application/x-www-form-urlencoded":
                    raise _oauth_error(400, "invalid_request", "Content-Type is %r; send the parameters as "
                                       "application/x-www-form-urlencoded" % req["headers"].get("content-type", ""),
                                       **meta)
                pairs += parse_qsl(req["body"].decode("utf-8"), keep_blank_values=True, strict_parsing=True)
            params = _no_duplicates(pairs)
        except (UnicodeDecodeError, ValueError) as e:
            raise _oauth_error(400, "invalid_request", "parameters are malformed (%s)" % str(e)[:80], **meta)
        problems = self._device_info(req, ip, "token")
        if problems and self.strict_device_info:
            raise _oauth_error(400, "invalid_request", "strict mode: " + problems[0], **meta)
        missing = [p for p in ("client_id", "client_secret", "grant_type") if not params.get(p)]
        if missing:
            raise _oauth_error(400, "invalid_request", "missing parameter(s): %s" % ", ".join(missing), **meta)
        if params["grant_type"] != "client_credentials":
            raise _oauth_error(400, "unsupported_grant_type", "grant_type %r is not supported; use "
                               "client_credentials" % params["grant_type"][:40], **meta)
        client_id = params["client_id"]
        client = self.clients.get(client_id)
        if client is None:
            raise _oauth_error(400, "invalid_client", "client_id %r is unknown" % client_id[:40], **meta)
        meta["client_id"] = client_id
        if client["revoked"]:
            raise _oauth_error(400, "invalid_client", "client %s was revoked; register again" % client_id, **meta)
        if not hmac.compare_digest(client["secret"].encode(), params["client_secret"].encode("utf-8", "replace")):
            raise _oauth_error(400, "invalid_client", "client_secret does not match client %s" % client_id, **meta)
        if not client["allowed"]:
            raise _oauth_error(400, "unauthorized_client", "client %s may not use client_credentials" % client_id,
                               **meta)
        per = self._stats["per_client_id"].setdefault(client_id, {"token": 0, "protected": 0})
        per["token"] += 1
        jti = str(uuid.uuid4())
        iat = int(now + skew)  # a skewed server clock shows in the issued times only
        token = jwtutil.sign({"sub": client_id, "iss": ISSUER, "iat": iat, "exp": iat + self.token_ttl, "jti": jti,
                              "app": client["app_id"]}, self.key, self.kid)
        return _ok(200 if self.legacy else 201,
                   {"access_token": token, "token_type": "bearer", "expires_in": self.token_ttl,
                    "created_at": iat if self.legacy else int((now + skew) * 1000), "id": jti}, **meta)

    def _eec(self, code: str, req: dict[str, Any], items: list[str] | None, message: str | None = None,
             **meta: Any) -> _Reject:
        """An Enhanced Error Code answer in the configured form (top, wrapped, or on every item)."""
        obj = eec_object(code, message)
        reason = "%s: %s" % (code, message or obj["message"])
        headers = [("Content-Type", "application/json;charset=utf-8"), ("X-Emulator-Reason", _header_safe(reason))]
        status, body = obj["status"], obj
        if self.error_form == "wrapped":
            body = {"error": obj}
        elif self.error_form == "item" and items:
            r = restv2.route(req["path"])
            sp, mvpd = (r[1]["sp"], r[1].get("mvpd", "")) if r else ("", "")
            status = 200  # Adobe: the HTTP status may differ from the item's "status"
            body = {"decisions": [{"resource": res, "serviceProvider": sp, "mvpd": mvpd, "source": "mvpd",
                                   "authorized": False, "error": dict(obj)} for res in items]}
        return _Reject(dict(status=status, headers=headers, body=json.dumps(body).encode(), code=code,
                            reason=reason, **meta))

    def _protected(self, req: dict[str, Any], ip: str, now: float, skew: float,
                   meta: dict[str, Any]) -> dict[str, Any]:
        r = restv2.route(req["path"])
        if r is not None and r[0] == "authenticate":  # opened by the second-screen browser: no headers
            return self.rest.authenticate_page(req, r[1], meta)
        items = restv2.resources(req["body"]) if r is not None and r[0].startswith("decisions.") else None
        legacy_codes = self.error_style == "2023"
        problems = self._device_info(req, ip, "protected")
        if problems and self.strict_device_info:
            raise self._eec("invalid_device_info" if legacy_codes else "invalid_header_device_info", req, items,
                            "strict mode: " + problems[0], **meta)
        auth = req["headers"].get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _plain_401("the Authorization: Bearer <access_token> header is missing or malformed", **meta)
        try:
            claims = jwtutil.verify(token.strip(), self.public_key)
            if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("exp"), (int, float)):
                raise jwtutil.JWTError("access token lacks sub or exp")
        except jwtutil.JWTError as e:
            if legacy_codes:
                raise self._eec("invalid_access_token_signature", req, items, "access token: %s" % e, **meta)
            raise _plain_401("access token: %s" % e, **meta)
        client_id = claims["sub"]
        meta["client_id"] = client_id
        if claims["exp"] <= now:
            if legacy_codes:
                raise self._eec("access_token_expired", req, items, **meta)
            raise _plain_401("the access token expired; get a new one from client/token", **meta)
        client = self.clients.get(client_id)
        if client is None or client["revoked"]:
            raise self._eec("invalid_client_id" if legacy_codes else "invalid_access_token_client_application",
                            req, items, **meta)
        parts = req["path"].split("/")  # ['', 'api', 'v2', sp, ...]
        sp = parts[3] if len(parts) > 3 else ""
        if sp in self.invalid_service_providers:
            raise self._eec("invalid_access_token_service_provider", req, items, **meta)
        per = self._stats["per_client_id"].setdefault(client_id, {"token": 0, "protected": 0})
        per["protected"] += 1
        if r is None:
            raise self._eec("unknown_resource", req, None, **meta)

        def eec(code: str, items: list[str] | None = None, message: str | None = None,
                allow: str | None = None) -> _Reject:
            rej = self._eec(code, req, items, message, **meta)
            if allow:
                rej.resp["headers"].append(("Allow", allow))
            return rej

        return self.rest.handle(req, r[0], r[1], client_id, eec, self.item_errors, meta)
