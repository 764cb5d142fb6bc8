"""A player's side of the gateway in Python: http.client over the gateway's Unix socket.

Job: `UnixHTTPConnection` (http.client with connect() on an AF_UNIX path) and `call()`, which sends
one REST API v2 request and returns (status, headers, body). Used by `pass-agent login`, the tests and
docs/GATEWAY.md's Python example. Standard library only: importing it imports no h11.
Must never: send credentials (the agent adds them) or follow redirects.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client.HTTPConnection to a Unix socket path; the Host header says "localhost"."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        http.client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def call(conn: UnixHTTPConnection, method: str, path: str, *, body: Any = None, form: dict | None = None,
         headers: dict | None = None, app: str | None = None) -> tuple[int, dict, bytes]:
    """One request on a (keep-alive) connection. `body`: a dict (sent as JSON) or bytes/str; `form`: a
    urlencoded form; `app`: X-Pass-App. Returns (status, headers with lower-case names, body bytes)."""
    from urllib.parse import urlencode

    h = dict(headers or {})
    data: Any = None
    if form is not None:
        data = urlencode(form)
        h.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif isinstance(body, dict):
        data = json.dumps(body)
        h.setdefault("Content-Type", "application/json")
    elif body is not None:
        data = body
    if app:
        h["X-Pass-App"] = app
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    raw = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, raw
