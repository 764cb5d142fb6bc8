"""Adobe Pass Dynamic Client Registration: request builders and response parsers (sans-I/O).

Builds the Client Register and Client Token requests exactly as Adobe documents them and turns
every documented response variant (201 or 200; seconds or milliseconds; extra or missing
optional fields; OAuth error bodies; HTML or empty bodies on 429/5xx) into a plain result dict or
an UpstreamError with a stable code and a kind that says what to do (retry / operator /
reregister). `send()` is the only function that does I/O, through the urequests shim.

How answers are read (reference sections 1, 2, 5, 6; the table is in docs/PROTOCOL.md):
- Documented: a 2xx with the documented fields, a 400/401 with a listed OAuth code, a 429, a 5xx.
- Undocumented (`UpstreamError.undocumented` is True, kind retry): a 3xx (never followed: the
  request carries the software statement or the client secret), any other answer without a listed
  OAuth code (a 401/403 from a proxy or firewall, a 404 from a wrong base_url, an unknown code), a
  2xx without usable credentials or token. One is retried like a 5xx; the lifecycle turns a streak
  of them into "needs operator".
- What is served is validated: the access token must be an RFC 6750 b64token of at most 8 KiB
  (it becomes an HTTP header in every player), client_id/client_secret visible ASCII of at most
  1 KiB, expires_in 1 s .. 30 days. A missing expires_in (or null) is the only tolerated gap: the
  documented minimum, 3600 s, is assumed and flagged (`expires_in_assumed`).
- Adobe's strings are data: anything taken from an answer or a player's report goes through
  `printable()` before it reaches a message, a hint or a reason: bounded, printable ASCII with
  everything else escaped, and secret-shaped runs (24+ token characters) masked. Known secrets
  are redacted again where they are logged (agent/log.py); this module stays portable.
- Retry-After in seconds, or an HTTP date counted from the answer's `Date` header (the server's
  clock; the local wall clock only when there is none), clamped to 0..MAX_RETRY_AFTER (1 day).

Portable: runs unmodified under MicroPython (no typing, no urllib, no email.utils, no re).
Must never: put a client secret, statement or token into an error message, echo an upstream
string unsanitised, follow a redirect, or decide policy (when to retry or re-register is the
lifecycle's job; this module only classifies).
"""

import json

from agent import USER_AGENT
from agent.errors import OPERATOR, REREGISTER, RETRY, UpstreamError

REGISTER_PATH = "/client/register"
TOKEN_PATH = "/client/token"

# OAuth error code -> (kind, hint). Codes not listed are undocumented answers (retried, see above).
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


# --------------------------------------------------------------------------------------------
# Limits and the sanitiser: Adobe's strings are data.

MAX_RETRY_AFTER = 86400.0        # a Retry-After is clamped to one day (the lifecycle caps it further)
MAX_EXPIRES_IN = 30 * 86400      # a longer token lifetime is absurd: malformed answer
DEFAULT_EXPIRES_IN = 3600        # assumed only when expires_in is missing; the smallest Adobe ever showed
MAX_TOKEN_LENGTH = 8192          # an access token longer than this is not served
MAX_CREDENTIAL_LENGTH = 1024     # client_id / client_secret (UUID-like in practice)
EXCERPT_LENGTH = 100             # longest excerpt of an answer in a message
MASK_RUN = 24                    # a run of token characters this long may be a secret: masked
MAX_ITEMS = 50                   # Enhanced Error objects read from one protected-API answer
MAX_DEPTH = 6                    # how deep into a protected-API answer errors are looked for
_MAX_NODES = 2000                # JSON nodes visited looking for them

_ALPHA = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_B64TOKEN = _ALPHA + "0123456789-._~+/"               # RFC 6750 section 2.1, before the "=" padding
_RUN_CHARS = _ALPHA + "0123456789-._~+="               # secret-shaped runs ("/" splits URLs into parts)
_PLAIN_RUN = "abcdefghijklmnopqrstuvwxyz._-"           # host names and snake_case codes: never masked
_WHITESPACE = " \t\r\n\x0b\x0c"


def _escape(ch):
    o = ord(ch)
    if ch == "\\":
        return "\\\\"
    if 0x20 <= o < 0x7F:
        return ch
    if o < 0x100:
        return "\\x%02x" % o
    if o < 0x10000:
        return "\\u%04x" % o
    return "\\U%08x" % o


def _flush_run(run, mask, out):
    if mask and len(run) >= MASK_RUN:
        for c in run:
            if c not in _PLAIN_RUN:
                out.append("<%d chars masked>" % len(run))
                return
    out.append(run)


def printable(text, limit=EXCERPT_LENGTH, mask=True):
    """`text` (str or bytes, from upstream or a peer) as at most `limit` printable ASCII characters.

    Whitespace runs become one space; other non-printable or non-ASCII characters are escaped
    (\\xNN, \\uNNNN; bytes byte by byte); a backslash is doubled; with `mask`, runs of MASK_RUN or
    more token characters that are not plain lowercase names are replaced by "<N chars masked>";
    a cut text ends in "...".
    """
    if text is None:
        return ""
    if isinstance(text, (bytes, bytearray)):
        window = "".join([chr(b) for b in bytes(text[:limit * 4])])
        longer = len(text) > limit * 4
    else:
        text = str(text)
        window = text[:limit * 4]
        longer = len(text) > limit * 4
    out = []
    run = ""
    space = False
    for ch in window:
        if ch in _WHITESPACE:
            if run:
                _flush_run(run, mask, out)
                run = ""
            space = True
            continue
        if space:
            if out:
                out.append(" ")
            space = False
        if ch in _RUN_CHARS:
            run += ch
            continue
        if run:
            _flush_run(run, mask, out)
            run = ""
        out.append(_escape(ch))
    # A short run cut by the window may be the start of a secret: dropped. A long one is masked
    # (or kept when it is a plain name) like any other.
    if run and (not longer or len(run) >= MASK_RUN):
        _flush_run(run, mask, out)
    result = "".join(out)
    if longer or len(result) > limit:
        result = result[:max(0, limit - 3)] + "..."
    return result


def _json_body(body):
    if not body or not isinstance(body, (str, bytes, bytearray)):
        return None
    try:
        if isinstance(body, (bytes, bytearray)):
            body = bytes(body).decode("utf-8")
        return json.loads(body)
    except (ValueError, UnicodeError, RuntimeError):  # RuntimeError: nesting too deep (RecursionError)
        return None


def _describe(value):
    """A short, safe description of a JSON value for a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 24 else "a %d-character number" % len(text)
    if isinstance(value, str):
        return '"%s"' % printable(value, 40)
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON array"
    return "a %s" % type(value).__name__


def excerpt(body):
    """What an answer's body was, for a message: the keys of a JSON object (never its values, which
    may hold credentials), the kind of another JSON value, or a sanitised start of anything else."""
    if body is None or (isinstance(body, (str, bytes, bytearray)) and len(body) == 0):
        return "an empty body"
    data = _json_body(body) if isinstance(body, (str, bytes, bytearray)) else body
    if isinstance(data, dict):
        keys = [k for k in data if isinstance(k, str)]
        if not keys:
            return "an empty JSON object"
        shown = printable(", ".join(keys[:8]), 80) + (", ..." if len(keys) > 8 else "")
        return "a JSON object with keys " + shown
    if isinstance(data, (list, bool, int, float)):
        return "JSON " + _describe(data)
    if not isinstance(body, (str, bytes, bytearray)):
        return _describe(body)
    return "%d bytes: %s" % (len(body), printable(body, EXCERPT_LENGTH))


def is_bearer_token(value):
    """True for an RFC 6750 b64token of at most MAX_TOKEN_LENGTH characters: one or more of
    ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/", then any number of "=". Nothing else may be
    served: the token becomes an `Authorization` header line in every player."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TOKEN_LENGTH:
        return False
    end = len(value)
    while end > 0 and value[end - 1] == "=":
        end -= 1
    if end == 0:
        return False
    for ch in value[:end]:
        if ch not in _B64TOKEN:
            return False
    return True


def _visible(value, limit):
    """1..limit characters, each visible ASCII (no space, no control, nothing non-ASCII)."""
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        return False
    for ch in value:
        if not "!" <= ch <= "~":
            return False
    return True


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


def parse_retry_after(value, wall_now, server_date=None):
    """Retry-After in seconds or as an HTTP date -> seconds to wait (0..MAX_RETRY_AFTER), or None.

    A date counts from `server_date` (the answer's `Date` header: the server's clock) when it
    parses, else from `wall_now`: a box whose clock is hours off must still wait what Adobe meant.
    Absurd values (year 9999, a thousand digits) come out as MAX_RETRY_AFTER, never an overflow.
    """
    if value is None:
        return None
    value = str(value).strip()
    if _is_digits(value):
        return MAX_RETRY_AFTER if len(value) > 6 else float(min(int(value), int(MAX_RETRY_AFTER)))
    when = parse_http_date(value)
    if when is None:
        return None
    now = parse_http_date(str(server_date)) if server_date is not None else None
    if now is None:
        now = wall_now
    try:
        wait = when - float(now)
    except (TypeError, ValueError):
        return None
    if wait != wait:  # NaN
        return None
    return max(0.0, min(wait, MAX_RETRY_AFTER))


def _is_digits(text):
    # ASCII digits only: str.isdigit() also accepts superscripts and other digits int() refuses.
    return bool(text) and all(c in "0123456789" for c in text)


def _seconds(value):
    """A lifetime in whole seconds (1..MAX_EXPIRES_IN) from a JSON number or digit string; None
    when unusable (zero, negative, NaN, infinite, absurd, not a number)."""
    if isinstance(value, str):
        value = value.strip()
        if not _is_digits(value) or len(value) > 9:
            return None
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value != value or value <= 0 or value > MAX_EXPIRES_IN:  # NaN, zero or negative, inf or absurd
        return None
    whole = int(value)
    return whole if whole == value else whole + 1  # round up: 0.5 s is still a (very short) lifetime


def _strip_query(url):
    for sep in "?#":
        i = url.find(sep)
        if i >= 0:
            url = url[:i]
    return url


_CHECK_PATH = "[adobe] base_url and the network path to Adobe (a proxy, firewall or captive portal may answer instead " \
              "of Adobe)"


def _undocumented_hint(status):
    if status in (401, 403):
        return ("something other than Adobe's DCR service refused the request, or Adobe blocks this address: "
                + "check " + _CHECK_PATH)
    if status in (404, 405):
        return "check [adobe] base_url: it must be Adobe's URL ending in /o, e.g. https://sp.auth.adobe.com/o"
    return "check " + _CHECK_PATH


def error_from_response(endpoint, status, headers, body, wall_now=0.0):
    """Classify a non-2xx answer of the register or token endpoint."""
    retry_after = parse_retry_after(_header(headers, "Retry-After"), wall_now, _header(headers, "Date"))
    where = "Adobe Pass %s endpoint" % endpoint
    if status == 429:
        return UpstreamError("%s answered 429 Too Many Requests (throttled)" % where, code="throttled",
                             kind=RETRY, retry_after=retry_after, status=status,
                             hint="the agent backs off; persistent 429s mean too many devices share one address")
    if status >= 500:
        return UpstreamError("%s answered %d (server error)" % (where, status), code="server_error", kind=RETRY,
                             retry_after=retry_after, status=status, hint="retrying later with backoff")
    if 300 <= status < 400:
        location = _header(headers, "Location")
        target = printable(_strip_query(str(location)), 120) if location else "nowhere (no Location)"
        carried = "software statement" if endpoint == "register" else "client secret"
        return UpstreamError("%s answered HTTP %d, a redirect to %s; redirects are never followed (the request "
                             "carries the %s)" % (where, status, target, carried), code="redirected", kind=RETRY,
                             retry_after=retry_after, status=status, undocumented=True,
                             hint="check [adobe] base_url: it must be Adobe's https URL ending in /o (e.g. "
                                  "https://sp.auth.adobe.com/o), and no proxy may rewrite it")
    data = _json_body(body)
    code = data.get("error") if isinstance(data, dict) else None
    if isinstance(code, str) and code in OAUTH_ERRORS:
        kind, hint = OAUTH_ERRORS[code]
        if code == "invalid_client" and endpoint != "token":
            kind = OPERATOR
        return UpstreamError("%s refused the request: %s (HTTP %d)" % (where, code, status), code=code, kind=kind,
                             retry_after=retry_after, status=status, hint=hint)
    if isinstance(code, str):
        return UpstreamError("%s answered HTTP %d with an error Adobe does not document: %s"
                             % (where, status, printable(code, 64)), code="unknown_error", kind=RETRY,
                             retry_after=retry_after, status=status, undocumented=True,
                             hint="check the agent version, " + _CHECK_PATH)
    return UpstreamError("%s answered HTTP %d without an OAuth error body (%s)" % (where, status, excerpt(body)),
                         code="http_%d" % status, kind=RETRY, retry_after=retry_after, status=status,
                         undocumented=True, hint=_undocumented_hint(status))


def _malformed(endpoint, status, what):
    return UpstreamError("Adobe Pass %s endpoint answered HTTP %d with %s" % (endpoint, status, what),
                         code="malformed_response", kind=RETRY, status=status, undocumented=True,
                         hint="Adobe documents another answer: check " + _CHECK_PATH)


def _string_list(value):
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    if isinstance(value, str):
        return [value]
    return []


def _success_object(endpoint, status, headers, body, wall_now):
    """The JSON object of a 2xx answer from `endpoint`; an error answer or a 2xx that is not a JSON
    object raises UpstreamError (the shared opening of parse_register and parse_token)."""
    if not 200 <= status < 300:
        raise error_from_response(endpoint, status, headers, body, wall_now)
    data = _json_body(body)
    if not isinstance(data, dict):
        raise _malformed(endpoint, status, "something that is not a JSON object (%s)" % excerpt(body))
    return data


def parse_register(status, headers, body, wall_now=0.0):
    """Client Register answer -> credentials dict, or raise UpstreamError."""
    data = _success_object("register", status, headers, body, wall_now)
    cid, secret = data.get("client_id"), data.get("client_secret")
    if not isinstance(cid, str) or not cid or not isinstance(secret, str) or not secret:
        raise _malformed("register", status, "no client_id/client_secret (%s)" % excerpt(data))
    for name, value in (("client_id", cid), ("client_secret", secret)):
        if not _visible(value, MAX_CREDENTIAL_LENGTH):
            raise _malformed("register", status, "a %s that is not 1 to %d visible ASCII characters (%d characters)"
                             % (name, MAX_CREDENTIAL_LENGTH, len(value)))
    return {
        "client_id": cid,
        "client_secret": secret,
        "client_id_issued_at": to_seconds(data.get("client_id_issued_at")),
        "redirect_uris": _string_list(data.get("redirect_uris")),
        "grant_types": _string_list(data.get("grant_types")) or ["client_credentials"],
        "scopes": _string_list(data.get("scopes")),
    }


def parse_token(status, headers, body, wall_now=0.0):
    """Client Token answer -> token dict, or raise UpstreamError.

    expires_in policy: 1 s .. 30 days is used (a fraction rounded up); present but 0, negative,
    not a number, NaN, infinite or longer than 30 days is a malformed answer (undocumented: never a
    silent default); missing or null assumes DEFAULT_EXPIRES_IN, flagged `expires_in_assumed`.
    """
    data = _success_object("token", status, headers, body, wall_now)
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise _malformed("token", status, "no access_token (%s)" % excerpt(data))
    if not is_bearer_token(token):
        raise _malformed("token", status, "an access_token that is not an RFC 6750 bearer token (b64token of at "
                                          "most %d characters; got %d characters)" % (MAX_TOKEN_LENGTH, len(token)))
    raw = data.get("expires_in")
    assumed = raw is None
    if assumed:
        expires_in = DEFAULT_EXPIRES_IN
    else:
        expires_in = _seconds(raw)
        if expires_in is None:
            raise _malformed("token", status, "an expires_in that is not a lifetime of 1 to %d seconds: %s"
                             % (MAX_EXPIRES_IN, _describe(raw)))
    token_type = data.get("token_type")
    if not (isinstance(token_type, str) and 0 < len(token_type) <= 32 and all(c in _ALPHA for c in token_type)):
        token_type = "bearer"
    tid = data.get("id")
    return {
        "access_token": token,
        "token_type": token_type,
        "expires_in": int(expires_in),
        "expires_in_assumed": assumed,
        "created_at": to_seconds(data.get("created_at")),
        "id": tid if _visible(tid, 256) else None,
    }


# --------------------------------------------------------------------------------------------
# Protected-API errors reported by players (reference section 5, with its 2026-12 correction)

# Only these say the client credentials are refused: new credentials (users are logged out).
REREGISTER_CODES = ("invalid_access_token_service_provider", "invalid_access_token_client_application")
# The access token is bad, whatever `action` says (the 2023 page paired the first two with
# application-registration). invalid_client_id: a new token first; if the credentials really are
# gone the token endpoint answers invalid_client, and that re-registers through the documented path.
REFRESH_CODES = ("access_token_expired", "invalid_access_token_signature", "invalid_client_id")
RETRY_ACTIONS = ("retry", "retry-after")


def _eec_shaped(d):
    return isinstance(d.get("code"), str) or isinstance(d.get("action"), str)


def _walk(node, path, index, depth, out, budget):
    """Collect (path, index, object) for the Enhanced Error objects under `node`: the value of any
    "error" key that is an object, every object of an "errors" list. Bounded by MAX_DEPTH, MAX_ITEMS
    and _MAX_NODES so that any body costs little."""
    if depth > MAX_DEPTH or len(out) >= MAX_ITEMS or budget[0] <= 0:
        return
    budget[0] -= 1
    if isinstance(node, dict):
        for key in node:
            if len(out) >= MAX_ITEMS or budget[0] <= 0:
                return
            value = node[key]
            if not isinstance(key, str) or not isinstance(value, (dict, list)):
                continue
            sub = (path + "." if path else "") + printable(key, 24)
            if key == "error" and isinstance(value, dict):
                out.append((sub, index, value))
            elif key == "errors" and isinstance(value, list):
                for i, item in enumerate(value):
                    if len(out) >= MAX_ITEMS or budget[0] <= 0:
                        return
                    budget[0] -= 1
                    if isinstance(item, dict):
                        out.append(("%s[%d]" % (sub, i), i, item))
            else:
                _walk(value, sub, index, depth + 1, out, budget)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if len(out) >= MAX_ITEMS or budget[0] <= 0:
                return
            sub = "%s[%d]" % (path, i)
            if depth == 0 and isinstance(item, dict) and _eec_shaped(item):
                budget[0] -= 1
                out.append((sub, i, item))  # a bare list of error objects
            else:
                _walk(item, sub, i, depth + 1, out, budget)


def _item_decision(code, action, status):
    if code in REREGISTER_CODES:
        return "reregister"
    if code in REFRESH_CODES or action == "application-registration":
        return "refresh"
    if action in RETRY_ACTIONS:
        return "retry"
    if status == 401:
        return "refresh"
    return "ignore"


def classify_protected_items(body):
    """Every Enhanced Error object in a protected API's answer (as reported by a player), each
    classified: a list of {"path", "index", "code", "action", "status", "decision"}.

    Found: the body itself when it is one (has a string `code` or `action`), a wrapped
    {"error": {...}}, the items of an "errors" list or of a bare list, and `error` objects on the
    items of a 200 answer (e.g. "decisions[2].error", index 2). `decision` per item: "reregister"
    (invalid_access_token_service_provider / _client_application only), "refresh" (a token-validity
    code, an application-registration action with any other code, or item status 401), "retry"
    (action retry / retry-after: the caller retries that item alone) or "ignore". Strings are
    sanitised (printable); at most MAX_ITEMS items.
    """
    data = body if isinstance(body, (dict, list)) else _json_body(body)
    found = []
    if isinstance(data, dict) and _eec_shaped(data):
        found.append(("", None, data))
    elif isinstance(data, dict) and isinstance(data.get("error"), str):
        found.append(("error", None, {"code": data["error"]}))  # RFC 6750 style {"error": "invalid_token"}
    elif isinstance(data, (dict, list)):
        _walk(data, "", None, 0, found, [_MAX_NODES])
    items = []
    for path, index, obj in found[:MAX_ITEMS]:
        code, action, status = obj.get("code"), obj.get("action"), obj.get("status")
        code = code if isinstance(code, str) else None
        action = action if isinstance(action, str) else None
        if isinstance(status, str) and _is_digits(status) and len(status) == 3:
            status = int(status)
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            status = None
        items.append({"path": path[:120], "index": index,
                      "code": printable(code, 64) if code is not None else None,
                      "action": printable(action, 32) if action is not None else None,
                      "status": status, "decision": _item_decision(code, action, status)})
    return items


def _status_text(status):
    if isinstance(status, int) and not isinstance(status, bool):
        return "%d" % status
    return printable(str(status), 8)


def _item_text(item):
    text = "Enhanced Error %s" % (item["code"] or "without a code")
    if item["action"]:
        text += " (action %s)" % item["action"]
    if item["path"]:
        text += " at %s" % item["path"]
    return text


def classify_protected_error(status, body, management=False):
    """A protected API's error (as reported by a player) -> ("refresh"|"reregister"|"ignore", reason).

    The code decides before the action (reference section 5): token-validity codes and a plain 401
    get a new access token; only invalid_access_token_service_provider / _client_application and a
    403 from a management API get new client credentials. Items marked retry concern the player
    alone (see classify_protected_items). `reason` is sanitised, at most ~300 characters.
    """
    items = classify_protected_items(body)
    for item in items:
        if item["decision"] == "reregister":
            return "reregister", (_item_text(item) + ": the credentials are refused, new ones are needed")[:300]
    if status == 403 and management:
        return "reregister", "HTTP 403 from a management API: the credentials are refused, new ones are needed"
    for item in items:
        if item["decision"] == "refresh":
            return "refresh", (_item_text(item) + ": a new access token is needed")[:300]
    if status == 401:
        return "refresh", "HTTP 401 from a protected API: a new access token is needed"
    retry = [item for item in items if item["decision"] == "retry"]
    if retry:
        return "ignore", ("%d item(s) marked retry, first %s: the player retries them; the credentials are fine"
                          % (len(retry), _item_text(retry[0])))[:300]
    return "ignore", "HTTP %s does not concern the agent's credentials" % _status_text(status)


# --------------------------------------------------------------------------------------------
# I/O


def _shim_detail(exc):
    """What the shim said went wrong, without its advice (the caller's hint says what to do, once)."""
    text = exc.args[-1] if exc.args and isinstance(exc.args[-1], str) else str(exc)
    if text.startswith("urequests: "):
        text = text[len("urequests: "):]
        cut = text.rfind("; ")
        if cut > 0:
            text = text[:cut]
    return printable(text, 240)


def send(req, timeout=15.0, ca_file=None, wall_now=0.0):
    """Perform a request built above with the urequests shim -> (status, headers, body bytes).

    Redirects are never followed (max_redirects=0): the 3xx comes back as an answer, and the
    parsers make it a `redirected` error. Network failures become UpstreamError(code network /
    timeout / tls_verify / malformed_response, kind retry); the message says what happened, the
    hint (once) what to check.
    """
    import errno

    from agent import urequests

    host = printable(req["url"].split("/")[2] if "://" in req["url"] else req["url"], 80)
    r = None
    try:
        r = urequests.request(req["method"], req["url"], data=req["body"], headers=req["headers"],
                              timeout=timeout, ca_file=ca_file, max_redirects=0)
        return r.status_code, r.headers or {}, r.content
    except ValueError as e:
        raise UpstreamError("invalid HTTP answer from %s: %s" % (host, _shim_detail(e)), code="malformed_response",
                            kind=RETRY, undocumented=True,
                            hint="a proxy or captive portal may answer instead of Adobe: check the network path "
                                 "to " + host)
    except OSError as e:
        if e.__class__.__name__ == "TLSVerifyError":
            raise UpstreamError("the TLS certificate of %s was refused: %s" % (host, _shim_detail(e)),
                                code="tls_verify", kind=RETRY, hint="check [adobe] ca_file and the box's clock")
        timed_out = (getattr(e, "errno", None) == errno.ETIMEDOUT or e.__class__.__name__ == "TimeoutError"
                     or "timed out" in str(e).lower())
        if timed_out:
            raise UpstreamError("no answer from %s in time: %s" % (host, _shim_detail(e)), code="timeout",
                                kind=RETRY, hint="check the network path to %s; raise [adobe] timeout if Adobe is "
                                                 "slow to answer from here" % host)
        raise UpstreamError("cannot reach %s: %s" % (host, _shim_detail(e)), code="network", kind=RETRY,
                            hint="check the network: the box's connection, DNS and the route to " + host)
    finally:
        if r is not None:
            r.close()
