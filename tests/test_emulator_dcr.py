"""The emulated DCR endpoints and protected API over real HTTPS (and HTTP), driven by http.client."""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.parse

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import DEFAULT_APP_ID, Emulator, jwtutil
from agent.emulator.client import admin, device_info, request
from tests.emuhelpers import call

JSON_CT = "application/json;charset=utf-8"
FORM_CT = "application/x-www-form-urlencoded"


@pytest.fixture
def emu(keydir):
    with Emulator(state_dir=keydir, throttle=False) as e:
        yield e


def register(emu, statement=None, headers=None, **fields):
    body = {"software_statement": statement if statement is not None else emu.mint_statement()}
    body.update(fields)
    h = {"Content-Type": JSON_CT, "X-Device-Info": device_info()}
    h.update(headers or {})
    status, hdrs, data = call(emu, "POST", "/o/client/register", json.dumps(body), h)
    return status, hdrs, json.loads(data)


def new_client(emu):
    status, _, body = register(emu)
    assert status == 201
    return body["client_id"], body["client_secret"]


def token(emu, client_id, secret, grant="client_credentials", in_query=False, headers=None):
    params = urllib.parse.urlencode({"client_id": client_id, "client_secret": secret, "grant_type": grant})
    h = {"X-Device-Info": device_info()}
    h.update(headers or {})
    if in_query:
        return call(emu, "POST", "/o/client/token?" + params, None, h)
    h.setdefault("Content-Type", FORM_CT)
    return call(emu, "POST", "/o/client/token", params, h)


def access_token(emu):
    cid, sec = new_client(emu)
    status, _, data = token(emu, cid, sec)
    assert status == 201
    return cid, json.loads(data)["access_token"]


def configuration(emu, tok, sp="REF"):
    h = {"X-Device-Info": device_info()}
    if tok is not None:
        h["Authorization"] = "Bearer " + tok
    status, hdrs, data = call(emu, "GET", "/api/v2/%s/configuration" % sp, None, h)
    return status, hdrs, json.loads(data)


def claims(jwt):
    return json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))


def foreign_key_jwt(payload):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwtutil.sign(payload, key, "other")


# ----- register ----------------------------------------------------------------------------------

def test_register_returns_201_with_every_documented_field(emu):
    before = time.time()
    status, hdrs, body = register(emu)
    assert status == 201
    assert set(body) == {"client_id", "client_secret", "client_id_issued_at", "redirect_uris", "grant_types",
                         "scopes"}
    assert len(body["client_id"]) == 36 and body["client_id"].count("-") == 4
    assert len(body["client_secret"]) == 36 and body["client_secret"] != body["client_id"]
    assert before * 1000 - 1000 <= body["client_id_issued_at"] <= time.time() * 1000 + 1000  # milliseconds
    assert body["redirect_uris"] == [] and body["grant_types"] == ["client_credentials"]
    assert body["scopes"] == ["api:client:v2"]
    assert hdrs["cache-control"] == "no-store" and hdrs["pragma"] == "no-cache"
    assert hdrs["content-type"].startswith("application/json")
    assert emu.stats()["register"] == {"ok": 1, "error": 0, "codes": {}}


def test_register_accepts_the_documented_content_type_and_allowed_redirect_uri(emu):
    status, _, body = register(emu, headers={"Content-Type": "application/json; charset=UTF-8"},
                               redirect_uri="http://localhost/callback")
    assert status == 201 and body["redirect_uris"] == ["http://localhost/callback"]


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "",
                                   "application/json;charset=latin-1", "application/json"])
def test_register_rejects_wrong_content_type(emu, ctype):
    status, hdrs, body = register(emu, headers={"Content-Type": ctype})
    assert (status, body) == (400, {"error": "invalid_request"})
    assert "Content-Type" in hdrs["x-emulator-reason"]


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"software_statement": 5}', b"{}",
                                 b'{"software_statement": "a", "software_statement": "b"}', b"\xff\xfe",
                                 b'{"software_statement": "x", "redirect_uri": 7}'])
def test_register_rejects_malformed_bodies_with_invalid_request(emu, raw):
    status, _, data = call(emu, "POST", "/o/client/register", raw,
                           {"Content-Type": JSON_CT, "X-Device-Info": device_info()})
    assert (status, json.loads(data)) == (400, {"error": "invalid_request"})


def test_register_only_accepts_post(emu):
    status, hdrs, data = call(emu, "GET", "/o/client/register")
    assert status == 405 and json.loads(data) == {"error": "invalid_request"} and hdrs["allow"] == "POST"


@pytest.mark.parametrize("make", [
    lambda e: "not-a-jwt",
    lambda e: "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",  # alg none
    lambda e: foreign_key_jwt({"sub": DEFAULT_APP_ID, "iss": "auth.adobe.com", "iat": 1, "nbf": 1}),
    lambda e: jwtutil.sign({"sub": DEFAULT_APP_ID, "iss": "evil.example", "iat": 1}, e._service.key, "k"),
    lambda e: jwtutil.sign({"sub": DEFAULT_APP_ID, "iss": "auth.adobe.com", "nbf": time.time() + 3600},
                           e._service.key, "k"),
    lambda e: e.mint_statement()[:-4] + "AAAA",  # tampered signature
])
def test_register_rejects_bad_statements_with_invalid_software_statement(emu, make):
    status, hdrs, body = register(emu, statement=make(emu))
    assert (status, body) == (400, {"error": "invalid_software_statement"})
    assert "software_statement" in hdrs["x-emulator-reason"]
    assert emu.stats()["register"]["codes"] == {"invalid_software_statement": 1}


def test_statement_has_the_documented_claims_and_no_exp(emu):
    st = emu.mint_statement()
    header = json.loads(base64.urlsafe_b64decode(st.split(".")[0] + "=="))
    assert header["alg"] == "RS256" and header["kid"]
    c = claims(st)
    assert set(c) == {"sub", "iss", "iat", "nbf", "jti"} and "exp" not in c
    assert emu.mint_statement() != st  # every mint differs, even within one second
    assert c["sub"] == DEFAULT_APP_ID and c["iss"] == "auth.adobe.com"


def test_unknown_application_is_unapproved(emu):
    st = emu.mint_statement("some-other-app", approved=False)
    status, _, body = register(emu, statement=st)
    assert (status, body) == (400, {"error": "unapproved_software_statement"})
    # approving the app (minting normally) makes the same statement acceptable
    emu.mint_statement("some-other-app")
    assert register(emu, statement=st)[0] == 201


def test_redirect_uri_outside_the_allowed_list_is_refused(emu):
    assert register(emu, redirect_uri="https://evil.example/cb")[2] == {"error": "invalid_redirect_uri"}
    st = emu.mint_statement("app-with-list", redirect_uris=["app://cb"])
    assert register(emu, statement=st, redirect_uri="http://localhost/x")[2] == {"error": "invalid_redirect_uri"}
    status, _, body = register(emu, statement=st, redirect_uri="app://cb")
    assert status == 201 and body["redirect_uris"] == ["app://cb"]


def test_revoked_statement_is_invalid_and_its_clients_lose_their_tokens(emu):
    st = emu.mint_statement()
    status, _, body = register(emu, statement=st)
    assert status == 201
    other = new_client(emu)  # registered with a different statement of the same app
    assert emu.revoke_statement(st) == {"statements": 1, "clients": 1}
    assert register(emu, statement=st)[2] == {"error": "invalid_software_statement"}
    status, _, data = token(emu, body["client_id"], body["client_secret"])
    assert (status, json.loads(data)) == (400, {"error": "invalid_client"})
    assert token(emu, *other)[0] == 201
    assert register(emu)[0] == 201  # a new statement works


def test_revoke_by_app_id_revokes_every_statement_of_the_app_but_not_later_ones(emu):
    a, b = emu.mint_statement("app-x"), emu.mint_statement("app-x")
    keep = emu.mint_statement()
    res = emu.revoke_statement("app-x", clients=False)
    assert res["statements"] == 2
    assert register(emu, statement=a)[2] == register(emu, statement=b)[2] == {"error": "invalid_software_statement"}
    assert register(emu, statement=keep)[0] == 201
    assert register(emu, statement=emu.mint_statement("app-x"))[0] == 201
    with pytest.raises(ValueError, match="no statement was minted"):
        emu.revoke_statement("never-minted-app")


# ----- token -------------------------------------------------------------------------------------

def test_token_from_form_body_returns_201_with_every_documented_field(emu):
    cid, sec = new_client(emu)
    before = time.time()
    status, hdrs, data = token(emu, cid, sec)
    body = json.loads(data)
    assert status == 201
    assert set(body) == {"access_token", "token_type", "expires_in", "created_at", "id"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 21600
    assert before * 1000 - 1000 <= body["created_at"] <= time.time() * 1000 + 1000
    c = claims(body["access_token"])
    assert c["sub"] == cid and c["exp"] - c["iat"] == 21600 and c["iss"] and c["jti"] == body["id"]
    assert jwtutil.verify(body["access_token"], emu._service.public_key)["sub"] == cid
    assert hdrs["cache-control"] == "no-store"
    assert emu.stats()["per_client_id"][cid] == {"token": 1, "protected": 0}


def test_token_from_query_string_and_mixed(emu):
    cid, sec = new_client(emu)
    assert token(emu, cid, sec, in_query=True)[0] == 201
    q = urllib.parse.urlencode({"client_id": cid})
    status, _, _ = call(emu, "POST", "/o/client/token?" + q,
                        urllib.parse.urlencode({"client_secret": sec, "grant_type": "client_credentials"}),
                        {"Content-Type": FORM_CT})
    assert status == 201


@pytest.mark.parametrize("body,ctype", [
    ("client_id=a&grant_type=client_credentials", FORM_CT),
    ("", FORM_CT),
    ("client_id=a&client_id=a&client_secret=b&grant_type=client_credentials", FORM_CT),
    ('{"client_id": "a", "client_secret": "b", "grant_type": "client_credentials"}', "application/json"),
    ("garbage-without-equals", FORM_CT),
])
def test_token_malformed_requests_are_invalid_request(emu, body, ctype):
    status, _, data = call(emu, "POST", "/o/client/token", body, {"Content-Type": ctype})
    assert (status, json.loads(data)) == (400, {"error": "invalid_request"})


def test_token_error_codes(emu):
    cid, sec = new_client(emu)
    assert json.loads(token(emu, cid, sec, grant="password")[2]) == {"error": "unsupported_grant_type"}
    assert json.loads(token(emu, "nobody", sec)[2]) == {"error": "invalid_client"}
    status, hdrs, data = token(emu, cid, "wrong-secret")
    assert (status, json.loads(data)) == (400, {"error": "invalid_client"})
    assert "wrong-secret" not in json.dumps(hdrs) and sec not in json.dumps(hdrs)
    emu.set_client_allowed(cid, False)
    assert json.loads(token(emu, cid, sec)[2]) == {"error": "unauthorized_client"}
    emu.set_client_allowed(cid, True)
    assert token(emu, cid, sec)[0] == 201
    emu.revoke_client(cid)
    assert json.loads(token(emu, cid, sec)[2]) == {"error": "invalid_client"}
    codes = emu.stats()["token"]["codes"]
    assert codes == {"unsupported_grant_type": 1, "invalid_client": 3, "unauthorized_client": 1}


def test_token_ttl_and_legacy_variants(keydir):
    with Emulator(state_dir=keydir, tls=False, throttle=False, token_ttl=3600, legacy=True) as e:
        status, _, body = register(e)
        assert status == 201 and abs(body["client_id_issued_at"] - time.time()) < 100  # seconds
        status, _, data = token(e, body["client_id"], body["client_secret"])
        tok = json.loads(data)
        assert status == 200 and tok["expires_in"] == 3600 and abs(tok["created_at"] - time.time()) < 100
        e.configure(legacy=False, token_ttl=60)
        status, _, data = token(e, body["client_id"], body["client_secret"])
        assert status == 201 and json.loads(data)["expires_in"] == 60
        assert json.loads(data)["created_at"] > time.time() * 100


# ----- protected API -----------------------------------------------------------------------------

def test_protected_configuration_with_a_valid_token(emu):
    cid, tok = access_token(emu)
    status, _, body = configuration(emu, tok, sp="NBC")
    assert status == 200 and body["requestor"]["id"] == "NBC" and body["requestor"]["mvpds"]
    assert emu.stats()["protected"]["ok"] == 1
    assert emu.stats()["per_client_id"][cid]["protected"] == 1


def test_protected_errors_use_enhanced_error_codes(emu):
    """Current pairing: a missing, invalid or expired token is a plain 401; an unknown client is an
    Enhanced Error Code with application-registration. The 2023 pairing: every credential code."""
    cid, tok = access_token(emu)
    bad = [None, "garbage", foreign_key_jwt({"sub": cid, "exp": time.time() + 99}),
           jwtutil.sign({"sub": cid, "exp": int(time.time()) - 5}, emu._service.key, "k")]
    gone = jwtutil.sign({"sub": "gone", "exp": int(time.time()) + 99}, emu._service.key, "k")
    for tok_ in bad:
        status, _, data = call(emu, "GET", "/api/v2/REF/configuration", None,
                               {"Authorization": "Bearer " + tok_} if tok_ else {})
        assert (status, data) == (401, b"")
    emu.configure(error_style="2023")
    cases = list(zip(bad[1:] + [gone], ["invalid_access_token_signature"] * 2 + ["access_token_expired",
                                                                                  "invalid_client_id"]))
    emu.configure(error_style="current")
    cases.append((gone, "invalid_access_token_client_application"))
    for i, (tok_, code) in enumerate(cases):
        emu.configure(error_style="2023" if i < 4 else "current")
        status, hdrs, body = configuration(emu, tok_)
        assert status == 401, code
        assert set(body) >= {"action", "status", "code", "message", "helpUrl", "trace"}
        assert (body["code"], body["action"], body["status"]) == (code, "application-registration", 401)
    assert configuration(emu, tok)[0] == 200


def test_protected_rejects_tokens_of_revoked_clients_with_application_registration(emu):
    cid, tok = access_token(emu)
    emu.revoke_client(cid)
    status, _, body = configuration(emu, tok)
    assert status == 401
    assert body["code"] == "invalid_access_token_client_application"
    assert body["action"] == "application-registration"


def test_protected_unknown_resource_and_unknown_path(emu):
    _, tok = access_token(emu)
    status, _, data = call(emu, "GET", "/api/v2/REF/nothing", None, {"Authorization": "Bearer " + tok})
    assert status == 404 and json.loads(data)["code"] == "unknown_resource"
    before = len(emu.stats()["requests"])
    assert call(emu, "GET", "/elsewhere")[0] == 404
    assert emu.stats()["other"] == 1 and len(emu.stats()["requests"]) == before


# ----- X-Device-Info -----------------------------------------------------------------------------

BAD_DEVICE_INFO = [
    "%%%not-base64",
    base64.b64encode(b"{not json").decode(),
    base64.b64encode(b'["a"]').decode(),
    device_info(primaryHardwareType="Toaster"),
    device_info({"model": "x"}),  # required fields missing
    device_info(type="SetTopBox"),  # Adobe's own sample mistake
]


@pytest.mark.parametrize("value", BAD_DEVICE_INFO)
def test_bad_device_info_is_recorded_but_accepted_by_default(emu, value):
    status, _, _ = register(emu, headers={"X-Device-Info": value})
    assert status == 201
    problems = emu.stats()["device_info_problems"]
    assert len(problems) == 1 and problems[0]["endpoint"] == "register" and problems[0]["problems"]


@pytest.mark.parametrize("value", BAD_DEVICE_INFO + [None])
def test_bad_device_info_is_rejected_in_strict_mode(keydir, value):
    with Emulator(state_dir=keydir, tls=False, throttle=False, strict_device_info=True) as e:
        h = {"X-Device-Info": value} if value is not None else {}
        hdrs = {"Content-Type": JSON_CT}
        hdrs.update(h)
        status, rh, data = call(e, "POST", "/o/client/register",
                                json.dumps({"software_statement": e.mint_statement()}), hdrs)
        assert (status, json.loads(data)) == (400, {"error": "invalid_request"})
        assert "X-Device-Info" in rh["x-emulator-reason"]


def test_good_device_info_has_no_problems_and_strict_can_be_switched_at_run_time(emu):
    cid, sec = new_client(emu)
    assert token(emu, cid, sec)[0] == 201
    assert emu.stats()["device_info_problems"] == []
    status, _ = admin(emu.origin, "POST", "config", {"strict": True}, emu.ca_file)
    assert status == 200 and emu.config()["strict_device_info"] is True
    assert json.loads(token(emu, cid, sec, headers={"X-Device-Info": "bad!"})[2]) == {"error": "invalid_request"}
    status, _, _ = call(emu, "GET", "/api/v2/REF/configuration", None, {"X-Device-Info": "bad!"})
    assert status == 400


# ----- TLS ---------------------------------------------------------------------------------------

def test_tls_needs_the_emulator_ca_and_covers_localhost(emu):
    with pytest.raises(ssl.SSLError):
        request(emu.origin, "GET", "/_emulator/stats")  # system CAs do not know the emulator
    status, _, _ = request("https://localhost:%d" % emu.port, "GET", "/_emulator/stats", ca_file=emu.ca_file)
    assert status == 200
    assert emu.base_url == "https://127.0.0.1:%d/o" % emu.port


def test_plain_http_mode(keydir):
    with Emulator(state_dir=keydir, tls=False, throttle=False) as e:
        assert e.base_url.startswith("http://") and e.ca_file is None
        assert register(e)[0] == 201


# ----- admin API ---------------------------------------------------------------------------------

def test_admin_api_mints_revokes_configures_and_reports(emu):
    o, ca = emu.origin, emu.ca_file
    status, body = admin(o, "POST", "statements", {"app_id": "admin-app"}, ca)
    assert status == 201 and claims(body["software_statement"])["sub"] == "admin-app"
    status, _, reg = register(emu, statement=body["software_statement"])
    assert status == 201
    status, clients = admin(o, "GET", "clients", None, ca)
    listed = [c for c in clients["clients"] if c["client_id"] == reg["client_id"]]
    assert listed and reg["client_secret"] not in json.dumps(clients)
    assert admin(o, "POST", "clients", {"client_id": reg["client_id"], "allowed": False}, ca)[0] == 200
    assert json.loads(token(emu, reg["client_id"], reg["client_secret"])[2]) == {"error": "unauthorized_client"}
    assert admin(o, "POST", "revoke", {"client_id": reg["client_id"]}, ca)[0] == 200
    assert json.loads(token(emu, reg["client_id"], reg["client_secret"])[2]) == {"error": "invalid_client"}
    status, res = admin(o, "POST", "revoke", {"statement": body["software_statement"]}, ca)
    assert status == 200 and res["revoked"]["statements"] == 1
    assert register(emu, statement=body["software_statement"])[2] == {"error": "invalid_software_statement"}
    assert admin(o, "POST", "revoke", {"app_id": "admin-app"}, ca)[0] == 200
    status, cfg = admin(o, "POST", "config", {"token_ttl": 120, "retry_after": "date", "rate": 5, "burst": 3}, ca)
    assert status == 200 and (cfg["token_ttl"], cfg["retry_after"], cfg["rate"], cfg["burst"]) == (120, "date", 5, 3)
    status, stats = admin(o, "GET", "stats", None, ca)
    assert stats["register"]["ok"] == 1 and stats["token"]["error"] == 2
    assert all(r["endpoint"] != "admin" for r in stats["requests"])  # admin calls are not in the log
    assert admin(o, "DELETE", "stats", None, ca)[0] == 200
    assert emu.stats()["register"]["ok"] == 0 and emu.stats()["requests"] == []
    status, _, pem = call(emu, "GET", "/_emulator/ca.pem")
    assert status == 200 and pem == open(emu.ca_file, "rb").read()


@pytest.mark.parametrize("path,obj,fragment", [
    ("config", {"token_ttl": 0}, "token_ttl"),
    ("config", {"retry_after": "sometimes"}, "retry_after"),
    ("config", {"colour": "blue"}, "unknown setting"),
    ("config", {"rate": 0}, "rate"),
    ("faults", {"endpoint": "token", "status": 99}, "status"),
    ("faults", {"endpoint": "nowhere", "status": 500}, "endpoint"),
    ("faults", {"endpoint": "token", "colour": 1}, "unknown fault knob"),
    ("revoke", {"client_id": "nobody"}, "unknown client_id"),
    ("revoke", {}, "client_id"),
    ("clients", {"client_id": "x"}, "allowed"),
])
def test_admin_api_errors_say_what_is_wrong(emu, path, obj, fragment):
    status, body = admin(emu.origin, "POST", path, obj, emu.ca_file)
    assert status == 400 and body["error"] == "invalid_request" and fragment in body["message"]
    assert admin(emu.origin, "GET", "nowhere", None, emu.ca_file)[0] == 404
