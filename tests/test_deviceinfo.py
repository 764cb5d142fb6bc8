"""agent.deviceinfo core: the wire format, validation, parsers, precedence and identity stability,
driven against copies of the board fixture trees (real files in tmp dirs)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil

import pytest

from agent import devfields, devfiles
from agent import deviceinfo as di
from agent.errors import DeviceInfoError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "boards")


@pytest.fixture
def pi_root(tmp_path):
    root = tmp_path / "pi"
    shutil.copytree(os.path.join(FIXTURES, "raspberrypi"), root)
    return str(root)


def write(root, rel, data):
    path = os.path.join(root, rel.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


MINIMAL = {"model": "M", "version": "1", "osName": "Linux", "osVersion": "12", "connectionType": "LAN"}


# ---------------------------------------------------------------- encode / decode

def test_encode_is_padded_standard_base64_of_compact_json_in_reference_order():
    fields = {"connectionType": "WiFi", "model": "Box+/?", "osVersion": "1", "osName": "Linux",
              "version": "2", "primaryHardwareType": "SetTopBox", "displayWidth": 1920,
              "diagonalScreenSize": 54.6, "connectionSecure": True}
    value = devfields.encode(fields)
    raw = base64.b64decode(value, validate=True)
    assert "\n" not in value and len(value) % 4 == 0
    assert raw == (b'{"primaryHardwareType":"SetTopBox","model":"Box+/?","version":"2","osName":"Linux",'
                   b'"osVersion":"1","displayWidth":1920,"diagonalScreenSize":54.6,"connectionType":"WiFi",'
                   b'"connectionSecure":true}')
    assert json.loads(raw) == fields


def test_encode_keeps_non_ascii_as_utf8_and_escapes_quotes():
    value = devfields.encode(dict(MINIMAL, manufacturer='Société "Générale" \\ 東芝'))
    raw = base64.b64decode(value)
    assert 'Société \\"Générale\\" \\\\ 東芝'.encode() in raw
    assert json.loads(raw.decode("utf-8"))["manufacturer"] == 'Société "Générale" \\ 東芝'


def test_decode_round_trips_and_orders_fields():
    fields = dict(MINIMAL, osFamily="Linux", applicationId="app", displayPpi=40)
    out = devfields.decode(devfields.encode(fields))
    assert out == fields
    assert list(out) == [k for k in devfields.FIELD_ORDER if k in fields]


@pytest.mark.parametrize("field,value", [
    ("primaryHardwareType", "Set-Top Box"), ("osName", "Debian"), ("osFamily", "Debian"),
    ("osVendor", "Raspberry Pi"), ("displayWidth", "1920"), ("displayWidth", True), ("displayWidth", -1),
    ("displayPpi", float("nan")), ("diagonalScreenSize", float("inf")), ("diagonalScreenSize", 0.001),
    ("displayWidth", 999999.999), ("connectionPort", 70000),
    ("connectionPort", 80.5), ("connectionSecure", "true"), ("connectionIp", "not-an-ip"),
    ("connectionIp", "300.1.1.1"), ("model", ""), ("model", "   "), ("model", "a\nb"), ("model", 42),
    ("version", "x" * 300), ("type", "SetTopBox"), ("browserName", "Chrome"), ("userAgent", "x"),
    ("model", "bad \ud800 surrogate"),
])
def test_encode_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(DeviceInfoError) as e:
        devfields.encode(dict(MINIMAL, **{field: value}))
    assert repr(field) in str(e.value)
    assert e.value.code == "device_info_invalid"


@pytest.mark.parametrize("missing", devfields.REQUIRED)
def test_encode_refuses_missing_required_field(missing):
    fields = dict(MINIMAL)
    del fields[missing]
    with pytest.raises(DeviceInfoError, match=missing):
        devfields.encode(fields)


@pytest.mark.parametrize("value", [
    "", "abc", "e30", "e30=\n", "****", base64.b64encode(b"not json").decode(),
    base64.b64encode(b"[1,2]").decode(), base64.b64encode(b"\xff\xfe").decode(),
    # Adobe's own broken sample shapes: 'type' instead of primaryHardwareType, invalid JSON
    base64.b64encode(b'{"type":"SetTopBox","model":"x"}').decode(),
    base64.b64encode(b'{"model":"x",}').decode(),
    base64.b64encode(json.dumps(dict(MINIMAL, osName="Debian")).encode()).decode(),
])
def test_decode_rejects_invalid_values(value):
    with pytest.raises(DeviceInfoError):
        devfields.decode(value)


# ---------------------------------------------------------------- parsers

def test_parse_cpuinfo_reads_tab_separated_keys_and_keeps_first():
    text = "processor\t: 0\nCPU revision\t: 3\n\nprocessor\t: 1\nHardware\t: BCM2711\nRevision\t: c03111\n"
    info = devfiles.parse_cpuinfo(text)
    assert info["Hardware"] == "BCM2711" and info["Revision"] == "c03111"
    assert info["processor"] == "0" and info["CPU revision"] == "3"


def test_parse_keyvalue_handles_quotes_and_colon_form():
    text = 'NAME="Debian GNU/Linux"\nVERSION_ID="12"\nX=\'single\'\nimagename:IMG_1\nVERSION=7.2\nID=debian\n'
    assert devfiles.parse_keyvalue(text, "NAME") == "Debian GNU/Linux"
    assert devfiles.parse_keyvalue(text, "VERSION_ID") == "12"
    assert devfiles.parse_keyvalue(text, "VERSION") == "7.2"  # not confused by VERSION_ID
    assert devfiles.parse_keyvalue(text, "X") == "single"
    assert devfiles.parse_keyvalue(text, "imagename") == "IMG_1"
    assert devfiles.parse_keyvalue(text, "ID") == "debian"
    assert devfiles.parse_keyvalue(text, "MISSING") is None


@pytest.mark.parametrize("text,expected", [
    ("1920x1080\n1280x720\n", (1920, 1080)), ("1920x1080i\n", (1920, 1080)), ("", None),
    ("garbage", None), ("x1080", None), ("99999x1", None), (None, None),
])
def test_parse_mode(text, expected):
    assert devfiles.parse_mode(text) == expected


def test_parse_edid_reads_fixture_sizes_and_checks_checksum():
    with open(os.path.join(FIXTURES, "raspberrypi/sys/class/drm/card0-HDMI-A-1/edid"), "rb") as f:
        edid = f.read()
    assert len(edid) == 128
    assert devfiles.parse_edid(edid) == {"width_mm": 1210, "height_mm": 680}
    broken = bytearray(edid)
    broken[30] ^= 0xFF  # checksum no longer adds up
    assert devfiles.parse_edid(bytes(broken)) is None
    assert devfiles.parse_edid(edid[:100]) is None
    assert devfiles.parse_edid(b"\x00" * 128) is None


def test_parse_edid_falls_back_to_cm_when_descriptor_disagrees():
    with open(os.path.join(FIXTURES, "generic-linux/sys/class/drm/card0-HDMI-A-1/edid"), "rb") as f:
        edid = bytearray(f.read())
    assert devfiles.parse_edid(bytes(edid)) == {"width_mm": 527, "height_mm": 296}  # descriptor's mm
    edid[54 + 14] &= 0x0F  # descriptor width loses its high nibble: 15 mm, far from 53 cm in byte 21
    edid[127] = (-sum(edid[:127])) % 256  # keep the checksum valid
    assert devfiles.parse_edid(bytes(edid)) == {"width_mm": 530, "height_mm": 300}


@pytest.mark.parametrize("text,expected", [
    ("DC:A6:32:12:34:56\n", "dc:a6:32:12:34:56"), ("00:00:00:00:00:00", None),
    ("ff:ff:ff:ff:ff:ff", None), ("02:42:ac:11:00:01", None),  # locally administered (docker)
    ("01:00:5e:00:00:01", None), ("dc:a6:32:12:34", None), ("zz:a6:32:12:34:56", None),
])
def test_parse_mac(text, expected):
    assert devfiles.parse_mac(text) == expected


@pytest.mark.parametrize("spec", ["", "bogus:x", "dmi", "dmi:../../etc/passwd", "file:relative",
                                  "keyvalue:/etc/x", "machine-id:x", "device-tree:a/b", 7])
def test_parse_source_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        devfiles.parse_source(spec)


def test_clean_and_junk():
    assert devfiles.clean("Raspberry Pi 4\x00") == "Raspberry Pi 4"
    assert devfiles.clean("  a\t b  \n second") == "a b"
    assert devfiles.clean("To be filled by O.E.M.") is None
    assert devfiles.clean("0000000000000000") is None
    assert devfiles.clean("00000000-0000-0000-0000-000000000000") is None
    assert devfiles.clean("x" * 500) is None
    assert devfiles.to_text(b"ab\xffcd") == "abcd"


# ---------------------------------------------------------------- identify on a tree

def test_identify_result_shape(pi_root):
    r = di.identify(root=pi_root)
    assert set(r) == {"fields", "x_device_info", "ap_device_identifier", "device_id", "device_id_source",
                      "sources", "warnings", "device_id_warnings", "omitted"}
    assert devfields.decode(r["x_device_info"]) == r["fields"]
    assert list(r["fields"]) == [k for k in devfields.FIELD_ORDER if k in r["fields"]]
    assert set(r["sources"]) == set(r["fields"])


def test_ap_device_identifier_is_sha256_of_device_id(pi_root):
    r = di.identify(root=pi_root)
    assert r["device_id"] == "serial:100000001234abcd"
    digest = base64.b64encode(hashlib.sha256(b"serial:100000001234abcd").digest()).decode()
    assert r["ap_device_identifier"] == "fingerprint " + digest


def test_overrides_win_over_profile_and_sources(pi_root):
    profile = {"fields": {"manufacturer": "Raspberry Pi Ltd", "primaryHardwareType": "SetTopBox"}}
    r = di.identify(root=pi_root, profile=profile, application_id="app-from-config",
                    overrides={"model": "Operator Box 2", "manufacturer": "Operator", "applicationId": "over",
                               "primaryHardwareType": "MediaPlayer", "connectionSecure": True})
    f = devfields.decode(r["x_device_info"])
    assert f["model"] == "Operator Box 2" and f["manufacturer"] == "Operator"
    assert f["applicationId"] == "over" and f["primaryHardwareType"] == "MediaPlayer"
    assert f["connectionSecure"] is True
    assert r["sources"]["model"] == "override" and r["sources"]["manufacturer"] == "override"


def test_invalid_override_fails_naming_the_field(pi_root):
    with pytest.raises(DeviceInfoError, match="osName"):
        di.identify(root=pi_root, overrides={"osName": "Raspbian"})
    with pytest.raises(DeviceInfoError, match="modle"):
        di.identify(root=pi_root, overrides={"modle": "typo"})


def test_profile_static_fields_beat_discovery(pi_root):
    r = di.identify(root=pi_root, profile={"fields": {"model": "Static Model", "primaryHardwareType": "TV"}})
    assert r["fields"]["model"] == "Static Model" and r["sources"]["model"] == "profile"
    assert r["fields"]["primaryHardwareType"] == "TV"


def test_required_fallbacks_warn(tmp_path):
    root = str(tmp_path)
    write(root, "/etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    r = di.identify(root=root)
    f = r["fields"]
    assert f["model"] == "Unknown" and f["version"] == "Unknown" and f["osVersion"] == "Unknown"
    assert f["connectionType"] == "Unknown" and f["osName"] == "Linux"
    assert r["sources"]["model"] == "fallback"
    text = " ".join(r["warnings"])
    for field in ("model", "version", "osVersion", "connectionType"):
        assert field in text
    assert r["device_id"] == "machine-id:0123456789abcdef0123456789abcdef"


def test_os_version_falls_back_to_kernel_release(pi_root):
    os.remove(os.path.join(pi_root, "etc/os-release"))
    r = di.identify(root=pi_root)
    assert r["fields"]["osVersion"] == "6.1.21-v7l+"
    assert r["sources"]["osVersion"] == "/proc/sys/kernel/osrelease"
    assert r["fields"]["osName"] == "Linux"


def test_usr_lib_os_release_is_used_when_etc_is_missing(pi_root):
    os.rename(os.path.join(pi_root, "etc/os-release"), os.path.join(pi_root, "etc/gone"))
    write(pi_root, "/usr/lib/os-release", 'ID=poky\nVERSION_ID="4.0.13"\n')
    r = di.identify(root=pi_root)
    assert r["fields"]["osVersion"] == "4.0.13" and r["sources"]["osName"] == "/usr/lib/os-release ID=poky"


@pytest.mark.parametrize("distro", ["debian", "ubuntu", "rdk", "buildroot", "poky", "openwrt", "android", "alpine"])
def test_distros_map_to_linux(pi_root, distro):
    write(pi_root, "/etc/os-release", "ID=%s\nVERSION_ID=1\n" % distro)
    f = di.identify(root=pi_root)["fields"]
    assert f["osName"] == "Linux" and f["osFamily"] == "Linux"
    assert "osVendor" not in f


def test_connection_type_and_ip_follow_the_up_interface(pi_root):
    calls = []

    def lookup(name):  # public addresses (a routed line): they are sent
        calls.append(name)
        return {"eth0": "81.2.69.160", "wlan0": "2.58.12.7"}.get(name)

    r = di.identify(root=pi_root, ip_lookup=lookup)
    assert r["fields"]["connectionType"] == "LAN" and r["fields"]["connectionIp"] == "81.2.69.160"
    write(pi_root, "/sys/class/net/eth0/operstate", "down\n")
    write(pi_root, "/sys/class/net/wlan0/operstate", "up\n")
    r = di.identify(root=pi_root, ip_lookup=lookup)
    assert r["fields"]["connectionType"] == "WiFi" and r["fields"]["connectionIp"] == "2.58.12.7"
    assert calls == ["eth0", "wlan0"]


def test_failing_or_bogus_ip_lookup_only_warns(pi_root):
    def broken(name):
        raise OSError("no such device")

    r = di.identify(root=pi_root, ip_lookup=broken)
    assert "connectionIp" not in r["fields"] and any("IPv4 lookup" in w for w in r["warnings"])
    r = di.identify(root=pi_root, ip_lookup=lambda n: "999.1.1.1")
    assert "connectionIp" not in r["fields"]


def test_no_interface_up_warns_and_keeps_hardware_type(pi_root):
    write(pi_root, "/sys/class/net/eth0/operstate", "down\n")
    r = di.identify(root=pi_root, ip_lookup=lambda n: "192.168.1.20")
    assert r["fields"]["connectionType"] == "LAN" and "connectionIp" not in r["fields"]
    assert any("no network interface is up" in w for w in r["warnings"])


def test_device_id_stable_across_network_changes(pi_root):
    profile = {"identity": ["mac"], "network_interfaces": ["eth0", "wlan0"]}
    ids = set()
    for eth, wlan in [("up", "down"), ("down", "up"), ("down", "down"), ("up", "up"), ("unknown", "dormant")]:
        write(pi_root, "/sys/class/net/eth0/operstate", eth + "\n")
        write(pi_root, "/sys/class/net/wlan0/operstate", wlan + "\n")
        r = di.identify(root=pi_root, profile=profile, ip_lookup=lambda n: "10.1.2.3")
        ids.add((r["device_id"], r["ap_device_identifier"]))
        # the header does change with the network, the identity must not
    assert ids == {("mac:dc:a6:32:12:34:56", di.ap_device_identifier("mac:dc:a6:32:12:34:56"))}
    # a USB dongle showing up (sorted before eth0 by name) must not take over the identity either
    write(pi_root, "/sys/class/net/enx001122334455/address", "00:11:22:33:44:55\n")
    write(pi_root, "/sys/class/net/enx001122334455/operstate", "up\n")
    write(pi_root, "/sys/class/net/enx001122334455/device/uevent", "DRIVER=r8152\n")
    assert di.identify(root=pi_root, profile=profile)["device_id"] == "mac:dc:a6:32:12:34:56"


def test_random_mac_is_never_an_identity(pi_root):
    write(pi_root, "/sys/class/net/eth0/addr_assign_type", "1\n")
    r = di.identify(root=pi_root, profile={"identity": ["mac"]})
    assert r["device_id"] == "mac:dc:a6:32:12:34:57"  # wlan0's burned-in address instead


def test_identity_precedence_follows_profile_order(pi_root):
    assert di.identify(root=pi_root, profile={"identity": ["machine-id", "cpuinfo:Serial"]})["device_id"] == \
        "machine-id:3f1d5c0e9a8b4c7d8e2f6a1b0c9d8e7f"
    # device tree and cpuinfo carry the same OTP serial: same id whichever is read
    a = di.identify(root=pi_root, profile={"identity": ["device-tree:serial-number"]})
    b = di.identify(root=pi_root, profile={"identity": ["cpuinfo:Serial"]})
    assert a["device_id"] == b["device_id"] == "serial:100000001234abcd"


def test_junk_serial_falls_through_with_warning(pi_root):
    cpuinfo = open(os.path.join(pi_root, "proc/cpuinfo")).read().replace("100000001234abcd", "0000000000000000")
    write(pi_root, "/proc/cpuinfo", cpuinfo)
    os.remove(os.path.join(pi_root, "proc/device-tree/serial-number"))
    r = di.identify(root=pi_root, profile={"identity": ["cpuinfo:Serial", "device-tree:serial-number",
                                                       "machine-id"]})
    assert r["device_id"].startswith("machine-id:")
    assert any("/proc/cpuinfo Serial held no usable identifier" in w for w in r["warnings"])


def test_no_identity_at_all_is_a_clear_error(tmp_path):
    with pytest.raises(DeviceInfoError) as e:
        di.identify(root=str(tmp_path))
    msg = str(e.value)
    assert "no stable device identifier" in msg and "machine-id" in msg and str(tmp_path) in msg


def test_unreadable_identity_source_is_reported():
    # DMI product_uuid is mode 0400 root on real boxes: an agent running as its own user cannot read it
    import tempfile

    root = tempfile.mkdtemp(prefix="pass-agent-perm-")
    try:
        os.chmod(root, 0o755)
        write(root, "/sys/class/dmi/id/product_uuid", "4c8e2a10-5b3d-11e9-8647-d663bd873d93\n")
        write(root, "/etc/machine-id", "0123456789abcdef0123456789abcdef\n")
        for d in ("sys", "sys/class", "sys/class/dmi", "sys/class/dmi/id", "etc"):
            os.chmod(os.path.join(root, d), 0o755)
        os.chmod(os.path.join(root, "etc/machine-id"), 0o444)
        os.chmod(os.path.join(root, "sys/class/dmi/id/product_uuid"), 0o400)
        # fork: the child drops to nobody when we are root (root reads any file) and reports back
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            status = 1
            try:
                os.close(rfd)
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                r = di.identify(root=root)
                os.write(wfd, json.dumps([r["device_id"], r["warnings"]]).encode())
                status = 0
            finally:
                os._exit(status)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        assert status == 0
        device_id, warnings = json.loads(data)
        assert device_id == "machine-id:0123456789abcdef0123456789abcdef"
        assert any("/sys/class/dmi/id/product_uuid exists but is not readable" in w for w in warnings)
    finally:
        shutil.rmtree(root)


def test_fifo_and_directory_in_place_of_a_file_do_not_block(pi_root):
    model = os.path.join(pi_root, "proc/device-tree/model")
    os.remove(model)
    os.mkfifo(model)  # opening it would block forever; the reader must not
    os.remove(os.path.join(pi_root, "etc/machine-id"))
    os.mkdir(os.path.join(pi_root, "etc/machine-id"))
    r = di.identify(root=pi_root, profile={"sources": {"model": ["device-tree:model", "cpuinfo:Model"]}})
    assert r["fields"]["model"] == "Raspberry Pi 4 Model B Rev 1.1"
    assert r["sources"]["model"] == "/proc/cpuinfo Model"


def test_display_fields_omitted_without_a_connected_screen(pi_root):
    write(pi_root, "/sys/class/drm/card0-HDMI-A-1/status", "disconnected\n")
    f = di.identify(root=pi_root)["fields"]
    for k in ("displayWidth", "displayHeight", "displayPpi", "diagonalScreenSize"):
        assert k not in f


def test_display_size_omitted_when_edid_has_no_size(pi_root):
    path = os.path.join(pi_root, "sys/class/drm/card0-HDMI-A-1/edid")
    edid = bytearray(open(path, "rb").read())
    edid[21] = edid[22] = 0  # projector: size undefined
    edid[127] = (-sum(edid[:127])) % 256
    write(pi_root, "/sys/class/drm/card0-HDMI-A-1/edid", bytes(edid))
    f = di.identify(root=pi_root)["fields"]
    assert f["displayWidth"] == 1920 and "diagonalScreenSize" not in f and "displayPpi" not in f


def test_default_root_reads_this_machine_without_crashing():
    # the real / of the test machine: whatever it has, the result is valid or a clear error
    try:
        r = di.identify()
    except DeviceInfoError as e:
        assert "no stable device identifier" in str(e)
    else:
        assert devfields.decode(r["x_device_info"]) == r["fields"]
