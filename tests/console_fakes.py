"""A small fake of agent.service.Service for the console tests, plus a settable clock.

It implements the service facade (agent/facade.py, checked by tests/test_facade.py) and records
the actions it was asked for. Its token and client secret are distinctive strings the
tests search every console output for.
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any, Callable

from agent.errors import AgentError, NotReady, UpstreamError
from agent.log import LogBuffer

# Both are secrets: no console output may ever contain them.
FAKE_TOKEN = ("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjbGllbnQtNDJmMyIsImlzcyI6ImF1dGgifQ."
              "c2lnbmF0dXJlLXRoYXQtbXVzdC1uZXZlci1sZWFrLTc3MjE")
OPAQUE_TOKEN = "opaqueTOKENvalue0123456789abcdefXYZ"
FAKE_SECRET = "7f3e9a1c-5ec2-4b2d-SECRET-9a0e1d2c3b4a"
FIELDS = {"primaryHardwareType": "SetTopBox", "model": "STB-9000", "version": "rev B", "osName": "Linux",
          "osVersion": "5.10.120", "connectionType": "LAN", "manufacturer": "Acme"}


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class FakeService:
    version = "0.1.0"

    def __init__(self, token: str | None = FAKE_TOKEN, leaky: bool = False) -> None:
        self.logs = LogBuffer(100)
        self.calls: list[str] = []
        self._token = token
        self.leaky = leaky  # a buggy service that puts secrets where they should not be
        self.lock = threading.Lock()
        self.error = NotReady("no token yet: registration in progress", retry_after=5,
                              hint="wait; the agent retries by itself")

    def apps(self) -> list[str]:
        return ["default"]

    def token(self, min_ttl: float = 0, app: str | None = None) -> dict | None:
        self.calls.append("token")
        if self._token is None:
            return None
        return {"access_token": self._token, "token_type": "bearer", "expires_at": 1700021600.0,
                "expires_in": 21000, "refresh_at": 1700010800.0}

    def not_ready_error(self, app: str | None = None) -> AgentError:
        return self.error

    def wait_token(self, timeout: float, min_ttl: float = 0, app: str | None = None) -> dict | None:
        return self.token(min_ttl)

    def identity(self, app: str | None = None) -> dict:
        xdi = base64.b64encode(json.dumps(FIELDS).encode()).decode()
        return {"fields": dict(FIELDS), "x_device_info": xdi,
                "ap_device_identifier": "fingerprint ZmFrZS1kZXZpY2UtaWQ=", "device_id": "serial-0042",
                "sources": {"model": "/proc/device-tree/model", "osVersion": "/proc/sys/kernel/osrelease"},
                "warnings": ["displayWidth unknown on this board"]}

    def report_error(self, status: int, body: Any = None, access_token: str | None = None,
                     management: bool = False, uid: int | None = None, app: str | None = None) -> dict:
        return {"decision": "ignored", "reason": "fake"}

    def status(self, app: str | None = None) -> dict:
        last = None
        if self.leaky:
            last = UpstreamError("token call failed: Authorization: Bearer " + FAKE_TOKEN + " client_secret="
                                 + FAKE_SECRET, code="server_error", status=500).to_dict()
        return {"state": "ready", "version": self.version, "uptime": 3723.4, "registered_at": 1700000000.0,
                "client_id_hint": "4f2a…", "token": {"expires_at": 1700021600.0, "refresh_at": 1700010800.0,
                                                     "expires_in": 21000},
                "last_error": last, "upstream": {"requests": 3, "errors": 0, "throttled": 0},
                "store": {"saves": 1, "loads": 1}}

    def status_line(self) -> str:
        return "token valid, token valid for 21000 s"

    def health(self, app: str | None = None) -> dict:
        return {"live": True, "ready": self._token is not None}

    def subscribe(self, callback: Callable[[dict], None]) -> None:
        pass

    def unsubscribe(self, callback: Callable[[dict], None]) -> None:
        pass

    def request_refresh(self, app: str | None = None) -> None:
        self.calls.append("refresh")

    def force_register(self, app: str | None = None) -> None:
        self.calls.append("register")

    def reset_credentials(self, app: str | None = None) -> None:
        self.calls.append("reset")

    def config_view(self) -> dict:
        secret = FAKE_SECRET if self.leaky else "***"
        return {"adobe": {"base_url": "https://sp.auth.adobe.com/o", "client_secret": secret,
                          "software_statement": FAKE_TOKEN if self.leaky else "***"},
                "console": {"port": "/dev/ttyS0", "baudrate": 115200, "dumb": False},
                "socket": {"path": "/run/pass-agent/agent.sock", "allow_uids": [0, 1000]}}
