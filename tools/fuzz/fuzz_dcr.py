"""Harness: the DCR response parsers (agent/dcr.py).

Input layout: 2 bytes status (100-599), 1 byte selector, then `Retry-After value NUL body`.
Every parser must return its documented value or raise UpstreamError. Must never: do I/O.
"""

from __future__ import annotations

from agent import dcr
from agent.errors import UpstreamError


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    status = 100 + int.from_bytes(data[:2], "big") % 500
    sel = data[2]
    ra, _, body = data[3:].partition(b"\x00")
    ra_text = ra.decode("utf-8", "replace")
    headers = {"Retry-After": ra_text} if sel & 1 else {"content-type": "application/json"}
    for parse in (dcr.parse_register, dcr.parse_token):
        try:
            r = parse(status, headers, body, 1.7e9)
            assert 200 <= status < 300 and isinstance(r, dict)
        except UpstreamError as e:
            assert e.code and e.kind in ("retry", "operator", "reregister", "fatal")
    e = dcr.error_from_response("token", max(status, 300), headers, body, 1.7e9)
    assert isinstance(e, UpstreamError)
    r = dcr.parse_retry_after(ra_text, 1.7e9)
    assert r is None or 0 <= r <= 86400
    dcr.parse_http_date(ra_text)
    decision, _ = dcr.classify_protected_error(status, body.decode("utf-8", "replace") if sel & 2 else body,
                                               management=bool(sel & 4))
    assert decision in ("refresh", "reregister", "ignore")


KNOWN: list = []  # the bugs it found are fixed; see docs/TESTING.md

DICT = [b'{"access_token":', b'"expires_in":', b'"client_id":', b'"client_secret":', b'"error":',
        b'"invalid_client"', b'"action":"application-registration"', b'"code":', b"GMT", b"Sun, 06 Nov 1994 08:49:37 GMT",
        b"1e400", b"NaN", b"\x00", b"["]
