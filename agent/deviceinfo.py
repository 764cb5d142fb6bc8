"""Device identity and the Adobe Pass `X-Device-Info` header, read from a Linux filesystem root.

Job: read the box's identifiers (/proc/device-tree, /proc/cpuinfo, /sys/class/dmi/id, /etc/os-release,
/etc/machine-id, /sys/class/net, /sys/class/drm) below a root directory, as a board profile directs,
and turn them into (1) the `X-Device-Info` value, (2) a stable device id and the REST API V2
`AP-Device-Identifier` derived from it (docs/DEVICE-INFO.md lists fields, sources and fallback
chains). `describe` rebuilds only the header and `network_signature` says cheaply when that is due
(the network changed). The pieces it builds on are portable modules of their own:
agent/devfiles.py (bounded reads below the root and the parsers of what the files hold),
agent/netinfo.py (addresses, `ip_class`, the default route) and agent/devfields.py (Adobe's
restricted sets, validation, `encode`/`decode`).

Portable: runs unmodified under MicroPython. Only math and a SHA-256 here (and os, json, binascii
in the modules above); no pathlib, dataclasses, typing, re, fcntl or socket (the caller injects
`ip_lookup`); no `from __future__`, no dict ordering assumptions (MicroPython dicts are unordered:
the header follows FIELD_ORDER).

Must never: crash on a missing, empty, binary, huge or non-UTF-8 file (every read is bounded and
falls back); emit invalid JSON or a value outside Adobe's restricted sets; emit a private, loopback,
link-local, CGNAT, ULA or other non-public connectionIp; let network state change the device id;
look at the real machine when given another root.
"""

import math

from agent.devfields import (
    FALLBACK,
    FIELD_ORDER,
    HOW_TO_SET,
    OS_FAMILY,
    REQUIRED,
    b64,
    check_field,
    encode,
    unknown_required,
)
from agent.devfiles import (
    clean,
    exists,
    is_dir,
    is_junk,
    list_dir,
    parse_cpuinfo,
    parse_edid,
    parse_keyvalue,
    parse_mac,
    parse_mode,
    parse_source,
    read_bytes,
    read_text,
)
from agent.errors import DeviceInfoError
from agent.netinfo import default_route_interface, ip_class, valid_ipv4

try:  # CPython's built-in SHA-256: `hashlib` would load OpenSSL (~3.6 MB of PSS) for one digest
    from _sha256 import sha256
except ImportError:
    try:
        from _sha2 import sha256  # CPython 3.12+
    except ImportError:
        from hashlib import sha256  # MicroPython and other builds

# The profile used when none is given; board.toml files override these keys (see agent/boards.py).
DEFAULT_PROFILE = {
    "name": "builtin",
    "fields": {"primaryHardwareType": "SetTopBox"},
    "sources": {
        "model": ["device-tree:model", "dmi:product_name", "cpuinfo:Model", "cpuinfo:Hardware"],
        "version": ["cpuinfo:Revision", "dmi:product_version", "dmi:board_version"],
        "manufacturer": ["dmi:sys_vendor", "dmi:board_vendor"],
        "vendor": [],
        "osVersion": ["os-release:VERSION_ID", "os-release:VERSION", "os-release:BUILD_ID", "kernel-release"],
    },
    "identity": ["device-tree:serial-number", "cpuinfo:Serial", "dmi:product_uuid", "machine-id", "mac"],
    "network_interfaces": ["eth0", "wlan0"],
    "display_connectors": [],
}


SOURCE_FIELDS = ("model", "version", "manufacturer", "vendor", "osVersion")


# ---------------------------------------------------------------- reading sources from a box

class _Box:
    """Reads below one root and caches the multi-field files (cpuinfo, os-release)."""

    def __init__(self, root, interfaces, problems):
        self.root = root or "/"
        self.preferred = list(interfaces or [])
        self.problems = problems
        self._cache = {}

    def text(self, path, limit=4096, truncate=False):
        key = (path, limit)
        if key not in self._cache:
            self._cache[key] = read_text(self.root, path, limit, truncate, self.problems)
        return self._cache[key]

    def os_release(self):
        if ("os-release",) not in self._cache:
            path = "/etc/os-release"
            text = self.text(path, 16384, True)
            if text is None:
                path = "/usr/lib/os-release"
                text = self.text(path, 16384, True)
            self._cache[("os-release",)] = (text, path)
        return self._cache[("os-release",)]

    def cpuinfo(self):
        if ("cpuinfo",) not in self._cache:
            self._cache[("cpuinfo",)] = parse_cpuinfo(self.text("/proc/cpuinfo", 65536, True))
        return self._cache[("cpuinfo",)]

    def device_tree(self, prop):
        for base in ("/proc/device-tree/", "/sys/firmware/devicetree/base/"):
            if exists(self.root, base + prop):
                return self.text(base + prop), base + prop
        return None, "/proc/device-tree/" + prop

    def interfaces(self):
        """Network interfaces with hardware behind them, preferred names first, then by name."""
        if ("net",) in self._cache:
            return self._cache[("net",)]
        names = [n for n in list_dir(self.root, "/sys/class/net") if n != "lo"]
        ordered = [n for n in self.preferred if n in names] + [n for n in names if n not in self.preferred]
        out = []
        for name in ordered:
            base = "/sys/class/net/" + name
            physical = exists(self.root, base + "/device")
            if not physical and name not in self.preferred:
                continue  # bridges, veth, tun, docker0: no hardware, no identity
            if (clean(self.text(base + "/type")) or "1") != "1":
                continue  # not Ethernet-like (CAN, loopback, tunnels)
            uevent = self.text(base + "/uevent") or ""
            wireless = (is_dir(self.root, base + "/wireless") or exists(self.root, base + "/phy80211")
                        or parse_keyvalue(uevent, "DEVTYPE") == "wlan")
            out.append({
                "name": name,
                "path": base,
                "mac": parse_mac(self.text(base + "/address")),
                "random_mac": clean(self.text(base + "/addr_assign_type")) == "1",
                "operstate": (clean(self.text(base + "/operstate")) or "unknown").lower(),
                "wireless": wireless,
            })
        self._cache[("net",)] = out
        return out

    def present(self, spec):
        """Whether the place a source reads exists at all (used to tell "absent" from "garbage")."""
        kind, arg = parse_source(spec)
        if kind == "device-tree":
            return exists(self.root, self.device_tree(arg)[1])
        if kind == "cpuinfo":
            return arg in self.cpuinfo()
        if kind == "dmi":
            return exists(self.root, "/sys/class/dmi/id/" + arg)
        if kind == "file":
            return exists(self.root, arg)
        if kind == "machine-id":
            return exists(self.root, "/etc/machine-id") or exists(self.root, "/var/lib/dbus/machine-id")
        if kind == "mac":
            return any(n["name"] == arg or not arg for n in self.interfaces())
        return self.read(spec)[0] is not None

    def read(self, spec):
        """(value, where) for one source spec; value None when the source has nothing usable."""
        kind, arg = parse_source(spec)
        if kind == "device-tree":
            text, where = self.device_tree(arg)
            return clean(text), where
        if kind == "cpuinfo":
            return clean(self.cpuinfo().get(arg)), "/proc/cpuinfo " + arg
        if kind == "dmi":
            path = "/sys/class/dmi/id/" + arg
            return clean(self.text(path)), path
        if kind == "os-release":
            text, path = self.os_release()
            return clean(parse_keyvalue(text, arg)), path + " " + arg
        if kind == "file":
            return clean(self.text(arg)), arg
        if kind == "keyvalue":
            j = arg.rfind(":")
            path, key = arg[:j], arg[j + 1:]
            return clean(parse_keyvalue(self.text(path, 65536, True), key)), path + " " + key
        if kind == "machine-id":
            for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
                v = clean(self.text(path))
                if v:
                    v = v.lower()
                    ok = len(v) == 32 and all(c in "0123456789abcdef" for c in v)
                    return (v if ok else None), path
            return None, "/etc/machine-id"
        if kind == "kernel-release":
            return clean(self.text("/proc/sys/kernel/osrelease")), "/proc/sys/kernel/osrelease"
        if kind == "mac":
            for nic in self.interfaces():
                if arg and nic["name"] != arg:
                    continue
                if nic["mac"] and not nic["random_mac"]:
                    return nic["mac"], nic["path"] + "/address"
            return None, "/sys/class/net/%s/address" % (arg or "*")
        return None, spec


# ---------------------------------------------------------------- device identity

def _id_prefix(kind, arg):
    if kind == "mac":
        return "mac"
    if kind == "machine-id":
        return "machine-id"
    if kind == "dmi" and arg == "product_uuid":
        return "uuid"
    return "serial"


def _identifier(kind, value):
    """Normalised identifier text or None: hardware ids are short and made of [0-9A-Za-z:._-]."""
    if kind == "mac":
        return value
    if value is None or not (4 <= len(value) <= 64):
        return None
    for c in value:
        if not (c.isdigit() or "a" <= c.lower() <= "z" or c in ":._-"):
            return None
    hexdigits = "0123456789abcdefABCDEF-"
    if all(c in hexdigits for c in value):
        value = value.lower()  # hex ids (serials, UUIDs) compare case-insensitively
    return None if is_junk(value) else value


def device_identity(box, sources):
    """(device_id, where) from the first identity source that yields a plausible id."""
    tried, rejected = [], []
    for spec in sources:
        kind, arg = parse_source(spec)
        value, where = box.read(spec)
        ident = _identifier(kind, value)
        if ident:
            if rejected:
                # an earlier, stronger source is there but unusable: worth a look, the id is weaker
                box.problems.append("device id taken from %s because %s held no usable identifier"
                                    % (spec, ", ".join(rejected)))
            return _id_prefix(kind, arg) + ":" + ident, spec + " (" + where + ")"
        tried.append(spec)
        if box.present(spec):
            rejected.append(where)
    raise DeviceInfoError(
        "no stable device identifier found below root %r; tried %s" % (box.root, ", ".join(tried) or "nothing"),
        hint="add a source that exists on this board to [identity] sources of the board profile, "
             "or make sure /etc/machine-id is persistent")


def ap_device_identifier(device_id):
    """`fingerprint <base64(sha256(device id))>` for the REST API V2 AP-Device-Identifier header."""
    digest = sha256(device_id.encode("utf-8")).digest()
    return "fingerprint " + b64(digest)


# ---------------------------------------------------------------- building the header from a box

def _merge_profile(profile):
    p = {}
    for key in DEFAULT_PROFILE:
        p[key] = DEFAULT_PROFILE[key]
    if profile:
        for key in profile:
            p[key] = profile[key]
        sources = {}
        for f in DEFAULT_PROFILE["sources"]:
            sources[f] = DEFAULT_PROFILE["sources"][f]
        for f in profile.get("sources") or {}:
            sources[f] = profile["sources"][f]
        p["sources"] = sources
    return p


def os_name(release_id, id_like):
    """osName for an os-release ID. Debian, Ubuntu, Raspbian, RDK, Buildroot, Poky/Yocto, OpenWrt,
    Alpine and Android-derived builds all run this agent on a Linux kernel: `Linux`."""
    ids = ((release_id or "") + " " + (id_like or "")).lower().split()
    if "chromeos" in ids:
        return "Chrome OS"
    return "Linux"


def _network(box, ip_lookup, fields, sources, warnings, omitted):
    """connectionType from the interface that carries the default route (else the first one up, in
    profile order); connectionIp only when that interface's address is public (reference section 4:
    Adobe merges an explicit value over the address it sees, so a LAN address would replace it)."""
    nics = box.interfaces()
    route = default_route_interface(box.root)
    nic, how = None, ""
    for n in nics:
        if n["name"] == route and n["operstate"] != "down":
            nic, how = n, ", default route"
            break
    if nic is None:
        up = [n for n in nics if n["operstate"] == "up"]
        nic = up[0] if up else None
    if nic is None and nics:
        nic = nics[0]
        warnings.append("no network interface is up; connectionType taken from %s (%s)"
                        % (nic["name"], nic["operstate"]))
    if nic is None:
        fields["connectionType"] = FALLBACK
        sources["connectionType"] = "fallback"
        warnings.append("connectionType: no network interface found under /sys/class/net; using the fallback %r "
                        "(name this box's interface in the board profile [network] interfaces or set "
                        "connectionType in [device.overrides])" % FALLBACK)
        return
    fields["connectionType"] = "WiFi" if nic["wireless"] else "LAN"
    sources["connectionType"] = nic["path"] + (" (wireless" if nic["wireless"] else " (wired") + how + ")"
    if ip_lookup is not None and (nic["operstate"] == "up" or how):
        try:
            ip = ip_lookup(nic["name"])
        except Exception as e:  # an injected lookup must never stop the header from being built
            ip = None
            warnings.append("IPv4 lookup for %s failed: %s" % (nic["name"], e))
        if ip and valid_ipv4(ip):
            why = ip_class(ip)
            if why is None:
                fields["connectionIp"] = ip
                sources["connectionIp"] = "IPv4 of " + nic["name"] + " (public)"
            else:
                omitted["connectionIp"] = ("%s has %s, which is %s: left out, Adobe takes the address from "
                                           "the connection" % (nic["name"], ip, why))


def network_signature(root, ip_lookup=None):
    """A cheap fingerprint of everything connectionType/connectionIp depend on: the default route's
    interface, each interface's operstate, and the address of each one that is up. One listing and
    one small read per interface (plus two /proc/net reads); the header is rebuilt only when it changes."""
    route = default_route_interface(root)
    parts = ["route=" + (route or "")]
    for name in list_dir(root, "/sys/class/net"):
        if name == "lo":
            continue
        state = clean(read_text(root, "/sys/class/net/" + name + "/operstate")) or "?"
        parts.append(name + "=" + state)
        if ip_lookup is not None and (state == "up" or name == route):
            try:
                parts.append(str(ip_lookup(name)))
            except Exception as e:
                parts.append("error " + str(e))
    return "\n".join(parts)


def _display(box, connectors, fields, sources, warnings):
    if not connectors:
        names = [n for n in list_dir(box.root, "/sys/class/drm") if n.startswith("card") and "-" in n]
        connectors = [n for n in names if "-HDMI-" in n] + [n for n in names if "-HDMI-" not in n]
    for name in connectors:
        base = "/sys/class/drm/" + name
        if clean(box.text(base + "/status")) != "connected":
            continue
        mode = parse_mode(box.text(base + "/modes", 16384, True))
        if mode is None:
            warnings.append("%s is connected but lists no usable mode; display fields omitted" % base)
            continue
        fields["displayWidth"], fields["displayHeight"] = mode
        sources["displayWidth"] = sources["displayHeight"] = base + "/modes"
        size = parse_edid(read_bytes(box.root, base + "/edid", 32768, True))
        if size:
            diag_mm = math.sqrt(size["width_mm"] ** 2 + size["height_mm"] ** 2)
            # integer rounding: identical results on CPython and MicroPython
            inches = int(diag_mm * 10 / 25.4 + 0.5) / 10
            if inches > 0:
                fields["diagonalScreenSize"] = inches
                fields["displayPpi"] = int(math.sqrt(mode[0] ** 2 + mode[1] ** 2) / (diag_mm / 25.4) + 0.5)
                sources["diagonalScreenSize"] = sources["displayPpi"] = base + "/edid"
        return


def _describe(box, p, overrides, application_id, ip_lookup):
    """(fields, sources, warnings, omitted) for one box: everything except the device identity."""
    warnings, omitted = [], {}
    fields, sources = {}, {}
    static = p.get("fields") or {}
    for key in static:
        fields[key] = static[key]
        sources[key] = "profile"
    for field in SOURCE_FIELDS:
        if field in fields:
            continue
        for spec in p["sources"].get(field) or []:
            value, where = box.read(spec)
            if value:
                fields[field] = value
                sources[field] = where
                break
    release, release_path = box.os_release()
    rid, like = parse_keyvalue(release, "ID"), parse_keyvalue(release, "ID_LIKE")
    if "osName" not in fields:
        fields["osName"] = os_name(rid, like)
        sources["osName"] = (release_path + " ID=" + rid) if rid else "built-in (the agent runs on Linux)"
    if "osFamily" not in fields and fields["osName"] in OS_FAMILY:
        fields["osFamily"] = OS_FAMILY[fields["osName"]]
        sources["osFamily"] = "derived from osName"
    _network(box, ip_lookup, fields, sources, warnings, omitted)
    _display(box, p.get("display_connectors"), fields, sources, warnings)
    if application_id:
        fields["applicationId"] = application_id
        sources["applicationId"] = "config [device] application_id"
    for key in overrides:
        fields[key] = overrides[key]
        sources[key] = "override"
        if key in omitted:
            del omitted[key]
    for field in REQUIRED:
        if field not in fields:
            fields[field] = FALLBACK
            sources[field] = "fallback"
            chain = p["sources"].get(field) or []
            warnings.append("%s: no usable value from %s; using the fallback %r"
                            % (field, ", ".join(chain) or "any source", FALLBACK))
    unknown = unknown_required(fields)
    if unknown:
        warnings.append("required X-Device-Info fields %s are %r: Adobe classifies the box as an unknown platform "
                        "(more restrictive rules, shorter authentication TTLs); set %s; `pass-agent check` lists them"
                        % (", ".join(unknown), FALLBACK, "; ".join(f + ": " + HOW_TO_SET[f] for f in unknown)))
    return fields, sources, warnings, omitted


def _ordered(fields):
    ordered = {}
    for key in FIELD_ORDER:
        if key in fields:
            ordered[key] = fields[key]
    return ordered


def describe(root="/", profile=None, overrides=None, application_id=None, ip_lookup=None):
    """identify() without the device identity: the header part only, for a rebuild after the network
    changed (the device id must never follow the network). Keys: fields, x_device_info, sources,
    warnings, omitted."""
    overrides = overrides or {}
    for key in overrides:
        check_field(key, overrides[key])
    p = _merge_profile(profile)
    problems = []
    box = _Box(root, p.get("network_interfaces"), problems)
    fields, sources, warnings, omitted = _describe(box, p, overrides, application_id, ip_lookup)
    header = encode(fields)
    for msg in problems:
        if msg not in warnings:
            warnings.append(msg)
    return {"fields": _ordered(fields), "x_device_info": header, "sources": sources, "warnings": warnings,
            "omitted": omitted}


def identify(root="/", profile=None, overrides=None, application_id=None, ip_lookup=None):
    """Read the box below `root` and build everything the agent needs to describe it.

    Precedence per field: overrides, then the profile's static [fields], then the first source of
    the field's chain that yields a usable value, then (required fields only) a fallback with a
    warning. `ip_lookup(ifname)` returns the interface's IPv4 or None; None skips connectionIp, and
    so does an address that is not public (`omitted` says why).
    """
    overrides = overrides or {}
    for key in overrides:  # a bad override is a configuration error: say so before reading anything
        check_field(key, overrides[key])
    p = _merge_profile(profile)
    problems = []
    box = _Box(root, p.get("network_interfaces"), problems)
    fields, sources, warnings, omitted = _describe(box, p, overrides, application_id, ip_lookup)
    n = len(problems)
    device_id, id_where = device_identity(box, p.get("identity") or DEFAULT_PROFILE["identity"])
    header = encode(fields)
    id_warnings = problems[n:]
    for msg in problems:
        if msg not in warnings:
            warnings.append(msg)
    return {
        "fields": _ordered(fields),
        "x_device_info": header,
        "ap_device_identifier": ap_device_identifier(device_id),
        "device_id": device_id,
        "device_id_source": id_where,
        "sources": sources,
        "warnings": warnings,
        "device_id_warnings": id_warnings,  # kept as they are when the header is rebuilt
        "omitted": omitted,
    }
