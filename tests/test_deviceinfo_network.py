"""X-Device-Info and the network (issue 14 item 3): which connectionIp may be sent, which interface
gives connectionType, and the header rebuilt when the network changes, never on the token.get path.

Adobe merges explicit connectionIp/connectionPort over what it extracts from the connection, so a
LAN address replaces the box's real public one (reference section 4). Driven against copies of the
board fixture trees (real files), the real Service and the real emulator over TLS.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import boards, config, dcr, devfields, devfiles, netinfo
from agent import deviceinfo as di
from agent.errors import DeviceInfoError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "boards")

# Every class of address that is not the box's public address, with the registry entry it falls in.
NON_PUBLIC_V4 = [
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.254", "private"),
    ("192.168.1.20", "private"), ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"),
    ("169.254.10.1", "link-local"), ("100.64.0.1", "CGNAT"), ("100.127.255.254", "CGNAT"),
    ("0.0.0.0", "this network"), ("0.1.2.3", "this network"), ("224.0.0.251", "multicast"),
    ("239.255.255.250", "multicast"), ("255.255.255.255", "reserved"), ("240.0.0.1", "reserved"),
    ("192.0.2.10", "documentation"), ("198.51.100.7", "documentation"), ("203.0.113.9", "documentation"),
    ("198.18.0.1", "benchmarking"), ("198.19.255.1", "benchmarking"), ("192.0.0.8", "IETF protocol"),
    ("192.88.99.1", "6to4"),
]
NON_PUBLIC_V6 = [
    ("::", "unspecified"), ("::1", "loopback"), ("::ffff:192.168.1.1", "IPv4-mapped"),
    ("::ffff:127.0.0.1", "IPv4-mapped"), ("::ffff:8.8.8.8", "IPv4-mapped"), ("::192.168.1.1", "reserved"),
    ("fe80::1", "link-local"), ("FE80::abcd:1", "link-local"), ("fd12:3456:789a::1", "unique local"),
    ("fc00::1", "unique local"), ("fec0::1", "site-local"), ("ff02::1", "multicast"), ("ff0e::fb", "multicast"),
    ("2001:db8::1", "documentation"), ("2001:DB8:ffff::1", "documentation"), ("3fff::1", "documentation"),
    ("2001:2::1", "IETF protocol"), ("2001::1", "IETF protocol"), ("2001:1ff::1", "IETF protocol"),
    ("64:ff9b::c000:201", "NAT64"), ("64:ff9b:1::1", "NAT64"), ("100::1", "discard"),
    ("2002:c0a8:101::1", "6to4"), ("5f00::1", "reserved"), ("4000::1", "reserved"),
]
PUBLIC = ["8.8.8.8", "81.2.69.160", "100.63.255.255", "100.128.0.1", "172.15.255.255", "172.32.0.1",
          "198.17.255.255", "198.20.0.1", "192.0.3.1", "223.255.255.254", "11.0.0.1",
          "2a00:1450:4001:82a::200e", "2606:4700::1111", "2001:4860:4860::8888", "2001:200::1",
          "2c0f:fb50::1"]
NOT_AN_ADDRESS = ["1::2::3", "1:2:3:4:5:6:7:8:9", "12345::", "::ffff:1.2.3", "fe80::1%eth0", ":1::", "1:::2",
                  "01.2.3.4", "g::1", "1.2.3.4::", "::1.2.3.4.5", "1:2:3:4:5:6:7:1.2.3.4", "", ":", "1.2.3",
                  "1:2:3:4::5:6:7:8"]


def copy_fixture(tmp_path, board: str = "raspberrypi") -> str:
    root = tmp_path / board
    shutil.copytree(os.path.join(FIXTURES, board), root)
    return str(root)


def write(root: str, rel: str, text: str) -> None:
    path = os.path.join(root, rel.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def header_fields(value: str) -> dict:
    return json.loads(base64.b64decode(value, validate=True).decode("utf-8"))


# ---------------------------------------------------------------- connectionIp: only public addresses

@pytest.mark.parametrize("addr,why", NON_PUBLIC_V4, ids=[a for a, _ in NON_PUBLIC_V4])
def test_discovered_non_public_ipv4_is_never_sent(tmp_path, addr, why):
    root = copy_fixture(tmp_path)
    r = di.identify(root=root, ip_lookup=lambda name: addr)
    assert "connectionIp" not in header_fields(r["x_device_info"])
    assert "connectionIp" not in r["fields"]
    assert why in r["omitted"]["connectionIp"] and addr in r["omitted"]["connectionIp"]


@pytest.mark.parametrize("addr,why", NON_PUBLIC_V4 + NON_PUBLIC_V6, ids=[a for a, _ in NON_PUBLIC_V4 + NON_PUBLIC_V6])
def test_non_public_override_is_a_config_error_naming_the_class(tmp_path, addr, why):
    root = copy_fixture(tmp_path)
    with pytest.raises(DeviceInfoError) as e:
        di.identify(root=root, overrides={"connectionIp": addr})
    msg = str(e.value)
    assert "connectionIp" in msg and addr in msg and why in msg
    assert "[device.overrides]" in msg  # says what to do


@pytest.mark.parametrize("addr,why", NON_PUBLIC_V4 + NON_PUBLIC_V6, ids=[a for a, _ in NON_PUBLIC_V4 + NON_PUBLIC_V6])
def test_classifier_names_each_non_public_class(addr, why):
    assert not netinfo.is_public_ip(addr)
    assert why in netinfo.ip_class(addr)


@pytest.mark.parametrize("addr", PUBLIC)
def test_public_addresses_are_kept(tmp_path, addr):
    assert netinfo.is_public_ip(addr) and netinfo.ip_class(addr) is None
    root = copy_fixture(tmp_path)
    r = di.identify(root=root, overrides={"connectionIp": addr, "connectionPort": 51234})
    f = header_fields(r["x_device_info"])
    assert f["connectionIp"] == addr and f["connectionPort"] == 51234
    if ":" not in addr:  # the interface lookup is IPv4: a public one is sent as found
        r = di.identify(root=root, ip_lookup=lambda name: addr)
        assert header_fields(r["x_device_info"])["connectionIp"] == addr
        assert r["sources"]["connectionIp"] == "IPv4 of eth0 (public)"


@pytest.mark.parametrize("text", NOT_AN_ADDRESS)
def test_malformed_addresses_are_refused(text):
    assert netinfo.parse_ip(text) is None
    with pytest.raises(DeviceInfoError, match="connectionIp"):
        devfields.check_field("connectionIp", text)


def test_profile_with_a_private_connection_ip_is_refused(tmp_path):
    path = tmp_path / "b" / "board.toml"
    path.parent.mkdir()
    path.write_text('[fields]\nconnectionIp = "192.168.0.2"\n')
    with pytest.raises(Exception) as e:
        boards.load_profile(str(path))
    assert "connectionIp" in str(e.value) and "private" in str(e.value)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.integers(0, 2 ** 32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
                 st.integers(0, 2 ** 128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
                 st.integers(0, 2 ** 32 - 1).map(lambda n: "::ffff:" + str(ipaddress.IPv4Address(n))),
                 st.builds(lambda p, n: str(ipaddress.IPv6Address((p << 112) | n)),
                           st.sampled_from([0x2001, 0x2002, 0xfe80, 0xfd00, 0xff02, 0x0064, 0x3fff, 0x2a00, 0]),
                           st.integers(0, 2 ** 112 - 1))))
def test_never_public_where_cpython_says_not_global(addr):
    """The safety direction: whatever CPython's registry calls non-global is never sent."""
    ip = ipaddress.ip_address(addr)
    assert netinfo.parse_ip(addr) is not None
    if not ip.is_global:
        assert not netinfo.is_public_ip(addr), addr
    assert netinfo.is_public_ip(addr.upper()) == netinfo.is_public_ip(addr)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789abcdefABCDEF:.%g ", max_size=46))
def test_parse_ip_agrees_with_cpython_on_any_text(text):
    try:
        ipaddress.ip_address(text)
        ok = "%" not in text  # a scope id names a link: never a public address, refused as text
    except ValueError:
        ok = False
    assert (netinfo.parse_ip(text) is not None) == ok, text
    netinfo.ip_class(text)  # never raises


# ---------------------------------------------------------------- connectionType: the route's interface

def test_connection_type_follows_the_default_route(tmp_path):
    root = copy_fixture(tmp_path)
    write(root, "/sys/class/net/wlan0/operstate", "up\n")  # both up: eth0 comes first in the profile
    assert di.identify(root=root)["fields"]["connectionType"] == "LAN"
    write(root, "/proc/net/route",
          "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
          "eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
          "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
          "eth0\t00000000\t0101A8C0\t0003\t0\t0\t700\t00000000\t0\t0\t0\n")
    r = di.identify(root=root)
    assert r["fields"]["connectionType"] == "WiFi"
    assert "default route" in r["sources"]["connectionType"]


def test_ipv6_default_route_is_used_when_there_is_no_ipv4_one(tmp_path):
    root = copy_fixture(tmp_path)
    write(root, "/sys/class/net/wlan0/operstate", "up\n")
    zero = "0" * 32
    write(root, "/proc/net/ipv6_route",
          "%s 00 %s 00 %s ffffffff 00000001 00000000 00200200       lo\n" % (zero, zero, zero)
          + "%s 00 %s 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003    wlan0\n"
          % (zero, zero))
    assert di.identify(root=root)["fields"]["connectionType"] == "WiFi"


# ---------------------------------------------------------------- rebuilt when the network changes

class Counting:
    """Counts the deviceinfo entry points that touch the filesystem or the interfaces."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        # File access lives in agent/devfiles.py; deviceinfo binds some of its functions by name, so
        # both bindings are wrapped (around the same real function: one call counts once).
        where = {"read_bytes": (devfiles, di), "list_dir": (devfiles, di), "_mode": (devfiles,),
                 "network_signature": (di,), "describe": (di,), "identify": (di,)}
        for name, modules in where.items():
            real = getattr(modules[0], name)
            for m in modules:
                monkeypatch.setattr(m, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def counted(*a, **kw):
            self.calls.append(name)
            return real(*a, **kw)
        return counted


def test_refresh_network_rebuilds_only_when_the_network_changed(tmp_path, monkeypatch):
    root = copy_fixture(tmp_path)
    ident = boards.identify_for(config.DeviceConfig(board="raspberrypi", root=root))
    before = dict(ident)
    count = Counting(monkeypatch)
    assert ident.refresh_network() is False
    assert "describe" not in count.calls
    cheap = len(count.calls)
    # the signature, a listing, the two route files and one operstate per interface (each read is _mode + read)
    assert count.calls.count("list_dir") == 1 and cheap <= 10, count.calls
    assert ident["x_device_info"] == before["x_device_info"]
    write(root, "/sys/class/net/eth0/operstate", "down\n")  # cable pulled, Wi-Fi associates
    write(root, "/sys/class/net/wlan0/operstate", "up\n")
    assert ident.refresh_network() is True
    assert ident["fields"]["connectionType"] == "WiFi"
    assert header_fields(ident["x_device_info"])["connectionType"] == "WiFi"
    # the identity never follows the network
    assert ident["device_id"] == before["device_id"]
    assert ident["ap_device_identifier"] == before["ap_device_identifier"]
    n = len(count.calls)
    assert ident.refresh_network() is False and len(count.calls) - n == cheap


def test_agent_started_before_dhcp_gets_its_address_later(tmp_path):
    root = copy_fixture(tmp_path)
    addr = {"eth0": None}
    write(root, "/sys/class/net/eth0/operstate", "down\n")
    ident = boards.identify_for(config.DeviceConfig(board="raspberrypi", root=root),
                                ip_lookup=lambda name: addr.get(name))
    assert "connectionIp" not in ident["fields"]
    assert any("no network interface is up" in w for w in ident["warnings"])
    write(root, "/sys/class/net/eth0/operstate", "up\n")
    addr["eth0"] = "81.2.69.160"  # a public address, e.g. a box on a routed business line
    assert ident.refresh_network() is True
    assert ident["fields"]["connectionIp"] == "81.2.69.160" and ident["warnings"] == []
    addr["eth0"] = "81.2.69.161"  # new lease
    assert ident.refresh_network() is True
    assert header_fields(ident["x_device_info"])["connectionIp"] == "81.2.69.161"


def test_refresh_network_survives_a_vanished_tree(tmp_path):
    root = copy_fixture(tmp_path)
    ident = boards.identify_for(config.DeviceConfig(board="raspberrypi", root=root))
    shutil.rmtree(root)  # every file gone, even the identity sources: never raises, identity kept
    assert ident.refresh_network() is True
    assert devfields.decode(ident["x_device_info"])["connectionType"] == "Unknown"
    assert ident["device_id"] == "serial:100000001234abcd"
    assert any("connectionType" in w for w in ident["warnings"])


def test_next_upstream_request_carries_the_new_connection_type(tmp_path, emu, monkeypatch):
    """Real Service, real dcr.send over TLS to the emulator; the network files change between requests."""
    from agent.service import Service

    root = copy_fixture(tmp_path)
    statement = str(tmp_path / "statement.jwt")
    emu.write_statement(statement)
    cfg = config.local(str(tmp_path), emu.base_url, statement, emu.ca_file, device={"board": "raspberrypi", "root": root})
    sent: list[tuple[str, str]] = []
    answered = threading.Event()

    def send(req, **kw):
        sent.append((req["url"].rsplit("/", 1)[1], req["headers"]["X-Device-Info"]))
        try:
            return dcr.send(req, **kw)
        finally:
            answered.set()

    ident = boards.identify_for(cfg.device)
    svc = Service(cfg, identity=ident, send=send)
    svc.start()
    try:
        assert svc.wait_token(20) is not None
        assert [op for op, _ in sent] == ["register", "token"]
        assert all(header_fields(x)["connectionType"] == "LAN" for _, x in sent)
        count = Counting(monkeypatch)
        for _ in range(500):  # token.get: never a file, never a rebuild
            assert svc.token() is not None
        assert count.calls == []
        write(root, "/sys/class/net/eth0/operstate", "down\n")
        write(root, "/sys/class/net/wlan0/operstate", "up\n")
        for _ in range(100):
            svc.token()
        assert count.calls == [] and ident["fields"]["connectionType"] == "LAN"  # not on the token path
        n = len(sent)
        answered.clear()
        svc.request_refresh()
        assert answered.wait(20)
        assert len(sent) == n + 1 and sent[-1][0] == "token"
        assert header_fields(sent[-1][1])["connectionType"] == "WiFi"
        assert svc.identity()["fields"]["connectionType"] == "WiFi"
        # that one request: one cheap check, one rebuild of the header (not of the identity)
        assert count.calls.count("network_signature") == 1 and count.calls.count("describe") == 1
        assert "identify" not in count.calls
    finally:
        svc.stop(5)
