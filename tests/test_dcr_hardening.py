"""agent/dcr.py read as Adobe means it, and hardened against what a hostile or odd upstream sends.

Issue 14 items 4-6 and issue 15 items 2 (DCR side), 4 (Date header), 10 (validation), 17 (one network
hint): Enhanced Error Codes in both pairings, item-level and wrapped; undocumented answers flagged;
Adobe's strings bounded, printable and masked before they reach a message; the access token and
credentials validated before they can be served; Retry-After dates read against the server's clock.
"""

from __future__ import annotations

import email.utils
import json
import socket

import pytest

from agent import dcr
from agent.errors import OPERATOR, REREGISTER, RETRY, UpstreamError

SECRET = "5ec2e7-client-secret-never-in-messages"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.access-token-never-in-messages"
WALL = 1_700_000_000.0


def printable_ascii(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


def raised(fn, *args) -> UpstreamError:
    with pytest.raises(UpstreamError) as ei:
        fn(*args)
    return ei.value


# ----------------------------------------------------------------------------- EEC, both pairings

@pytest.mark.parametrize("code", ["access_token_expired", "invalid_access_token_signature"])
@pytest.mark.parametrize("status", [401, 400, 403])
def test_2023_pairing_token_validity_code_with_application_registration_refreshes(code, status):
    # The 2023 page paired these codes with action application-registration; the code decides.
    body = {"action": "application-registration", "status": 401, "code": code, "message": "x"}
    decision, reason = dcr.classify_protected_error(status, body)
    assert decision == "refresh"
    assert code in reason


@pytest.mark.parametrize("body", [b"", None, b"Unauthorized", b"<html>401</html>", {}, []])
def test_current_pairing_plain_401_refreshes(body):
    assert dcr.classify_protected_error(401, body)[0] == "refresh"


@pytest.mark.parametrize("code", ["invalid_access_token_service_provider",
                                  "invalid_access_token_client_application"])
@pytest.mark.parametrize("action", ["application-registration", None, "none"])
def test_current_pairing_invalid_access_token_codes_reregister(code, action):
    body = {"status": 401, "code": code}
    if action:
        body["action"] = action
    assert dcr.classify_protected_error(401, body)[0] == "reregister"


def test_unknown_code_with_application_registration_gets_a_new_token_not_new_credentials():
    # Re-registering logs users out: only the two invalid_access_token_* codes do it.
    decision, _ = dcr.classify_protected_error(401, {"action": "application-registration", "code": "brand_new"})
    assert decision == "refresh"
    assert dcr.classify_protected_error(401, {"code": "invalid_client_id", "status": 401})[0] == "refresh"


def test_management_403_reregisters_other_403_does_not():
    assert dcr.classify_protected_error(403, b"", management=True)[0] == "reregister"
    assert dcr.classify_protected_error(403, b"", management=False)[0] == "ignore"


# ----------------------------------------------------------------------------- wrapped and item-level

@pytest.mark.parametrize("status", [401, 400, 200])
def test_wrapped_error_object_is_read(status):
    body = {"error": {"action": "application-registration", "status": 401,
                      "code": "invalid_access_token_client_application", "message": "m"}}
    assert dcr.classify_protected_error(status, body)[0] == "reregister"
    wrapped_expired = json.dumps({"error": {"action": "application-registration", "status": 401,
                                            "code": "access_token_expired"}}).encode()
    assert dcr.classify_protected_error(status, wrapped_expired)[0] == "refresh"


DECISIONS_200 = {"decisions": [
    {"resource": "REF30", "authorized": True, "token": {"serializedToken": "PHNpZ..."}},
    {"resource": "REF40", "authorized": False,
     "error": {"action": "retry", "status": 503, "code": "network_connection_failure", "message": "m"}},
    {"resource": "REF50", "authorized": False,
     "error": {"action": "none", "status": 403, "code": "authorization_denied_by_mvpd"}},
    {"resource": "REF60", "authorized": False,
     "error": {"action": "application-registration", "status": 401, "code": "access_token_expired"}},
]}


def test_item_level_errors_of_a_200_answer_are_classified_per_item():
    items = dcr.classify_protected_items(DECISIONS_200)
    assert [(i["path"], i["code"], i["decision"]) for i in items] == [
        ("decisions[1].error", "network_connection_failure", "retry"),
        ("decisions[2].error", "authorization_denied_by_mvpd", "ignore"),
        ("decisions[3].error", "access_token_expired", "refresh"),
    ]
    assert [i["index"] for i in items] == [1, 2, 3]
    assert dcr.classify_protected_error(200, DECISIONS_200)[0] == "refresh"
    assert dcr.classify_protected_error(200, json.dumps(DECISIONS_200))[0] == "refresh"


def test_item_level_reregister_code_in_a_200_answer():
    body = {"decisions": [{"resource": "a", "error": {"action": "application-registration", "status": 401,
                                                      "code": "invalid_access_token_service_provider"}}]}
    assert dcr.classify_protected_error(200, body)[0] == "reregister"


def test_retry_items_alone_do_not_touch_the_credentials():
    body = {"decisions": [{"error": {"action": "retry", "code": "temporary_failure"}},
                          {"error": {"action": "retry-after", "code": "too_many_requests"}}]}
    items = dcr.classify_protected_items(body)
    assert [i["decision"] for i in items] == ["retry", "retry"]
    assert dcr.classify_protected_error(200, body)[0] == "ignore"


def test_top_level_and_errors_list_items_have_paths():
    assert [i["path"] for i in dcr.classify_protected_items({"code": "access_token_expired"})] == [""]
    items = dcr.classify_protected_items({"errors": [{"code": "a"}, {"code": "access_token_expired"}]})
    assert [(i["path"], i["decision"]) for i in items] == [("errors[0]", "ignore"), ("errors[1]", "refresh")]


def test_classification_walk_is_bounded():
    deep: object = {"error": {"code": "access_token_expired"}}
    for _ in range(5000):
        deep = {"x": deep}
    assert dcr.classify_protected_error(200, deep)[0] == "ignore"  # too deep to be an Adobe item: not read
    many = {"decisions": [{"error": {"action": "retry", "code": "c"}}] * 100000}
    assert len(dcr.classify_protected_items(many)) <= dcr.MAX_ITEMS


@pytest.mark.parametrize("code", ["access\n_token_expired\x1b[2J", "x" * 5000, "\u202eevil", SECRET, TOKEN])
def test_classification_reason_and_items_are_sanitised(code):
    body = {"error": {"action": "retry\r\nERROR forged", "code": code, "status": 401}}
    decision, reason = dcr.classify_protected_error(401, body)
    assert decision == "refresh"
    for text in [reason] + [str(v) for i in dcr.classify_protected_items(body) for v in i.values()]:
        assert printable_ascii(text) and len(text) <= 300, text
        assert SECRET not in text and TOKEN not in text and "\x1b" not in text


# ----------------------------------------------------------------------------- undocumented answers

@pytest.mark.parametrize("parse", [dcr.parse_register, dcr.parse_token])
@pytest.mark.parametrize("status,body", [(401, b""), (403, b"<html><title>Forbidden</title></html>"),
                                         (401, b'{"message": "nope"}'), (403, None)])
def test_401_403_without_oauth_body_are_undocumented(parse, status, body):
    e = raised(parse, status, {}, body)
    assert e.kind == RETRY and e.undocumented is True
    assert str(status) in e.message
    assert "check" in e.hint
    if body and b"Forbidden" in body:
        assert "<title>Forbidden</title>" in e.message  # a sanitised excerpt of what came


@pytest.mark.parametrize("parse", [dcr.parse_register, dcr.parse_token])
def test_unknown_oauth_code_is_undocumented_and_named(parse):
    e = raised(parse, 400, {}, b'{"error": "brand_new_code"}')
    assert (e.code, e.kind, e.undocumented) == ("unknown_error", RETRY, True)
    assert "brand_new_code" in e.message and "400" in e.message


@pytest.mark.parametrize("parse,body", [(dcr.parse_register, b'{"client_secret": "x"}'),
                                        (dcr.parse_register, b"{}"),
                                        (dcr.parse_token, b'{"token_type": "bearer", "expires_in": 3600}'),
                                        (dcr.parse_token, b"<html>portal</html>")])
def test_2xx_without_client_id_or_access_token_is_undocumented(parse, body):
    e = raised(parse, 201, {}, body)
    assert (e.code, e.kind, e.undocumented) == ("malformed_response", RETRY, True)
    assert "201" in e.message and e.hint


@pytest.mark.parametrize("status,headers,body", [
    (429, {}, b""), (503, {}, b""), (400, {}, b'{"error": "invalid_client"}'),
    (400, {}, b'{"error": "invalid_software_statement"}')])
def test_documented_answers_are_not_undocumented(status, headers, body):
    e = raised(dcr.parse_token, status, headers, body)
    assert e.undocumented is False
    assert UpstreamError("x").undocumented is False


# ----------------------------------------------------------------------------- Adobe's strings are data

@pytest.mark.parametrize("code", [SECRET, TOKEN, "evil\r\nERROR forged line", "\x1b[2J\x1b[H", "é" * 300,
                                  "a" * 5000, "x\x00y"])
@pytest.mark.parametrize("parse", [dcr.parse_register, dcr.parse_token])
def test_upstream_error_strings_are_bounded_printable_and_never_echo_a_secret(parse, code):
    e = raised(parse, 400, {}, json.dumps({"error": code}).encode())
    assert e.code == "unknown_error"
    for text in (e.message, e.hint, str(e), json.dumps(e.to_dict())):
        assert printable_ascii(text), text
        assert SECRET not in text and TOKEN not in text
    assert len(e.message) <= 400


@pytest.mark.parametrize("body", [("<html>" + SECRET + "</html>").encode(), ("x" * 100000).encode(),
                                  b"\x1b]0;pwned\x07\r\nERROR: forged", TOKEN.encode()])
def test_body_excerpts_are_bounded_printable_and_masked(body):
    e = raised(dcr.parse_token, 403, {}, body)
    assert printable_ascii(e.message) and len(e.message) <= 400
    assert SECRET not in e.message and TOKEN not in e.message and "\x1b" not in e.message


def test_sanitise_helper():
    assert dcr.printable("plain text") == "plain text"
    assert dcr.printable("a\r\n\tb") == "a b"
    assert dcr.printable("\x1b[2J") == "\\x1b[2J"
    assert dcr.printable("é") == "\\xe9" and dcr.printable("\u202e") == "\\u202e"
    assert dcr.printable(b"\xff") == "\\xff"
    assert dcr.printable("back\\slash") == "back\\\\slash"
    long = dcr.printable("word " * 100, 40)
    assert len(long) <= 40 and long.endswith("...")
    # Secret-shaped runs are masked; identifiers and host names are not.
    assert SECRET not in dcr.printable("echo " + SECRET)
    assert dcr.printable("invalid_access_token_client_application") == "invalid_access_token_client_application"
    assert dcr.printable("sp.auth-staging.adobe.com") == "sp.auth-staging.adobe.com"


# ----------------------------------------------------------------------------- what is served is validated

@pytest.mark.parametrize("token", ["abc\r\nX-Injected: 1", "a b", "abc\x00", "tok\u00e9n", "a=b", "=abc",
                                   "a" * 8193, "a,b", 'a"b', "a;b", "=", "==="])
def test_access_token_outside_the_bearer_alphabet_is_never_served(token):
    e = raised(dcr.parse_token, 201, {}, json.dumps({"access_token": token, "expires_in": 3600}).encode())
    assert (e.code, e.kind, e.undocumented) == ("malformed_response", RETRY, True)
    assert token not in e.message and "X-Injected" not in e.message
    assert printable_ascii(e.message)


@pytest.mark.parametrize("token", ["abc", TOKEN, "A-._~+/9", "abc==", "a" * 8192, "Zm9v/YmFy+=="])
def test_bearer_alphabet_tokens_are_accepted(token):
    assert dcr.parse_token(201, {}, json.dumps({"access_token": token, "expires_in": 60}).encode())[
        "access_token"] == token


@pytest.mark.parametrize("field,value", [("client_id", "a b"), ("client_id", "id\r\nx"), ("client_secret", "s\x00"),
                                         ("client_secret", "s\tt"), ("client_id", "x" * 1025),
                                         ("client_secret", "\u00e9t\u00e9")])
def test_register_credentials_must_be_visible_ascii_and_bounded(field, value):
    data = {"client_id": "8a1b4e5c-0000-4000-8000-000000000001", "client_secret": "f0e1d2c3-secret"}
    data[field] = value
    e = raised(dcr.parse_register, 201, {}, json.dumps(data).encode())
    assert (e.code, e.undocumented) == ("malformed_response", True)
    assert field in e.message and value not in e.message


@pytest.mark.parametrize("expires_in", [0, -1, -21600, "soon", True, False, "", "0", 2592001, 10 ** 12,
                                        "9" * 20, [3600], {"s": 1}, 0.0, -0.5])
def test_unusable_expires_in_is_a_malformed_answer_not_a_silent_default(expires_in):
    e = raised(dcr.parse_token, 201, {}, json.dumps({"access_token": "abc", "expires_in": expires_in}).encode())
    assert (e.code, e.kind, e.undocumented) == ("malformed_response", RETRY, True)
    assert "expires_in" in e.message


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_expires_in_is_malformed(raw):
    e = raised(dcr.parse_token, 201, {}, b'{"access_token": "abc", "expires_in": ' + raw + b"}")
    assert e.code == "malformed_response" and e.undocumented


@pytest.mark.parametrize("body", [b'{"access_token": "abc"}', b'{"access_token": "abc", "expires_in": null}'])
def test_missing_expires_in_assumes_the_documented_default_and_says_so(body):
    t = dcr.parse_token(201, {}, body)
    assert (t["expires_in"], t["expires_in_assumed"]) == (dcr.DEFAULT_EXPIRES_IN, True)


@pytest.mark.parametrize("value,expected", [(2592000, 2592000), ("21600", 21600), (21600.0, 21600), (0.5, 1), (1, 1)])
def test_usable_expires_in(value, expected):
    t = dcr.parse_token(201, {}, json.dumps({"access_token": "abc", "expires_in": value}).encode())
    assert (t["expires_in"], t["expires_in_assumed"]) == (expected, False)


def test_token_type_and_id_are_validated_before_serving():
    t = dcr.parse_token(201, {}, json.dumps({"access_token": "abc", "expires_in": 60,
                                              "token_type": "bearer\r\nX: 1", "id": "i\x1bd"}).encode())
    assert t["token_type"] == "bearer" and t["id"] is None


# ----------------------------------------------------------------------------- redirects are not followed

@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("parse", [dcr.parse_register, dcr.parse_token])
def test_a_redirect_answer_is_an_upstream_error_naming_the_location(parse, status):
    loc = "http://evil.example:8080/steal?client_secret=" + SECRET
    e = raised(parse, status, {"Location": loc}, b"")
    assert (e.code, e.kind, e.undocumented) == ("redirected", RETRY, True)
    assert "http://evil.example:8080/steal" in e.message and SECRET not in str(e)
    assert "redirect" in e.message and "base_url" in e.hint
    e = raised(parse, status, {"Location": "\x1b[2J" + "x" * 5000}, b"")
    assert printable_ascii(e.message) and len(e.message) <= 400


# ----------------------------------------------------------------------------- Retry-After vs. the server's clock

def test_retry_after_date_counts_from_the_servers_date_header():
    server_now = WALL
    local_wall = WALL - 5 * 3600  # the box's clock is 5 h behind
    headers = {"Date": email.utils.formatdate(server_now, usegmt=True),
               "Retry-After": email.utils.formatdate(server_now + 60, usegmt=True)}
    e = raised(dcr.parse_token, 429, headers, b"<html>429</html>", local_wall)
    assert e.retry_after == pytest.approx(60.0)
    assert dcr.parse_retry_after(headers["Retry-After"], local_wall, headers["Date"]) == pytest.approx(60.0)


def test_retry_after_date_without_a_usable_date_header_uses_the_local_clock():
    ra = email.utils.formatdate(WALL + 60, usegmt=True)
    assert dcr.parse_retry_after(ra, WALL, None) == pytest.approx(60.0)
    assert dcr.parse_retry_after(ra, WALL, "garbage") == pytest.approx(60.0)


@pytest.mark.parametrize("value,date", [("Fri, 31 Dec 9999 23:59:59 GMT", None),
                                        ("Fri, 31 Dec 9999 23:59:59 GMT", "Sun, 06 Nov 1994 08:49:37 GMT"),
                                        ("9" * 400, None), ("99999999999999999999", None)])
def test_absurd_retry_after_is_a_number_clamped_to_a_day(value, date):
    assert dcr.parse_retry_after(value, WALL, date) == dcr.MAX_RETRY_AFTER == 86400.0


# ----------------------------------------------------------------------------- one network hint

def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_network_error_says_what_to_check_once():
    with pytest.raises(UpstreamError) as ei:
        dcr.send(dcr.register_request("http://127.0.0.1:%d/o" % _free_port(), "eyJ.a.b", "X"), timeout=5)
    e = ei.value
    assert e.code == "network"
    text = str(e).lower()
    assert text.count("check the network") == 1, text
    assert "retry" not in e.message.lower() and "check" not in e.message.lower(), e.message
    assert "[errno" not in text and "urequests:" not in text
    assert "127.0.0.1" in e.message and "ECONNREFUSED" in e.message


def test_timeout_error_says_what_to_check_once():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)  # accepts (in the backlog), never answers
    try:
        with pytest.raises(UpstreamError) as ei:
            dcr.send(dcr.token_request("http://127.0.0.1:%d/o" % srv.getsockname()[1], "cid", SECRET, "X"),
                     timeout=0.3)
    finally:
        srv.close()
    e = ei.value
    assert e.code == "timeout"
    assert "retry" not in e.message.lower() and "raise timeout" not in e.message.lower(), e.message
    assert str(e).lower().count("timeout") <= 2 and SECRET not in str(e)


def test_kinds_are_unchanged_for_documented_errors():
    assert raised(dcr.parse_token, 400, {}, b'{"error": "invalid_client"}').kind == REREGISTER
    assert raised(dcr.parse_register, 400, {}, b'{"error": "invalid_software_statement"}').kind == OPERATOR
