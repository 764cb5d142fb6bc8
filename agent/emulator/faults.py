"""Fault injection rules: what the next N requests of an endpoint suffer instead of a normal answer.

A fault is a plain dict of knobs (see KNOBS). `normalize` validates one, `parse_spec` reads the
command-line form, `FaultQueue` hands the first matching fault to each request and counts it down.
Must never: let an invalid knob through silently (every error names the knob and what is allowed).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

ENDPOINTS = ("register", "token", "protected", "any")
# knob -> type. count -1 means "every request until the faults are cleared".
KNOBS: dict[str, type] = {
    "endpoint": str, "count": int, "status": int, "body": str, "content_type": str, "retry_after": str,
    "latency": float, "hang": bool, "reset": bool, "malformed_json": bool, "truncate": bool,
    "chunked": bool, "clock_skew": float, "no_body": bool,
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(knob: str, value: Any) -> Any:
    kind = KNOBS[knob]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError("fault knob %r must be true or false, got %r" % (knob, value))
    if kind is int:
        if isinstance(value, bool):
            raise ValueError("fault knob %r must be an integer, got %r" % (knob, value))
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError("fault knob %r must be an integer, got %r" % (knob, value))
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("fault knob %r must be a number of seconds, got %r" % (knob, value))
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError("fault knob %r must be a number of seconds, got %r" % (knob, value))
    if not isinstance(value, str):
        raise ValueError("fault knob %r must be a string, got %r" % (knob, value))
    return value


def normalize(knobs: dict[str, Any]) -> dict[str, Any]:
    """Validate a fault description and fill in defaults (endpoint any, count 1)."""
    if not isinstance(knobs, dict):
        raise ValueError("a fault must be a JSON object of knobs (%s)" % ", ".join(KNOBS))
    fault: dict[str, Any] = {"endpoint": "any", "count": 1}
    for knob, value in knobs.items():
        if knob not in KNOBS:
            raise ValueError("unknown fault knob %r; known knobs: %s" % (knob, ", ".join(KNOBS)))
        fault[knob] = _coerce(knob, value)
    if fault["endpoint"] not in ENDPOINTS:
        raise ValueError("fault endpoint %r is not one of %s" % (fault["endpoint"], ", ".join(ENDPOINTS)))
    if fault["count"] == 0 or fault["count"] < -1:
        raise ValueError("fault count must be >= 1, or -1 for every request until cleared (got %d)" % fault["count"])
    if "status" in fault and not 100 <= fault["status"] <= 599:
        raise ValueError("fault status must be an HTTP status 100..599 (got %d)" % fault["status"])
    if fault.get("no_body") and "status" not in fault:
        raise ValueError("fault knob 'no_body' needs a 'status' (e.g. {\"status\": 401, \"no_body\": true})")
    if fault.get("no_body") and "body" in fault:
        raise ValueError("fault knobs 'no_body' and 'body' contradict each other; give one")
    if fault.get("latency", 0) < 0:
        raise ValueError("fault latency must be >= 0 seconds (got %r)" % fault["latency"])
    effects = [k for k in KNOBS if k not in ("endpoint", "count") and k in fault]
    if not effects:
        raise ValueError("a fault needs at least one effect knob: %s" % ", ".join(list(KNOBS)[2:]))
    return fault


def parse_spec(spec: str) -> dict[str, Any]:
    """Read `ENDPOINT[:knob=value,...]` (a bare knob means true) or a JSON object."""
    spec = spec.strip()
    if spec.startswith("{"):
        try:
            return normalize(json.loads(spec))
        except json.JSONDecodeError as e:
            raise ValueError("fault spec is not valid JSON: %s" % e)
    endpoint, _, rest = spec.partition(":")
    knobs: dict[str, Any] = {"endpoint": endpoint.strip()}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        knob, eq, value = item.partition("=")
        knobs[knob.strip()] = value.strip() if eq else True
    return normalize(knobs)


class FaultQueue:
    """Faults in the order they were added; each request takes the first one that matches."""

    def __init__(self) -> None:
        self._faults: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def add(self, knobs: dict[str, Any]) -> dict[str, Any]:
        fault = normalize(knobs)
        fault["id"] = next(self._ids)
        self._faults.append(fault)
        return dict(fault)

    def take(self, endpoint: str) -> dict[str, Any] | None:
        for fault in self._faults:
            if fault["endpoint"] in ("any", endpoint):
                if fault["count"] > 0:
                    fault["count"] -= 1
                    if fault["count"] == 0:
                        self._faults.remove(fault)
                return dict(fault)
        return None

    def clear(self) -> int:
        n = len(self._faults)
        self._faults.clear()
        return n

    def list(self) -> list[dict[str, Any]]:
        return [dict(f) for f in self._faults]
