"""Adobe's Enhanced Error Codes as the emulator answers them: the catalogue, one error object, and the
item-level error settings (`item_errors`) of decisions answers.

Pure data and functions, shared by `service` (credential errors) and `restv2` (the REST API v2 calls).
The catalogue holds the REST API v2 list of Adobe's "Enhanced Error Codes" page that the emulator can
produce, the 2023 credential codes the reference names (section 5), and three codes of the emulator's
own (unknown_resource, method_not_allowed, invalid_header_content_type: Adobe documents the statuses,
not a code). Must never: accept an item-error setting it cannot answer (every error names the resource
and what is allowed).
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

HELP_URL = ("https://experienceleague.adobe.com/en/docs/pass/authentication/integration-guide-programmers/"
            "standard-features/error-reporting/enhanced-error-codes")
# code -> (action, status, message)
EEC_CODES: dict[str, tuple[str, int, str]] = {
    "invalid_access_token_service_provider": (
        "application-registration", 401, "The access token is invalid due to invalid service provider."),
    "invalid_access_token_client_application": (
        "application-registration", 401, "The access token is invalid due to invalid client application."),
    "access_token_expired": ("application-registration", 401, "The access token has expired."),
    "invalid_access_token_signature": ("application-registration", 401, "The access token signature is invalid."),
    "invalid_client_id": ("application-registration", 401, "The client identifier is invalid."),
    "invalid_header_device_info": ("none", 400, "The device information header value is missing or invalid."),
    "invalid_device_info": ("none", 400, "The device information is missing or invalid."),
    "invalid_header_device_identifier": ("none", 400, "The device identifier header value is missing or invalid."),
    "invalid_parameter_resources": ("none", 400, "The resources parameter value is missing or invalid."),
    "invalid_parameter_mvpd": ("none", 400, "The mvpd parameter value is missing or invalid."),
    "invalid_parameter_code": ("none", 400, "The code parameter value is missing or invalid."),
    "invalid_parameter_redirect_url": ("none", 400, "The redirect URL parameter value is missing or invalid."),
    "invalid_authentication_session": (
        "none", 400, "The authentication session associated with this request is missing or invalid."),
    "authorization_denied_by_mvpd": (
        "none", 403, "The MVPD has returned a \"Deny\" decision when requesting authorization for the specified "
        "resource"),
    "preauthorization_denied_by_mvpd": (
        "none", 403, "The MVPD has returned a \"Deny\" decision when requesting pre-authorization for the "
        "specified resource."),
    "authorization_denied_by_parental_controls": (
        "none", 403, "The MVPD has returned a \"Deny\" decision due parental controls settings for the specified "
        "resource."),
    "too_many_resources": (
        "configuration", 403, "The authorization or preauthorization request failed because too many resources "
        "were queried."),
    "authenticated_profile_missing": (
        "authentication", 403, "The authenticated profile associated with this request is missing."),
    "authenticated_profile_expired": (
        "authentication", 403, "The authenticated profile associated with this request has expired."),
    "network_received_error": (
        "retry", 403, "There was a read error while retrieving the response from the associated partner service."),
    "network_connection_timeout": (
        "retry", 403, "There was a connection timeout with the associated partner service."),
    "maximum_execution_time_exceeded": (
        "retry", 403, "The request did not complete in the maximum allowed time."),
    "internal_server_error": ("none", 500, "The request failed due to an internal server error."),
    # The emulator's own codes.
    "unknown_resource": ("none", 404, "No such REST API v2 resource on the emulator; docs/EMULATOR.md lists "
                         "the paths it serves under /api/v2/{serviceProvider}/."),
    "method_not_allowed": ("none", 405, "This resource does not accept that method."),
    "invalid_header_content_type": ("none", 400, "The Content-Type header value is missing or invalid."),
}


def eec_object(code: str, message: str | None = None, details: str | None = None) -> dict[str, Any]:
    """One Enhanced Error Code object as Adobe documents it: action, status, code, message, details?,
    helpUrl, trace."""
    action, status, default = EEC_CODES[code]
    obj: dict[str, Any] = {"action": action, "status": status, "code": code, "message": message or default}
    if details:
        obj["details"] = details
    obj["helpUrl"] = HELP_URL
    obj["trace"] = str(uuid.uuid4())
    return obj


def check_item_errors(items: Any) -> None:
    """Validate the `item_errors` setting: {resource: spec}. A spec is a known code, a full error object
    ({"action", "status", "code", ...}), or either as an object with "count": N, which makes the error
    answer only the next N decisions for that resource (then it is authorized: a `retry` item that
    succeeds on the N+1st attempt)."""
    if not isinstance(items, dict) or not all(isinstance(k, str) and k for k in items):
        raise ValueError("setting 'item_errors' must be an object {resource: code or error object}")
    for resource, spec in items.items():
        if isinstance(spec, str) and spec in EEC_CODES:
            continue
        if isinstance(spec, dict) and isinstance(spec.get("code"), str):
            count = spec.get("count", 1)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError("setting 'item_errors' for %r: 'count' must be a whole number >= 1 (the failing "
                                 "answers before the resource is authorized); got %r" % (resource, count))
            full = isinstance(spec.get("action"), str) and isinstance(spec.get("status"), int) \
                and not isinstance(spec.get("status"), bool)
            if full or spec["code"] in EEC_CODES:
                continue
        raise ValueError("setting 'item_errors' for %r must be one of %s, an object with action, status and code, "
                         "or either with \"count\": N; got %r" % (resource, ", ".join(sorted(EEC_CODES)), spec))


def take_item_error(items: dict[str, Any], resource: str) -> dict[str, Any] | None:
    """The error object for one resource of a decisions answer, or None when it is authorized. Counts a
    counted spec down and drops it when spent (so `config()` shows what is left)."""
    spec = items.get(resource)
    if spec is None:
        return None
    if isinstance(spec, str):
        return eec_object(spec)
    err = {k: copy.deepcopy(v) for k, v in spec.items() if k != "count"}
    if not (isinstance(err.get("action"), str) and isinstance(err.get("status"), int)):
        err = dict(eec_object(err["code"]), **{k: v for k, v in err.items() if k != "code"})
    if "count" in spec:
        spec["count"] -= 1
        if spec["count"] <= 0:
            del items[resource]
    return err
