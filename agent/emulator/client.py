"""A few lines of plain `http.client` for tests, demos and scripts that talk to the emulator.

Deliberately independent of the agent's HTTP shim, so emulator tests check the emulator and not
the agent. Must never: skip certificate verification (an https origin needs the emulator's CA).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from typing import Any
from urllib.parse import urlsplit

GOOD_DEVICE_INFO = {"primaryHardwareType": "SetTopBox", "model": "EMU-1", "version": "1.0",
                    "manufacturer": "Example", "osName": "Linux", "osFamily": "Linux", "osVersion": "5.15",
                    "connectionType": "LAN", "connectionSecure": True}


def device_info(obj: dict[str, Any] | None = None, **overrides: Any) -> str:
    """Base64 of a device-info JSON object (a valid set-top box by default)."""
    data = dict(GOOD_DEVICE_INFO if obj is None else obj, **overrides)
    return base64.b64encode(json.dumps(data).encode()).decode()


def connection(origin: str, ca_file: str | None = None, timeout: float = 10) -> http.client.HTTPConnection:
    parts = urlsplit(origin)
    if parts.scheme == "https":
        ctx = ssl.create_default_context(cafile=ca_file)
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=ctx)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def request(origin: str, method: str, path: str, body: bytes | str | None = None,
            headers: dict[str, str] | None = None, ca_file: str | None = None,
            timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, lower-case headers, body)."""
    conn = connection(origin, ca_file, timeout)
    try:
        conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def admin(origin: str, method: str, path: str, obj: Any = None, ca_file: str | None = None) -> tuple[int, Any]:
    """Call the admin API (`path` below /_emulator/) with a JSON body; return (status, decoded JSON)."""
    body = json.dumps(obj) if obj is not None else None
    status, _, data = request(origin, method, "/_emulator/" + path.lstrip("/"), body,
                              {"Content-Type": "application/json"}, ca_file)
    return status, json.loads(data) if data else None
