"""The emulator's REST API v2 surface (issue 17) over real HTTP(S): each call in Adobe's documented
shape, each header requirement of reference section 8 and each Enhanced Error Code, the second-screen
login (authenticate page, emulated MVPD page), profiles per device, decisions with item-level errors
(including `retry` items that succeed after N attempts), logout, the throttle and the request log.

The whole user story runs with the agent's own HTTP shim (agent/urequests.py); the rest uses plain
http.client (agent.emulator.client). Time-dependent tests (session and profile expiry, throttle)
drive the emulator's clock, so they never wait and never depend on this machine's speed.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse

import pytest

from agent import urequests
from agent.emulator import Emulator
from agent.emulator.client import admin, device_info
from tests.emuhelpers import Clock, call

FORM_CT = "application/x-www-form-urlencoded"
JSON_CT = "application/json;charset=utf-8"
DEVICE = "fingerprint " + base64.b64encode(b"box-0001").decode()
OTHER_DEVICE = "fingerprint " + base64.b64encode(b"box-0002").decode()
SP = "REF30"
MVPD = "Cablevision"


@pytest.fixture
def emu(keydir):
    with Emulator(state_dir=keydir, throttle=False) as e:
        yield e


def new_token(emu) -> tuple[str, str]:
    """Register a client and fetch a token: (client_id, access_token)."""
    di = {"X-Device-Info": device_info()}
    status, _, data = call(emu, "POST", "/o/client/register", json.dumps({"software_statement": emu.mint_statement()}),
                           dict(di, **{"Content-Type": JSON_CT}))
    assert status == 201, data
    reg = json.loads(data)
    form = urllib.parse.urlencode({"client_id": reg["client_id"], "client_secret": reg["client_secret"],
                                   "grant_type": "client_credentials"})
    status, _, data = call(emu, "POST", "/o/client/token", form, dict(di, **{"Content-Type": FORM_CT}))
    assert status == 201, data
    return reg["client_id"], json.loads(data)["access_token"]


class Api:
    """One player on one device: sends what Adobe requires unless a test leaves something out."""

    def __init__(self, emu, token: str | None, device: str = DEVICE) -> None:
        self.emu, self.token, self.device = emu, token, device

    def headers(self, ctype: str | None = None, omit: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
        h = {"AP-Device-Identifier": self.device, "X-Device-Info": device_info()}
        if self.token is not None:
            h["Authorization"] = "Bearer " + self.token
        if ctype:
            h["Content-Type"] = ctype
        h.update({k.replace("_", "-"): v for k, v in extra.items()})
        return {k: v for k, v in h.items() if k not in omit}

    def req(self, method: str, path: str, body: str | None = None, ctype: str | None = None,
            omit: tuple[str, ...] = (), headers: dict[str, str] | None = None):
        h = self.headers(ctype, omit)
        h.update(headers or {})
        status, hdrs, data = call(self.emu, method, "/api/v2/" + path.lstrip("/"), body, h)
        try:
            obj = json.loads(data) if data and "json" in hdrs.get("content-type", "") else None
        except ValueError:
            obj = None
        return status, hdrs, data, obj

    def create(self, **params: str):
        return self.req("POST", SP + "/sessions", urllib.parse.urlencode(params), FORM_CT)

    def decisions(self, kind: str, resources: list[str], mvpd: str = MVPD):
        return self.req("POST", "%s/decisions/%s/%s" % (SP, kind, mvpd), json.dumps({"resources": resources}),
                        JSON_CT)

    def profiles(self, suffix: str = ""):
        return self.req("GET", SP + "/profiles" + suffix)


def full_session(api: Api) -> str:
    status, _, _, body = api.create(mvpd=MVPD, domainName="adobe.com", redirectUrl="https://adobe.com/done")
    assert status == 200 and body["actionName"] == "authenticate", body
    return body["code"]


def sign_in(emu, code: str, sp: str = SP, query: str = "complete=1") -> tuple[int, bytes]:
    status, _, data = call(emu, "GET", "/api/v2/authenticate/%s/%s?%s" % (sp, code, query))
    return status, data


def logged_in(emu) -> Api:
    api = Api(emu, new_token(emu)[1])
    assert sign_in(emu, full_session(api))[0] == 200
    return api


def eec_of(status, obj, code, http_status, action):
    assert status == http_status, obj
    assert set(obj) >= {"action", "status", "code", "message", "helpUrl", "trace"}, obj
    assert (obj["code"], obj["status"], obj["action"]) == (code, http_status, action)


# ----- the whole user story, with the agent's HTTP shim ---------------------------------------------------

def test_user_story_config_session_second_screen_profiles_authorize_logout_with_the_shim(emu):
    _, tok = new_token(emu)
    base, ca = emu.origin + "/api/v2/" + SP, emu.ca_file
    hdrs = {"Authorization": "Bearer " + tok, "AP-Device-Identifier": DEVICE, "X-Device-Info": device_info()}

    r = urequests.get(base + "/configuration", headers={"Authorization": hdrs["Authorization"]}, ca_file=ca, timeout=10)
    assert r.status_code == 200
    config = r.json()
    mvpd = config["requestor"]["mvpds"][0]["id"]
    assert config["requestor"]["id"] == SP and mvpd == MVPD and config["mvpds"] == config["requestor"]["mvpds"]

    r = urequests.post(base + "/sessions", data="mvpd=%s&domainName=adobe.com&redirectUrl=%s"
                       % (mvpd, urllib.parse.quote("https://adobe.com/done", safe="")),
                       headers=dict(hdrs, **{"Content-Type": FORM_CT}), ca_file=ca, timeout=10)
    session = r.json()
    assert r.status_code == 200 and (session["actionName"], session["actionType"]) == ("authenticate", "interactive")
    code = session["code"]
    assert re.fullmatch(r"[A-Z0-9]{7}", code) and session["url"] == "/api/v2/authenticate/%s/%s" % (SP, code)
    assert int(session["notAfter"]) - int(session["notBefore"]) == 1800 * 1000  # the code lives 30 min

    r = urequests.get(base + "/profiles", headers=hdrs, ca_file=ca, timeout=10)
    assert (r.status_code, r.json()) == (200, {"profiles": {}})  # polled until the login completes
    r = urequests.get(base + "/profiles/code/" + code, headers={"Authorization": hdrs["Authorization"]},
                      ca_file=ca, timeout=10)
    assert (r.status_code, r.json()) == (200, {"profiles": {}})

    # The second screen: the browser opens the URL (no headers), follows Adobe's 302 to the MVPD's
    # login page, and submits its form.
    page = urequests.get(emu.origin + session["url"], ca_file=ca, timeout=10)
    assert page.status_code == 200 and page.url.startswith(emu.origin + "/adobe-services/authenticate/saml?")
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
    action = re.search(r'<form id="login" method="post" action="([^"]+)"', page.text).group(1)
    assert form == {"code": code, "requestor_id": SP, "mso_id": MVPD}
    done = urequests.post(emu.origin + action, data=urllib.parse.urlencode(dict(form, user="alice")),
                          headers={"Content-Type": FORM_CT}, ca_file=ca, timeout=10)
    assert done.status_code == 200 and "You are signed in with Cablevision" in done.text

    r = urequests.get(base + "/profiles", headers=hdrs, ca_file=ca, timeout=10)
    profile = r.json()["profiles"][MVPD]
    assert (profile["issuer"], profile["type"]) == (MVPD, "regular")
    assert base64.b64decode(profile["attributes"]["userID"]["value"]) == b"alice"
    for path in ("/profiles/" + MVPD, "/profiles/code/" + code):
        assert urequests.get(base + path, headers=hdrs, ca_file=ca, timeout=10).json() == {"profiles": {MVPD: profile}}

    r = urequests.post(base + "/decisions/authorize/" + MVPD, json={"resources": ["REF30"]},
                       headers=dict(hdrs, **{"Content-Type": JSON_CT}), ca_file=ca, timeout=10)
    (decision,) = r.json()["decisions"]
    assert r.status_code == 200 and decision["authorized"] is True and decision["source"] == "mvpd"
    media = json.loads(base64.b64decode(decision["token"]["serializedToken"]))
    assert (media["resource"], media["mvpd"]) == ("REF30", MVPD)
    assert decision["token"]["notAfter"] > decision["token"]["notBefore"]

    r = urequests.get(base + "/logout/%s?redirectUrl=%s" % (MVPD, urllib.parse.quote("https://adobe.com", safe="")),
                      headers=hdrs, ca_file=ca, timeout=10)
    assert r.json() == {"logouts": {MVPD: {"actionName": "complete", "actionType": "none", "mvpd": MVPD}}}
    assert urequests.get(base + "/profiles", headers=hdrs, ca_file=ca, timeout=10).json() == {"profiles": {}}
    r = urequests.post(base + "/decisions/authorize/" + MVPD, json={"resources": ["REF30"]},
                       headers=dict(hdrs, **{"Content-Type": JSON_CT}), ca_file=ca, timeout=10)
    eec_of(r.status_code, r.json(), "authenticated_profile_missing", 403, "authentication")

    calls = [(e["call"], e["status"]) for e in emu.requests("protected")]
    assert calls == [("configuration", 200), ("sessions.create", 200), ("profiles", 200), ("profiles.code", 200),
                     ("authenticate", 302), ("profiles", 200), ("profiles.mvpd", 200), ("profiles.code", 200),
                     ("decisions.authorize", 200), ("logout", 200), ("profiles", 200),
                     ("decisions.authorize", 403)]


# ----- second screen ----------------------------------------------------------------------------------------

def test_authenticate_page_redirects_to_the_emulated_mvpd_login_form(emu):
    code = full_session(Api(emu, new_token(emu)[1]))
    status, hdrs, data = call(emu, "GET", "/api/v2/authenticate/%s/%s" % (SP, code))
    assert status == 302 and data == b""
    loc = urllib.parse.urlsplit(hdrs["location"])
    query = dict(urllib.parse.parse_qsl(loc.query))
    assert loc.path == "/adobe-services/authenticate/saml"
    assert query == {"noflash": "true", "mso_id": MVPD, "requestor_id": SP, "no_iframe": "false",
                     "domain_name": "adobe.com", "redirect_url": "https://adobe.com/done", "code": code}
    status, hdrs, data = call(emu, "GET", hdrs["location"])
    assert status == 200 and hdrs["content-type"].startswith("text/html") and b'<form id="login"' in data
    assert emu.stats()["mvpd"] == 1 and [e["call"] for e in emu.requests()][-1] == "authenticate"  # not logged


def test_one_request_completes_the_login(emu):
    api = Api(emu, new_token(emu)[1])
    code = full_session(api)
    status, data = sign_in(emu, code, query="complete=1&user=bob")
    assert status == 200 and b'id="result"' in data and b'href="https://adobe.com/done"' in data
    profile = api.profiles()[3]["profiles"][MVPD]
    assert base64.b64decode(profile["attributes"]["userID"]["value"]) == b"bob"


def test_authenticate_page_errors_are_html(emu):
    api = Api(emu, new_token(emu)[1])
    code = full_session(api)
    for path, status in (("/api/v2/authenticate/%s/NOCODE1" % SP, 400), ("/api/v2/authenticate/OTHER/" + code, 400)):
        got, hdrs, data = call(emu, "GET", path + "?complete=1")
        assert got == status and hdrs["content-type"].startswith("text/html") and b"<h1>Bad Request</h1>" in data
    got, hdrs, _ = call(emu, "POST", "/api/v2/authenticate/%s/%s" % (SP, code), "")
    assert got == 405 and hdrs["allow"] == "GET"
    # A session without an MVPD: the page says to resume it, or takes ?mvpd=.
    code2 = api.create(domainName="adobe.com", redirectUrl="https://adobe.com")[3]["code"]
    assert sign_in(emu, code2)[0] == 400
    assert sign_in(emu, code2, query="complete=1&mvpd=Comcast_SSO")[0] == 200
    assert list(api.profiles()[3]["profiles"]) == ["Comcast_SSO"]


# ----- profiles per device --------------------------------------------------------------------------------

def test_profile_appears_only_for_the_device_and_client_that_created_the_session(emu):
    cid, tok = new_token(emu)
    api = Api(emu, tok)
    code = full_session(api)
    other_device = Api(emu, tok, OTHER_DEVICE)
    other_client = Api(emu, new_token(emu)[1])  # new credentials on the same box: profiles are tied to the client
    assert sign_in(emu, code)[0] == 200
    assert list(api.profiles()[3]["profiles"]) == [MVPD]
    for stranger in (other_device, other_client):
        assert stranger.profiles()[3] == {"profiles": {}}
        assert stranger.profiles("/" + MVPD)[3] == {"profiles": {}}
        eec_of(*stranger.decisions("authorize", ["REF30"])[::3], "authenticated_profile_missing", 403, "authentication")
    # The code identifies the login for anyone holding it (second-screen polling).
    assert list(other_client.profiles("/code/" + code)[3]["profiles"]) == [MVPD]


def test_session_create_answers_authorize_when_the_device_already_has_a_profile(emu):
    api = logged_in(emu)
    status, _, _, body = api.create(mvpd=MVPD, domainName="adobe.com", redirectUrl="https://adobe.com")
    assert status == 200 and (body["actionName"], body["actionType"], body["reasonType"]) == (
        "authorize", "direct", "authenticated")
    assert body["url"] == "/api/v2/%s/decisions/authorize/%s" % (SP, MVPD) and "code" not in body


def test_profile_expires_after_profile_ttl(keydir):
    clock = Clock()
    with Emulator(state_dir=keydir, throttle=False, clock=clock) as emu:
        emu.configure(profile_ttl=3600)
        api = logged_in(emu)
        p = api.profiles()[3]["profiles"][MVPD]
        assert p["notAfter"] - p["notBefore"] == 3600 * 1000
        clock.t += 3599
        assert api.decisions("authorize", ["R"])[0] == 200
        clock.t += 1
        eec_of(*api.decisions("authorize", ["R"])[::3], "authenticated_profile_expired", 403, "authentication")
        assert api.profiles()[3] == {"profiles": {}}


# ----- sessions: missing parameters, resume, retrieve, expiry -------------------------------------------------

def test_session_with_missing_parameters_resume_retry_and_retrieve(emu):
    api = Api(emu, new_token(emu)[1])
    status, _, _, body = api.create()
    code = body["code"]
    assert status == 200 and (body["actionName"], body["actionType"]) == ("resume", "direct")
    assert body["missingParameters"] == ["mvpd", "domainName", "redirectUrl"]
    assert body["url"] == "/api/v2/%s/sessions/%s" % (SP, code) and "mvpd" not in body
    second_screen = Api(emu, new_token(emu)[1], OTHER_DEVICE)
    got = second_screen.req("GET", "%s/sessions/%s" % (SP, code), omit=("AP-Device-Identifier", "X-Device-Info"))[3]
    assert got["missingParameters"] == ["mvpd", "domainName", "redirectUrl"]
    assert got["existingParameters"] == {"serviceProvider": SP}
    assert got["device"]["model"] == "EMU-1" and got["device"]["operatingSystem"]["name"] == "Linux"
    assert (got["notBefore"], got["notAfter"]) == (body["notBefore"], body["notAfter"])
    # Resume (Authorization and Content-Type only) with some parameters: "retry" with what is left.
    resume = "%s/sessions/%s" % (SP, code)
    status, _, _, body = second_screen.req("POST", resume, "mvpd=%s&domainName=adobe.com" % MVPD, FORM_CT,
                                           omit=("AP-Device-Identifier", "X-Device-Info"))
    assert status == 200 and body["actionName"] == "retry" and body["missingParameters"] == ["redirectUrl"]
    status, _, _, body = second_screen.req("POST", resume, "redirectUrl=https%3A%2F%2Fadobe.com", FORM_CT)
    assert (body["actionName"], body["url"], body["mvpd"]) == ("authenticate", "/api/v2/authenticate/%s/%s"
                                                               % (SP, code), MVPD)
    got = second_screen.req("GET", resume)[3]
    assert "missingParameters" not in got and got["existingParameters"] == {
        "mvpd": MVPD, "domainName": "adobe.com", "redirectUrl": "https://adobe.com", "serviceProvider": SP}
    # The login completes for the device that created the session, not for the second screen.
    assert sign_in(emu, code)[0] == 200
    assert list(api.profiles()[3]["profiles"]) == [MVPD] and second_screen.profiles()[3] == {"profiles": {}}
    assert second_screen.req("POST", resume, "mvpd=" + MVPD, FORM_CT)[3]["actionName"] == "authorize"


def test_session_expires_after_30_minutes(keydir):
    clock = Clock()
    with Emulator(state_dir=keydir, throttle=False, clock=clock) as emu:
        api = Api(emu, new_token(emu)[1])
        code = full_session(api)
        clock.t += 1799.5
        assert api.req("GET", "%s/sessions/%s" % (SP, code))[0] == 200
        clock.t += 0.5
        for path in ("%s/sessions/%s" % (SP, code), "%s/profiles/code/%s" % (SP, code)):
            eec_of(*api.req("GET", path)[::3], "invalid_authentication_session", 400, "none")
        eec_of(*api.req("POST", "%s/sessions/%s" % (SP, code), "mvpd=" + MVPD, FORM_CT)[::3],
               "invalid_authentication_session", 400, "none")
        assert sign_in(emu, code)[0] == 400 and api.profiles()[3] == {"profiles": {}}
        # A completed login: after the code expires, only the profile it made stays readable by the code.
        done = full_session(api)
        assert sign_in(emu, done)[0] == 200
        clock.t += 1800
        assert list(api.profiles("/code/" + done)[3]["profiles"]) == [MVPD]
        eec_of(*api.req("GET", "%s/sessions/%s" % (SP, done))[::3], "invalid_authentication_session", 400, "none")
        eec_of(*api.req("POST", "%s/sessions/%s" % (SP, done), "mvpd=" + MVPD, FORM_CT)[::3],
               "invalid_authentication_session", 400, "none")
        assert sign_in(emu, done)[0] == 400


def test_unknown_code_and_another_service_providers_code(emu):
    api = Api(emu, new_token(emu)[1])
    code = full_session(api)
    for path in ("%s/sessions/ZZZZZZZ" % SP, "OTHER/sessions/" + code, "OTHER/profiles/code/" + code,
                 "%s/profiles/code/ZZZZZZZ" % SP):
        eec_of(*api.req("GET", path)[::3], "invalid_parameter_code", 400, "none")


def test_bad_parameters(emu):
    api = Api(emu, new_token(emu)[1])
    eec_of(*api.create(mvpd="NoSuchMVPD")[::3], "invalid_parameter_mvpd", 400, "none")
    eec_of(*api.create(mvpd=MVPD, redirectUrl="not a url")[::3], "invalid_parameter_redirect_url", 400, "none")
    eec_of(*api.profiles("/NoSuchMVPD")[::3], "invalid_parameter_mvpd", 400, "none")
    eec_of(*api.req("GET", SP + "/logout/" + MVPD)[::3], "invalid_parameter_redirect_url", 400, "none")
    eec_of(*api.req("GET", SP + "/logout/Nope?redirectUrl=https%3A%2F%2Fa.b")[::3], "invalid_parameter_mvpd", 400,
           "none")
    status, _, _, body = api.req("GET", SP + "/logout/%s?redirectUrl=https%%3A%%2F%%2Fa.b" % MVPD)
    assert status == 200 and body["logouts"][MVPD]["actionName"] == "invalid"  # no profile to log out of
    api2 = logged_in(emu)
    eec_of(*api2.decisions("authorize", ["R"], mvpd="NoSuchMVPD")[::3], "invalid_parameter_mvpd", 400, "none")
    eec_of(*api2.req("POST", "%s/decisions/authorize/%s" % (SP, MVPD), '{"resources": []}', JSON_CT)[::3],
           "invalid_parameter_resources", 400, "none")
    eec_of(*api2.decisions("preauthorize", ["R%d" % i for i in range(101)])[::3], "too_many_resources", 403,
           "configuration")


# ----- required headers (reference section 8) and method ------------------------------------------------------

# (call, method, path, body, content type, headers it requires beyond Authorization)
CALLS = [
    ("configuration", "GET", SP + "/configuration", None, None, ()),
    ("sessions.create", "POST", SP + "/sessions", "mvpd=Cablevision", FORM_CT,
     ("AP-Device-Identifier", "X-Device-Info", "Content-Type")),
    ("sessions.resume", "POST", SP + "/sessions/{code}", "mvpd=Cablevision", FORM_CT, ("Content-Type",)),
    ("sessions.retrieve", "GET", SP + "/sessions/{code}", None, None, ()),
    ("profiles", "GET", SP + "/profiles", None, None, ("AP-Device-Identifier", "X-Device-Info")),
    ("profiles.mvpd", "GET", SP + "/profiles/Cablevision", None, None, ("AP-Device-Identifier", "X-Device-Info")),
    ("profiles.code", "GET", SP + "/profiles/code/{code}", None, None, ()),
    ("decisions.authorize", "POST", SP + "/decisions/authorize/Cablevision", '{"resources": ["R"]}', JSON_CT,
     ("AP-Device-Identifier", "X-Device-Info", "Content-Type")),
    ("decisions.preauthorize", "POST", SP + "/decisions/preauthorize/Cablevision", '{"resources": ["R"]}', JSON_CT,
     ("AP-Device-Identifier", "X-Device-Info", "Content-Type")),
    ("logout", "GET", SP + "/logout/Cablevision?redirectUrl=https%3A%2F%2Fadobe.com", None, None,
     ("AP-Device-Identifier", "X-Device-Info")),
]
MISSING_CODE = {"AP-Device-Identifier": "invalid_header_device_identifier",
                "X-Device-Info": "invalid_header_device_info", "Content-Type": "invalid_header_content_type"}
WRONG = {"AP-Device-Identifier": ["box-0001", "fingerprint", "fingerprint not*base64", "uuid YWJj"],
         "X-Device-Info": ["not base64!", base64.b64encode(b"[1, 2]").decode()],
         "Content-Type": ["text/plain", "application/json;charset=latin-1"]}


def _call_args(api, name, method, path, body, ctype):
    """Fill {code} with a live code; a second logged-in session keeps decisions and logout answerable."""
    if "{code}" in path:  # from another device: this one has a profile already, so it would get no code
        path = path.replace("{code}", full_session(Api(api.emu, api.token, OTHER_DEVICE)))
    if name.startswith("sessions.resume"):
        body = "mvpd=Cablevision"
    return method, path, body, ctype


@pytest.mark.parametrize("name,method,path,body,ctype,required", CALLS, ids=[c[0] for c in CALLS])
def test_each_call_answers_with_its_required_headers_and_refuses_without_them(emu, name, method, path, body,
                                                                              ctype, required):
    api = logged_in(emu)
    method, path, body, ctype = _call_args(api, name, method, path, body, ctype)
    bare = ("AP-Device-Identifier", "X-Device-Info")
    status, _, data, _ = api.req(method, path, body, ctype, omit=tuple(h for h in bare if h not in required))
    assert status == 200, data  # exactly the required headers are enough
    for header in required:
        if header == "Content-Type" and ctype is None:
            continue
        status, _, data, obj = api.req(method, path, body, ctype, omit=(header,))
        eec_of(status, obj, MISSING_CODE[header], 400, "none")
        for value in WRONG[header]:
            status, _, data, obj = api.req(method, path, body, ctype, headers={header: value})
            eec_of(status, obj, MISSING_CODE[header], 400, "none")
    entry = emu.requests("protected")[-1]
    assert entry["call"] == name and entry["code"] == (MISSING_CODE[required[-1]] if required else None)


@pytest.mark.parametrize("name,method,path,body,ctype,required", CALLS, ids=[c[0] for c in CALLS])
def test_each_call_without_or_with_a_bad_token(keydir, name, method, path, body, ctype, required):
    with Emulator(state_dir=keydir, throttle=False) as emu:
        api = logged_in(emu)
        method, path, body, ctype = _call_args(api, name, method, path, body, ctype)
        expired_cid, _ = new_token(emu)
        emu.add_fault("token", clock_skew=-30000)  # a token issued 8 h ago, valid 6 h
        _, expired = new_token(emu)
        for tok in (None, "not-a-jwt", expired):
            status, hdrs, data, _ = Api(emu, tok).req(method, path, body, ctype)
            assert (status, data) == (401, b""), (tok, data)  # current style: a plain 401, "get a new token"
        emu.configure(error_style="2023")
        for tok, code in (("a.b.c", "invalid_access_token_signature"), (expired, "access_token_expired")):
            eec_of(*Api(emu, tok).req(method, path, body, ctype)[::3], code, 401, "application-registration")
        emu.configure(error_style="current", invalid_service_providers=[SP])
        eec_of(*api.req(method, path, body, ctype)[::3], "invalid_access_token_service_provider", 401,
               "application-registration")
        emu.configure(invalid_service_providers=[])
        emu.revoke_client(expired_cid)
        revoked = Api(emu, _token_of_revoked(emu, expired_cid))
        eec_of(*revoked.req(method, path, body, ctype)[::3], "invalid_access_token_client_application", 401,
               "application-registration")


def _token_of_revoked(emu, client_id: str) -> str:
    """A well-signed, unexpired token of a client that is revoked now."""
    from agent.emulator import jwtutil

    return jwtutil.sign({"sub": client_id, "iss": "auth.adobe.com", "exp": 4102444800}, emu._service.key,
                        emu._service.kid)


def test_wrong_method_is_405_with_allow(emu):
    api = Api(emu, new_token(emu)[1])
    for method, path, allow in (("POST", SP + "/configuration", "GET"), ("GET", SP + "/sessions", "POST"),
                                ("DELETE", SP + "/sessions/ABCDEFG", "GET, POST"),
                                ("GET", SP + "/decisions/authorize/" + MVPD, "POST"),
                                ("POST", SP + "/profiles", "GET")):
        status, hdrs, _, obj = api.req(method, path, "" if method == "POST" else None)
        eec_of(status, obj, "method_not_allowed", 405, "none")
        assert hdrs["allow"] == allow


def test_configuration_accepts_adobes_trailing_slash_and_lists_the_configured_mvpds(emu):
    api = Api(emu, new_token(emu)[1])
    emu.configure(mvpds=[{"id": "TestMVPD", "displayName": "Test"}, {"id": "Other"}])
    status, _, _, body = api.req("GET", SP + "/configuration/")
    assert status == 200 and body["device"] == "SetTopBox" and body["os"] == "Linux"
    assert body["requestor"]["mvpds"] == [{"id": "TestMVPD", "displayName": "Test"},
                                          {"id": "Other", "displayName": "Other"}]
    eec_of(*api.create(mvpd=MVPD)[::3], "invalid_parameter_mvpd", 400, "none")
    for bad in ({"mvpds": []}, {"mvpds": [{"id": "a/b"}]}, {"session_ttl": 0}, {"profile_ttl": True},
                {"require_profile": "yes"}, {"max_resources": -1}):
        status, body = admin(emu.origin, "POST", "config", bad, ca_file=emu.ca_file)
        assert status == 400 and list(bad)[0] in body["message"]


# ----- decisions: item-level errors, retry items, forms ---------------------------------------------------------

def test_retry_items_succeed_after_n_attempts_and_only_they_fail(emu):
    api = logged_in(emu)
    emu.configure(item_errors={"REF40": {"code": "network_connection_timeout", "count": 2},
                               "REF50": "authorization_denied_by_mvpd"})
    for attempt in (1, 2):
        status, _, _, body = api.decisions("authorize", ["REF30", "REF40", "REF50"])
        ok, retry, denied = body["decisions"]
        assert status == 200 and ok["authorized"] is True and "token" in ok
        assert retry["authorized"] is False and "token" not in retry
        assert (retry["error"]["action"], retry["error"]["status"], retry["error"]["code"]) == (
            "retry", 403, "network_connection_timeout")
        assert denied["error"]["code"] == "authorization_denied_by_mvpd" and denied["error"]["action"] == "none"
        left = emu.config()["item_errors"]
        assert left.get("REF40", {}).get("count") == (1 if attempt == 1 else None)
    status, _, _, body = api.decisions("authorize", ["REF40"])  # the gateway's retry of that item alone
    (item,) = body["decisions"]
    assert item["authorized"] is True and item["token"]["serializedToken"]
    assert emu.config()["item_errors"] == {"REF50": "authorization_denied_by_mvpd"}
    # Preauthorize: the same item errors, never a media token.
    status, _, _, body = api.decisions("preauthorize", ["REF30", "REF50"])
    assert [d["authorized"] for d in body["decisions"]] == [True, False]
    assert all("token" not in d for d in body["decisions"])


def test_item_error_settings_are_validated(emu):
    for bad in ({"R": {"code": "network_connection_timeout", "count": 0}},
                {"R": {"code": "network_connection_timeout", "count": True}},
                {"R": {"code": "made_up", "count": 1}}, {"R": "made_up"}, {"": "internal_server_error"}):
        status, body = admin(emu.origin, "POST", "config", {"item_errors": bad}, ca_file=emu.ca_file)
        assert status == 400 and "item_errors" in body["message"], bad
    full = {"R": {"action": "retry", "status": 403, "code": "partner_busy", "details": "try later", "count": 1}}
    assert admin(emu.origin, "POST", "config", {"item_errors": full}, ca_file=emu.ca_file)[0] == 200
    api = logged_in(emu)
    item = api.decisions("authorize", ["R"])[3]["decisions"][0]
    assert item["error"] == {"action": "retry", "status": 403, "code": "partner_busy", "details": "try later"}
    assert api.decisions("authorize", ["R"])[3]["decisions"][0]["authorized"] is True


def test_missing_profile_sits_on_every_item_in_the_item_form(emu):
    emu.configure(error_form="item")
    api = Api(emu, new_token(emu)[1])
    status, _, _, body = api.decisions("preauthorize", ["A", "B"])
    assert status == 200 and [(d["resource"], d["authorized"], d["error"]["code"], d["mvpd"])
                              for d in body["decisions"]] == [("A", False, "authenticated_profile_missing", MVPD),
                                                              ("B", False, "authenticated_profile_missing", MVPD)]
    emu.configure(error_form="wrapped")
    status, _, _, body = api.decisions("preauthorize", ["A"])
    assert status == 403 and body["error"]["code"] == "authenticated_profile_missing"
    emu.configure(error_form="top", require_profile=False)
    assert api.decisions("preauthorize", ["A"])[3]["decisions"][0]["authorized"] is True


# ----- throttle and request log -------------------------------------------------------------------------------

def test_throttle_covers_rest_v2_and_the_authenticate_page(keydir):
    clock = Clock()
    with Emulator(state_dir=keydir, rate=1.0, burst=6, clock=clock) as emu:
        api = Api(emu, new_token(emu)[1])  # register + token: 2 of the one-time burst of 6
        code = full_session(api)           # 3
        assert api.profiles()[0] == 200    # 4
        assert sign_in(emu, code, query="")[0] == 302  # 5: the authenticate page counts too
        assert api.req("GET", SP + "/configuration")[0] == 200  # 6
        status, hdrs, data, _ = api.profiles()
        assert status == 429 and hdrs["content-type"] == "text/html" and b"429 Too Many Requests" in data
        assert sign_in(emu, code)[0] == 429
        # The MVPD's own page is not Adobe's API: neither throttled nor logged.
        assert call(emu, "GET", "/adobe-services/authenticate/saml?code=%s&requestor_id=%s" % (code, SP))[0] == 200
        clock.t += 1.0
        assert sign_in(emu, code)[0] == 200
        assert api.profiles()[0] == 429
        clock.t += 1.0
        assert list(api.profiles()[3]["profiles"]) == [MVPD]
        log = emu.requests()
        assert [e["call"] for e in log if e["status"] == 429] == ["profiles", "authenticate", "profiles"]
        assert emu.stats()["throttled"] == 3


def test_request_log_records_rest_v2_calls_with_secrets_masked(emu):
    _, tok = new_token(emu)
    api = Api(emu, tok)
    code = full_session(api)
    sign_in(emu, code)
    api.decisions("authorize", ["REF30"])
    create, page, decide = emu.requests("protected")
    assert (create["call"], create["method"], create["path"]) == ("sessions.create", "POST", "/api/v2/%s/sessions"
                                                                  % SP)
    assert create["body"] == "mvpd=Cablevision&domainName=adobe.com&redirectUrl=https%3A%2F%2Fadobe.com%2Fdone"
    assert ["AP-Device-Identifier", DEVICE] in create["headers"]
    assert ["Authorization", "Bearer [masked]"] in create["headers"]
    assert (page["call"], page["status"], page["query"]) == ("authenticate", 200, "complete=1")
    assert decide["call"] == "decisions.authorize" and decide["body"] == '{"resources": ["REF30"]}'
    assert tok not in json.dumps(emu.stats())


def test_the_core_answers_any_request_under_api_v2_without_raising(emu):
    """Sans-I/O: random methods, paths, queries, headers and bodies around every call, with and without
    a valid token; every answer is a status with a body, never an exception (the shell would drop the
    connection)."""
    import random

    rnd = random.Random(17)
    api = logged_in(emu)
    code = full_session(Api(emu, api.token, OTHER_DEVICE))
    pieces = [SP, "OTHER", "authenticate", "sessions", "profiles", "code", "decisions", "authorize", "preauthorize",
              "logout", "configuration", MVPD, code, "", "%00", "..", "é", "<b>", "ZZZZZZZ"]
    bodies = [b"", b"mvpd=" + MVPD.encode(), b'{"resources": ["R"]}', b'{"resources": [1]}', b"\xff\xfe", b"[]",
              b"mvpd=%ZZ&redirectUrl=javascript:alert(1)", b'{"resources": ' + b'["x",' * 50 + b'"y"]}']
    headers = [{}, {"authorization": "Bearer " + api.token}, {"authorization": "Bearer " + api.token,
                                                             "ap-device-identifier": DEVICE,
                                                             "x-device-info": device_info(),
                                                             "content-type": FORM_CT},
               {"authorization": "Bearer " + api.token, "ap-device-identifier": "fingerprint \r\n",
                "x-device-info": "e30=", "content-type": JSON_CT}]
    svc = emu._service
    for i in range(3000):
        path = "/api/v2/" + "/".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 4)))
        query = rnd.choice(["", "complete=1", "complete=1&mvpd=" + MVPD, "redirectUrl=https%3A%2F%2Fa.b",
                            "mvpd=%ff&user=%00", "redirectUrl=" + "x" * 300])
        req = {"method": rnd.choice(["GET", "POST", "HEAD", "DELETE"]), "path": path, "query": query,
               "headers": dict(rnd.choice(headers)), "body": rnd.choice(bodies), "ip": "127.0.0.1", "port": 1,
               "tls": True, "t": 1000.0 + i, "now": 1.7e9 + i}
        with emu._lock:
            resp = svc.handle(req)
        assert isinstance(resp["status"], int) and 200 <= resp["status"] < 600 and isinstance(resp["body"], bytes)
        for name, value in resp["headers"]:
            assert "\r" not in value and "\n" not in value, (name, value)
