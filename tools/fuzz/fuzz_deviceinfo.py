"""Harness: the device-info parsers (agent/deviceinfo.py).

The bytes go to every pure parser (to_text, clean, cpuinfo, key=value, DRM mode, MAC, EDID raw and
with a valid header and checksum), to `decode` as text and as Base64, and to `parse_source`.
Each returns a value, None, DeviceInfoError or (parse_source) ValueError. Must never: read files.
"""

from __future__ import annotations

import base64

from agent import devfields, devfiles, netinfo
from agent.errors import DeviceInfoError


def test_one_input(data: bytes) -> None:
    text = devfiles.to_text(data)
    devfiles.clean(text)
    devfiles.parse_cpuinfo(text)
    devfiles.parse_keyvalue(text, "ID")
    devfiles.parse_mode(text)
    devfiles.parse_mac(text)
    netinfo.valid_ip(text)
    devfiles.parse_edid(data)
    block = bytearray(b"\x00\xff\xff\xff\xff\xff\xff\x00" + data[:119].ljust(119, b"\x00") + b"\x00")
    block[127] = (-sum(block)) % 256
    r = devfiles.parse_edid(bytes(block))
    assert r is None or (r["width_mm"] > 0 and r["height_mm"] > 0), "edid: a side of 0 mm"
    for value in (text, base64.b64encode(data).decode()):
        try:
            out = devfields.decode(value)
            assert devfields.decode(devfields.encode(out)) == out
        except DeviceInfoError:
            pass
    try:
        devfiles.parse_source(text)
    except ValueError:
        pass


KNOWN: list = []  # the bugs it found are fixed; see docs/TESTING.md
