"""DCR request builders and response parsers (agent/dcr.py) against every documented variant."""

from __future__ import annotations

import base64
import email.utils
import json
import urllib.parse

import pytest

from agent import USER_AGENT, __version__, dcr
from agent.errors import OPERATOR, REREGISTER, RETRY, UpstreamError

BASE = "https://sp.auth.adobe.com/o"
XDI = base64.b64encode(json.dumps({"model": "Box", "osName": "Linux"}).encode()).decode()
STATEMENT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhcHAifQ.c2ln"
SECRET = "s3cr3t-+/=&é value"
HTML_429 = b"<html><head><title>429 Too Many Requests</title></head><body>429</body></html>"


# ----------------------------------------------------------------------------- requests

def test_register_request_exactly_as_documented():
    req = dcr.register_request(BASE + "/", STATEMENT, XDI)
    assert req["method"] == "POST"
    assert req["url"] == "https://sp.auth.adobe.com/o/client/register"
    assert req["headers"] == {"Content-Type": "application/json;charset=utf-8",
                              "Accept": "application/json;charset=utf-8",
                              "User-Agent": USER_AGENT, "X-Device-Info": XDI}
    assert USER_AGENT == "pass-agent/" + __version__
    assert json.loads(req["body"]) == {"software_statement": STATEMENT}  # no redirect_uri unless configured
    assert isinstance(req["body"], bytes)


def test_register_request_sends_redirect_uri_only_when_set():
    req = dcr.register_request(BASE, STATEMENT, XDI, redirect_uri="https://app.example/cb")
    assert json.loads(req["body"]) == {"software_statement": STATEMENT, "redirect_uri": "https://app.example/cb"}
    assert "redirect_uri" not in json.loads(dcr.register_request(BASE, STATEMENT, XDI, redirect_uri="")["body"])


def test_token_request_is_a_form_body_with_the_three_parameters():
    req = dcr.token_request(BASE, "cid-1", SECRET, XDI, user_agent="pass-agent/9.9")
    assert req["method"] == "POST" and req["url"] == BASE + "/client/token"
    assert req["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert req["headers"]["X-Device-Info"] == XDI and req["headers"]["User-Agent"] == "pass-agent/9.9"
    assert "?" not in req["url"]  # never in the query string
    body = req["body"].decode("ascii")
    assert urllib.parse.parse_qsl(body, strict_parsing=True) == [
        ("client_id", "cid-1"), ("client_secret", SECRET), ("grant_type", "client_credentials")]
    assert body == "client_id=cid-1&client_secret=" + urllib.parse.quote(SECRET, safe="-._~") + \
        "&grant_type=client_credentials"


# ----------------------------------------------------------------------------- register answers

REGISTER_SAMPLE = {"client_id": "8a1b4e5c-0000-4000-8000-000000000001", "client_secret": "f0e1d2c3-secret",
                   "client_id_issued_at": 1623071099, "redirect_uris": ["http://adobe.com"],
                   "grant_types": ["client_credentials"], "scopes": ["api:client:v2"]}


@pytest.mark.parametrize("status", [200, 201])
@pytest.mark.parametrize("issued,expected", [(1623071099, 1623071099.0), (1623071099123, 1623071099.123),
                                             (None, None), ("yesterday", None), (True, None), (-5, None)])
def test_register_success_variants(status, issued, expected):
    data = dict(REGISTER_SAMPLE, client_id_issued_at=issued, extra_field={"x": 1})
    r = dcr.parse_register(status, {"Content-Type": "application/json"}, json.dumps(data).encode())
    assert r["client_id"] == REGISTER_SAMPLE["client_id"] and r["client_secret"] == "f0e1d2c3-secret"
    assert r["client_id_issued_at"] == (pytest.approx(expected) if expected else None)
    assert r["scopes"] == ["api:client:v2"] and r["grant_types"] == ["client_credentials"]


def test_register_success_with_only_the_required_fields():
    r = dcr.parse_register(201, {}, b'{"client_id": "a", "client_secret": "b"}')
    assert r == {"client_id": "a", "client_secret": "b", "client_id_issued_at": None, "redirect_uris": [],
                 "grant_types": ["client_credentials"], "scopes": []}


@pytest.mark.parametrize("body", [b"", b"null", b"[]", b"<html>ok</html>", b'{"client_id": "a"}',
                                  b'{"client_id": "", "client_secret": "b"}', b'{"client_id": 5, "client_secret": "b"}',
                                  b"\xff\xfe", b'{"client_id": "a", "client_secret": "b"'])
def test_register_success_status_with_unusable_body_is_malformed_and_retryable(body):
    with pytest.raises(UpstreamError) as ei:
        dcr.parse_register(201, {}, body)
    e = ei.value
    assert e.code == "malformed_response" and e.kind == RETRY and e.status == 201 and e.undocumented
    assert "register" in str(e) and "check" in e.hint


REGISTER_ERRORS = {"invalid_request": OPERATOR, "invalid_redirect_uri": OPERATOR,
                   "invalid_software_statement": OPERATOR, "unapproved_software_statement": OPERATOR}
TOKEN_ERRORS = {"invalid_request": OPERATOR, "invalid_client": REREGISTER, "unauthorized_client": OPERATOR,
                "unsupported_grant_type": OPERATOR}


@pytest.mark.parametrize("code,kind", sorted(REGISTER_ERRORS.items()))
def test_register_oauth_errors(code, kind):
    with pytest.raises(UpstreamError) as ei:
        dcr.parse_register(400, {}, json.dumps({"error": code, "error_description": "x"}).encode())
    e = ei.value
    assert (e.code, e.kind, e.status) == (code, kind, 400)
    assert code in str(e) and e.hint  # says what was wrong and what to do
    assert STATEMENT not in str(e)


@pytest.mark.parametrize("code,kind", sorted(TOKEN_ERRORS.items()))
@pytest.mark.parametrize("status", [400, 401])
def test_token_oauth_errors(code, kind, status):
    with pytest.raises(UpstreamError) as ei:
        dcr.parse_token(status, {}, json.dumps({"error": code}).encode())
    assert (ei.value.code, ei.value.kind, ei.value.status) == (code, kind, status)


def test_invalid_client_at_the_register_endpoint_is_not_a_reregistration():
    with pytest.raises(UpstreamError) as ei:
        dcr.parse_register(400, {}, b'{"error": "invalid_client"}')
    assert ei.value.kind == OPERATOR


# ----------------------------------------------------------------------------- token answers

TOKEN_SAMPLE = {"access_token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjaWQifQ.c2ln", "token_type": "bearer",
                "expires_in": 21600, "created_at": 1623071100123, "id": "tok-1"}


@pytest.mark.parametrize("status", [200, 201, 204])
def test_token_success(status):
    r = dcr.parse_token(status, {}, json.dumps(TOKEN_SAMPLE).encode())
    assert r == {"access_token": TOKEN_SAMPLE["access_token"], "token_type": "bearer", "expires_in": 21600,
                 "expires_in_assumed": False, "created_at": pytest.approx(1623071100.123), "id": "tok-1"}


# 0, -1, "soon", true... are malformed answers now (tests/test_dcr_hardening.py), not a silent 3600.
@pytest.mark.parametrize("expires_in,expected,assumed", [(3600, 3600, False), (86400, 86400, False),
                                                         ("21600", 21600, False), (21600.0, 21600, False),
                                                         (None, 3600, True)])
def test_token_expires_in_variants(expires_in, expected, assumed):
    data = dict(TOKEN_SAMPLE, expires_in=expires_in)
    if expires_in is None:
        del data["expires_in"]
    r = dcr.parse_token(201, {}, json.dumps(data).encode())
    assert (r["expires_in"], r["expires_in_assumed"]) == (expected, assumed)


@pytest.mark.parametrize("created_at,expected", [(1623071100, 1623071100.0), (1623071100123, 1623071100.123),
                                                 (None, None), ("x", None)])
def test_token_created_at_in_seconds_or_milliseconds(created_at, expected):
    r = dcr.parse_token(201, {}, json.dumps(dict(TOKEN_SAMPLE, created_at=created_at)).encode())
    assert r["created_at"] == (pytest.approx(expected) if expected else None)


def test_token_with_only_access_token():
    r = dcr.parse_token(201, {}, b'{"access_token": "abc"}')
    assert r["access_token"] == "abc" and r["token_type"] == "bearer" and r["id"] is None


@pytest.mark.parametrize("body", [b"", b"{}", b'{"access_token": ""}', b'{"access_token": null}', b"[1]",
                                  b"<html>", b'{"access_token": "abc"'])
def test_token_success_status_with_unusable_body(body):
    with pytest.raises(UpstreamError) as ei:
        dcr.parse_token(201, {}, body)
    assert ei.value.code == "malformed_response" and ei.value.kind == RETRY


# ----------------------------------------------------------------------------- 429 / 5xx / odd answers

@pytest.mark.parametrize("parse,endpoint", [(dcr.parse_register, "register"), (dcr.parse_token, "token")])
@pytest.mark.parametrize("body", [HTML_429, b"", None, b'{"error": "invalid_client"}'])
def test_429_is_throttled_whatever_the_body(parse, endpoint, body):
    with pytest.raises(UpstreamError) as ei:
        parse(429, {"Content-Type": "text/html"}, body)
    e = ei.value
    assert (e.code, e.kind, e.status, e.retry_after) == ("throttled", RETRY, 429, None)
    assert endpoint in str(e) and "429" in str(e)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@pytest.mark.parametrize("body", [b"", b"<html>Bad Gateway</html>", b'{"error": "invalid_software_statement"}'])
def test_5xx_is_a_retryable_server_error_whatever_the_body(status, body):
    with pytest.raises(UpstreamError) as ei:
        dcr.parse_token(status, {}, body)
    assert (ei.value.code, ei.value.kind, ei.value.status) == ("server_error", RETRY, status)


@pytest.mark.parametrize("status,body,code", [(400, b"<html>proxy</html>", "http_400"), (404, b"", "http_404"),
                                              (403, b"Forbidden", "http_403"), (400, b'{"error": "brand_new"}',
                                                                                    "unknown_error"),
                                              (400, b'{"error": 7}', "http_400"), (302, b"", "redirected")])
def test_other_answers_are_retryable_with_a_stable_code(status, body, code):
    with pytest.raises(UpstreamError) as ei:
        dcr.parse_register(status, {}, body)
    assert (ei.value.code, ei.value.kind) == (code, RETRY)
    assert str(status) in str(ei.value)


def test_error_dict_never_carries_a_secret():
    req = dcr.token_request(BASE, "cid", "the-secret-value", XDI)
    assert b"the-secret-value" in req["body"]
    for status, body in [(400, b'{"error": "invalid_client"}'), (429, HTML_429), (503, b""), (201, b"{}")]:
        with pytest.raises(UpstreamError) as ei:
            dcr.parse_token(status, {}, body)
        assert "the-secret-value" not in repr(ei.value.to_dict()) + str(ei.value)


# ----------------------------------------------------------------------------- Retry-After

WALL = 1_700_000_000.0


@pytest.mark.parametrize("value,expected", [("0", 0.0), ("7", 7.0), (" 120 ", 120.0), ("999999", 86400.0),
                                            ("-3", None), ("1.5", None), ("", None), ("soon", None), (None, None)])
def test_retry_after_in_seconds(value, expected):
    assert dcr.parse_retry_after(value, WALL) == expected


@pytest.mark.parametrize("fmt", ["imf", "rfc850", "asctime"])
def test_retry_after_as_http_date(fmt):
    when = WALL + 95
    imf = email.utils.formatdate(when, usegmt=True)  # 'Tue, 14 Nov 2023 22:14:55 GMT'
    wd, d, mon, y, clock, _ = imf.split()
    text = {"imf": imf,
            "rfc850": "Tuesday, %s-%s-%s %s GMT" % (d, mon, y[2:], clock),
            "asctime": "%s %s %2d %s %s" % (wd.rstrip(","), mon, int(d), clock, y)}[fmt]
    assert dcr.parse_retry_after(text, WALL) == pytest.approx(95.0)
    assert dcr.parse_retry_after(text, WALL + 200) == 0.0  # a date in the past: no wait


def test_http_date_parser_matches_the_standard_library():
    for t in range(0, 4_000_000_000, 9_876_543):
        assert dcr.parse_http_date(email.utils.formatdate(t, usegmt=True)) == float(t)


@pytest.mark.parametrize("text", ["Tue, 32 Nov 2023 22:14:55 GMT", "Tue, 14 Foo 2023 22:14:55 GMT",
                                  "Tue, 14 Nov 2023 25:14:55 GMT", "Tue, 14 Nov 2023 22:14:55 CET", "garbage"])
def test_bad_http_dates_are_ignored(text):
    assert dcr.parse_retry_after(text, WALL) is None


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_reaches_the_error(status):
    with pytest.raises(UpstreamError) as ei:
        dcr.parse_token(status, {"retry-after": "30"}, b"")
    assert ei.value.retry_after == 30.0
    date = email.utils.formatdate(WALL + 60, usegmt=True)
    with pytest.raises(UpstreamError) as ei:
        dcr.parse_register(status, {"Retry-After": date}, HTML_429, WALL)
    assert ei.value.retry_after == pytest.approx(60.0)


# ----------------------------------------------------------------------------- player reports

@pytest.mark.parametrize("status,body,management,decision", [
    (401, b"", False, "refresh"),
    (401, {"action": "authentication", "code": "access_token_expired"}, False, "refresh"),
    (400, {"errors": [{"code": "invalid_access_token_signature", "action": "retry"}]}, False, "refresh"),
    (401, {"action": "application-registration", "code": "invalid_access_token_service_provider"}, False, "reregister"),
    # An unknown code with action application-registration, and invalid_client_id: a new token first
    # (reference section 5, 2026-12 correction); the token endpoint's invalid_client re-registers.
    (401, json.dumps({"errors": [{"action": "application-registration", "code": "x"}]}).encode(), False, "refresh"),
    (401, {"code": "invalid_client_id"}, False, "refresh"),
    (403, b"", True, "reregister"),
    (403, b"", False, "ignore"),
    (400, {"code": "invalid_client_time", "action": "configuration"}, False, "ignore"),
    (500, b"<html>", False, "ignore"),
    (401, [{"action": "application-registration"}], False, "refresh"),
    (401, [{"action": "application-registration", "code": "invalid_access_token_client_application"}], False,
     "reregister"),
    (401, b"\xff", False, "refresh"),
    # The action alone decides when the code is unknown and nothing says 401 (a 403, an item of a 200):
    # a new token first, never ignored.
    (403, {"action": "application-registration", "code": "brand_new_code", "status": 403}, False, "refresh"),
    (200, {"decisions": [{"error": {"action": "application-registration", "code": "x", "status": 403}}]}, False,
     "refresh"),
])
def test_classify_protected_error(status, body, management, decision):
    assert dcr.classify_protected_error(status, body, management)[0] == decision


def test_form_encode_matches_urlencode():
    pairs = [("a b", "c&d=e"), ("é", "/+?#%"), ("", "~._-")]
    assert dcr.form_encode(pairs) == urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote, safe="-._~")
