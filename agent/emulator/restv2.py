"""The emulator's REST API v2 surface: configuration, sessions (second-screen registration codes), the
authenticate page, profiles, decisions (authorize, preauthorize) and logout, in the shapes of Adobe's
REST API v2 pages (docs/EMULATOR.md names each page and every quirk kept).

Sans-I/O. `service.Service` does the shared part first (throttle, faults, the access-token checks in the
chosen `error_style`, `invalid_service_providers`) and then calls `RestV2.handle` with the route and the
token's client_id; this module checks what each call requires (reference section 8: AP-Device-Identifier
and X-Device-Info where listed, Content-Type on POSTs), then answers. It keeps:
- sessions: registration code -> who created it (service provider, client_id, AP-Device-Identifier),
  its parameters (mvpd, domainName, redirectUrl) and its expiry (`session_ttl`, 30 min by default);
- profiles: (service provider, client_id, AP-Device-Identifier) -> {mvpd: profile}. A login completed
  for a code (the authenticate page, or the emulated MVPD login page it redirects to) makes the profile
  appear for the device that created the session; logout removes it; `profile_ttl` expires it.
Every expiry is decided on the request's `t` (the emulator's clock, which tests may drive); the wall
clock `now` only feeds the millisecond timestamps of the answers.

Must never: answer a REST v2 call that lacks a required header with anything but an Enhanced Error Code;
let a code of one service provider read or complete another's session; put an access token into an
answer, a page or a reason; or grow without bound (sessions and profile keys are capped, oldest first).
"""

from __future__ import annotations

import base64
import binascii
import collections
import html
import json
import secrets
import uuid
from typing import Any, Callable
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from .eec import take_item_error

SESSION_PARAMS = ("mvpd", "domainName", "redirectUrl")
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # Adobe's samples: 7 upper-case letters and digits
CODE_LENGTH = 7
MAX_SESSIONS = 10000
MAX_PROFILE_KEYS = 10000
MVPD_LOGIN_PATH = "/adobe-services/authenticate/saml"  # the path of the Location in Adobe's sample
DEFAULT_MVPDS = [{"id": "Cablevision", "displayName": "Optimum"},
                 {"id": "Comcast_SSO", "displayName": "Xfinity"}]
FORM_CT = "application/x-www-form-urlencoded"
JSON_CT = "application/json"
# call -> (method, headers it requires beyond Authorization, request Content-Type): reference section 8.
CALLS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "configuration": ("GET", (), None),
    "sessions.create": ("POST", ("ap-device-identifier", "x-device-info"), FORM_CT),
    "sessions.resume": ("POST", (), FORM_CT),
    "sessions.retrieve": ("GET", (), None),
    "profiles": ("GET", ("ap-device-identifier", "x-device-info"), None),
    "profiles.mvpd": ("GET", ("ap-device-identifier", "x-device-info"), None),
    "profiles.code": ("GET", (), None),
    "decisions.authorize": ("POST", ("ap-device-identifier", "x-device-info"), JSON_CT),
    "decisions.preauthorize": ("POST", ("ap-device-identifier", "x-device-info"), JSON_CT),
    "logout": ("GET", ("ap-device-identifier", "x-device-info"), None),
}


def route(path: str) -> tuple[str, dict[str, str]] | None:
    """The REST v2 call a path names, with its path parameters; None for anything else under /api/."""
    if path.endswith("/") and path.count("/") > 3:
        path = path[:-1]  # Adobe's configuration sample asks for ".../configuration/"
    parts = path.split("/")
    if len(parts) < 5 or parts[1:3] != ["api", "v2"] or not all(parts[3:]):
        return None
    if parts[3] == "authenticate" and len(parts) == 6:
        return "authenticate", {"sp": parts[4], "code": parts[5]}
    sp, rest = parts[3], parts[4:]
    if rest == ["configuration"]:
        return "configuration", {"sp": sp}
    if rest == ["sessions"]:
        return "sessions.create", {"sp": sp}
    if len(rest) == 2 and rest[0] == "sessions":
        return "sessions.code", {"sp": sp, "code": rest[1]}
    if rest == ["profiles"]:
        return "profiles", {"sp": sp}
    if len(rest) == 3 and rest[:2] == ["profiles", "code"]:
        return "profiles.code", {"sp": sp, "code": rest[2]}
    if len(rest) == 2 and rest[0] == "profiles":
        return "profiles.mvpd", {"sp": sp, "mvpd": rest[1]}
    if len(rest) == 3 and rest[0] == "decisions" and rest[1] in ("authorize", "preauthorize"):
        return "decisions." + rest[1], {"sp": sp, "mvpd": rest[2]}
    if len(rest) == 2 and rest[0] == "logout":
        return "logout", {"sp": sp, "mvpd": rest[1]}
    return None


def call_name(path: str, method: str) -> str | None:
    """The request log's name for a request under /api/: the call, or None when no call has that path."""
    r = route(path)
    if r is None:
        return None
    if r[0] == "sessions.code":
        return "sessions.resume" if method == "POST" else "sessions.retrieve"
    return r[0]


def _json(status: int, obj: dict[str, Any], **meta: Any) -> dict[str, Any]:
    headers = [("Content-Type", "application/json;charset=utf-8"), ("Cache-Control", "no-store")]
    return dict(status=status, headers=headers, body=json.dumps(obj).encode(), code=None, reason=None, **meta)


def _page(status: int, title: str, body: str, meta: dict[str, Any], headers: list[tuple[str, str]] | None = None,
          code: str | None = None, reason: str | None = None) -> dict[str, Any]:
    text = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>%s</title></head>\n<body>\n<h1>%s</h1>\n%s\n"
            "</body></html>\n" % (html.escape(title), html.escape(title), body))
    return dict(status=status, headers=[("Content-Type", "text/html;charset=utf-8"), ("Cache-Control", "no-store")]
                + (headers or []), body=text.encode("utf-8"), code=code, reason=reason, **meta)


def _media_type_is(value: str, wanted: str) -> bool:
    """HTTP media-type comparison: case-insensitive type, optional parameters; a charset must be UTF-8."""
    parts = [p.strip() for p in value.split(";")]
    if parts[0].lower() != wanted:
        return False
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k.strip().lower() == "charset" and v.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def device_identifier_ok(value: str | None) -> bool:
    """`fingerprint <Base64 of the device identifier>` (Adobe's "Header - AP-Device-Identifier" page)."""
    if not value:
        return False
    kind, sep, ident = value.partition(" ")
    if kind != "fingerprint" or not sep or not ident or ident != ident.strip():
        return False
    try:
        return len(base64.b64decode(ident.encode("ascii"), validate=True)) > 0
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


def _form(body: bytes) -> dict[str, str]:
    """Form parameters, first value wins; undecodable bytes make an empty form (parameters go missing)."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=False)
    except UnicodeDecodeError:
        return {}
    params: dict[str, str] = {}
    for k, v in pairs:
        params.setdefault(k, v)
    return params


def resources(body: bytes) -> list[str] | None:
    """The `resources` of a decisions request body, or None when it has none usable."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    res = obj.get("resources") if isinstance(obj, dict) else None
    if not isinstance(res, list) or not res or not all(isinstance(r, str) and r for r in res):
        return None
    return res


def _absolute_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class RestV2:
    """Sessions and profiles, and every REST v2 answer. Call only with the shell's lock held."""

    def __init__(self) -> None:
        self.mvpds: list[dict[str, Any]] = [dict(m) for m in DEFAULT_MVPDS]
        self.session_ttl, self.profile_ttl = 1800, 30 * 86400
        self.require_profile, self.max_resources = True, 100
        self.sessions: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.profiles: collections.OrderedDict[tuple[str, str, str], dict[str, dict[str, Any]]] = \
            collections.OrderedDict()

    # ----- settings --------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {"mvpds": [dict(m) for m in self.mvpds], "session_ttl": self.session_ttl,
                "profile_ttl": self.profile_ttl, "require_profile": self.require_profile,
                "max_resources": self.max_resources}

    @staticmethod
    def validate(changes: dict[str, Any]) -> None:
        """Raise ValueError naming the first bad REST v2 setting among `changes` (others are ignored)."""
        if "mvpds" in changes:
            mvpds = changes["mvpds"]
            if not isinstance(mvpds, list) or not mvpds or not all(
                    isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"] and "/" not in m["id"]
                    and isinstance(m.get("displayName", ""), str) for m in mvpds):
                raise ValueError("setting 'mvpds' must be a non-empty list of {\"id\": ..., \"displayName\": ...} "
                                 "(ids without '/')")
        for key in ("session_ttl", "profile_ttl", "max_resources"):
            if key in changes:
                v = changes[key]
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError("setting %r must be a whole number >= 1, got %r" % (key, v))
        if "require_profile" in changes and not isinstance(changes["require_profile"], bool):
            raise ValueError("setting 'require_profile' must be true or false, got %r" % (changes["require_profile"],))

    def apply(self, changes: dict[str, Any]) -> None:
        if "mvpds" in changes:
            self.mvpds = [{"id": m["id"], "displayName": m.get("displayName") or m["id"]} for m in changes["mvpds"]]
        for key in ("session_ttl", "profile_ttl", "max_resources", "require_profile"):
            if key in changes:
                setattr(self, key, changes[key])

    def _mvpd_known(self, mvpd: str | None) -> bool:
        return bool(mvpd) and any(m["id"] == mvpd for m in self.mvpds)

    # ----- sessions and profiles -------------------------------------------------------------------

    def _new_code(self) -> str:
        while True:
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            if code not in self.sessions:
                return code

    def _session(self, code: str, sp: str, t: float, eec: Callable[..., Exception],
                 allow_done: bool = False) -> dict[str, Any]:
        """The live session of `code` for service provider `sp`, else the documented error. A completed
        session outlives its expiry only for `allow_done` (profiles/code: the login it made stays readable)."""
        s = self.sessions.get(code)
        if s is None or s["sp"] != sp:  # another provider's code is as unknown as a made-up one
            raise eec("invalid_parameter_code", message="no authentication session has code %r for service "
                      "provider %r; create one with POST /api/v2/%s/sessions" % (code[:16], sp[:40], sp[:40]))
        if t >= s["t_end"] and not (allow_done and s["done"]):
            raise eec("invalid_authentication_session", message="the authentication session of code %s expired "
                      "(it lives %d s); create a new one" % (code, self.session_ttl))
        return s

    def _profile(self, key: tuple[str, str, str], mvpd: str, t: float) -> tuple[dict[str, Any] | None, bool]:
        """(profile, expired): the device's profile for one MVPD; an expired one is dropped."""
        store = self.profiles.get(key) or {}
        p = store.get(mvpd)
        if p is not None and t >= p["t_end"]:
            del store[mvpd]
            return None, True
        return p, False

    def _valid_profiles(self, key: tuple[str, str, str], t: float) -> dict[str, dict[str, Any]]:
        out = {}
        for mvpd in list(self.profiles.get(key) or {}):
            p, _ = self._profile(key, mvpd, t)
            if p is not None:
                out[mvpd] = p
        return out

    @staticmethod
    def _public(p: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in p.items() if k != "t_end"}

    def complete_login(self, s: dict[str, Any], mvpd: str, user: str, t: float, now: float) -> dict[str, Any]:
        """The MVPD said yes: the device that created the session gets a regular profile for `mvpd`."""
        ms = int(now * 1000)
        user_b64 = base64.b64encode(user.encode("utf-8")).decode("ascii")
        profile = {"notBefore": ms, "notAfter": ms + self.profile_ttl * 1000, "issuer": mvpd, "type": "regular",
                   "attributes": {"userID": {"value": user_b64, "state": "plain"},
                                  "householdID": {"value": user_b64, "state": "plain"}},
                   "t_end": t + self.profile_ttl}
        key = s["owner"]
        store = self.profiles.setdefault(key, {})
        self.profiles.move_to_end(key)
        store[mvpd] = profile
        while len(self.profiles) > MAX_PROFILE_KEYS:
            self.profiles.popitem(last=False)
        s["params"]["mvpd"], s["done"], s["user"] = mvpd, True, user
        return profile

    def _session_answer(self, s: dict[str, Any], missing_action: str) -> dict[str, Any]:
        sp, code, params = s["sp"], s["code"], s["params"]
        missing = [p for p in SESSION_PARAMS if not params.get(p)]
        body: dict[str, Any] = {}
        if missing:
            body.update(actionName=missing_action, actionType="direct", reasonType="none",
                        url="/api/v2/%s/sessions/%s" % (sp, code), missingParameters=missing)
        else:
            body.update(actionName="authenticate", actionType="interactive", reasonType="none",
                        url="/api/v2/authenticate/%s/%s" % (sp, code))
        body.update(code=code, sessionId=s["sessionId"])
        if params.get("mvpd"):
            body["mvpd"] = params["mvpd"]
        # Adobe's samples give the session's notBefore/notAfter as strings of milliseconds.
        body.update(serviceProvider=sp, notBefore=str(s["nb_ms"]), notAfter=str(s["na_ms"]))
        return body

    @staticmethod
    def _authorize_answer(sp: str, mvpd: str, session_id: str) -> dict[str, Any]:
        return {"actionName": "authorize", "actionType": "direct", "reasonType": "authenticated",
                "url": "/api/v2/%s/decisions/authorize/%s" % (sp, mvpd), "sessionId": session_id, "mvpd": mvpd,
                "serviceProvider": sp}

    def _check_params(self, params: dict[str, str], eec: Callable[..., Exception]) -> None:
        if params.get("mvpd") and not self._mvpd_known(params["mvpd"]):
            raise eec("invalid_parameter_mvpd", message="mvpd %r is not one of this service provider's MVPDs (%s)"
                      % (params["mvpd"][:40], ", ".join(m["id"] for m in self.mvpds)))
        if params.get("redirectUrl") and not _absolute_url(params["redirectUrl"]):
            raise eec("invalid_parameter_redirect_url", message="redirectUrl must be an absolute http(s) URL")

    # ----- the calls -------------------------------------------------------------------------------

    def handle(self, req: dict[str, Any], call: str, params: dict[str, str], client_id: str,
               eec: Callable[..., Exception], item_errors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        """Answer one authenticated REST v2 call. `eec(code, items=None, message=None)` builds the error
        to raise in the configured form; `item_errors` is the Service's live setting (counted down here)."""
        headers, t, now, sp = req["headers"], req["t"], req["now"], params["sp"]
        if call == "sessions.code":
            call = "sessions.resume" if req["method"] == "POST" else "sessions.retrieve"
        meta["call"] = call
        method, required, ctype = CALLS[call]
        if call == "sessions.retrieve" and req["method"] not in ("GET", "HEAD"):
            raise eec("method_not_allowed", message="sessions/{code} accepts GET (retrieve) and POST (resume)",
                      allow="GET, POST")
        if req["method"] != method and not (method == "GET" and req["method"] == "HEAD"):
            raise eec("method_not_allowed", message="%s accepts only %s" % (call, method), allow=method)
        items = resources(req["body"]) if call.startswith("decisions.") else None
        device_id = headers.get("ap-device-identifier")
        if "ap-device-identifier" in required and not device_identifier_ok(device_id):
            raise eec("invalid_header_device_identifier", message="AP-Device-Identifier is %s; send "
                      "'fingerprint <Base64 of a stable device id>'" % ("missing" if not device_id else "malformed"))
        if "x-device-info" in required and (req.get("device_info") or (None,))[0] is None:
            raise eec("invalid_header_device_info", message="X-Device-Info is missing or not Base64 of a JSON "
                      "object; %s requires it" % call)
        if ctype is not None and not _media_type_is(headers.get("content-type", ""), ctype):
            raise eec("invalid_header_content_type", message="Content-Type is %r; %s requires %s"
                      % (headers.get("content-type", "")[:80], call, ctype))
        owner = (sp, client_id, device_id or "")
        if call == "configuration":
            return _json(200, self._configuration(sp, req), **meta)
        if call == "sessions.create":
            return self._create(req, sp, owner, eec, meta)
        if call == "sessions.resume":
            s = self._session(params["code"], sp, t, eec)
            if s["done"] and self._profile(s["owner"], s["params"]["mvpd"], t)[0] is not None:
                return _json(200, self._authorize_answer(sp, s["params"]["mvpd"], s["sessionId"]), **meta)
            given = {k: v for k, v in _form(req["body"]).items() if k in SESSION_PARAMS and v}
            self._check_params(given, eec)
            s["params"].update(given)
            return _json(200, self._session_answer(s, "retry"), **meta)
        if call == "sessions.retrieve":
            s = self._session(params["code"], sp, t, eec)
            body: dict[str, Any] = {}
            missing = [p for p in SESSION_PARAMS if not s["params"].get(p)]
            if missing:
                body["missingParameters"] = missing
            body["existingParameters"] = dict({k: v for k, v in s["params"].items() if v}, serviceProvider=sp)
            body.update(device=s["device"], notBefore=str(s["nb_ms"]), notAfter=str(s["na_ms"]))
            return _json(200, body, **meta)
        if call == "profiles":
            return _json(200, {"profiles": {m: self._public(p) for m, p in self._valid_profiles(owner, t).items()}},
                         **meta)
        if call == "profiles.mvpd":
            mvpd = params["mvpd"]
            if not self._mvpd_known(mvpd):
                raise eec("invalid_parameter_mvpd", message="mvpd %r is unknown" % mvpd[:40])
            p, _ = self._profile(owner, mvpd, t)
            return _json(200, {"profiles": {mvpd: self._public(p)} if p else {}}, **meta)
        if call == "profiles.code":
            s = self._session(params["code"], sp, t, eec, allow_done=True)
            p = self._profile(s["owner"], s["params"]["mvpd"], t)[0] if s["done"] else None
            return _json(200, {"profiles": {s["params"]["mvpd"]: self._public(p)} if p else {}}, **meta)
        if call.startswith("decisions."):
            return self._decisions(call.split(".")[1], sp, params["mvpd"], owner, items, t, now, eec, item_errors,
                                   meta)
        return self._logout(req, sp, params["mvpd"], owner, t, eec, meta)

    def _configuration(self, sp: str, req: dict[str, Any]) -> dict[str, Any]:
        """Adobe's sample nests `mvpds` in `requestor`, its table lists `mvpds` beside it: both are sent."""
        di = (req.get("device_info") or (None, None, {}))[2] or {}
        mvpds = [dict(m) for m in self.mvpds]
        return {"device": str(di.get("primaryHardwareType") or "unknown"), "clientType": "native",
                "os": str(di.get("osName") or "Unknown"),
                "requestor": {"id": sp, "name": sp, "domains": [{"name": "localhost", "mvpdInitiated": False}],
                              "mvpds": mvpds},
                "mvpds": [dict(m) for m in mvpds], "time": int(req["now"] * 1000)}

    def _create(self, req: dict[str, Any], sp: str, owner: tuple[str, str, str], eec: Callable[..., Exception],
                meta: dict[str, Any]) -> dict[str, Any]:
        t, now = req["t"], req["now"]
        given = {k: v for k, v in _form(req["body"]).items() if k in SESSION_PARAMS and v}
        self._check_params(given, eec)
        session_id = str(uuid.uuid4())
        if given.get("mvpd") and self._profile(owner, given["mvpd"], t)[0] is not None:
            return _json(200, self._authorize_answer(sp, given["mvpd"], session_id), **meta)
        for code in [c for c, s in self.sessions.items() if t >= s["t_end"] and not s["done"]]:
            del self.sessions[code]
        while len(self.sessions) >= MAX_SESSIONS:
            self.sessions.popitem(last=False)
        ms = int(now * 1000)
        di = (req.get("device_info") or (None, None, {}))[2] or {}
        s = {"code": self._new_code(), "sessionId": session_id, "sp": sp, "owner": owner, "params": dict(given),
             "t_end": t + self.session_ttl, "nb_ms": ms, "na_ms": ms + self.session_ttl * 1000, "done": False,
             "user": None, "device": _device(di)}
        self.sessions[s["code"]] = s
        return _json(200, self._session_answer(s, "resume"), **meta)

    def _decisions(self, kind: str, sp: str, mvpd: str, owner: tuple[str, str, str], items: list[str] | None,
                   t: float, now: float, eec: Callable[..., Exception], item_errors: dict[str, Any],
                   meta: dict[str, Any]) -> dict[str, Any]:
        if not items:
            raise eec("invalid_parameter_resources", message="send {\"resources\": [\"<resource id>\", ...]}")
        if not self._mvpd_known(mvpd):
            raise eec("invalid_parameter_mvpd", items, message="mvpd %r is unknown" % mvpd[:40])
        if len(items) > self.max_resources:
            raise eec("too_many_resources", items, message="%d resources queried; at most %d"
                      % (len(items), self.max_resources))
        if self.require_profile:
            p, expired = self._profile(owner, mvpd, t)
            if p is None:
                raise eec("authenticated_profile_expired" if expired else "authenticated_profile_missing", items,
                          message=None if expired else "no profile for mvpd %r on this device (client and "
                          "AP-Device-Identifier); log in through sessions and the authenticate page" % mvpd[:40])
        ms = int(now * 1000)
        decisions = []
        for r in items:
            item: dict[str, Any] = {"resource": r, "serviceProvider": sp, "mvpd": mvpd, "source": "mvpd"}
            err = take_item_error(item_errors, r)
            item["authorized"] = err is None
            if err is not None:
                item["error"] = err
            else:
                if kind == "authorize":
                    media = {"resource": r, "mvpd": mvpd, "serviceProvider": sp, "issued": ms,
                             "id": str(uuid.uuid4()), "issuer": "pass-agent emulator"}
                    item["token"] = {"notBefore": ms, "notAfter": ms + 600000,
                                     "serializedToken": base64.b64encode(json.dumps(media).encode()).decode()}
                item["notBefore"], item["notAfter"] = ms, ms + 3600000
            decisions.append(item)
        return _json(200, {"decisions": decisions}, **meta)

    def _logout(self, req: dict[str, Any], sp: str, mvpd: str, owner: tuple[str, str, str], t: float,
                eec: Callable[..., Exception], meta: dict[str, Any]) -> dict[str, Any]:
        query = dict(parse_qsl(req.get("query") or "", keep_blank_values=True))
        if not query.get("redirectUrl") or not _absolute_url(query["redirectUrl"]):
            raise eec("invalid_parameter_redirect_url", message="logout needs ?redirectUrl=<URL-encoded absolute "
                      "http(s) URL>")
        if not self._mvpd_known(mvpd):
            raise eec("invalid_parameter_mvpd", message="mvpd %r is unknown" % mvpd[:40])
        p, _ = self._profile(owner, mvpd, t)
        if p is None:
            entry = {"actionName": "invalid", "actionType": "none", "mvpd": mvpd}
        else:
            del self.profiles[owner][mvpd]
            # The emulated MVPDs have no logout endpoint: Adobe's "complete" (nothing left to do).
            entry = {"actionName": "complete", "actionType": "none", "mvpd": mvpd}
        return _json(200, {"logouts": {mvpd: entry}}, **meta)

    # ----- the second screen (no access token) -----------------------------------------------------

    def _page_session(self, sp: str, code: str, t: float, meta: dict[str, Any]) -> tuple[dict[str, Any] | None,
                                                                                        dict[str, Any] | None]:
        s = self.sessions.get(code)
        if s is None or s["sp"] != sp:
            return None, _page(400, "Bad Request", "<p>No authentication session has this code for %s. Start "
                               "again on your TV.</p>" % html.escape(sp), meta, code="invalid_parameter_code",
                               reason="unknown code %r for %r" % (code[:16], sp[:40]))
        if t >= s["t_end"]:
            return None, _page(400, "Bad Request", "<p>This code has expired. Start again on your TV.</p>", meta,
                               code="invalid_authentication_session", reason="code %s expired" % code)
        return s, None

    def _signed_in(self, s: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        url = s["params"].get("redirectUrl")
        link = '<p><a href="%s">Continue</a></p>' % html.escape(url) if url else ""
        return _page(200, "Signed in", "<p id=\"result\" data-code=\"%s\" data-mvpd=\"%s\">You are signed in with "
                     "%s. You can return to your TV.</p>%s" % (html.escape(s["code"]), html.escape(s["params"]["mvpd"]),
                                                              html.escape(s["params"]["mvpd"]), link), meta)

    def authenticate_page(self, req: dict[str, Any], params: dict[str, str], meta: dict[str, Any]) -> dict[str, Any]:
        """GET /api/v2/authenticate/{sp}/{code}, opened by the second-screen browser (no headers required).
        Adobe answers 302 towards the MVPD login page; `?complete=1` (the emulator's own) signs in at once,
        as user `user` (default `emulated-user`), with `mvpd` filling a session that lacks one."""
        meta["call"] = "authenticate"
        if req["method"] not in ("GET", "HEAD"):
            return _page(405, "Method Not Allowed", "<p>Open this page with GET.</p>", meta, [("Allow", "GET")],
                         code="method_not_allowed", reason="authenticate page accepts only GET")
        s, err = self._page_session(params["sp"], params["code"], req["t"], meta)
        if s is None:
            return err  # type: ignore[return-value]
        query = dict(parse_qsl(req.get("query") or "", keep_blank_values=True))
        mvpd = s["params"].get("mvpd") or query.get("mvpd")
        if not self._mvpd_known(mvpd):
            return _page(400, "Bad Request", "<p>The session has no known MVPD: resume it with POST "
                         "/api/v2/%s/sessions/%s (mvpd=...) or add ?mvpd=...</p>" % (html.escape(s["sp"]),
                                                                                    html.escape(s["code"])),
                         meta, code="invalid_parameter_mvpd", reason="session %s has no known mvpd" % s["code"])
        if query.get("complete") not in (None, "", "0", "false"):
            self.complete_login(s, mvpd, (query.get("user") or "emulated-user")[:200], req["t"], req["now"])
            return self._signed_in(s, meta)
        location = MVPD_LOGIN_PATH + "?" + urlencode([
            ("noflash", "true"), ("mso_id", mvpd), ("requestor_id", s["sp"]), ("no_iframe", "false"),
            ("domain_name", s["params"].get("domainName") or ""), ("redirect_url", s["params"].get("redirectUrl") or ""),
            ("code", s["code"])], quote_via=quote)
        return dict(status=302, headers=[("Location", location), ("Cache-Control", "no-store"),
                                         ("Content-Type", "text/html;charset=utf-8")],
                    body=b"", code=None, reason=None, **meta)

    def mvpd_page(self, req: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        """The emulated MVPD login page: GET shows a form, POST (form fields code, requestor_id, mso_id,
        user) signs in and shows the result."""
        meta["call"] = "mvpd_login"
        if req["path"] != MVPD_LOGIN_PATH:
            return _page(404, "Not Found", "<p>The emulated MVPD serves only %s.</p>" % MVPD_LOGIN_PATH, meta,
                         code="not_found", reason="unknown MVPD page")
        if req["method"] == "POST":
            fields = _form(req["body"])
        elif req["method"] in ("GET", "HEAD"):
            fields = dict(parse_qsl(req.get("query") or "", keep_blank_values=True))
        else:
            return _page(405, "Method Not Allowed", "<p>GET shows the form, POST signs in.</p>", meta,
                         [("Allow", "GET, POST")], code="method_not_allowed", reason="MVPD page: GET or POST")
        s, err = self._page_session(fields.get("requestor_id", ""), fields.get("code", ""), req["t"], meta)
        if s is None:
            return err  # type: ignore[return-value]
        mvpd = fields.get("mso_id") or s["params"].get("mvpd")
        if not self._mvpd_known(mvpd):
            return _page(400, "Bad Request", "<p>Unknown MVPD.</p>", meta, code="invalid_parameter_mvpd",
                         reason="MVPD page without a known mso_id")
        if req["method"] == "POST":
            self.complete_login(s, mvpd, (fields.get("user") or "emulated-user")[:200], req["t"], req["now"])
            return self._signed_in(s, meta)
        name = next((m.get("displayName") or m["id"] for m in self.mvpds if m["id"] == mvpd), mvpd)
        hidden = "".join('<input type="hidden" name="%s" value="%s">' % (html.escape(k), html.escape(v))
                         for k, v in (("code", s["code"]), ("requestor_id", s["sp"]), ("mso_id", mvpd)))
        form = ('<form id="login" method="post" action="%s">%s\n<label>User <input name="user" '
                'value="emulated-user"></label>\n<label>Password <input name="password" type="password"></label>\n'
                '<button type="submit">Sign in</button></form>' % (MVPD_LOGIN_PATH, hidden))
        return _page(200, "Sign in to %s (emulated)" % name, form, meta)


def _device(di: dict[str, Any]) -> dict[str, Any]:
    """The `device` of a retrieved session, in the shape of Adobe's sample, from the creator's effective
    X-Device-Info."""
    def s(key: str) -> Any:
        v = di.get(key)
        return v if isinstance(v, (str, int, float, bool)) else None
    return {"type": s("primaryHardwareType") or "Unknown", "model": s("model"), "version": s("version"),
            "hardware": {"name": s("model"), "vendor": s("vendor"), "manufacturer": s("manufacturer")},
            "operatingSystem": {"name": s("osName"), "family": s("osFamily"), "vendor": s("osVendor"),
                                "version": s("osVersion")},
            "display": {"width": s("displayWidth"), "height": s("displayHeight"), "ppi": s("displayPpi"),
                        "diagonalSize": s("diagonalScreenSize")},
            "applicationId": s("applicationId"),
            "connection": {"ipAddress": s("connectionIp"), "port": s("connectionPort"),
                           "secure": s("connectionSecure"), "type": s("connectionType")}}
