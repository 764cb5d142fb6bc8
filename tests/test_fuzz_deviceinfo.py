"""Fuzzing the device-info parsers beyond tests/test_deviceinfo_fuzz.py (which covers garbage files,
the text parsers on random bytes, `decode` of random text and `encode` round trips).

Added here: `decode` of values that are valid Base64 (so the JSON and field checks are reached),
`parse_edid` on blocks with a valid header and checksum (so the size logic is reached),
`check_field` on any key/value, and `parse_source` on any string. Each returns a value or raises
DeviceInfoError / ValueError, never anything else. Bugs it found are kept as regression tests.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import devfields, devfiles, netinfo
from agent.errors import DeviceInfoError

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(), st.text(max_size=30),
                    st.sampled_from(["SetTopBox", "Linux", "LAN", "192.168.1.2", "::1", "", " ", "\u0000", "1e3"]))
values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                      st.dictionaries(st.text(max_size=8), kids, max_size=3)),
                      max_leaves=8)
keys = st.one_of(st.sampled_from(devfields.FIELD_ORDER + ("type", "browserName", "userAgent")), st.text(max_size=12))
BASE = {"model": "M", "version": "1", "osName": "Linux", "osVersion": "5.4", "connectionType": "LAN"}
docs = st.one_of(
    st.dictionaries(keys, values, max_size=3).map(lambda d: json.dumps(dict(BASE, **d)).encode()),
    st.dictionaries(keys, values, max_size=10).map(lambda d: json.dumps(d).encode()),
    st.dictionaries(keys, values, max_size=10).map(lambda d: json.dumps(d, ensure_ascii=False).encode()),
    values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=120),
    st.sampled_from([b"{", b'{"model":"a"', b"\xef\xbb\xbf{}", b'{"model":"M","model":"N"}', b"NaN", b"[]"]),
)


@settings(max_examples=300, deadline=None)
@given(raw=docs, pad=st.booleans())
def test_decode_valid_base64(raw: bytes, pad: bool) -> None:
    value = base64.b64encode(raw).decode()
    if not pad:
        value = value.rstrip("=")
    try:
        out = devfields.decode(value)
    except DeviceInfoError as e:
        assert "X-Device-Info" in str(e)
        return
    assert isinstance(out, dict)
    for k in devfields.REQUIRED:
        assert out[k]
    # What decode accepts, encode re-emits identically (after field ordering).
    assert devfields.decode(devfields.encode(out)) == out


def edid_block(body: bytes) -> bytes:
    block = bytearray(b"\x00\xff\xff\xff\xff\xff\xff\x00" + body.ljust(119, b"\x00")[:119] + b"\x00")
    block[127] = (-sum(block)) % 256  # a valid checksum
    return bytes(block)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(min_size=0, max_size=119), tail=st.binary(max_size=64))
def test_parse_edid_valid_blocks(body: bytes, tail: bytes) -> None:
    block = edid_block(body)
    r = devfiles.parse_edid(block + tail)
    if r is not None:
        assert set(r) == {"width_mm", "height_mm"}
        assert 0 < r["width_mm"] <= 2560 + 10 and 0 < r["height_mm"] <= 2560 + 10


@settings(max_examples=300, deadline=None)
@given(field=keys, value=values)
def test_check_field_any(field: str, value: object) -> None:
    try:
        out = devfields.check_field(field, value)
    except DeviceInfoError as e:
        assert "X-Device-Info field" in str(e) and e.hint
        return
    assert out == value
    json.loads(devfields._json_value(out))  # what will be emitted is valid JSON


@settings(max_examples=300, deadline=None)
@given(spec=st.one_of(st.text(max_size=40),
                      st.tuples(st.sampled_from(devfiles.SOURCE_KINDS), st.text(max_size=20)).map(lambda t: "%s:%s" % t),
                      st.sampled_from(devfiles.SOURCE_KINDS)))
def test_parse_source_any(spec: str) -> None:
    try:
        kind, arg = devfiles.parse_source(spec)
    except ValueError as e:
        assert "source" in str(e)
        return
    assert kind in devfiles.SOURCE_KINDS and isinstance(arg, str)


def test_fixed_decode_deep_json() -> None:
    # A RecursionError used to escape; it must be the documented DeviceInfoError (issue 21: this test was
    # try/except-pass and passed on any outcome).
    with pytest.raises(DeviceInfoError) as ei:
        devfields.decode(base64.b64encode(b"[" * 45000).decode())
    assert ei.value.code == "device_info_invalid" and "does not decode to UTF-8 JSON" in ei.value.message


def test_fixed_edid_zero_mm_side() -> None:
    body = bytearray(119)
    body[21 - 8], body[22 - 8] = 60, 1            # 60 x 1 cm
    body[54 - 8], body[55 - 8] = 1, 1             # a pixel clock: a timing descriptor
    body[66 - 8], body[67 - 8], body[68 - 8] = 0x58, 0, 0x20  # 600 x 0 mm
    r = devfiles.parse_edid(edid_block(bytes(body)))
    assert r is None or (r["width_mm"] > 0 and r["height_mm"] > 0)


route_fields = st.one_of(st.sampled_from(["00000000", "0" * 32, "00", "0003", "0001", "0201", "00200200", "lo",
                                          "eth0", "wlan0", "-1", "\u0663", "ffffffff", "", "\x00"]),
                         st.text(max_size=10))
route_text = st.one_of(st.text(max_size=200),
                       st.lists(st.lists(route_fields, max_size=12).map(" ".join), max_size=6).map("\n".join))


@settings(max_examples=300, deadline=None)
@given(text=route_text)
def test_route_parsers_any_text(text: str) -> None:
    for parse in (netinfo.parse_route, netinfo.parse_ipv6_route):
        name = parse(text)
        assert name is None or (isinstance(name, str) and name and not any(c.isspace() for c in name))
    assert netinfo.parse_ipv6_route(text) != "lo"
    # a default route with metric 0 written as the kernel writes it wins whatever follows it
    head = "Iface Destination Gateway Flags RefCnt Use Metric Mask\nwan0 00000000 0101A8C0 0003 0 0 0 00000000\n"
    assert netinfo.parse_route(head + text) == "wan0"


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(st.text(alphabet="0123456789abcdefABCDEF:.%", max_size=50), st.text(max_size=50)))
def test_ip_class_any_text(text: str) -> None:
    why = netinfo.ip_class(text)
    assert why is None or (isinstance(why, str) and why)
    if why is None:  # public: it is a well-formed address that check_field accepts
        assert devfields.check_field("connectionIp", text) == text
    else:
        try:
            devfields.check_field("connectionIp", text)
            raise AssertionError("a non-public connectionIp was accepted: %r" % text)
        except DeviceInfoError as e:
            assert "connectionIp" in str(e) and e.hint
