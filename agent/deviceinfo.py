"""Device identity and the Adobe Pass `X-Device-Info` header, read from a Linux filesystem root.

Job: read the box's identifiers (/proc/device-tree, /proc/cpuinfo, /sys/class/dmi/id, /etc/os-release,
/etc/machine-id, /sys/class/net, /sys/class/drm) below a root directory, as a board profile directs,
and turn them into (1) the `X-Device-Info` value, (2) a stable device id and the REST API V2
`AP-Device-Identifier` derived from it. `encode`/`decode` validate every field against the restricted
sets of the Adobe reference (docs/DEVICE-INFO.md lists fields, sources and fallback chains).
`describe` rebuilds only the header and `network_signature` says cheaply when that is due (the
network changed). `ip_class` decides which connectionIp may be sent: Adobe merges an explicit value
over the address it sees, so only a public address ever is.

Portable: runs unmodified under MicroPython. Only os, json, binascii, hashlib and math; no pathlib,
dataclasses, typing, re, fcntl or socket (the caller injects `ip_lookup`); no `from __future__`,
no dict ordering assumptions (MicroPython dicts are unordered: the header follows FIELD_ORDER).

Must never: crash on a missing, empty, binary, huge or non-UTF-8 file (every read is bounded and
falls back); emit invalid JSON or a value outside Adobe's restricted sets; emit a private, loopback,
link-local, CGNAT, ULA or other non-public connectionIp; let network state change the device id;
look at the real machine when given another root.
"""

import binascii
import json
import math
import os

from agent.errors import DeviceInfoError

try:  # CPython's built-in SHA-256: `hashlib` would load OpenSSL (~3.6 MB of PSS) for one digest
    from _sha256 import sha256
except ImportError:
    try:
        from _sha2 import sha256  # CPython 3.12+
    except ImportError:
        from hashlib import sha256  # MicroPython and other builds

_DIGITS = "0123456789"  # str.isdigit() also accepts digits int() refuses (superscripts)
_HEX = "0123456789abcdefABCDEF"

# The order fields are emitted in: the order of the Adobe reference table (section 4).
FIELD_ORDER = (
    "primaryHardwareType", "model", "version", "manufacturer", "vendor",
    "osName", "osFamily", "osVendor", "osVersion",
    "displayWidth", "displayHeight", "displayPpi", "diagonalScreenSize",
    "connectionIp", "connectionPort", "connectionType", "connectionSecure",
    "applicationId",
)
REQUIRED = ("model", "version", "osName", "osVersion", "connectionType")
ENUMS = {
    "primaryHardwareType": (
        "Camera", "DataCollectionTerminal", "Desktop", "EmbeddedNetworkModule", "eReader",
        "GamesConsole", "GeolocationTracker", "Glasses", "MediaPlayer", "MobilePhone",
        "PaymentTerminal", "PluginModem", "SetTopBox", "TV", "Tablet", "WirelessHotspot",
        "Wristwatch", "Unknown"),
    "osName": ("Android", "Chrome OS", "Linux", "Mac OS", "OS X", "OpenBSD", "Roku OS", "Windows",
               "iOS", "tvOS", "webOS"),
    "osFamily": ("Android", "BSD", "Linux", "PlayStation OS", "Roku OS", "Symbian", "Tizen", "Windows",
                 "iOS", "tvOS", "macOS", "webOS"),
    "osVendor": ("Amazon", "Apple", "Google", "LG", "Microsoft", "Mozilla", "Nintendo", "Nokia", "Roku",
                 "Samsung", "Sony", "Tizen Project"),
}
NUMBERS = ("displayWidth", "displayHeight", "displayPpi", "diagonalScreenSize", "connectionPort")
BOOLEANS = ("connectionSecure",)
# Browser fields have their own restricted sets and describe a browser: a native agent omits them.
BROWSER_FIELDS = ("browserName", "browserVendor", "browserVersion", "userAgent")
# osFamily that goes with each osName when nothing else says otherwise.
OS_FAMILY = {"Android": "Android", "Chrome OS": "Linux", "Linux": "Linux", "Mac OS": "macOS",
             "OS X": "macOS", "OpenBSD": "BSD", "Roku OS": "Roku OS", "Windows": "Windows",
             "iOS": "iOS", "tvOS": "tvOS", "webOS": "webOS"}
MAX_TEXT = 128  # longer identifier text is garbage, not a model name

# Values firmware ships when nobody filled a field in (compared lower-case).
JUNK = ("", "none", "n/a", "na", "null", "unknown", "default string", "not specified",
        "not applicable", "to be filled by o.e.m.", "to be filled by oem", "system product name",
        "system version", "system manufacturer", "system serial number", "type1productconfigid",
        "o.e.m.", "oem", "0123456789", "123456789", "1234567890", "uninitialized",
        "03000200-0400-0500-0006-000700080009")

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
SOURCE_KINDS = ("device-tree", "cpuinfo", "dmi", "os-release", "file", "keyvalue", "machine-id", "mac",
                "kernel-release")
FALLBACK = "Unknown"

_S_IFMT = 0o170000
_S_IFREG = 0o100000
_S_IFDIR = 0o040000
_EACCES = 13


# ---------------------------------------------------------------- bounded file access below a root

def _join(root, path):
    if not root or root == "/":
        return path
    return root.rstrip("/") + path


def _mode(full):
    try:
        return os.stat(full)[0] & _S_IFMT
    except (OSError, ValueError):
        return None


def _exists(root, path):
    return _mode(_join(root, path)) is not None


def _is_dir(root, path):
    return _mode(_join(root, path)) == _S_IFDIR


def read_bytes(root, path, limit=4096, truncate=False, problems=None):
    """First bytes of a regular file, or None (missing, not a regular file, unreadable, or larger
    than `limit` unless `truncate`). Never opens FIFOs or devices, which could block or never end."""
    full = _join(root, path)
    if _mode(full) != _S_IFREG:
        return None
    chunks, total = [], 0
    try:
        f = open(full, "rb")
        try:
            # small chunks: MicroPython would allocate the whole `limit` up front for one read()
            while total <= limit:
                chunk = f.read(min(4096, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        finally:
            f.close()
    except OSError as e:
        if problems is not None and e.args and e.args[0] == _EACCES:
            problems.append("%s exists but is not readable by this user" % path)
        return None
    data = b"".join(chunks)
    if len(data) > limit:
        if not truncate:
            if problems is not None:
                problems.append("%s is larger than %d bytes, ignored" % (path, limit))
            return None
        data = data[:limit]
    return data


def to_text(data):
    """Bytes to str: UTF-8 when valid, else only the printable ASCII bytes (no codec needed)."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except (UnicodeError, ValueError):
        return "".join(chr(b) for b in data if 32 <= b < 127 or b in (9, 10))


def read_text(root, path, limit=4096, truncate=False, problems=None):
    return to_text(read_bytes(root, path, limit, truncate, problems))


def list_dir(root, path):
    try:
        return sorted(os.listdir(_join(root, path)))
    except (OSError, ValueError):
        return []


def clean(text):
    """One line of identifier text: first non-empty line, NULs and control characters removed,
    whitespace collapsed; None when empty, junk or implausibly long."""
    if text is None:
        return None
    for line in text.replace("\x00", "\n").split("\n"):
        out = "".join(c if ord(c) >= 32 and ord(c) != 127 and c != "\ufffd" else " " for c in line)
        out = " ".join(out.split())
        if out:
            if len(out) > MAX_TEXT or is_junk(out):
                return None
            return out
    return None


def is_junk(value):
    v = value.strip().lower()
    if v in JUNK:
        return True
    # "0000000000000000", "ffffffff", "00000000-0000-...": one repeated digit is never an identifier
    v = v.replace("-", "").replace(":", "").replace(".", "").replace(" ", "")
    return len(v) > 1 and v.count(v[0]) == len(v) and v[0] in "0fx"


# ---------------------------------------------------------------- pure parsers

def parse_cpuinfo(text):
    """`Key<tabs>: value` lines to a dict; the first occurrence of a key wins."""
    out = {}
    for line in (text or "").split("\n"):
        i = line.find(":")
        if i <= 0:
            continue
        key = line[:i].strip()
        if key and key not in out:
            out[key] = line[i + 1:].strip()
    return out


def _unquote(v):
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        v = v[1:-1]
        if '"' in v or "\\" in v:
            v = v.replace('\\"', '"').replace("\\$", "$").replace("\\`", "`").replace("\\\\", "\\")
    return v


def parse_keyvalue(text, key):
    """Value of KEY in `KEY=value` (os-release, shell properties) or `KEY:value` (RDK version.txt)."""
    for line in (text or "").split("\n"):
        line = line.strip()
        if line.startswith(key) and len(line) > len(key) and line[len(key)] in "=:":
            return _unquote(line[len(key) + 1:])
    return None


def parse_mode(text):
    """`1920x1080` or `1920x1080i` (first line of a DRM `modes` file) to (1920, 1080)."""
    line = clean(text)
    if not line or "x" not in line:
        return None
    w, h = line.split("x", 1)
    digits = ""
    for c in h:
        if c not in _DIGITS:
            break
        digits += c
    if not w or len(w) > 6 or any(c not in _DIGITS for c in w) or not digits or len(digits) > 6:
        return None
    w, h = int(w), int(digits)
    if not (0 < w <= 16384 and 0 < h <= 16384):
        return None
    return w, h


def parse_edid(data):
    """Physical image size in mm from a base EDID block: {"width_mm", "height_mm"} or None.

    Bytes 21/22 give the size in cm (0 = unknown or an aspect ratio); the first detailed timing
    descriptor (bytes 54-71) gives it in mm and is preferred when it agrees with the cm size.
    """
    if data is None or len(data) < 128:
        return None
    block = data[:128]
    if block[:8] != b"\x00\xff\xff\xff\xff\xff\xff\x00" or sum(block) % 256 != 0:
        return None
    w_cm, h_cm = block[21], block[22]
    if not w_cm or not h_cm:
        return None
    w, h = w_cm * 10, h_cm * 10
    dtd = block[54:72]
    if dtd[0] or dtd[1]:  # a pixel clock: this is a timing descriptor, not a text descriptor
        dw = dtd[12] | ((dtd[14] >> 4) << 8)
        dh = dtd[13] | ((dtd[14] & 0x0F) << 8)
        if dw > 0 and dh > 0 and abs(dw - w) <= 10 and abs(dh - h) <= 10:
            w, h = dw, dh
    return {"width_mm": w, "height_mm": h}


def valid_ipv4(text):
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or any(c not in _DIGITS for c in p) or len(p) > 3 or int(p) > 255 or (len(p) > 1 and p[0] == "0"):
            return False
    return True


def _parse_ipv6(text):
    """Eight 16-bit groups of an IPv6 address in RFC 4291 text form, or None. No zone id (`%eth0`):
    a zone names a link, and a link-scoped address is never the box's public one."""
    if len(text) < 2 or len(text) > 45 or ":" not in text:
        return None
    tail = []
    if "." in text:  # trailing dotted IPv4, e.g. ::ffff:192.0.2.1
        i = text.rfind(":")
        v4 = text[i + 1:]
        if not valid_ipv4(v4):
            return None
        b = [int(x) for x in v4.split(".")]
        tail = [(b[0] << 8) | b[1], (b[2] << 8) | b[3]]
        text = text[:i + 1]
        if not text.endswith("::"):
            text = text[:-1]
    if text.count("::") > 1:
        return None
    if "::" in text:
        i = text.find("::")
        head = text[:i].split(":") if i > 0 else []
        rest = text[i + 2:].split(":") if i + 2 < len(text) else []
        missing = 8 - len(tail) - len(head) - len(rest)
        if missing < 1:
            return None
        groups = head + ["0"] * missing + rest
    else:
        groups = text.split(":")
        if len(groups) + len(tail) != 8:
            return None
    out = []
    for g in groups:
        if not 1 <= len(g) <= 4 or any(c not in _HEX for c in g):
            return None
        out.append(int(g, 16))
    return out + tail


def parse_ip(text):
    """("v4", [4 bytes]) or ("v6", [8 groups]) for an IPv4 or IPv6 address in text form, else None."""
    if not isinstance(text, str):
        return None
    if valid_ipv4(text):
        return "v4", [int(x) for x in text.split(".")]
    groups = _parse_ipv6(text)
    return None if groups is None else ("v6", groups)


def valid_ip(text):
    return parse_ip(text) is not None


def _ipv4_class(b):
    """Why an IPv4 address is not a box's public address (IANA IPv4 special-purpose registry), or None."""
    a, n, c = b[0], b[1], b[2]
    if a == 0:
        return "'this network' (0.0.0.0/8, RFC 791)"
    if a == 10 or (a == 172 and 16 <= n <= 31) or (a == 192 and n == 168):
        return "private (RFC 1918)"
    if a == 100 and 64 <= n <= 127:
        return "shared address space, CGNAT (100.64.0.0/10, RFC 6598)"
    if a == 127:
        return "loopback (127.0.0.0/8)"
    if a == 169 and n == 254:
        return "link-local (169.254.0.0/16)"
    if a == 192 and n == 0 and c == 0:
        return "IETF protocol assignments (192.0.0.0/24, RFC 6890)"
    if (a == 192 and n == 0 and c == 2) or (a == 198 and n == 51 and c == 100) or (a == 203 and n == 0 and c == 113):
        return "documentation (TEST-NET, RFC 5737)"
    if a == 192 and n == 88 and c == 99:
        return "deprecated 6to4 relay anycast (192.88.99.0/24, RFC 7526)"
    if a == 198 and n in (18, 19):
        return "benchmarking (198.18.0.0/15, RFC 2544)"
    if 224 <= a <= 239:
        return "multicast (224.0.0.0/4)"
    if a >= 240:
        return "reserved (240.0.0.0/4, broadcast)"
    return None


def _ipv6_class(g):
    """Why an IPv6 address is not a box's public address (IANA IPv6 special-purpose registry), or None."""
    if g[:5] == [0, 0, 0, 0, 0] and g[5] == 0xFFFF:
        return "IPv4-mapped (::ffff:0:0/96): write the IPv4 address itself"
    if g == [0] * 8:
        return "unspecified (::)"
    if g == [0] * 7 + [1]:
        return "loopback (::1)"
    first = g[0]
    if first & 0xFFC0 == 0xFE80:
        return "link-local (fe80::/10)"
    if first & 0xFE00 == 0xFC00:
        return "unique local, ULA (fc00::/7, RFC 4193)"
    if first & 0xFFC0 == 0xFEC0:
        return "deprecated site-local (fec0::/10)"
    if first & 0xFF00 == 0xFF00:
        return "multicast (ff00::/8)"
    if first == 0x64 and g[1] == 0xFF9B:
        return "NAT64 translation prefix (64:ff9b::/96, RFC 6052/8215)"
    if first == 0x100 and g[1:4] == [0, 0, 0]:
        return "discard-only (100::/64, RFC 6666)"
    if first & 0xE000 != 0x2000:
        return "reserved (outside 2000::/3, the only global unicast block)"
    if first == 0x2001 and g[1] == 0xDB8:
        return "documentation (2001:db8::/32, RFC 3849)"
    if first == 0x3FFF and g[1] < 0x1000:
        return "documentation (3fff::/20, RFC 9637)"
    if first == 0x2001 and g[1] < 0x200:
        return "IETF protocol assignments (2001::/23: Teredo, benchmarking, ORCHID, anycast services)"
    if first == 0x2002:
        return "deprecated 6to4 (2002::/16, RFC 7526)"
    return None


def ip_class(text):
    """None for a public unicast address a box may be seen with; else why it is not one ("private
    (RFC 1918)", "loopback (::1)", "not an IPv4 or IPv6 address"...). Stricter than
    `ipaddress.is_global`: what CPython calls non-global is never public here (tests check it), and
    a few blocks CPython accepts but no subscriber line uses (multicast, 6to4, 2001::/23 anycast,
    IPv4-mapped) are refused too: a missing connectionIp costs nothing, a wrong one misplaces the box."""
    parsed = parse_ip(text)
    if parsed is None:
        return "not an IPv4 or IPv6 address"
    if parsed[0] == "v4":
        return _ipv4_class(parsed[1])
    return _ipv6_class(parsed[1])


def is_public_ip(text):
    return ip_class(text) is None


def parse_mac(text):
    """`aa:bb:cc:dd:ee:ff` lower-case, or None for anything that is not a usable burned-in address
    (zero, broadcast, multicast, or locally administered: random per boot on many boxes)."""
    v = clean(text)
    if not v:
        return None
    parts = v.lower().split(":")
    if len(parts) != 6:
        return None
    for p in parts:
        if len(p) != 2 or not all(c in "0123456789abcdef" for c in p):
            return None
    first = int(parts[0], 16)
    if first & 0x01 or first & 0x02 or parts == ["00"] * 6:
        return None
    return ":".join(parts)


def parse_source(spec):
    """`kind` or `kind:argument` to (kind, argument); ValueError naming what is wrong."""
    if not isinstance(spec, str) or not spec:
        raise ValueError("a source must be a non-empty string such as \"device-tree:model\"")
    i = spec.find(":")
    kind, arg = (spec, "") if i < 0 else (spec[:i], spec[i + 1:])
    if kind not in SOURCE_KINDS:
        raise ValueError("unknown source kind %r in %r; expected one of %s" % (kind, spec, ", ".join(SOURCE_KINDS)))
    if kind in ("machine-id", "kernel-release") and arg:
        raise ValueError("source %r takes no argument" % kind)
    if kind in ("device-tree", "cpuinfo", "dmi", "os-release") and not arg:
        raise ValueError("source %r needs an argument, e.g. %s:model" % (spec, kind))
    if kind in ("device-tree", "dmi") and ("/" in arg or ".." in arg):
        raise ValueError("source %r: the property name must not contain '/' or '..'" % spec)
    if kind == "file" and not arg.startswith("/"):
        raise ValueError("source %r: expected an absolute path, e.g. file:/etc/serial" % spec)
    if kind == "keyvalue":
        j = arg.rfind(":")
        if not arg.startswith("/") or j <= 1 or j == len(arg) - 1:
            raise ValueError("source %r: expected keyvalue:/absolute/path:KEY" % spec)
    if kind == "mac" and "/" in arg:
        raise ValueError("source %r: expected mac or mac:<interface name>" % spec)
    return kind, arg


# ---------------------------------------------------------------- the default route

_RTF_UP = 0x0001
_RTF_REJECT = 0x0200


def _hex(text):
    if not text or any(c not in _HEX for c in text):
        return None
    return int(text, 16)


def parse_route(text):
    """Interface of the IPv4 default route (lowest metric) in /proc/net/route text, or None."""
    best = None
    for line in (text or "").split("\n")[1:]:
        f = line.split()
        if len(f) < 8 or f[1] != "00000000" or f[7] != "00000000":
            continue
        flags, metric = _hex(f[3]), (int(f[6]) if f[6] and all(c in _DIGITS for c in f[6]) else None)
        if flags is None or metric is None or not flags & _RTF_UP or flags & _RTF_REJECT:
            continue
        if best is None or metric < best[0]:
            best = (metric, f[0])
    return None if best is None else best[1]


def parse_ipv6_route(text):
    """Interface of the IPv6 default route (lowest metric) in /proc/net/ipv6_route text, or None.
    The kernel's unreachable default on `lo` (RTF_REJECT) is not a route out."""
    best = None
    for line in (text or "").split("\n"):
        f = line.split()
        if len(f) < 10 or f[0] != "0" * 32 or f[1] != "00" or f[9] == "lo":
            continue
        flags, metric = _hex(f[8]), _hex(f[5])
        if flags is None or metric is None or not flags & _RTF_UP or flags & _RTF_REJECT:
            continue
        if best is None or metric < best[0]:
            best = (metric, f[9])
    return None if best is None else best[1]


def default_route_interface(root):
    """The interface the box's default route leaves through (IPv4 first, then IPv6), or None when
    there is none yet (no DHCP lease) or /proc/net is not there (a fixture tree without it)."""
    name = parse_route(read_text(root, "/proc/net/route", 65536, True))
    if name is None:
        name = parse_ipv6_route(read_text(root, "/proc/net/ipv6_route", 65536, True))
    return name


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
            if _exists(self.root, base + prop):
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
            physical = _exists(self.root, base + "/device")
            if not physical and name not in self.preferred:
                continue  # bridges, veth, tun, docker0: no hardware, no identity
            if (clean(self.text(base + "/type")) or "1") != "1":
                continue  # not Ethernet-like (CAN, loopback, tunnels)
            uevent = self.text(base + "/uevent") or ""
            wireless = (_is_dir(self.root, base + "/wireless") or _exists(self.root, base + "/phy80211")
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
            return _exists(self.root, self.device_tree(arg)[1])
        if kind == "cpuinfo":
            return arg in self.cpuinfo()
        if kind == "dmi":
            return _exists(self.root, "/sys/class/dmi/id/" + arg)
        if kind == "file":
            return _exists(self.root, arg)
        if kind == "machine-id":
            return _exists(self.root, "/etc/machine-id") or _exists(self.root, "/var/lib/dbus/machine-id")
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
    return "fingerprint " + _b64(digest)


# ---------------------------------------------------------------- validation and the wire format

def _b64(data):
    return binascii.b2a_base64(data).decode("ascii").strip()


def _bad(field, found, expected):
    return DeviceInfoError("X-Device-Info field %r: found %r, expected %s" % (field, found, expected),
                           hint="fix [device.overrides] in the config or the board profile")


def check_field(field, value):
    """The value as it will be emitted, or DeviceInfoError naming the field."""
    if field in BROWSER_FIELDS:
        raise _bad(field, value, "no value: browser fields describe a browser and a native agent omits them")
    if field not in FIELD_ORDER:
        raise _bad(field, value, "one of the X-Device-Info keys " + ", ".join(FIELD_ORDER))
    if field in BOOLEANS:
        if type(value) is not bool:
            raise _bad(field, value, "true or false")
        return value
    if field in NUMBERS:
        if type(value) is bool or not isinstance(value, (int, float)) or not (0 < value < 1000000) \
                or value != value:
            raise _bad(field, value, "a positive number below 1000000")
        if field == "connectionPort" and (not isinstance(value, int) or value > 65535):
            raise _bad(field, value, "an integer port from 1 to 65535")
        if isinstance(value, float) and not (0 < float(_json_value(value)) < 1000000):
            raise _bad(field, value, "a positive number that stays positive with two decimals")
        return value
    if not isinstance(value, str):
        raise _bad(field, value, "a string")
    if not value.strip():
        raise _bad(field, value, "a non-empty string")
    if len(value) > 256:
        raise _bad(field, value[:40] + "...", "at most 256 characters")
    for c in value:
        if ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF:
            raise _bad(field, value, "printable text without control characters")
    if field in ENUMS and value not in ENUMS[field]:
        raise _bad(field, value, "one of " + ", ".join(ENUMS[field]))
    if field == "connectionIp":
        why = ip_class(value)
        if why is not None and not valid_ip(value):
            raise _bad(field, value, "an IPv4 or IPv6 address")
        if why is not None:
            # Adobe merges an explicit connectionIp over the address it sees on the connection: a LAN
            # address would replace the box's public one and break home-based authentication.
            raise DeviceInfoError(
                "X-Device-Info field 'connectionIp': found %r, which is %s; only a public address may be "
                "sent, because Adobe uses it instead of the address it sees on the connection" % (value, why),
                hint="remove connectionIp from [device.overrides] (and the board profile [fields]): Adobe then "
                     "takes the box's public address from the connection")
    return value


def check_fields(fields):
    """Validate a whole field set: known keys, allowed values, required fields present."""
    if not isinstance(fields, dict):
        raise DeviceInfoError("X-Device-Info must be a JSON object, found %s" % type(fields).__name__)
    for key in fields:
        check_field(key, fields[key])
    for key in REQUIRED:
        if key not in fields:
            raise DeviceInfoError("X-Device-Info field %r is required but missing" % key,
                                  hint="set it in [device.overrides] or in the board profile [fields]")


def _json_str(s):
    out = ['"']
    for c in s:
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif ord(c) < 32:
            out.append("\\u%04x" % ord(c))
        else:
            out.append(c)  # non-ASCII stays raw UTF-8: identical bytes on CPython and MicroPython
    out.append('"')
    return "".join(out)


def _json_value(v):
    if type(v) is bool:
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v == int(v):
            return str(int(v))
        # two decimals: enough for inches and pixels, and formatted alike by both interpreters
        text = "%.2f" % v
        return text.rstrip("0").rstrip(".")
    return _json_str(v)


def to_json(fields):
    """Compact JSON in FIELD_ORDER (stable bytes whatever the dict order)."""
    parts = []
    for key in FIELD_ORDER:
        if key in fields:
            parts.append(_json_str(key) + ":" + _json_value(fields[key]))
    return "{" + ",".join(parts) + "}"


def encode(fields):
    """X-Device-Info value: standard Base64 (padded, no newline) of compact UTF-8 JSON."""
    check_fields(fields)
    return _b64(to_json(fields).encode("utf-8"))


def decode(value):
    """The field dict (in FIELD_ORDER) of an X-Device-Info value; DeviceInfoError when invalid."""
    if not isinstance(value, str) or not value or len(value) % 4 or len(value) > 65536:
        raise DeviceInfoError("X-Device-Info is not standard padded Base64 (length %d)"
                              % (len(value) if isinstance(value, str) else 0))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = value.rstrip("=")
    if len(value) - len(body) > 2 or not all(c in alphabet for c in body):
        raise DeviceInfoError("X-Device-Info contains characters outside standard Base64")
    try:
        obj = json.loads(binascii.a2b_base64(value).decode("utf-8"))
    except (ValueError, UnicodeError, RuntimeError) as e:  # RuntimeError: nesting too deep
        raise DeviceInfoError("X-Device-Info does not decode to UTF-8 JSON: %s" % e)
    check_fields(obj)
    return dict((k, obj[k]) for k in FIELD_ORDER if k in obj)


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


def unknown_required(fields):
    """Required fields whose value is the fallback `Unknown` (or missing): Adobe then classifies the
    box as an unknown platform, with more restrictive rules such as shorter authentication TTLs."""
    return [k for k in REQUIRED if k not in fields or (isinstance(fields[k], str) and fields[k].lower() == "unknown")]


# How to give each required field a value (names the board profile key and the config table).
HOW_TO_SET = {
    "model": "[sources] model (a source that exists on this box) or [fields] model in the board profile, "
             "or model in [device.overrides]",
    "version": "[sources] version or [fields] version in the board profile, or version in [device.overrides]",
    "osName": "[fields] osName in the board profile or osName in [device.overrides]",
    "osVersion": "[sources] osVersion or [fields] osVersion in the board profile, or osVersion in "
                 "[device.overrides]",
    "connectionType": "[network] interfaces in the board profile (this box's interface names), or "
                      "connectionType in [device.overrides]",
}


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
