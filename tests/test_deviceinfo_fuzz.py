"""Garbage in identifier files (binary, empty, huge, missing, invalid UTF-8, directories) never
crashes the builder: it falls back, or fails with a DeviceInfoError that says what to do."""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import boards, devfields, devfiles, netinfo
from agent import deviceinfo as di
from agent.errors import DeviceInfoError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "boards")
BOARDS = ["generic-linux", "raspberrypi", "amlogic-s905x", "broadcom-rdk"]
PROFILES = {b: boards.load_profile(b) for b in BOARDS}

# Every file any shipped profile (or the defaults) reads.
TARGETS = [
    "proc/device-tree/model", "proc/device-tree/serial-number", "proc/device-tree/compatible",
    "proc/device-tree/amlogic-dt-id", "proc/cpuinfo", "proc/sys/kernel/osrelease",
    "sys/class/dmi/id/product_name", "sys/class/dmi/id/product_version", "sys/class/dmi/id/product_uuid",
    "sys/class/dmi/id/sys_vendor", "sys/class/dmi/id/board_version", "etc/os-release", "etc/machine-id",
    "etc/device.properties", "version.txt",
    "sys/class/net/eth0/address", "sys/class/net/eth0/operstate", "sys/class/net/eth0/type",
    "sys/class/net/eth0/addr_assign_type", "sys/class/net/wlan0/address", "sys/class/net/wlan0/uevent",
    "sys/class/net/eno1/address", "sys/class/drm/card0-HDMI-A-1/status", "sys/class/drm/card0-HDMI-A-1/modes",
    "sys/class/drm/card0-HDMI-A-1/edid", "proc/net/route", "proc/net/ipv6_route",
]

garbage = st.one_of(
    st.just(None),  # missing
    st.just(b""),  # empty
    st.binary(max_size=300),  # binary
    st.binary(min_size=1, max_size=64).map(lambda b: b * 20000),  # huge (up to 1.2 MB)
    st.text(max_size=80).map(lambda t: t.encode("utf-8")),  # any text, controls included
    st.binary(max_size=40).map(lambda b: b"\xff\xfe" + b + b"\xc3"),  # invalid UTF-8
    st.sampled_from([b"0000000000000000\n", b"To be filled by O.E.M.\n", b"\x00\x00\x00", b"up\n",
                     b"connected\n", b"1920x1080\n", b"00:00:00:00:00:00\n", b"ID=\"\n", b"Serial\t:\n",
                     b"dir"]),  # plausible-looking junk; "dir" becomes a directory
)


def plant(root, rel, content):
    path = os.path.join(root, rel)
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
    if content is None:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if content == b"dir":
        os.mkdir(path)
        return
    with open(path, "wb") as f:
        f.write(content)


def check(result):
    decoded = devfields.decode(result["x_device_info"])
    assert decoded == result["fields"]
    for key in devfields.REQUIRED:
        assert decoded[key]
    assert result["ap_device_identifier"].startswith("fingerprint ")
    assert 4 < len(result["device_id"]) < 80


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(board=st.sampled_from(BOARDS), plan=st.dictionaries(st.sampled_from(TARGETS), garbage, max_size=8))
def test_garbage_never_crashes(board, plan):
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "root")
        shutil.copytree(os.path.join(FIXTURES, board), root)
        for rel, content in plan.items():
            plant(root, rel, content)
        assert isinstance(di.network_signature(root, lambda name: "81.2.69.160"), str)
        try:
            result = di.identify(root=root, profile=PROFILES[board], application_id="app",
                                 ip_lookup=lambda name: "81.2.69.160")
        except DeviceInfoError as e:
            # only a missing identity may stop the builder; the message says what to do
            assert "no stable device identifier" in str(e) and e.hint
        else:
            check(result)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_parsers_accept_any_bytes(data):
    text = devfiles.to_text(data)
    assert isinstance(text, str)
    devfiles.clean(text)
    devfiles.parse_cpuinfo(text)
    devfiles.parse_keyvalue(text, "ID")
    devfiles.parse_mode(text)
    devfiles.parse_mac(text)
    devfiles.parse_edid(data)
    netinfo.parse_route(text)
    netinfo.parse_ipv6_route(text)
    devfiles.parse_edid(b"\x00\xff\xff\xff\xff\xff\xff\x00" + data)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_decode_any_string_is_dict_or_device_info_error(value):
    try:
        out = devfields.decode(value)
    except DeviceInfoError:
        return
    assert isinstance(out, dict)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(devfields.FIELD_ORDER + ("type", "browserName")),
                       st.one_of(st.text(max_size=20), st.integers(-5, 70000), st.floats(allow_nan=True),
                                 st.floats(0, 0.02), st.floats(999999, 1000001),
                                 st.booleans(), st.none()), max_size=8))
def test_encode_is_valid_json_or_refuses(overrides):
    fields = dict({"model": "M", "version": "1", "osName": "Linux", "osVersion": "1", "connectionType": "LAN"},
                  **overrides)
    try:
        value = devfields.encode(fields)
    except DeviceInfoError as e:
        assert "X-Device-Info" in str(e)
        return
    decoded = devfields.decode(value)
    assert set(decoded) == set(fields)
    for key, v in fields.items():
        if isinstance(v, float):  # emitted with two decimals
            assert abs(decoded[key] - v) <= 0.005 + 1e-9
        else:
            assert decoded[key] == v and type(decoded[key]) is type(v)
