"""Decoding and checking of the `X-Device-Info` header against Adobe's documented fields.

Pure functions: header value in, (decoded object or None, list of problems) out. Each problem is a
one-line sentence naming the field and the allowed values, so a developer can fix the device side.
Must never: raise on any input, or echo a huge header back (values are cut short).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

HARDWARE_TYPES = frozenset((
    "Camera DataCollectionTerminal Desktop EmbeddedNetworkModule eReader GamesConsole GeolocationTracker "
    "Glasses MediaPlayer MobilePhone PaymentTerminal PluginModem SetTopBox TV Tablet WirelessHotspot "
    "Wristwatch Unknown").split())
OS_NAMES = frozenset(["Android", "Chrome OS", "Linux", "Mac OS", "OS X", "OpenBSD", "Roku OS", "Windows",
                      "iOS", "tvOS", "webOS"])
OS_FAMILIES = frozenset(["Android", "BSD", "Linux", "PlayStation OS", "Roku OS", "Symbian", "Tizen", "Windows",
                         "iOS", "tvOS", "macOS", "webOS"])
OS_VENDORS = frozenset(["Amazon", "Apple", "Google", "LG", "Microsoft", "Mozilla", "Nintendo", "Nokia", "Roku",
                        "Samsung", "Sony", "Tizen Project"])
ENUMS = {"primaryHardwareType": HARDWARE_TYPES, "osName": OS_NAMES, "osFamily": OS_FAMILIES,
         "osVendor": OS_VENDORS}
REQUIRED = ("model", "version", "osName", "osVersion", "connectionType")
STRINGS = ("model", "version", "manufacturer", "vendor", "osVersion", "connectionType", "connectionIp",
           "applicationId", "browserName", "browserVendor", "browserVersion", "userAgent")
NUMBERS = ("displayWidth", "displayHeight", "displayPpi", "diagonalScreenSize", "connectionPort")
KNOWN = frozenset(ENUMS) | frozenset(STRINGS) | frozenset(NUMBERS) | {"connectionSecure"}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check(value: str | None) -> tuple[dict[str, Any] | None, list[str]]:
    """Decode one header value; return the object (when it decodes) and every problem found."""
    if value is None:
        return None, ["X-Device-Info header is missing; send base64 of the device-info JSON object"]
    if value != value.strip() or "\n" in value or "\r" in value:
        return None, ["X-Device-Info has surrounding whitespace or line breaks; send one base64 line"]
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None, ["X-Device-Info is not standard base64 with padding"]
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, ["X-Device-Info does not decode to UTF-8 JSON"]
    if not isinstance(obj, dict):
        return None, ["X-Device-Info decodes to JSON %s, expected an object" % type(obj).__name__]
    problems = []
    for key in REQUIRED:
        if key not in obj:
            problems.append("X-Device-Info lacks required field %r" % key)
    for key, allowed in ENUMS.items():
        if key in obj and obj[key] not in allowed:
            problems.append("X-Device-Info %s=%s is not one of Adobe's values (%s)"
                            % (key, _short(obj[key]), ", ".join(sorted(allowed))))
    for key in STRINGS:
        if key in obj and not isinstance(obj[key], str):
            problems.append("X-Device-Info %s=%s must be a string" % (key, _short(obj[key])))
    for key in NUMBERS:
        v = obj.get(key)
        if key in obj and (isinstance(v, bool) or not isinstance(v, (int, float))):
            problems.append("X-Device-Info %s=%s must be a number" % (key, _short(v)))
    if "connectionSecure" in obj and not isinstance(obj["connectionSecure"], bool):
        problems.append("X-Device-Info connectionSecure=%s must be true or false" % _short(obj["connectionSecure"]))
    for key in obj:
        if key not in KNOWN:
            problems.append("X-Device-Info has unknown field %s (did you mean one of Adobe's names?)" % _short(key))
    return obj, problems


def effective(explicit: dict[str, Any] | None, extracted: dict[str, Any]) -> dict[str, Any]:
    """What Adobe works with: "the Adobe Pass Authentication backend will merge explicitly set values
    with extracted values implicitly" (register page; reference section 4). Explicit values win, so a
    LAN `connectionIp` sent by a box replaces the public address the connection came from."""
    merged = {k: v for k, v in extracted.items() if v is not None}
    if isinstance(explicit, dict):
        merged.update(explicit)
    return merged


def unknown_platform(obj: dict[str, Any] | None) -> bool:
    """True when a required field is missing or `Unknown`: Adobe then treats the device as an
    unknown, less trusted platform (reference section 4)."""
    if not isinstance(obj, dict):
        return True
    return any(not isinstance(obj.get(k), str) or not obj[k].strip() or obj[k].strip().lower() == "unknown"
               for k in REQUIRED)
