"""The service facade: the one definition of what front ends may call on the agent's service.

The socket server (agent/server.py, agent/rpc.py), the consoles (agent/console.py,
agent/serialconsole.py) and the demo use only these members of `agent.service.Service`; every
stand-in for it (tests/fakes.py, tests/console_fakes.py, tools/fuzz/fakes.py, tools/bench_socket.py)
implements exactly this. tests/test_facade.py compares the signature of every member (parameter
names, kinds, defaults and annotations) of the real Service and of each stand-in with this
Protocol, so a stand-in that drifts from the real thing fails a test instead of passing tests the
real Service would fail. `runtime_checkable` is deliberately not used: isinstance() checks only that
the names exist, not the signatures.

Every method returns at once and never waits on the network, except `wait_token` (for threads
that may block; the daemon's loop never calls it). Several registered applications (issue 16):
the per-application methods take `app`, an application's name; None means the only application
and is an AgentError `app_required` when there are several (`unknown_app` for a name that is not
configured). Front ends decide which applications a peer may name before asking. The owner-side operations (start, stop, reload,
add_listener) are not part of the facade: only agent/daemon.py, which builds the Service, calls them.

Must never: import anything beyond the standard library and agent.errors/agent.log (front ends
import it on the hot path), or describe a method the real Service does not have.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from agent.errors import AgentError
from agent.log import LogBuffer


class ServiceFacade(Protocol):
    """What a front end may use. Dicts are the JSON-shaped answers documented in docs/PROTOCOL.md."""

    version: str  # the agent's version, for status displays
    logs: LogBuffer  # the redacted log ring buffer (console `log`, live log follow)

    def apps(self) -> list[str]:
        """The configured applications' names, in the configuration's order (["default"] for a
        single-application file)."""

    def token(self, min_ttl: float = 0, app: str | None = None) -> dict | None:
        """The held token with more than `min_ttl` s left, or None (a fetch is then scheduled); raises
        AgentError(min_ttl_unsatisfiable) when no token Adobe issues can satisfy min_ttl."""

    def wait_token(self, timeout: float, min_ttl: float = 0, app: str | None = None) -> dict | None:
        """Like token(), blocking up to `timeout` s (only threads that may block)."""

    def not_ready_error(self, app: str | None = None) -> AgentError:
        """Why token() gave nothing: needs an operator, backing off, fetching... with retry_after."""

    def identity(self, app: str | None = None) -> dict:
        """The box's identity: fields, x_device_info (with the application's applicationId),
        ap_device_identifier, device_id, sources, warnings. None with several applications: the box's own."""

    def report_error(self, status: int, body: Any = None, access_token: str | None = None,
                     management: bool = False, uid: int | None = None, app: str | None = None) -> dict:
        """A player's protected-API error; `uid` is the reporting peer's (None: in-process caller)."""

    def status(self, app: str | None = None) -> dict:
        """A secret-free status (agent.status): "apps" lists every application; the top level also has
        the fields of `app` (None: the only application, if there is only one)."""

    def status_line(self) -> str:
        """One line for systemd STATUS= and the console banner."""

    def health(self, app: str | None = None) -> dict:
        """{"live": bool, "ready": bool} (agent.health); ready for `app`, or (None) for every application."""

    def subscribe(self, callback: Callable[[dict], None]) -> None:
        """Call `callback(event)` from the worker thread on every token change (token.changed; its
        params carry "app")."""

    def unsubscribe(self, callback: Callable[[dict], None]) -> None:
        """Stop calling `callback`; unknown callbacks are ignored."""

    def request_refresh(self, app: str | None = None) -> None:
        """An operator asks for a new token now (also cuts an operator wait); None: every application."""

    def force_register(self, app: str | None = None) -> None:
        """An operator asks for a new registration of `app`."""

    def reset_credentials(self, app: str | None = None) -> None:
        """An operator wipes `app`'s stored credentials; the agent registers it afresh."""

    def config_view(self) -> dict:
        """The effective configuration for display, secrets masked (agent.config.view)."""


class GatewayFacade(ServiceFacade, Protocol):
    """What the REST API v2 gateway (agent/gateway, issue 17) needs besides the facade: the governor's try
    mode, a 429 that pauses every application, and a wait for a refreshed token. Only the real Service and
    the gateway's tests implement it (tests/test_gateway.py compares the signatures)."""

    def api_acquire(self) -> dict:
        """The box-wide governor's try mode: {"granted", "retry_after" (s), "ticket"}; nothing queues."""

    def api_throttled(self, ticket: int | None, retry_after: float | None = None) -> float:
        """Adobe answered 429 to the gateway request `ticket`: pause every application; the pause's seconds."""

    def wait_new_token(self, old: str, timeout: float, app: str | None = None) -> dict | None:
        """Block up to `timeout` s for a valid token other than `old` (threads that may block only)."""


# The facade's members, in the order above: what every implementation must have (tests, docs).
ATTRIBUTES: tuple[str, ...] = tuple(ServiceFacade.__annotations__)
METHODS: tuple[str, ...] = tuple(n for n, v in vars(ServiceFacade).items() if not n.startswith("_") and callable(v))
