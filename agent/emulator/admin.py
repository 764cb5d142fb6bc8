"""The admin API under /_emulator/: stats, faults, statements, revocation, clients, runtime config.

Maps plain request dicts onto `Service` methods and back to plain response dicts; not throttled
and not in the request log, so tests can watch the emulator without disturbing what they measure.
Must never: return a full client secret or access token (statements are returned on purpose: minting
them is what the endpoint is for).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from .faults import normalize
from .service import Service

ROUTES = [
    "GET    /_emulator/stats", "DELETE /_emulator/stats  (reset)",
    "GET    /_emulator/requests[?endpoint=register|token|protected]  (request log, secrets masked)",
    "GET    /_emulator/faults", "POST   /_emulator/faults  {knobs} or [{knobs}, ...]", "DELETE /_emulator/faults",
    "POST   /_emulator/statements  {app_id?, approved?, redirect_uris?}",
    "POST   /_emulator/revoke  {client_id} | {statement, revoke_clients?} | {app_id, revoke_clients?}",
    "GET    /_emulator/clients", "POST   /_emulator/clients  {client_id, allowed}",
    "GET    /_emulator/config", "POST   /_emulator/config  {setting: value, ...}",
    "GET    /_emulator/ca.pem",
]


def _json(status: int, obj: Any) -> dict[str, Any]:
    return {"status": status, "headers": [("Content-Type", "application/json;charset=utf-8")],
            "body": json.dumps(obj, indent=1).encode(), "endpoint": "admin", "fault": None, "code": None,
            "reason": None, "client_id": None}


def _bad(message: str, status: int = 400) -> dict[str, Any]:
    code = "invalid_request" if status == 400 else "not_found"
    resp = _json(status, {"error": code, "message": message, "routes": ROUTES})
    resp["code"], resp["reason"] = code, message
    return resp


def _body(req: dict[str, Any]) -> Any:
    if not req["body"]:
        return {}
    try:
        return json.loads(req["body"].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError("the admin request body must be JSON (%s)" % e)


def handle(service: Service, req: dict[str, Any]) -> dict[str, Any]:
    route = (req["method"], req["path"].rstrip("/"))
    try:
        body = _body(req) if req["method"] in ("POST", "PUT") else {}
        if route in (("GET", "/_emulator"), ("GET", "/_emulator/routes")):
            return _json(200, {"routes": ROUTES})
        if route == ("GET", "/_emulator/stats"):
            return _json(200, service.stats())
        if route == ("GET", "/_emulator/requests"):
            query = dict(parse_qsl(req.get("query") or ""))
            endpoint = query.get("endpoint")
            if endpoint not in (None, "register", "token", "protected"):
                raise ValueError("endpoint must be register, token or protected (got %r)" % endpoint)
            return _json(200, {"requests": service.requests(endpoint)})
        if route in (("DELETE", "/_emulator/stats"), ("POST", "/_emulator/stats/reset")):
            service.reset_stats()
            return _json(200, {"reset": True})
        if route == ("GET", "/_emulator/faults"):
            return _json(200, {"faults": service.faults.list()})
        if route == ("POST", "/_emulator/faults"):
            items = body if isinstance(body, list) else [body]
            for item in items:  # validate all before adding any
                normalize(item)
            return _json(201, {"faults": [service.faults.add(item) for item in items]})
        if route == ("DELETE", "/_emulator/faults"):
            return _json(200, {"cleared": service.faults.clear()})
        if route == ("POST", "/_emulator/statements"):
            if not isinstance(body, dict):
                raise ValueError("send a JSON object: {\"app_id\": ..., \"approved\": true}")
            approved = body.get("approved", True)
            if not isinstance(approved, bool):
                raise ValueError("'approved' must be true or false")
            statement = service.mint_statement(body.get("app_id"), req["now"], approved, body.get("redirect_uris"))
            return _json(201, {"software_statement": statement,
                               "app_id": body.get("app_id") or service.config()["default_app_id"],
                               "approved": approved})
        if route == ("POST", "/_emulator/revoke"):
            if not isinstance(body, dict):
                raise ValueError("send a JSON object with client_id, statement or app_id")
            cascade = body.get("revoke_clients", True)
            if not isinstance(cascade, bool):
                raise ValueError("'revoke_clients' must be true or false")
            if "client_id" in body:
                service.revoke_client(body["client_id"])
                return _json(200, {"revoked": {"clients": 1, "statements": 0}})
            target = body.get("statement") or body.get("app_id")
            if not target:
                raise ValueError("send {\"client_id\": ...}, {\"statement\": ...} or {\"app_id\": ...}")
            return _json(200, {"revoked": service.revoke_statement(target, clients=cascade)})
        if route == ("GET", "/_emulator/clients"):
            return _json(200, {"clients": service.list_clients()})
        if route == ("POST", "/_emulator/clients"):
            if not isinstance(body, dict) or not isinstance(body.get("allowed"), bool):
                raise ValueError("send {\"client_id\": ..., \"allowed\": true|false}")
            service.set_client_allowed(body.get("client_id"), body["allowed"])
            return _json(200, {"client_id": body["client_id"], "allowed": body["allowed"]})
        if route == ("GET", "/_emulator/config"):
            return _json(200, service.config())
        if route == ("POST", "/_emulator/config"):
            if not isinstance(body, dict):
                raise ValueError("send a JSON object of settings")
            return _json(200, service.configure(**body))
        if route == ("GET", "/_emulator/ca.pem") and service.ca_pem:
            return {"status": 200, "headers": [("Content-Type", "application/x-pem-file")], "body": service.ca_pem,
                    "endpoint": "admin", "fault": None, "code": None, "reason": None, "client_id": None}
    except ValueError as e:
        return _bad(str(e))
    return _bad("no admin route %s %s" % route, status=404)
