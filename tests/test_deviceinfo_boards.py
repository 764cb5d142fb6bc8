"""Board profiles (agent.boards) and the header each shipped profile yields on its fixture tree.

Each fixture under tests/fixtures/boards/<name>/ is laid out as that hardware lays out /proc, /sys
and /etc; the decoded X-Device-Info is checked field by field against Adobe's allowed values.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil

import pytest

from agent import boards, commands, config, devfields
from agent import deviceinfo as di
from agent.errors import ConfigError, DeviceInfoError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "boards")
BOARDS = ["generic-linux", "raspberrypi", "amlogic-s905x", "broadcom-rdk"]
# eth0 public (a routed line): sent; eno1/wlan0 behind NAT: never sent (Adobe takes it from the connection)
IPS = {"eno1": "192.168.10.5", "eth0": "81.2.69.160", "wlan0": "10.0.0.7"}

# What each board's fixture must yield (connectionIp through the injected lookup).
EXPECTED = {
    "generic-linux": {
        "primaryHardwareType": "SetTopBox", "model": "NUC8i3BEH", "version": "J72753-303",
        "manufacturer": "Intel(R) Client Systems", "osName": "Linux", "osFamily": "Linux", "osVersion": "12",
        "displayWidth": 1920, "displayHeight": 1080, "displayPpi": 93, "diagonalScreenSize": 23.8,
        "connectionType": "LAN", "applicationId": "com.example.player",
    },
    "raspberrypi": {
        "primaryHardwareType": "SetTopBox", "model": "Raspberry Pi 4 Model B Rev 1.1", "version": "c03111",
        "manufacturer": "Raspberry Pi Ltd", "osName": "Linux", "osFamily": "Linux", "osVersion": "12",
        "displayWidth": 1920, "displayHeight": 1080, "displayPpi": 40, "diagonalScreenSize": 54.6,
        "connectionIp": "81.2.69.160", "connectionType": "LAN", "applicationId": "com.example.player",
    },
    "amlogic-s905x": {
        "primaryHardwareType": "SetTopBox", "model": "Amlogic Meson GXL (S905X) P212 Development Board",
        "version": "gxl_p212_2g", "osName": "Linux", "osFamily": "Linux", "osVersion": "2023.02.9",
        "displayWidth": 3840, "displayHeight": 2160, "displayPpi": 68, "diagonalScreenSize": 64.5,
        "connectionIp": "81.2.69.160", "connectionType": "LAN", "applicationId": "com.example.player",
    },
    "broadcom-rdk": {
        "primaryHardwareType": "SetTopBox", "model": "STB7271A", "version": "brcm,bcm97271ipc",
        "osName": "Linux", "osFamily": "Linux", "osVersion": "7.2.1.0",
        "connectionType": "WiFi", "applicationId": "com.example.player",
    },
}
DEVICE_IDS = {
    "generic-linux": ("uuid:4c8e2a10-5b3d-11e9-8647-d663bd873d93", "dmi:product_uuid"),
    "raspberrypi": ("serial:100000001234abcd", "cpuinfo:Serial"),
    "amlogic-s905x": ("serial:210a82000b8c1d5e3f4a1b2c3d4e5f60", "cpuinfo:Serial"),
    "broadcom-rdk": ("mac:00:10:18:4a:7b:2c", "mac:eth0"),
}
CONSOLE = {"generic-linux": "/dev/ttyS0", "raspberrypi": "/dev/ttyS0", "amlogic-s905x": "/dev/ttyAML0",
           "broadcom-rdk": "/dev/ttyS0"}
STORAGE = {"generic-linux": "/var/lib/pass-agent", "raspberrypi": "/var/lib/pass-agent",
           "amlogic-s905x": "/var/lib/pass-agent", "broadcom-rdk": "/opt/secure/pass-agent"}
FREE_TEXT = ("model", "version", "manufacturer", "vendor", "osVersion", "connectionType", "applicationId")


def cfg(board, root=None, **kw):
    return config.DeviceConfig(**dict({"board": board, "root": root or os.path.join(FIXTURES, board),
                                       "application_id": "com.example.player"}, **kw))


def check_allowed(fields):
    """Every decoded field against section 4 of the Adobe reference, independently of the code."""
    allowed = {
        "primaryHardwareType": {"Camera", "DataCollectionTerminal", "Desktop", "EmbeddedNetworkModule", "eReader",
                                "GamesConsole", "GeolocationTracker", "Glasses", "MediaPlayer", "MobilePhone",
                                "PaymentTerminal", "PluginModem", "SetTopBox", "TV", "Tablet",
                                "WirelessHotspot", "Wristwatch", "Unknown"},
        "osName": {"Android", "Chrome OS", "Linux", "Mac OS", "OS X", "OpenBSD", "Roku OS", "Windows", "iOS",
                   "tvOS", "webOS"},
        "osFamily": {"Android", "BSD", "Linux", "PlayStation OS", "Roku OS", "Symbian", "Tizen", "Windows",
                     "iOS", "tvOS", "macOS", "webOS"},
        "osVendor": {"Amazon", "Apple", "Google", "LG", "Microsoft", "Mozilla", "Nintendo", "Nokia", "Roku",
                     "Samsung", "Sony", "Tizen Project"},
    }
    for key in ("model", "version", "osName", "osVersion", "connectionType"):
        assert key in fields, key
    for key, value in fields.items():
        if key in allowed:
            assert value in allowed[key], (key, value)
        elif key in ("displayWidth", "displayHeight", "displayPpi", "diagonalScreenSize"):
            assert isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0, key
        elif key == "connectionIp":
            parts = value.split(".")
            assert len(parts) == 4 and all(p.isdigit() and 0 <= int(p) <= 255 for p in parts)
        elif key in FREE_TEXT:
            assert isinstance(value, str) and value.strip() == value and value and value.isprintable(), key
        else:
            pytest.fail("unexpected field %r" % key)


@pytest.mark.parametrize("board", BOARDS)
def test_board_fixture_header(board):
    r = boards.identify_for(cfg(board), ip_lookup=IPS.get)
    raw = base64.b64decode(r["x_device_info"], validate=True)
    decoded = json.loads(raw.decode("utf-8"))
    assert list(decoded) == list(EXPECTED[board]), "keys or their order differ"
    for key, value in EXPECTED[board].items():
        assert decoded[key] == value, key
        assert type(decoded[key]) is type(value), key
    check_allowed(decoded)
    assert raw == json.dumps(decoded, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    device_id, source = DEVICE_IDS[board]
    assert r["device_id"] == device_id and r["device_id_source"].startswith(source + " (")
    assert r["ap_device_identifier"] == "fingerprint " + base64.b64encode(
        hashlib.sha256(device_id.encode()).digest()).decode()
    assert r["board"]["name"] == board


@pytest.mark.parametrize("board", BOARDS)
def test_device_id_for_finds_the_id_identify_for_finds_without_the_header(board, monkeypatch):
    # The daemon's first stage (issue 20) derives the store key from device_id_for: it must be the id
    # the second stage's identify_for reports, read without building X-Device-Info.
    calls = []
    monkeypatch.setattr(di, "encode", lambda fields: calls.append(fields))  # identify() builds the header here
    profile, raw = boards.load_profile_bytes(board)
    assert boards.device_id_for(cfg(board), profile) == DEVICE_IDS[board][0]
    assert not calls
    with open(boards.profile_path(board), "rb") as f:
        assert f.read() == raw
    monkeypatch.undo()
    assert boards.identify_for(cfg(board), ip_lookup=IPS.get, profile=profile)["device_id"] == DEVICE_IDS[board][0]


def test_device_id_for_rejects_a_bad_override_first_as_identify_does():
    bad = cfg("generic-linux", overrides={"displayWidth": "wide"})
    profile = boards.load_profile("generic-linux")
    with pytest.raises(DeviceInfoError) as a:
        boards.device_id_for(bad, profile)
    with pytest.raises(DeviceInfoError) as b:
        boards.identify_for(bad, ip_lookup=IPS.get, profile=profile)
    assert a.value.message == b.value.message


@pytest.mark.parametrize("board", BOARDS)
def test_board_fixture_has_no_unexpected_warnings(board):
    r = boards.identify_for(cfg(board), ip_lookup=IPS.get)
    assert r["warnings"] == []


@pytest.mark.parametrize("board", BOARDS)
def test_profile_shape_console_and_storage(board):
    p = boards.load_profile(board)
    assert p["console_port"] == CONSOLE[board] and p["storage_dir"] == STORAGE[board]
    assert p["name"] == board and p["path"].endswith(os.path.join(board, "board.toml"))
    assert p["fields"]["primaryHardwareType"] == "SetTopBox"
    assert p["identity"] and p["network_interfaces"]
    json.dumps(p)  # plain data: it is handed to MicroPython as JSON


def test_list_boards_contains_the_shipped_profiles():
    assert set(BOARDS) <= set(boards.list_boards())


def test_broadcom_identity_survives_wifi_to_ethernet_switch(tmp_path):
    root = tmp_path / "bcm"
    shutil.copytree(os.path.join(FIXTURES, "broadcom-rdk"), root)
    before = boards.identify_for(cfg("broadcom-rdk", str(root)), ip_lookup=IPS.get)
    (root / "sys/class/net/eth0/operstate").write_text("up\n")
    (root / "sys/class/net/wlan0/operstate").write_text("down\n")
    after = boards.identify_for(cfg("broadcom-rdk", str(root)), ip_lookup=IPS.get)
    assert before["fields"]["connectionType"] == "WiFi" and after["fields"]["connectionType"] == "LAN"
    assert before["x_device_info"] != after["x_device_info"]
    assert before["device_id"] == after["device_id"]
    assert before["ap_device_identifier"] == after["ap_device_identifier"]


def test_overrides_from_config_win(tmp_path):
    r = boards.identify_for(cfg("amlogic-s905x", overrides={"manufacturer": "Acme TV", "vendor": "Acme Telecom",
                                                            "model": "Acme 4K"}))
    f = devfields.decode(r["x_device_info"])
    assert (f["manufacturer"], f["vendor"], f["model"]) == ("Acme TV", "Acme Telecom", "Acme 4K")


def test_fixture_root_never_looks_up_real_interfaces(monkeypatch):
    called = []
    monkeypatch.setattr(boards, "interface_ipv4", lambda name: called.append(name) or "1.2.3.4")
    r = boards.identify_for(cfg("raspberrypi"))
    assert called == [] and "connectionIp" not in r["fields"]


def test_interface_ipv4_real_loopback():
    assert boards.interface_ipv4("lo") == "127.0.0.1"
    assert boards.interface_ipv4("no-such-if0") is None


# ---------------------------------------------------------------- profile loading errors

def write_board(tmp_path, name, text):
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "board.toml").write_text(text)
    return str(d / "board.toml")


def test_board_dir_env_override(tmp_path, monkeypatch):
    write_board(tmp_path, "myboard", '[board]\nname = "myboard"\n[console]\nport = "/dev/ttyUSB0"\n')
    monkeypatch.setenv(boards.ENV_BOARD_DIR, str(tmp_path))
    assert boards.list_boards() == ["myboard"]
    p = boards.load_profile("myboard")
    assert p["console_port"] == "/dev/ttyUSB0" and p["storage_dir"] == "/var/lib/pass-agent"
    assert p["identity"] == di.DEFAULT_PROFILE["identity"]


def test_load_profile_by_path(tmp_path):
    path = write_board(tmp_path, "x", '[fields]\nmanufacturer = "Acme"\n')
    p = boards.load_profile(path)
    assert p["fields"] == {"manufacturer": "Acme"} and p["name"] == "x"


@pytest.mark.parametrize("text,needles", [
    ('[fields]\nprimaryHardwareType = "Set Top Box"\n', ["[fields] primaryHardwareType", "SetTopBox"]),
    ('[fields]\nosName = "Debian"\n', ["[fields] osName", "Linux"]),
    ('[sources]\nmodel = ["devicetree:model"]\n', ["[sources] model", "devicetree"]),
    ('[sources]\nmodel = "device-tree:model"\n', ["[sources] model", "a list of strings"]),
    ('[sources]\nmodle = ["device-tree:model"]\n', ["[sources] modle", "unknown key"]),
    ('[identity]\nsources = ["file:relative/path"]\n', ["[identity] sources", "absolute path"]),
    ('[consoel]\nport = "/dev/ttyS0"\n', ["[consoel]", "unknown table"]),
    ('[console]\nport = 7\n', ["[console] port", "a string"]),
    ('[storage]\ndir = "relative"\n', ["[storage] dir", "absolute path"]),
    ('[network]\ninterfaces = [1, 2]\n', ["[network] interfaces", "a list of strings"]),
    ('[board\nname = "x"\n', ["cannot read board profile"]),
])
def test_load_profile_errors_name_file_key_and_expectation(tmp_path, text, needles):
    path = write_board(tmp_path, "bad", text)
    with pytest.raises(ConfigError) as e:
        boards.load_profile(path)
    msg = str(e.value)
    assert path in msg
    for n in needles:
        assert n in msg


def test_unknown_board_lists_known_ones():
    with pytest.raises(ConfigError) as e:
        boards.load_profile("no-such-board")
    assert "no-such-board" in str(e.value) and "raspberrypi" in str(e.value)


# ---------------------------------------------------------------- pass-agent device-info output

def test_device_info_command_plain():
    out = io.StringIO()
    assert commands.device_info_command(cfg("raspberrypi"), False, False, out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("X-Device-Info: ") and lines[1].startswith("AP-Device-Identifier: fingerprint ")
    value = lines[0].split(": ", 1)[1]
    assert devfields.decode(value)["model"] == "Raspberry Pi 4 Model B Rev 1.1"


def test_device_info_command_decode_and_explain():
    out = io.StringIO()
    assert commands.device_info_command(cfg("broadcom-rdk"), True, True, out) == 0
    text = out.getvalue()
    decoded = json.loads(text[:text.index("\n}") + 2])
    assert decoded["model"] == "STB7271A" and decoded["connectionType"] == "WiFi"
    assert "AP-Device-Identifier: fingerprint " in text
    assert "/etc/device.properties MODEL_NUM" in text and "/version.txt VERSION" in text
    assert "device id: mac:00:10:18:4a:7b:2c <- mac:eth0" in text
    assert "warnings: none" in text


def test_device_info_command_errors_exit_2():
    out, err = io.StringIO(), io.StringIO()
    assert commands.device_info_command(cfg("nope"), False, False, out, err) == 2
    assert "nope" in err.getvalue() and out.getvalue() == ""
    err = io.StringIO()
    bad = cfg("raspberrypi", overrides={"osName": "Raspbian"})
    assert commands.device_info_command(bad, False, False, out, err) == 2
    assert "osName" in err.getvalue() and "Raspbian" in err.getvalue()


def test_device_info_command_no_identity_exit_2(tmp_path):
    err = io.StringIO()
    assert commands.device_info_command(cfg("broadcom-rdk", str(tmp_path)), False, True, io.StringIO(), err) == 2
    assert "no stable device identifier" in err.getvalue()


def test_identify_for_raises_device_info_error_on_bad_override():
    with pytest.raises(DeviceInfoError):
        boards.identify_for(cfg("generic-linux", overrides={"displayWidth": "wide"}))


# ---------------------------------------------------------------- values that must never change

# AP-Device-Identifier of each fixture as computed by baseline commit 805438f. Players send it to
# REST API v2 and Adobe ties the user's authentication to it: a release that changes it logs every
# user of that board out. Never edit these strings to make a test pass.
PINNED_AP_DEVICE_IDENTIFIER = {
    "generic-linux": "fingerprint KHCB8af3FdGpZWYofPSGg2euggPJjtw/9NTaRWaFyV0=",
    "raspberrypi": "fingerprint kKoAFIwVdLzFnLAjHrbk+5MnW/x2aQ/Jb8ffuudpxfg=",
    "amlogic-s905x": "fingerprint SqPIDBqLDm1mD7P5osLeQC3g34AKQ5swKCAWSX2Ji7w=",
    "broadcom-rdk": "fingerprint jef/4pwkcDUA1PvdLfG2lJdb0HK0e0BuE78FW8o/PkA=",
}
# X-Device-Info of each fixture (no application_id, no address lookup), also as of 805438f. It may
# change on purpose (a better value for a field); then update it in the same commit and say why.
PINNED_X_DEVICE_INFO = {
    "generic-linux": "eyJwcmltYXJ5SGFyZHdhcmVUeXBlIjoiU2V0VG9wQm94IiwibW9kZWwiOiJOVUM4aTNCRUgiLCJ2ZXJzaW9uIjoiSjcyNzUz"
                     "LTMwMyIsIm1hbnVmYWN0dXJlciI6IkludGVsKFIpIENsaWVudCBTeXN0ZW1zIiwib3NOYW1lIjoiTGludXgiLCJvc0ZhbW"
                     "lseSI6IkxpbnV4Iiwib3NWZXJzaW9uIjoiMTIiLCJkaXNwbGF5V2lkdGgiOjE5MjAsImRpc3BsYXlIZWlnaHQiOjEwODAs"
                     "ImRpc3BsYXlQcGkiOjkzLCJkaWFnb25hbFNjcmVlblNpemUiOjIzLjgsImNvbm5lY3Rpb25UeXBlIjoiTEFOIn0=",
    "raspberrypi": "eyJwcmltYXJ5SGFyZHdhcmVUeXBlIjoiU2V0VG9wQm94IiwibW9kZWwiOiJSYXNwYmVycnkgUGkgNCBNb2RlbCBCIFJldiAxLj"
                   "EiLCJ2ZXJzaW9uIjoiYzAzMTExIiwibWFudWZhY3R1cmVyIjoiUmFzcGJlcnJ5IFBpIEx0ZCIsIm9zTmFtZSI6IkxpbnV4Iiwi"
                   "b3NGYW1pbHkiOiJMaW51eCIsIm9zVmVyc2lvbiI6IjEyIiwiZGlzcGxheVdpZHRoIjoxOTIwLCJkaXNwbGF5SGVpZ2h0Ijox"
                   "MDgwLCJkaXNwbGF5UHBpIjo0MCwiZGlhZ29uYWxTY3JlZW5TaXplIjo1NC42LCJjb25uZWN0aW9uVHlwZSI6IkxBTiJ9",
    "amlogic-s905x": "eyJwcmltYXJ5SGFyZHdhcmVUeXBlIjoiU2V0VG9wQm94IiwibW9kZWwiOiJBbWxvZ2ljIE1lc29uIEdYTCAoUzkwNVgpIFAy"
                     "MTIgRGV2ZWxvcG1lbnQgQm9hcmQiLCJ2ZXJzaW9uIjoiZ3hsX3AyMTJfMmciLCJvc05hbWUiOiJMaW51eCIsIm9zRmFtaWx5"
                     "IjoiTGludXgiLCJvc1ZlcnNpb24iOiIyMDIzLjAyLjkiLCJkaXNwbGF5V2lkdGgiOjM4NDAsImRpc3BsYXlIZWlnaHQiOjIx"
                     "NjAsImRpc3BsYXlQcGkiOjY4LCJkaWFnb25hbFNjcmVlblNpemUiOjY0LjUsImNvbm5lY3Rpb25UeXBlIjoiTEFOIn0=",
    "broadcom-rdk": "eyJwcmltYXJ5SGFyZHdhcmVUeXBlIjoiU2V0VG9wQm94IiwibW9kZWwiOiJTVEI3MjcxQSIsInZlcnNpb24iOiJicmNtLGJjbT"
                    "k3MjcxaXBjIiwib3NOYW1lIjoiTGludXgiLCJvc0ZhbWlseSI6IkxpbnV4Iiwib3NWZXJzaW9uIjoiNy4yLjEuMCIsImNvbm5l"
                    "Y3Rpb25UeXBlIjoiV2lGaSJ9",
}


def test_every_shipped_board_is_pinned_and_has_a_fixture():
    assert sorted(PINNED_AP_DEVICE_IDENTIFIER) == sorted(boards.list_boards()) == sorted(PINNED_X_DEVICE_INFO)
    for board in boards.list_boards():
        assert os.path.isdir(os.path.join(FIXTURES, board)), "board %s ships without a fixture tree" % board


@pytest.mark.parametrize("board", BOARDS)
def test_ap_device_identifier_never_changes(board):
    r = boards.identify_for(cfg(board, application_id=None))
    assert r["ap_device_identifier"] == PINNED_AP_DEVICE_IDENTIFIER[board]
    # ...whatever the network does: a different interface, an address, a refresh
    r2 = boards.identify_for(cfg(board), ip_lookup=IPS.get)
    r2.refresh_network()
    assert r2["ap_device_identifier"] == PINNED_AP_DEVICE_IDENTIFIER[board]


@pytest.mark.parametrize("board", BOARDS)
def test_x_device_info_is_pinned(board):
    assert boards.identify_for(cfg(board, application_id=None))["x_device_info"] == PINNED_X_DEVICE_INFO[board]


# ---------------------------------------------------------------- required fields left `Unknown`

def unknown_required(fields: dict) -> list[str]:
    """Independent of the code: Adobe's required fields (reference section 4) that are missing or Unknown."""
    return [k for k in ("model", "version", "osName", "osVersion", "connectionType")
            if str(fields.get(k, "Unknown")).strip().lower() in ("unknown", "")]


@pytest.mark.parametrize("board", sorted(set(BOARDS) | set(boards.list_boards())))
def test_shipped_board_fills_every_required_field_on_its_fixture(board):
    """A board profile shipped here that leaves a required field `Unknown` on its own fixture fails."""
    r = boards.identify_for(cfg(board, application_id=None))
    assert unknown_required(r["fields"]) == [], r["sources"]
    assert devfields.unknown_required(r["fields"]) == []
    assert not any("unknown platform" in w for w in r["warnings"])


def test_a_board_that_leaves_a_field_unknown_is_caught(tmp_path, monkeypatch):
    # the test above can fail: a profile whose model source does not exist on the fixture
    write_board(tmp_path, "raspberrypi", '[sources]\nmodel = ["dmi:product_name"]\nversion = ["cpuinfo:Nope"]\n'
                '[identity]\nsources = ["cpuinfo:Serial"]\n')
    monkeypatch.setenv(boards.ENV_BOARD_DIR, str(tmp_path))
    r = boards.identify_for(cfg("raspberrypi"))
    assert unknown_required(r["fields"]) == ["model", "version"]
    assert devfields.unknown_required(r["fields"]) == ["model", "version"]
    text = "\n".join(r["warnings"])
    assert "model" in text and "version" in text and "unknown platform" in text


def _no_network_root(tmp_path) -> str:
    root = tmp_path / "bare"
    shutil.copytree(os.path.join(FIXTURES, "raspberrypi"), root)
    shutil.rmtree(root / "proc" / "device-tree")
    (root / "proc" / "cpuinfo").write_text("Serial\t\t: 100000001234abcd\n")
    shutil.rmtree(root / "sys" / "class" / "net")
    return str(root)


def test_explain_marks_unknown_required_fields(tmp_path):
    out = io.StringIO()
    assert commands.device_info_command(cfg("raspberrypi", _no_network_root(tmp_path)), True, True, out) == 0
    text = out.getvalue()
    marked = [ln for ln in text.splitlines() if "UNKNOWN" in ln]
    assert len(marked) == 3, text
    for field, fix in (("model", "[sources] model"), ("version", "[sources] version"),
                       ("connectionType", "[network] interfaces")):
        line = next(ln for ln in marked if ln.strip().startswith(field))
        assert fix in line and "[device.overrides]" in line, line
    assert "unknown platform" in text


def test_explain_says_why_connection_ip_is_left_out():
    out = io.StringIO()
    dev = cfg("raspberrypi")
    assert commands.device_info_command(dev, False, True, out, ip_lookup=lambda n: "192.168.1.20") == 0
    assert "connectionIp" in out.getvalue() and "192.168.1.20" in out.getvalue() and "private" in out.getvalue()


def _check_config(tmp_path, root: str, statement: str) -> str:
    lines = ['[adobe]', 'software_statement = "%s"' % statement, '[device]', 'board = "raspberrypi"',
             'root = "%s"' % root, '[storage]', 'dir = "%s"' % (tmp_path / "store"),
             '[socket]', 'path = "%s"' % (tmp_path / "run" / "agent.sock")]
    p = tmp_path / "agent.toml"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_check_fails_naming_each_unknown_field_and_how_to_set_it(tmp_path, statement_file):
    from agent.commands import check_command

    out = io.StringIO()
    rc = check_command(_check_config(tmp_path, _no_network_root(tmp_path), statement_file), out)
    text = out.getvalue()
    assert rc == 1, text
    fails = [ln for ln in text.splitlines() if ln.startswith("fail")]
    assert len(fails) == 1 and "device-info" in fails[0], text
    for field in ("model", "version", "connectionType"):
        assert field in fails[0]
    assert "osVersion" not in fails[0] and "unknown platform" in fails[0]
    fix = text.splitlines()[text.splitlines().index(fails[0]) + 1]
    assert "fix:" in fix and "[device.overrides]" in fix and "board.toml" in fix


def test_check_passes_on_a_complete_fixture(tmp_path, statement_file):
    from agent.commands import check_command

    out = io.StringIO()
    assert check_command(_check_config(tmp_path, os.path.join(FIXTURES, "raspberrypi"), statement_file), out) == 0


def test_check_fails_on_a_private_connection_ip_override(tmp_path, statement_file):
    from agent.commands import check_command

    path = _check_config(tmp_path, os.path.join(FIXTURES, "raspberrypi"), statement_file)
    with open(path, "a") as f:
        f.write('[device.overrides]\nconnectionIp = "10.0.0.7"\n')
    out = io.StringIO()
    assert check_command(path, out) == 1
    fail = next(ln for ln in out.getvalue().splitlines() if ln.startswith("fail"))
    assert "device-info" in fail and "connectionIp" in fail and "10.0.0.7" in fail and "private" in fail
