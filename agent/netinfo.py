"""IP addresses and the default route, for X-Device-Info's connectionIp and connectionType.

Job: parse IPv4 and IPv6 text; `ip_class` says why an address must not be sent (private, loopback,
link-local, CGNAT, ULA, documentation, IPv4-mapped...) or None when it is public: Adobe merges an
explicit connectionIp over the address it sees on the connection, so only a public address ever
is. `default_route_interface` finds the interface the default route leaves through in
/proc/net/route and /proc/net/ipv6_route below a root. Portable: runs unmodified under MicroPython
(no socket or ipaddress module: the caller injects the interface address lookup).

Must never: call a non-public address public, raise on malformed text, or open a socket.
"""

from agent.devfiles import DIGITS, HEX, read_text

# ---------------------------------------------------------------- addresses

def valid_ipv4(text):
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or any(c not in DIGITS for c in p) or len(p) > 3 or int(p) > 255 or (len(p) > 1 and p[0] == "0"):
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
        if not 1 <= len(g) <= 4 or any(c not in HEX for c in g):
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


# ---------------------------------------------------------------- the default route

_RTF_UP = 0x0001


_RTF_REJECT = 0x0200


def _hex(text):
    if not text or any(c not in HEX for c in text):
        return None
    return int(text, 16)


def parse_route(text):
    """Interface of the IPv4 default route (lowest metric) in /proc/net/route text, or None."""
    best = None
    for line in (text or "").split("\n")[1:]:
        f = line.split()
        if len(f) < 8 or f[1] != "00000000" or f[7] != "00000000":
            continue
        flags, metric = _hex(f[3]), (int(f[6]) if f[6] and all(c in DIGITS for c in f[6]) else None)
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
