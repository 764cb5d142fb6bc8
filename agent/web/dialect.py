"""Thunder's JSON-RPC dialect over the socket API's methods (sans-I/O).

Job: one WebSocket text message in, at most one answer out (or a parked wait for the shell), in the
dialect web apps on RDK speak to Thunder plugins:

  method     `PassAgent.1.<name>` (callsign, interface version, method; `PassAgent.<name>` means
             version 1). <name> maps to one socket API method, and agent/rpc.py's Dispatcher answers
             it: one implementation of every method, so the answers (and their errors) are the ones
             docs/PROTOCOL.md documents.
  events     `PassAgent.1.register` with params {"event": "tokenchanged", "id": ID} (what ThunderJS
             sends, ID being e.g. "client.PassAgent.events"); each token change then arrives as
             {"jsonrpc": "2.0", "method": "<ID>.tokenchanged", "params": {...token.changed's params}}.
             `unregister` with the same params stops it. Thunder's event names carry no dot (ThunderJS
             splits the listener id at the last dot), so the socket's `token.changed` is `tokenchanged`.
             register/unregister answer 0, as Thunder does; both are idempotent.

Must never: answer a method the socket API does not have, keep more than MAX_REGISTRATIONS event ids
per connection, echo a request's params (they may hold a token) in an error, or do I/O.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from agent import rpc
from agent.errors import FATAL

CALLSIGN = "PassAgent"
VERSION = "1"
# Thunder method name -> the socket API method that answers it.
METHODS = {
    "token": "token.get",
    "headers": "headers.get",
    "deviceinfo": "device.info",
    "status": "agent.status",
    "health": "agent.health",
    "reporterror": "error.report",
}
EVENTS = ("tokenchanged",)  # the socket API's token.changed
MAX_REGISTRATIONS = 8
MAX_ID = 128


class Session:
    """What one WebSocket connection holds in the dialect: its application and its event ids."""

    __slots__ = ("app", "ids")

    def __init__(self, app: str) -> None:
        self.app = app            # the application its token maps to (issue 16 routes methods by it)
        self.ids: list = []       # registered ids for "tokenchanged", in registration order


def _error(req_id: Any, code: int, message: str, name: str) -> bytes:
    return rpc.error_line(req_id, code, message, rpc.error_data(name, FATAL))[:-1]


class Dialect:
    """Translates Thunder-style requests into Dispatcher calls. Loop-thread only (the Dispatcher's caches)."""

    def __init__(self, dispatcher: rpc.Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._available = ", ".join("%s.%s.%s" % (CALLSIGN, VERSION, m) for m in list(METHODS) + ["register",
                                                                                                  "unregister"])

    def handle(self, text: str, session: Session) -> Optional[bytes | rpc.Action]:
        """One message in; its answer (JSON text as UTF-8 bytes, no newline), a park Action, or None."""
        line = text.encode("utf-8")
        try:
            req = rpc.parse(line)
        except (ValueError, RecursionError):
            req = None
        if type(req) is not dict or type(req.get("method")) is not str or req.get("jsonrpc") != "2.0":
            return self._strip(self.dispatcher.handle_line(line, None, (session.app,)))  # its envelope errors
        req_id = req.get("id")
        is_call = "id" in req
        designator = req["method"]
        prefix, _, name = designator.rpartition(".")
        callsign, _, version = prefix.rpartition(".")
        if not version.isdigit():
            callsign, version = prefix, VERSION
        if callsign != CALLSIGN or version != VERSION:
            what = ("version %s of %s is not served (use %s.%s.<method>)" % (version[:8], CALLSIGN, CALLSIGN, VERSION)
                    if callsign == CALLSIGN else "unknown callsign %r: this endpoint serves %s only"
                    % (callsign[:64], CALLSIGN))
            return _error(req_id, rpc.METHOD_NOT_FOUND, "%s; available: %s" % (what, self._available),
                          "method_not_found") if is_call else None
        if name in ("register", "unregister"):
            out = self._registration(name, req.get("params"), session)
            if not is_call:
                return None
            if isinstance(out, str):
                return _error(req_id, rpc.INVALID_PARAMS, out, "invalid_params")
            return rpc.Dispatcher.result_line(req_id, 0)[:-1]
        method = METHODS.get(name)
        if method is None:
            return _error(req_id, rpc.METHOD_NOT_FOUND, "unknown method %r; available: %s"
                          % (designator[:64], self._available), "method_not_found") if is_call else None
        # The same request under the socket API's name. When the designator appears once in the text
        # (then it is the method's value), a replace is enough; otherwise the request is re-encoded.
        # (Without a backslash in the text, no string is escaped, so the method's value is there verbatim.)
        quoted = '"%s"' % designator
        if "\\" not in text and text.count(quoted) == 1:
            line = text.replace(quoted, '"%s"' % method).encode("utf-8")
        else:
            req["method"] = method
            line = rpc.encode(req)[:-1]
        # The connection may use its token's application only: the Dispatcher's peer applications.
        return self._strip(self.dispatcher.handle_line(line, None, (session.app,)))

    @staticmethod
    def _strip(ans: Any) -> Any:
        return ans[:-1] if type(ans) is bytes else ans

    def _registration(self, name: str, params: Any, session: Session) -> Optional[str]:
        """register/unregister; None when done, else what is wrong with the params."""
        if not isinstance(params, dict) or set(params) - {"event", "id"}:
            return "%s.%s.%s: params must be {\"event\": \"tokenchanged\", \"id\": \"<your id>\"}" % (
                CALLSIGN, VERSION, name)
        event, ident = params.get("event"), params.get("id")
        if event not in EVENTS:
            return "%s.%s.%s: unknown event; events: %s" % (CALLSIGN, VERSION, name, ", ".join(EVENTS))
        if not isinstance(ident, str) or not ident or len(ident) > MAX_ID:
            return "%s.%s.%s: param 'id' must be a non-empty string of at most %d characters (the prefix of the " \
                   "notification's method)" % (CALLSIGN, VERSION, name, MAX_ID)
        if name == "unregister":
            if ident in session.ids:
                session.ids.remove(ident)
            return None
        if ident not in session.ids:
            if len(session.ids) >= MAX_REGISTRATIONS:
                return "%s.%s.register: this connection already holds %d registrations (the limit)" % (
                    CALLSIGN, VERSION, MAX_REGISTRATIONS)
            session.ids.append(ident)
        return None

    def resume(self, act: rpc.Action, final: bool) -> Optional[bytes]:
        """A parked token/headers request again (see rpc.Dispatcher.resume), as a message."""
        return self._strip(self.dispatcher.resume(act, final))

    @staticmethod
    def event_params(event: dict) -> dict:
        """The params of a token change, exactly what the socket's token.changed carries."""
        return json.loads(rpc.token_changed(event))["params"]

    @staticmethod
    def notifications(params: dict, session: Session) -> list:
        """The event messages for one connection: one per registered id."""
        return [rpc.notification(ident + "." + EVENTS[0], params)[:-1] for ident in session.ids]
