"""Every fault knob over real sockets (HTTP and HTTPS), set in-process, by the admin API and by spec."""

from __future__ import annotations

import email.utils
import http.client
import json
import socket
import ssl
import time
import urllib.parse

import pytest

from agent.emulator import Emulator
from agent.emulator.client import admin, connection, device_info, request
from agent.emulator.faults import FaultQueue, parse_spec

JSON_CT = "application/json;charset=utf-8"


@pytest.fixture(params=[False, True], ids=["http", "https"])
def emu(request, keydir):
    with Emulator(state_dir=keydir, tls=request.param, throttle=False) as e:
        yield e


def register(emu, timeout=10):
    return request(emu.origin, "POST", "/o/client/register",
                   json.dumps({"software_statement": emu.mint_statement()}),
                   {"Content-Type": JSON_CT, "X-Device-Info": device_info()}, ca_file=emu.ca_file, timeout=timeout)


def get_token(emu):
    status, _, data = register(emu)
    reg = json.loads(data)
    form = urllib.parse.urlencode({"client_id": reg["client_id"], "client_secret": reg["client_secret"],
                                   "grant_type": "client_credentials"})
    return request(emu.origin, "POST", "/o/client/token", form,
                   {"Content-Type": "application/x-www-form-urlencoded"}, ca_file=emu.ca_file)


def last(emu):
    return emu.stats()["requests"][-1]


def test_status_fault_with_body_counts_down_then_service_resumes(emu):
    emu.add_fault("register", status=503, body='{"oops": true}', count=2)
    for _ in range(2):
        status, headers, body = register(emu)
        assert status == 503 and json.loads(body) == {"oops": True}
        assert headers["content-type"].startswith("application/json")
    assert register(emu)[0] == 201
    s = emu.stats()
    assert s["faults_served"] == 2 and s["register"]["ok"] == 1
    assert [r["fault"] for r in s["requests"]] == ["status+body", "status+body", None]
    assert emu.stats()["faults_pending"] == 0


def test_status_fault_default_html_custom_content_type_and_retry_after(emu):
    emu.add_fault("token", status=502)
    status, headers, body = get_token(emu)
    assert status == 502 and headers["content-type"] == "text/html" and b"502 Bad Gateway" in body
    emu.add_fault("token", status=500, body="boom", content_type="text/x-custom", retry_after="7")
    status, headers, body = get_token(emu)
    assert (status, body, headers["content-type"], headers["retry-after"]) == (500, b"boom", "text/x-custom", "7")


def test_fault_only_hits_its_endpoint_and_any_hits_all(emu):
    emu.add_fault("protected", status=500)
    assert register(emu)[0] == 201
    assert request(emu.origin, "GET", "/api/v2/R/configuration", ca_file=emu.ca_file)[0] == 500
    emu.add_fault("any", status=418, count=-1)
    assert register(emu)[0] == 418
    assert request(emu.origin, "POST", "/o/client/token", "", ca_file=emu.ca_file)[0] == 418
    assert emu.clear_faults() == 1
    assert register(emu)[0] == 201


def test_latency_delays_the_answer(emu):
    emu.add_fault("register", latency=0.4)
    start = time.monotonic()
    status, _, _ = register(emu)
    assert status == 201 and time.monotonic() - start >= 0.4
    emu.add_fault("register", latency=5)
    with pytest.raises((socket.timeout, TimeoutError)):
        register(emu, timeout=0.3)


def test_hang_never_answers_and_releases_when_the_client_leaves(emu):
    emu.add_fault("token", hang=True)
    with pytest.raises((socket.timeout, TimeoutError)):
        request(emu.origin, "POST", "/o/client/token", "a=b", {"Content-Type": "application/x-www-form-urlencoded"},
                ca_file=emu.ca_file, timeout=0.5)
    assert last(emu)["status"] == 0 and last(emu)["fault"] == "hang"
    assert emu.stats()["token"] == {"ok": 0, "error": 0, "codes": {}}  # the service never saw it
    assert get_token(emu)[0] == 201


def test_reset_aborts_the_connection(emu):
    emu.add_fault("register", reset=True)
    with pytest.raises((ConnectionError, ssl.SSLError, http.client.RemoteDisconnected)):
        register(emu)
    assert last(emu)["fault"] == "reset" and emu.stats()["register"]["ok"] == 0
    assert register(emu)[0] == 201


def test_reset_is_a_tcp_rst_on_plain_http(keydir):
    with Emulator(state_dir=keydir, tls=False, throttle=False) as e:
        e.add_fault("register", reset=True)
        s = socket.create_connection(("127.0.0.1", e.port), timeout=5)
        s.sendall(b"POST /o/client/register HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            while s.recv(1024):
                pass
        s.close()


def test_malformed_json_keeps_status_but_breaks_the_body(emu):
    emu.add_fault("register", malformed_json=True)
    status, headers, body = register(emu)
    assert status == 201 and headers["content-type"].startswith("application/json")
    with pytest.raises(ValueError):
        json.loads(body)
    assert emu.stats()["register"]["ok"] == 1  # the client was registered; only the answer broke


def test_truncate_sends_less_than_content_length(emu):
    emu.add_fault("register", truncate=True)
    conn = connection(emu.origin, emu.ca_file)
    conn.request("POST", "/o/client/register", json.dumps({"software_statement": emu.mint_statement()}),
                 {"Content-Type": JSON_CT})
    resp = conn.getresponse()
    assert resp.status == 201
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()


def test_chunked_transfer_encoding(emu):
    emu.add_fault("token", chunked=True)
    status, headers, body = get_token(emu)
    assert status == 201 and headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert json.loads(body)["token_type"] == "bearer"


def test_chunked_framing_on_the_wire(keydir):
    with Emulator(state_dir=keydir, tls=False, throttle=False) as e:
        e.add_fault("register", status=400, body='{"error": "invalid_request"}', chunked=True)
        s = socket.create_connection(("127.0.0.1", e.port), timeout=5)
        s.sendall(b"POST /o/client/register HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        raw = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            raw += chunk
        s.close()
        head, _, framed = raw.partition(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head and framed.endswith(b"0\r\n\r\n")
        assert framed.count(b"\r\n") >= 6  # several chunks, each with size line and data line


def test_clock_skew_shifts_issued_times(emu):
    emu.add_fault("register", clock_skew=-3600)
    status, headers, body = register(emu)
    issued = json.loads(body)["client_id_issued_at"]
    assert abs(issued - (time.time() - 3600) * 1000) < 120_000
    date = email.utils.parsedate_to_datetime(headers["date"]).timestamp()
    assert abs(date - (time.time() - 3600)) < 120
    emu.add_fault("token", clock_skew=-30000)  # older than the 6 h lifetime: already expired
    tok = json.loads(get_token(emu)[2])
    assert abs(tok["created_at"] - (time.time() - 30000) * 1000) < 120_000
    status, _, body = request(emu.origin, "GET", "/api/v2/R/configuration", None,
                              {"Authorization": "Bearer " + tok["access_token"]}, ca_file=emu.ca_file)
    assert (status, body) == (401, b"")  # current pairing: an expired token is a plain 401
    emu.configure(error_style="2023")
    status, _, body = request(emu.origin, "GET", "/api/v2/R/configuration", None,
                              {"Authorization": "Bearer " + tok["access_token"]}, ca_file=emu.ca_file)
    assert status == 401 and json.loads(body)["code"] == "access_token_expired"


def test_faults_through_the_admin_api(emu):
    status, body = admin(emu.origin, "POST", "faults", [{"endpoint": "register", "status": 500, "count": 3},
                                                         {"endpoint": "token", "latency": 0.01}], emu.ca_file)
    assert status == 201 and [f["id"] for f in body["faults"]] == [1, 2]
    assert admin(emu.origin, "GET", "faults", None, emu.ca_file)[1]["faults"][0]["count"] == 3
    assert register(emu)[0] == 500
    assert admin(emu.origin, "DELETE", "faults", None, emu.ca_file)[1] == {"cleared": 2}
    assert register(emu)[0] == 201
    # a list with one bad entry adds nothing
    status, body = admin(emu.origin, "POST", "faults", [{"endpoint": "token", "status": 500},
                                                         {"endpoint": "token", "hang": "maybe"}], emu.ca_file)
    assert status == 400 and "hang" in body["message"]
    assert emu.stats()["faults_pending"] == 0


# ----- spec parsing and the queue (no I/O) -----------------------------------------------------------

def test_parse_spec_forms():
    assert parse_spec("token:status=503,count=2") == {"endpoint": "token", "count": 2, "status": 503}
    assert parse_spec("register:hang") == {"endpoint": "register", "count": 1, "hang": True}
    assert parse_spec("any:latency=0.5,chunked=yes,count=-1")["latency"] == 0.5
    assert parse_spec('{"endpoint": "protected", "status": 401, "body": "a,b"}')["body"] == "a,b"
    for bad, fragment in [("token", "effect"), ("nowhere:status=500", "endpoint"), ("token:status=abc", "status"),
                          ("token:count=0,status=500", "count"), ("token:latency=-1", "latency"),
                          ("{bad json", "JSON"), ("token:truncate=perhaps", "truncate")]:
        with pytest.raises(ValueError, match=fragment):
            parse_spec(bad)


def test_queue_takes_first_match_in_order():
    q = FaultQueue()
    q.add({"endpoint": "token", "status": 500})
    q.add({"endpoint": "any", "status": 502, "count": -1})
    assert q.take("register")["status"] == 502
    assert q.take("token")["status"] == 500
    assert q.take("token")["status"] == 502
    assert len(q.list()) == 1
