"""Who may use the web endpoint: the upgrade request's checks, tokens and their applications (sans-I/O).

Job: decide, from an HTTP upgrade request's method, target and headers, whether it may become a
WebSocket: the Host names this loopback listener (no DNS rebinding), the Origin is on the allow-list
(no Origin: refused), the `token` query parameter is present. Then map the token to an application:
through the root-only tokens file (SHA-256 of the token -> application), or through Thunder's
SecurityAgent (`SecurityAgent.1.validate`, a JSON-RPC call over HTTP on loopback: the request and
the answer are built and read here; `ask_securityagent` is the only blocking function, for the
shell's validator thread). Also the `[web]` checks that agent/config.py runs at load.

Order matters: Host and Origin are checked before the token is looked at, so a foreign page learns
nothing about tokens (no oracle) and never makes the agent call SecurityAgent.

Applications (issue 16): a token maps to one application, and the connection may use that one only
(the Dispatcher gets it as the peer's applications). A tokens-file line names its application, which
must be configured ([[app]] name, or "default" for a single-application file). A SecurityAgent token
maps to the agent's application when it has exactly one; with several, SecurityAgent cannot say which
(its token carries the app's URL, not an Adobe application): such a token is refused with a hint to
list the app's token in the tokens file. (A later `[web]` table mapping origins to applications
could lift that.)

Must never: import anything outside the standard library (agent.config imports it), echo a token or
its hash in an error or a log line, accept a tokens file another user could write or read, or trust
a SecurityAgent token's claims before SecurityAgent said it is valid.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import json
import os
import stat
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlsplit

from agent.config import is_loopback
from agent.errors import OPERATOR, AgentError

APPS: Tuple[str, ...] = ("default",)  # a single-application agent's one application (issue 16)
PATH = "/jsonrpc"                      # Thunder's JSON-RPC endpoint path
SUBPROTOCOLS = ("notification", "json", "jsonrpc")  # ThunderJS asks for "notification"
MAX_TOKEN = 4096                       # characters of a token in the query string
MAX_TOKENS_FILE = 1024 * 1024
MAX_SA_ANSWER = 64 * 1024
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
_HEX = frozenset("0123456789abcdef")


class WebError(AgentError):
    """The web endpoint cannot start as configured (tokens file, listen address)."""

    code = "web_config"
    kind = OPERATOR


class Refusal(NamedTuple):
    """An upgrade request that is refused: the HTTP status and a stable code, message and hint."""

    status: int
    code: str
    message: str
    hint: str = ""


class Upgrade(NamedTuple):
    """An upgrade request that passed Host, Origin and form checks; the token still needs a verdict."""

    key: bytes                 # Sec-WebSocket-Key
    origin: str                # normalised
    token: str
    subprotocol: Optional[str]


class Verdict(NamedTuple):
    """What a token is worth: the application it maps to, or a Refusal."""

    app: Optional[str]
    refusal: Optional[Refusal] = None
    via: str = ""              # "tokens_file" or "securityagent"


# -- addresses and origins ------------------------------------------------------------------------


def split_hostport(text: str, default_port: Optional[int] = None) -> Tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; ValueError when malformed."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unclosed [ in %r" % text)
        host, rest = text[1:end], text[end + 1:]
    else:
        host, sep, rest = text.rpartition(":")
        if not sep:
            host, rest = text, ""
        else:
            rest = ":" + rest
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit():
            raise ValueError("bad port in %r" % text)
        port = int(rest[1:])
    elif default_port is not None:
        port = default_port
    else:
        raise ValueError("no port in %r" % text)
    if not host or not 0 < port < 65536:
        raise ValueError("bad host or port in %r" % text)
    return host.lower(), port


def parse_listen(listen: str) -> Tuple[str, int]:
    """The address to bind for `[web] listen`; ValueError (with what to do) unless it is loopback."""
    try:
        host, port = split_hostport(listen)
    except ValueError:
        raise ValueError("found %r, expected HOST:PORT on loopback, e.g. \"127.0.0.1:9998\" or \"[::1]:9998\"" % listen)
    if not is_loopback(host):
        raise ValueError("%r is not a loopback address; the web endpoint serves web apps on this box only: use "
                         "127.0.0.1:PORT or [::1]:PORT (a Thunder proxy on the box can front it, docs/WEB.md)" % listen)
    return ("127.0.0.1" if host == "localhost" else host), port


def normalise_origin(text: str) -> str:
    """"scheme://host[:port]" in lower case without a default port; ValueError for anything else."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise ValueError("not an origin")
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        raise ValueError("not an http(s) origin")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("an origin has no path, query or fragment")
    default = 443 if parts.scheme == "https" else 80
    shown = "[%s]" % host if ":" in host else host
    return "%s://%s%s" % (parts.scheme, shown, "" if port in (None, default) else ":%d" % port)


def host_allowed(host_header: str, port: int) -> bool:
    """The Host header names this listener: a loopback name or literal and our port. A DNS-rebinding
    page reaches 127.0.0.1 under its own name, and that name is in Host: refused here."""
    try:
        host, p = split_hostport(host_header, default_port=80)
    except ValueError:
        return False
    return p == port and is_loopback(host)


# -- the upgrade request --------------------------------------------------------------------------


def _header(headers: Sequence[Tuple[bytes, bytes]], name: bytes) -> list:
    return [v for k, v in headers if k.lower() == name]


def check_upgrade(method: bytes, target: bytes, headers: Sequence[Tuple[bytes, bytes]], port: int,
                  allowed_origins: frozenset) -> Upgrade | Refusal:
    """The checks before any token is looked at: Host, Origin, then the WebSocket form, then the token's
    presence. `allowed_origins` holds normalised origins."""
    hosts = _header(headers, b"host")
    if len(hosts) != 1 or not host_allowed(hosts[0].decode("latin-1"), port):
        return Refusal(403, "web_host", "the Host header must name this loopback listener (127.0.0.1, [::1] "
                       "or localhost, port %d); a page reached through another name is refused" % port,
                       "connect to ws://127.0.0.1:%d%s" % (port, PATH))
    origins = _header(headers, b"origin")
    if len(origins) != 1:
        return Refusal(403, "web_origin", "the request has %s Origin header; a web app's browser always sends "
                       "one, and requests without it are refused" % ("no" if not origins else "more than one"),
                       "connect from a page whose origin is in [web] allowed_origins")
    try:
        origin = normalise_origin(origins[0].decode("latin-1"))
    except ValueError:
        origin = ""
    if not origin or origin not in allowed_origins:
        return Refusal(403, "web_origin", "origin not allowed; only pages from [web] allowed_origins may connect",
                       "add the web app's origin (scheme://host[:port]) to [web] allowed_origins")
    if method != b"GET":
        return Refusal(405, "web_method", "only GET upgrades to a WebSocket here", "open ws://.../jsonrpc")
    path, _, query = target.decode("latin-1").partition("?")
    if path != PATH:
        return Refusal(404, "web_path", "no such endpoint; the JSON-RPC endpoint is %s" % PATH,
                       "open ws://127.0.0.1:%d%s?token=..." % (port, PATH))
    upgrade = b",".join(_header(headers, b"upgrade")).lower()
    connection = b",".join(_header(headers, b"connection")).lower()
    if b"websocket" not in [t.strip() for t in upgrade.split(b",")] or \
            b"upgrade" not in [t.strip() for t in connection.split(b",")]:
        return Refusal(426, "web_not_websocket", "this endpoint speaks WebSocket only (Upgrade: websocket)",
                       "use new WebSocket(\"ws://127.0.0.1:%d%s?token=...\")" % (port, PATH))
    if _header(headers, b"sec-websocket-version") != [b"13"]:
        return Refusal(426, "web_version", "WebSocket version 13 is required", "use a browser's WebSocket")
    keys = _header(headers, b"sec-websocket-key")
    try:
        ok = len(keys) == 1 and len(base64.b64decode(keys[0], validate=True)) == 16
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        return Refusal(400, "web_bad_request", "Sec-WebSocket-Key is missing or malformed", "use a browser's WebSocket")
    offered = [p.strip().decode("latin-1") for v in _header(headers, b"sec-websocket-protocol") for p in v.split(b",")]
    offered = [p for p in offered if p]
    subprotocol = next((p for p in offered if p in SUBPROTOCOLS), None)
    if offered and subprotocol is None:
        return Refusal(400, "web_subprotocol", "none of the offered WebSocket subprotocols is spoken here "
                       "(%s are)" % ", ".join(SUBPROTOCOLS), "offer \"notification\" (ThunderJS's default) or none")
    tokens = parse_qs(query, keep_blank_values=True).get("token", [])
    if len(tokens) != 1 or not tokens[0]:
        return Refusal(401, "web_no_token", "the request carries %s token; every connection presents one token "
                       "as the query parameter ?token=..." % ("no" if not tokens or not tokens[0] else "more than one"),
                       "open ws://127.0.0.1:%d%s?token=TOKEN with the app's token (docs/WEB.md)" % (port, PATH))
    token = tokens[0]
    if len(token) > MAX_TOKEN or not set(token) <= _TOKEN_CHARS:
        return Refusal(401, "web_bad_token", "the token is malformed (too long or not base64url/JWT characters)",
                       "present the token SecurityAgent issued, or one listed in the tokens file")
    return Upgrade(keys[0], origin, token, subprotocol)


BAD_TOKEN = Refusal(403, "web_bad_token", "token not accepted", "present a token SecurityAgent validates, or one "
                    "whose SHA-256 is in [web] tokens_file")


def verdict_from_file(token: str, tokens: Mapping[str, str]) -> Optional[Verdict]:
    """The tokens file's answer, or None when the token is not listed there."""
    app = tokens.get(hashlib.sha256(token.encode("ascii")).hexdigest())
    return Verdict(app, via="tokens_file") if app is not None else None


# -- the tokens file -------------------------------------------------------------------------------


def load_tokens(path: str, apps: Sequence[str] = APPS) -> dict:
    """{sha256 hex of a token: application} from the tokens file; raises WebError saying what is wrong.

    The file is owned by root and neither writable by anyone else nor readable by others (0600, or
    0640 with the agent's group so the agent's user can read it). Lines: `<sha256 hex> <application>`;
    blank lines and lines starting with # are ignored.
    """
    hint = "create it as root: sha256sum of each token, then the application name, one per line; chmod 0640, " \
           "chown root:pass-agent (docs/WEB.md)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise WebError("[web] tokens_file %s cannot be opened: %s" % (path, e.strerror), hint=hint)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise WebError("[web] tokens_file %s is not a regular file" % path, hint=hint)
        if st.st_uid != 0:
            raise WebError("[web] tokens_file %s is owned by uid %d, not root; it says which tokens reach the agent, "
                           "so only root may write it" % (path, st.st_uid), hint=hint)
        if st.st_mode & 0o027:
            raise WebError("[web] tokens_file %s has mode %04o; it must not be writable by its group or readable by "
                           "others (0600 or 0640)" % (path, stat.S_IMODE(st.st_mode)), hint=hint)
        if st.st_size > MAX_TOKENS_FILE:
            raise WebError("[web] tokens_file %s is larger than %d bytes" % (path, MAX_TOKENS_FILE), hint=hint)
        data = os.read(fd, MAX_TOKENS_FILE + 1)
    finally:
        os.close(fd)
    out: dict = {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise WebError("[web] tokens_file %s is not UTF-8 text" % path, hint=hint)
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2 or len(fields[0]) != 64 or not set(fields[0].lower()) <= _HEX:
            raise WebError("[web] tokens_file %s line %d: expected `<sha256 hex of the token> <application>`" % (path, n),
                           hint=hint)
        digest, app = fields[0].lower(), fields[1]
        if app not in apps:
            raise WebError("[web] tokens_file %s line %d: no application named %r (known: %s)"
                           % (path, n, app[:64], ", ".join(apps)), hint=hint)
        if digest in out:
            raise WebError("[web] tokens_file %s line %d: the same token is listed twice" % (path, n), hint=hint)
        out[digest] = app
    return out


# -- SecurityAgent ---------------------------------------------------------------------------------


def securityagent_target(url: str) -> Tuple[str, int, str]:
    """(host, port, path) of Thunder's JSON-RPC endpoint; ValueError unless an http:// URL on loopback."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or 80
    except ValueError:
        raise ValueError("found %r, expected Thunder's JSON-RPC URL, e.g. \"http://127.0.0.1:9998/jsonrpc\"" % url)
    if parts.scheme != "http" or not host:
        raise ValueError("found %r, expected Thunder's JSON-RPC URL, e.g. \"http://127.0.0.1:9998/jsonrpc\"" % url)
    if not is_loopback(host):
        raise ValueError("%r is not on loopback; the token travels to it, so it must be this box's Thunder" % url)
    return host, port, (parts.path or "/jsonrpc")


def securityagent_request(token: str) -> bytes:
    """The JSON-RPC body that asks SecurityAgent whether `token` is valid."""
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "SecurityAgent.1.validate",
                       "params": {"token": token}}).encode("ascii")


def securityagent_valid(status: int, body: bytes) -> Optional[bool]:
    """SecurityAgent's answer: True/False for `{"result": {"valid": bool}}`, None when it did not answer
    that (an HTTP error, not JSON, a JSON-RPC error: the agent cannot tell, and refuses)."""
    if status != 200:
        return None
    try:
        obj = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    result = obj.get("result") if isinstance(obj, dict) else None
    valid = result.get("valid") if isinstance(result, dict) else None
    return valid if isinstance(valid, bool) else None


def token_claims(token: str) -> dict:
    """The JSON payload of a JWT (SecurityAgent's tokens carry `url`, the app's origin); {} if none.
    Read only after SecurityAgent said the token is valid."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, binascii.Error, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}


def verdict_from_securityagent(valid: Optional[bool], token: str, origin: str, apps: Sequence[str] = APPS) -> Verdict:
    """The application for a token SecurityAgent judged; a token issued for another origin is refused."""
    if valid is None:
        return Verdict(None, Refusal(503, "web_securityagent", "SecurityAgent could not be asked whether the token "
                                     "is valid", "check that Thunder and its SecurityAgent plugin run and that "
                                     "[web] securityagent names Thunder's JSON-RPC URL; retry"), "securityagent")
    if not valid:
        return Verdict(None, BAD_TOKEN, "securityagent")
    url = token_claims(token).get("url")
    if isinstance(url, str) and url:
        try:
            claimed = normalise_origin(urlsplit(url)._replace(path="", query="", fragment="").geturl())
        except ValueError:
            claimed = ""
        if claimed != origin:
            return Verdict(None, Refusal(403, "web_token_origin", "the token was issued for another origin than this "
                                         "page's", "ask SecurityAgent for a token for this app's own URL"),
                           "securityagent")
    if len(apps) != 1:
        return Verdict(None, Refusal(403, "web_app_ambiguous", "this agent serves %d applications and a SecurityAgent "
                                     "token does not say which one this app is" % len(apps),
                                     "list the app's token in [web] tokens_file with its application's name"),
                       "securityagent")
    return Verdict(apps[0], via="securityagent")


def ask_securityagent(url: str, token: str, timeout: float) -> Optional[bool]:
    """Blocking: POST SecurityAgent.1.validate to Thunder (the shell calls it in its validator thread).
    The token also goes as `Authorization: Bearer`, which is how Thunder reads a token from an HTTP
    request when its SecurityAgent guards JSON-RPC. None when Thunder could not be asked."""
    import http.client

    host, port, path = securityagent_target(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", path, body=securityagent_request(token),
                     headers={"Content-Type": "application/json", "Authorization": "Bearer " + token})
        resp = conn.getresponse()
        body = resp.read(MAX_SA_ANSWER + 1)
        if len(body) > MAX_SA_ANSWER:
            return None
        return securityagent_valid(resp.status, body)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# -- configuration ---------------------------------------------------------------------------------


def config_problems(web: Mapping[str, Any], check_files: bool, apps: Sequence[str] = APPS) -> list:
    """Problems with `[web]` when `listen` is set (agent/config.py adds them to the file's list); `apps`:
    the configured applications' names."""
    problems: list = []
    try:
        parse_listen(web["listen"])
    except ValueError as e:
        problems.append("[web] listen: %s" % e)
    origins = web["allowed_origins"]
    if isinstance(origins, tuple):
        if not origins:
            problems.append("[web] allowed_origins: empty, so no web app could connect; list the origins "
                            "(scheme://host[:port]) of the web apps that may, e.g. [\"http://127.0.0.1:8080\"]")
        for o in origins:
            try:
                normalise_origin(o)
            except ValueError as e:
                problems.append("[web] allowed_origins: %r is not an origin (%s); write scheme://host[:port], "
                                "e.g. \"https://apps.example.com\"" % (o[:80], e))
            if o.strip() == "null" or o.strip() == "*":
                problems.append("[web] allowed_origins: %r would let any page in; list real origins" % o)
    sa, tf = web["securityagent"], web["tokens_file"]
    if not sa and not tf:
        problems.append("[web]: neither tokens_file nor securityagent is set, so no web app could authenticate; "
                        "set securityagent = \"http://127.0.0.1:9998/jsonrpc\" (Thunder) or a tokens_file (docs/WEB.md)")
    if sa:
        try:
            securityagent_target(sa)
        except ValueError as e:
            problems.append("[web] securityagent: %s" % e)
    if check_files:
        missing = [m for m in ("h11", "wsproto") if importlib.util.find_spec(m) is None]
        if missing:
            what = " and ".join(missing) + (" is" if len(missing) == 1 else " are")
            problems.append("[web] listen: set, but %s not installed for this Python; install pass-agent[web] "
                            "(pip install 'pass-agent[web]'), or set listen = \"\"" % what)
        if tf:
            try:
                load_tokens(tf, apps)
            except WebError as e:
                problems.append(e.message)
    return problems
