"""The X-Device-Info wire format: Adobe's fields and restricted value sets, validation, encoding.

Job: the field names, their order and restricted sets (the Adobe reference, section 4;
docs/DEVICE-INFO.md), `check_field`/`check_fields` for every value (a connectionIp only when public,
agent/netinfo.py), compact JSON in FIELD_ORDER, `encode`/`decode` (standard padded Base64), and
`unknown_required` with HOW_TO_SET for required fields left `Unknown`. Portable: runs unmodified
under MicroPython and yields the same bytes there (no dict-order assumptions, its own JSON writer).

Must never: emit invalid JSON or a value outside Adobe's restricted sets, accept a non-public
connectionIp, or depend on dict ordering.
"""

import binascii

from agent.errors import DeviceInfoError
from agent.netinfo import ip_class, valid_ip

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


FALLBACK = "Unknown"


# ---------------------------------------------------------------- validation and the wire format

def b64(data):
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
    return b64(to_json(fields).encode("utf-8"))


def decode(value):
    """The field dict (in FIELD_ORDER) of an X-Device-Info value; DeviceInfoError when invalid."""
    if not isinstance(value, str) or not value or len(value) % 4 or len(value) > 65536:
        raise DeviceInfoError("X-Device-Info is not standard padded Base64 (length %d)"
                              % (len(value) if isinstance(value, str) else 0))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = value.rstrip("=")
    if len(value) - len(body) > 2 or not all(c in alphabet for c in body):
        raise DeviceInfoError("X-Device-Info contains characters outside standard Base64")
    import json  # here only: json imports re, which the daemon's start path avoids (issue 20)

    try:
        obj = json.loads(binascii.a2b_base64(value).decode("utf-8"))
    except (ValueError, UnicodeError, RuntimeError) as e:  # RuntimeError: nesting too deep
        raise DeviceInfoError("X-Device-Info does not decode to UTF-8 JSON: %s" % e)
    check_fields(obj)
    return dict((k, obj[k]) for k in FIELD_ORDER if k in obj)


# ---------------------------------------------------------------- required fields left Unknown

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
