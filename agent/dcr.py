"""Adobe Pass Dynamic Client Registration: request builders and response parsers (sans-I/O).

Builds the Client Register and Client Token requests exactly as Adobe documents them and turns
every documented response variant (201 or 200; seconds or milliseconds; extra or missing
optional fields; OAuth error bodies; HTML or empty bodies on 429/5xx) into a plain result dict or
an UpstreamError with a stable code and a kind that says what to do (retry / operator /
reregister). `send()` is the only function that does I/O, through the urequests shim.

Portable: runs unmodified under MicroPython (no typing, no urllib, no email.utils).
Must never: put a client secret, statement or token into an error message, or decide policy
(when to retry or re-register is the lifecycle's job; this module only classifies).
"""

import json

from agent import USER_AGENT
from agent.errors import OPERATOR, REREGISTER, RETRY, UpstreamError

REGISTER_PATH = "/client/register"
TOKEN_PATH = "/client/token"

# OAuth error code -> (kind, hint). Codes not listed are treated as retryable server trouble.
OAUTH_ERRORS = {
    "invalid_request": (OPERATOR, "the request was malformed: check the agent version and [adobe] settings"),
    "invalid_redirect_uri": (OPERATOR, "[adobe] redirect_uri is not allowed for this registered application"),
    "invalid_software_statement": (OPERATOR, "the software statement is invalid or revoked: install a new one"),
    "unapproved_software_statement": (OPERATOR, "the software statement is not approved for this Adobe host: "
                                                "check [adobe] base_url and the statement"),
    "invalid_client": (REREGISTER, "the client credentials are unknown or revoked: the agent registers again"),
    "unauthorized_client": (OPERATOR, "this client may not use the client_credentials grant: check the "
                                      "registered application in the Adobe Pass TVE Dashboard"),
    "unsupported_grant_type": (OPERATOR, "the grant type is not supported by this Adobe host"),
}

_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


def form_encode(pairs):
    """application/x-www-form-urlencoded, UTF-8, for a list of (name, value) string pairs."""
    out = []
    for name, value in pairs:
        parts = []
        for s in (name, value):
            enc = []
            for b in s.encode("utf-8"):
                enc.append(chr(b) if b in _UNRESERVED else "%%%02X" % b)
            parts.append("".join(enc))
        out.append(parts[0] + "=" + parts[1])
    return "&".join(out)


def _url(base_url, path):
    return base_url.rstrip("/") + path


def register_request(base_url, software_statement, x_device_info, redirect_uri=None, user_agent=USER_AGENT):
    """The Client Register request as a plain dict: method, url, headers, body (bytes)."""
    body = {"software_statement": software_statement}
    if redirect_uri:
        body["redirect_uri"] = redirect_uri
    return {
        "method": "POST",
        "url": _url(base_url, REGISTER_PATH),
        "headers": {
            "Content-Type": "application/json;charset=utf-8",
            "Accept": "application/json;charset=utf-8",
            "User-Agent": user_agent,
            "X-Device-Info": x_device_info,
        },
        "body": json.dumps(body).encode("utf-8"),
    }


def token_request(base_url, client_id, client_secret, x_device_info, user_agent=USER_AGENT):
    """The Client Token request (form body, the documented way)."""
    form = form_encode([("client_id", client_id), ("client_secret", client_secret),
                        ("grant_type", "client_credentials")])
    return {
        "method": "POST",
        "url": _url(base_url, TOKEN_PATH),
        "headers": {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json;charset=utf-8",
            "User-Agent": user_agent,
            "X-Device-Info": x_device_info,
        },
        "body": form.encode("utf-8"),
    }


def to_seconds(value):
    """Adobe sends issue times in seconds in some samples and milliseconds in others."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        return None
    if value > 100000000000:  # later than year 5138 in seconds: it is milliseconds
        return value / 1000.0
    return float(value)


def _header(headers, name):
    if not headers:
        return None
    name = name.lower()
    for k in headers:
        if k.lower() == name:
            return headers[k]
    return None


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def _days_from_civil(y, m, d):
    # Howard Hinnant's algorithm: days since 1970-01-01 for a proleptic Gregorian date.
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_http_date(text):
    """An HTTP date to epoch seconds, or None. Accepts the three formats RFC 9110 obliges a
    recipient to read: IMF-fixdate ('Sun, 06 Nov 1994 08:49:37 GMT'), RFC 850
    ('Sunday, 06-Nov-94 08:49:37 GMT') and asctime ('Sun Nov  6 08:49:37 1994')."""
    try:
        parts = text.strip().split()
        if len(parts) == 6 and parts[5].upper() == "GMT":          # IMF-fixdate
            day, mon, year, clock = parts[1], parts[2], parts[3], parts[4]
        elif len(parts) == 4 and parts[3].upper() == "GMT":        # RFC 850
            dmy = parts[1].split("-")
            if len(dmy) != 3:
                return None
            day, mon, year, clock = dmy[0], dmy[1], dmy[2], parts[2]
            if len(year) == 2:  # RFC 9110: a two-digit year more than 50 years ahead is in the past
                year = str(2000 + int(year) if int(year) < 70 else 1900 + int(year))
        elif len(parts) == 5:                                       # asctime
            mon, day, clock, year = parts[1], parts[2], parts[3], parts[4]
        else:
            return None
        month = _MONTHS.index(mon.lower()) + 1
        day, year = int(day), int(year)
        hh, mm, ss = [int(x) for x in clock.split(":")]
        if not (1 <= day <= 31 and 0 <= hh < 24 and 0 <= mm < 60 and 0 <= ss <= 60 and 1900 <= year <= 9999):
            return None
        return float(_days_from_civil(year, month, day) * 86400 + hh * 3600 + mm * 60 + ss)
    except (ValueError, IndexError):
        return None


def parse_retry_after(value, wall_now):
    """Retry-After in seconds or as an HTTP date -> seconds to wait (>= 0), or None."""
    if value is None:
        return None
    value = str(value).strip()
    if _is_digits(value):
        return 86400.0 if len(value) > 5 else float(min(int(value), 86400))
    when = parse_http_date(value)
    if when is None:
        return None
    return max(0.0, min(when - wall_now, 86400.0))


def _is_digits(text):
    # ASCII digits only: str.isdigit() also accepts superscripts and other digits int() refuses.
    return bool(text) and all(c in "0123456789" for c in text)


def _json_body(body):
    if not body or not isinstance(body, (str, bytes, bytearray)):
        return None
    try:
        if isinstance(body, (bytes, bytearray)):
            body = bytes(body).decode("utf-8")
        return json.loads(body)
    except (ValueError, UnicodeError, RuntimeError):  # RuntimeError: nesting too deep (RecursionError)
        return None


def _seconds(value):
    """A lifetime in whole seconds (>= 1) from a JSON number or digit string; None when unusable."""
    if isinstance(value, str):
        value = value.strip()
        if not _is_digits(value) or len(value) > 9:
            return None
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value != value or value <= 0 or value > 1000000000:  # NaN, zero or negative, inf or absurd
        return None
    whole = int(value)
    return whole if whole == value else whole + 1  # round up: 0.5 s is still a (very short) lifetime


def error_from_response(endpoint, status, headers, body, wall_now=0.0):
    """Classify a non-2xx answer of the register or token endpoint."""
    retry_after = parse_retry_after(_header(headers, "Retry-After"), wall_now)
    where = "Adobe Pass %s endpoint" % endpoint
    if status == 429:
        return UpstreamError("%s answered 429 Too Many Requests (throttled)" % where, code="throttled",
                             kind=RETRY, retry_after=retry_after, status=status,
                             hint="the agent backs off; persistent 429s mean too many devices share one address")
    if status >= 500:
        return UpstreamError("%s answered %d (server error)" % (where, status), code="server_error", kind=RETRY,
                             retry_after=retry_after, status=status, hint="retrying later with backoff")
    data = _json_body(body)
    code = data.get("error") if isinstance(data, dict) else None
    if isinstance(code, str) and code in OAUTH_ERRORS:
        kind, hint = OAUTH_ERRORS[code]
        if code == "invalid_client" and endpoint != "token":
            kind = OPERATOR
        return UpstreamError("%s refused the request: %s (HTTP %d)" % (where, code, status), code=code, kind=kind,
                             retry_after=retry_after, status=status, hint=hint)
    if isinstance(code, str):
        return UpstreamError("%s answered HTTP %d with unknown error %r" % (where, status, code[:64]),
                             code="unknown_error", kind=RETRY, retry_after=retry_after, status=status,
                             hint="retrying later; report this if it persists")
    return UpstreamError("%s answered HTTP %d without an OAuth error body" % (where, status),
                         code="http_%d" % status, kind=RETRY, retry_after=retry_after, status=status,
                         hint="a proxy or captive portal may be in the way; retrying later")


def _malformed(endpoint, status, what):
    return UpstreamError("Adobe Pass %s endpoint answered HTTP %d with %s" % (endpoint, status, what),
                         code="malformed_response", kind=RETRY, status=status,
                         hint="retrying later; report this if it persists")


def _string_list(value):
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    if isinstance(value, str):
        return [value]
    return []


def parse_register(status, headers, body, wall_now=0.0):
    """Client Register answer -> credentials dict, or raise UpstreamError."""
    if not 200 <= status < 300:
        raise error_from_response("register", status, headers, body, wall_now)
    data = _json_body(body)
    if not isinstance(data, dict):
        raise _malformed("register", status, "a body that is not a JSON object")
    cid, secret = data.get("client_id"), data.get("client_secret")
    if not isinstance(cid, str) or not cid or not isinstance(secret, str) or not secret:
        raise _malformed("register", status, "no client_id/client_secret")
    return {
        "client_id": cid,
        "client_secret": secret,
        "client_id_issued_at": to_seconds(data.get("client_id_issued_at")),
        "redirect_uris": _string_list(data.get("redirect_uris")),
        "grant_types": _string_list(data.get("grant_types")) or ["client_credentials"],
        "scopes": _string_list(data.get("scopes")),
    }


DEFAULT_EXPIRES_IN = 3600  # used only when Adobe omits expires_in; the smallest lifetime Adobe ever showed


def parse_token(status, headers, body, wall_now=0.0):
    """Client Token answer -> token dict, or raise UpstreamError."""
    if not 200 <= status < 300:
        raise error_from_response("token", status, headers, body, wall_now)
    data = _json_body(body)
    if not isinstance(data, dict):
        raise _malformed("token", status, "a body that is not a JSON object")
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise _malformed("token", status, "no access_token")
    expires_in = _seconds(data.get("expires_in"))
    assumed = False
    if expires_in is None:
        expires_in, assumed = DEFAULT_EXPIRES_IN, True
    token_type = data.get("token_type")
    return {
        "access_token": token,
        "token_type": token_type if isinstance(token_type, str) and token_type else "bearer",
        "expires_in": int(expires_in),
        "expires_in_assumed": assumed,
        "created_at": to_seconds(data.get("created_at")),
        "id": data.get("id") if isinstance(data.get("id"), str) else None,
    }


# What a player's protected-API error means for the credentials (reference, section 5).
REREGISTER_CODES = ("invalid_access_token_service_provider", "invalid_access_token_client_application",
                    "invalid_client_id")
REFRESH_CODES = ("access_token_expired", "invalid_access_token_signature")


def _error_items(data):
    if isinstance(data, dict):
        items = data.get("errors")
        if isinstance(items, list):
            return [i for i in items if isinstance(i, dict)]
        return [data]
    if isinstance(data, list):
        return [i for i in data if isinstance(i, dict)]
    return []


def classify_protected_error(status, body, management=False):
    """A protected API's error (as reported by a player) -> ("refresh"|"reregister"|"ignore", reason)."""
    data = body if isinstance(body, (dict, list)) else _json_body(body)
    for item in _error_items(data):
        action, code = item.get("action"), item.get("code")
        if action == "application-registration" or code in REREGISTER_CODES:
            return "reregister", "Enhanced Error %s (action %s)" % (code, action)
    if status == 403 and management:
        return "reregister", "403 from a management API"
    for item in _error_items(data):
        if item.get("code") in REFRESH_CODES:
            return "refresh", "Enhanced Error %s" % item.get("code")
    if status == 401:
        return "refresh", "HTTP 401 from a protected API"
    return "ignore", "HTTP %s does not concern the agent's credentials" % status


def send(req, timeout=15.0, ca_file=None, wall_now=0.0):
    """Perform a request built above with the urequests shim -> (status, headers, body bytes).

    Network failures become UpstreamError(code network/timeout/malformed_response, kind retry).
    """
    import errno

    from agent import urequests

    host = req["url"].split("/")[2] if "://" in req["url"] else req["url"]
    r = None
    try:
        r = urequests.request(req["method"], req["url"], data=req["body"], headers=req["headers"],
                              timeout=timeout, ca_file=ca_file)
        return r.status_code, r.headers or {}, r.content
    except ValueError as e:
        raise UpstreamError("invalid HTTP answer from %s: %s" % (host, e), code="malformed_response",
                            kind=RETRY, hint="retrying later; a proxy may be in the way if this persists")
    except OSError as e:
        if e.__class__.__name__ == "TLSVerifyError":
            raise UpstreamError("the TLS certificate of %s was refused: %s" % (host, e), code="tls_verify",
                                kind=RETRY, hint="check [adobe] ca_file and the box's clock; retrying with backoff")
        timed_out = (getattr(e, "errno", None) == errno.ETIMEDOUT or e.__class__.__name__ == "TimeoutError"
                     or "timed out" in str(e).lower())
        raise UpstreamError("cannot reach %s: %s" % (host, e), code="timeout" if timed_out else "network",
                            kind=RETRY, hint="check the network; the agent retries with backoff")
    finally:
        if r is not None:
            r.close()
