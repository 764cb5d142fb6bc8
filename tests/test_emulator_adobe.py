"""The emulator encodes Adobe's documented behaviour (docs/ADOBE.md, issue 14 item 7),
each quirk over real HTTP(S), with the switches that select the documented variants:

- throttle: the burst of 10 is a one-time allowance (section 6), buckets per client address or
  X-Forwarded-For; a switch keeps the old refilling bucket;
- register requires `Content-Type: application/json;charset=utf-8` (section 1), answered 400
  invalid_request like every other malformed register request;
- protected-API errors in the 2023 and the current pairing (section 5), top-level, wrapped and
  item-level forms;
- DCR 401/403 without a body (fault switch);
- explicit X-Device-Info values merged over the extracted ones, effective connectionIp logged (section 4);
- a request log with method, path, headers and body, secrets masked.

Time-dependent throttle tests drive the emulator's clock (`Emulator(clock=...)`), so they decide
exactly and never depend on how fast this machine is.
"""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest

from agent import dcr, urequests
from agent.emulator import Emulator, cli
from agent.emulator.client import admin, device_info
from tests.emuhelpers import Clock, call

JSON_CT = "application/json;charset=utf-8"
FORM_CT = "application/x-www-form-urlencoded"


@pytest.fixture
def emu(keydir):
    with Emulator(state_dir=keydir, throttle=False) as e:
        yield e


def hit(emu, headers=None):
    return call(emu, "POST", "/o/client/token", "", dict({"Content-Type": FORM_CT}, **(headers or {})))[0]


def register(emu, ctype=JSON_CT, statement=None, extra_headers=None):
    h = {"Content-Type": ctype, "X-Device-Info": device_info()}
    h.update(extra_headers or {})
    body = json.dumps({"software_statement": statement or emu.mint_statement()})
    status, hdrs, data = call(emu, "POST", "/o/client/register", body, h)
    return status, hdrs, data


def credentials(emu):
    status, _, data = register(emu)
    assert status == 201, data
    body = json.loads(data)
    return body["client_id"], body["client_secret"]


def token_for(emu, cid, secret):
    form = urllib.parse.urlencode({"client_id": cid, "client_secret": secret, "grant_type": "client_credentials"})
    status, _, data = call(emu, "POST", "/o/client/token", form, {"Content-Type": FORM_CT, "X-Device-Info": device_info()})
    assert status == 201, data
    return json.loads(data)["access_token"]


def protected(emu, tok, path="/api/v2/REF/configuration", method="GET", body=None, headers=None):
    h = {"X-Device-Info": device_info(), "AP-Device-Identifier": "fingerprint YWJj"}
    if tok is not None:
        h["Authorization"] = "Bearer " + tok
    if body is not None:
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    status, hdrs, data = call(emu, method, path, json.dumps(body) if body is not None else None, h)
    return status, hdrs, data


def expired_token(emu):
    cid, secret = credentials(emu)
    emu.add_fault("token", clock_skew=-30000)  # issued 8 h ago with a 6 h lifetime
    return cid, token_for(emu, cid, secret)


# ----- throttle: a one-time burst, per client address / X-Forwarded-For ---------------------------------

def test_burst_is_a_one_time_allowance_not_refilled_when_idle(keydir):
    clock = Clock()
    with Emulator(state_dir=keydir, tls=False, rate=1.0, burst=4, clock=clock) as emu:
        assert [hit(emu) for _ in range(4)] == [400] * 4  # the initial burst reaches the service
        assert hit(emu) == 429
        clock.t += 3600.0  # an hour idle: a refilling bucket would hold 4 again
        assert [hit(emu) for _ in range(3)] == [400, 429, 429]  # one per second, nothing more
        clock.t += 1.0
        assert hit(emu) == 400
        assert emu.config()["burst_refill"] is False


def test_unused_rest_of_the_allowance_is_kept_but_never_topped_up(keydir):
    clock = Clock()
    with Emulator(state_dir=keydir, tls=False, rate=1.0, burst=4, clock=clock) as emu:
        assert [hit(emu) for _ in range(2)] == [400, 400]
        clock.t += 600.0
        assert [hit(emu) for _ in range(3)] == [400, 400, 429]  # 2 left of 4, not 4 again


def test_refilling_burst_switch_restores_the_classic_bucket(keydir):
    clock = Clock()
    with Emulator(state_dir=keydir, tls=False, rate=1.0, burst=4, clock=clock, burst_refill=True) as emu:
        assert [hit(emu) for _ in range(5)] == [400] * 4 + [429]
        clock.t += 3600.0
        assert [hit(emu) for _ in range(5)] == [400] * 4 + [429]
        emu.configure(burst_refill=False)  # at run time too (every bucket starts full again)
        assert [hit(emu) for _ in range(5)] == [400] * 4 + [429]
        clock.t += 3600.0
        assert [hit(emu) for _ in range(2)] == [400, 429]
        _, cfg = admin(emu.origin, "POST", "config", {"burst_refill": True})
        assert cfg["burst_refill"] is True


def test_buckets_follow_x_forwarded_for_by_default_as_adobe_documents(keydir):
    clock = Clock()
    with Emulator(state_dir=keydir, tls=False, rate=1.0, burst=2, clock=clock) as emu:
        for ip in ("203.0.113.7", "203.0.113.8"):
            xff = {"X-Forwarded-For": ip + ", 198.51.100.1"}
            assert [hit(emu, xff) for _ in range(3)] == [400, 400, 429]
        assert [hit(emu) for _ in range(3)] == [400, 400, 429]  # the peer itself is a third client
        per_ip = emu.stats()["per_client_ip"]
        assert set(per_ip) == {"203.0.113.7", "203.0.113.8", "127.0.0.1"}
        emu.configure(trust_forwarded_for=False)  # the switch: one bucket per peer address
        assert [hit(emu, {"X-Forwarded-For": "203.0.113.9"}) for _ in range(3)] == [400, 400, 429]
        assert hit(emu, {"X-Forwarded-For": "203.0.113.10"}) == 429


def test_rate_error_names_only_flags_that_exist(capsys):
    assert cli.main(["--rate", "0"]) == 2
    err = capsys.readouterr().err
    known = {o for a in cli.build_parser()._actions for o in a.option_strings}
    named = set(re.findall(r"--[a-z][a-z-]*", err))
    assert named and named <= known, (named - known, err)
    assert "throttle off" not in err


def test_cli_switches_reach_the_config(keydir, capsys):
    args = cli.build_parser().parse_args(["--refilling-burst", "--ignore-forwarded-for",
                                          "--register-content-type", "relaxed", "--error-style", "2023",
                                          "--error-form", "wrapped"])
    assert (args.refilling_burst, args.ignore_forwarded_for, args.register_content_type, args.error_style,
            args.error_form) == (True, True, "relaxed", "2023", "wrapped")
    assert cli.main(["--error-style", "2019"]) == 2
    assert "invalid choice" in capsys.readouterr().err


# ----- register: the documented Content-Type --------------------------------------------------------------

@pytest.mark.parametrize("ctype,strict,exact,relaxed", [
    ("application/json;charset=utf-8", 201, 201, 201),
    ("application/json; charset=UTF-8", 201, 400, 201),
    ("application/json", 400, 400, 201),          # Adobe's own sample sends this; the table requires the charset
    ("application/json;charset=latin-1", 400, 400, 400),
    ("text/plain;charset=utf-8", 400, 400, 400),
])
def test_register_content_type_modes(emu, ctype, strict, exact, relaxed):
    assert emu.config()["register_content_type"] == "strict"  # the default
    for mode, expected in (("strict", strict), ("exact", exact), ("relaxed", relaxed)):
        emu.configure(register_content_type=mode)
        status, hdrs, data = register(emu, ctype)
        assert status == expected, (mode, ctype, data)
        if status == 400:
            assert json.loads(data) == {"error": "invalid_request"}  # the documented answer, not 415
            assert "application/json;charset=utf-8" in hdrs["x-emulator-reason"]


def test_the_agents_register_request_passes_the_exact_check_byte_for_byte(keydir):
    with Emulator(state_dir=keydir, throttle=False, register_content_type="exact") as emu:
        statement = emu.mint_statement()
        req = dcr.register_request(emu.base_url, statement, device_info())
        r = urequests.request(req["method"], req["url"], data=req["body"], headers=req["headers"],
                              ca_file=emu.ca_file, timeout=10)
        assert r.status_code == 201, r.content
        r.close()
        entry = emu.requests("register")[-1]
        sent = {k.lower(): v for k, v in entry["headers"]}
        assert sent["content-type"] == "application/json;charset=utf-8"
        assert entry["body"] == req["body"].decode().replace(statement, "[masked]")


# ----- protected API: both pairings, three forms ---------------------------------------------------------

def test_current_pairing_plain_401_for_token_validity(emu):
    assert emu.config()["error_style"] == "current"
    _, expired = expired_token(emu)
    for tok in (expired, "not-a-jwt", None):
        status, hdrs, data = protected(emu, tok)
        assert (status, data) == (401, b"") and "content-type" not in hdrs


def test_current_pairing_invalid_access_token_codes_ask_for_registration(emu):
    cid, secret = credentials(emu)
    tok = token_for(emu, cid, secret)
    emu.configure(invalid_service_providers=["GONE"])
    status, _, data = protected(emu, tok, "/api/v2/GONE/configuration")
    body = json.loads(data)
    assert status == 401 and (body["code"], body["action"], body["status"]) == (
        "invalid_access_token_service_provider", "application-registration", 401)
    emu.revoke_client(cid)
    status, _, data = protected(emu, tok)
    body = json.loads(data)
    assert status == 401 and (body["code"], body["action"]) == (
        "invalid_access_token_client_application", "application-registration")


def test_2023_pairing_token_validity_codes_with_application_registration(emu):
    emu.configure(error_style="2023")
    cid, expired = expired_token(emu)
    for tok, code in ((expired, "access_token_expired"), ("a.b.c", "invalid_access_token_signature")):
        status, _, data = protected(emu, tok)
        body = json.loads(data)
        assert status == 401 and (body["code"], body["action"], body["status"]) == (
            code, "application-registration", 401)
    emu.revoke_client(cid)
    cid2, secret2 = credentials(emu)
    tok2 = token_for(emu, cid2, secret2)
    emu.revoke_client(cid2)
    body = json.loads(protected(emu, tok2)[2])
    assert (body["code"], body["action"]) == ("invalid_client_id", "application-registration")


def test_wrapped_error_form(emu):
    emu.configure(error_style="2023", error_form="wrapped")
    _, expired = expired_token(emu)
    status, _, data = protected(emu, expired)
    body = json.loads(data)
    assert status == 401 and set(body) == {"error"} and body["error"]["code"] == "access_token_expired"


def test_item_level_errors_in_a_200_answer(emu):
    emu.configure(require_profile=False)  # no MVPD login here (tests/test_emulator_restv2.py logs in)
    cid, secret = credentials(emu)
    tok = token_for(emu, cid, secret)
    path = "/api/v2/REF/decisions/authorize/Cablevision"
    status, _, data = protected(emu, tok, path, "POST", {"resources": ["REF30", "REF40"]})
    assert status == 200 and [d["authorized"] for d in json.loads(data)["decisions"]] == [True, True]
    emu.configure(item_errors={"REF40": "network_connection_timeout"})
    status, _, data = protected(emu, tok, path, "POST", {"resources": ["REF30", "REF40"]})
    ok, failed = json.loads(data)["decisions"]
    assert status == 200 and ok["authorized"] is True and "error" not in ok
    assert failed["authorized"] is False and (failed["error"]["action"], failed["error"]["status"],
                                              failed["error"]["code"]) == ("retry", 403, "network_connection_timeout")
    # Credential errors too can sit on the items of a 200 answer.
    emu.configure(error_form="item", error_style="2023", item_errors={})
    _, expired = expired_token(emu)
    status, _, data = protected(emu, expired, path, "POST", {"resources": ["REF30", "REF40"]})
    items = json.loads(data)["decisions"]
    assert status == 200 and [i["error"]["code"] for i in items] == ["access_token_expired"] * 2
    assert all(i["error"]["action"] == "application-registration" and i["error"]["status"] == 401 for i in items)


def test_error_settings_are_validated(emu):
    for bad in ({"error_style": "2019"}, {"error_form": "nested"}, {"register_content_type": "lax"},
                {"item_errors": {"REF": "no_such_code"}}, {"invalid_service_providers": "REF"}):
        status, body = admin(emu.origin, "POST", "config", bad, ca_file=emu.ca_file)
        assert status == 400 and list(bad)[0] in body["message"]


# ----- DCR endpoints: 401/403 without a body ----------------------------------------------------------------

@pytest.mark.parametrize("endpoint,status", [("register", 401), ("token", 403)])
def test_dcr_status_without_a_body(emu, endpoint, status):
    emu.add_fault(endpoint, status=status, no_body=True)
    if endpoint == "register":
        got, hdrs, data = register(emu)
    else:
        got, hdrs, data = call(emu, "POST", "/o/client/token", "a=b", {"Content-Type": FORM_CT})
    assert (got, data, hdrs["content-length"]) == (status, b"", "0") and "content-type" not in hdrs


def test_no_body_needs_a_status(emu):
    status, body = admin(emu.origin, "POST", "faults", {"endpoint": "token", "no_body": True}, ca_file=emu.ca_file)
    assert status == 400 and "no_body" in body["message"]


# ----- X-Device-Info: explicit values merged over extracted ones ---------------------------------------------

def test_explicit_connection_ip_replaces_the_extracted_one(emu):
    register(emu, extra_headers={"X-Device-Info": device_info(connectionIp="192.168.1.20", connectionPort=5555)})
    register(emu)
    register(emu, extra_headers={"X-Forwarded-For": "203.0.113.5"})
    lan, plain, forwarded = emu.requests("register")
    assert (lan["connection_ip"], lan["connection_port"]) == ("192.168.1.20", 5555)
    assert lan["device_info"]["model"] == "EMU-1" and lan["device_info"]["connectionIp"] == "192.168.1.20"
    assert plain["connection_ip"] == "127.0.0.1" and isinstance(plain["connection_port"], int)
    assert plain["device_info"]["connectionSecure"] is True  # explicit value kept (TLS extracted agrees)
    assert forwarded["connection_ip"] == "203.0.113.5"
    assert lan["ip"] == "127.0.0.1"  # the throttle still counts the real client


def test_unknown_platform_is_recorded(emu):
    register(emu, extra_headers={"X-Device-Info": device_info(model="Unknown")})
    register(emu)
    unknown, known = emu.requests("register")
    assert unknown["unknown_platform"] is True and known["unknown_platform"] is False


# ----- request log: exact bytes, secrets masked --------------------------------------------------------------

def test_request_log_holds_method_path_headers_and_masked_body(emu):
    statement = emu.mint_statement()
    status, _, data = register(emu, statement=statement, extra_headers={"User-Agent": "box/1.0"})
    reg = json.loads(data)
    tok = token_for(emu, reg["client_id"], reg["client_secret"])
    protected(emu, tok)
    r_reg, r_tok, r_api = emu.requests()
    assert (r_reg["method"], r_reg["path"]) == ("POST", "/o/client/register")
    assert ["Content-Type", JSON_CT] in r_reg["headers"] and ["User-Agent", "box/1.0"] in r_reg["headers"]
    assert r_reg["body"] == '{"software_statement": "[masked]"}'
    assert r_tok["body"] == "client_id=%s&client_secret=[masked]&grant_type=client_credentials" % reg["client_id"]
    assert ["Authorization", "Bearer [masked]"] in r_api["headers"]
    everything = json.dumps(emu.stats()) + json.dumps(admin(emu.origin, "GET", "requests", ca_file=emu.ca_file)[1])
    for secret in (statement, reg["client_secret"], tok):
        assert secret not in everything
    status, body = admin(emu.origin, "GET", "requests?endpoint=token", ca_file=emu.ca_file)
    assert status == 200 and [r["path"] for r in body["requests"]] == ["/o/client/token"]
