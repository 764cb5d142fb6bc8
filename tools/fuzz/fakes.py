"""A stand-in for agent.service.Service for the rpc and console harnesses.

It implements the service facade (agent/facade.py, checked by tests/test_facade.py); a fake because
the lifecycle is not what these harnesses exercise. The token and secret are distinctive so a harness can check that no answer carries them
where it should not. Must never: block, sleep or do I/O.
"""

from __future__ import annotations

from typing import Any, Callable

from agent import dcr
from agent.errors import AgentError, NotReady
from agent.log import LogBuffer

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJmdXp6In0.ZnV6ei1zaWduYXR1cmUtbmV2ZXItbGVhaw"
SECRET = "fuzz-client-secret-7f3e9a1c"


class FakeService:
    version = "0.1.0"

    def __init__(self, has_token: bool = True) -> None:
        self.has_token = has_token
        self.logs = LogBuffer(50)
        for i in range(50):
            self.logs.append("log line %d" % i)

    def apps(self) -> list[str]:
        return ["default"]

    def token(self, min_ttl: float = 0, app: str | None = None) -> dict | None:
        if not self.has_token or min_ttl > 21000:
            return None
        return {"access_token": TOKEN, "token_type": "bearer", "expires_at": 1700021600.0, "expires_in": 21000,
                "refresh_at": 1700010800.0}

    def wait_token(self, timeout: float, min_ttl: float = 0, app: str | None = None) -> dict | None:
        return self.token(min_ttl)  # never blocks: a harness must not sleep

    def not_ready_error(self, app: str | None = None) -> AgentError:
        return NotReady("no access token yet: registration is in progress", retry_after=2.0, hint="wait")

    def identity(self, app: str | None = None) -> dict:
        return {"fields": {"model": "FuzzBox", "osName": "Linux"}, "x_device_info": "eyJtb2RlbCI6IkZ1enoifQ==",
                "ap_device_identifier": "fingerprint ZnV6eg==", "device_id": "fuzz", "sources": {}, "warnings": []}

    def report_error(self, status: int, body: Any = None, access_token: str | None = None,
                     management: bool = False, uid: int | None = None, app: str | None = None) -> dict:
        decision, reason = dcr.classify_protected_error(status, body, management=management)  # the real one
        return {"decision": decision, "reason": reason}

    def status(self, app: str | None = None) -> dict:
        return {"state": "token_valid", "version": self.version, "uptime": 1.0, "token": None, "last_error": None,
                "upstream": {"requests": 1}, "store": {}}

    def status_line(self) -> str:
        return "holding a valid token"

    def health(self, app: str | None = None) -> dict:
        return {"live": True, "ready": self.has_token}

    def subscribe(self, callback: Callable[[dict], None]) -> None:
        pass

    def unsubscribe(self, callback: Callable[[dict], None]) -> None:
        pass

    def request_refresh(self, app: str | None = None) -> None:
        pass

    def force_register(self, app: str | None = None) -> None:
        pass

    def reset_credentials(self, app: str | None = None) -> None:
        pass

    def config_view(self) -> dict:
        return {"adobe": {"client_secret": SECRET}, "socket": {"path": "/run/pass-agent/agent.sock"}}
