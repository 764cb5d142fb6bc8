"""HTTP/1.1 client with MicroPython's `urequests` API: the agent's only way to talk HTTP.

Mirrors micropython-lib `requests` (`request(method, url, data, json, headers, stream, auth,
timeout, parse_headers)`, `get/post/...`, `Response.status_code/reason/headers/content/text/
json()/close()`) and fixes its security defects: TLS certificates and host names are verified by
default, bodies are bounded, redirects are limited, never go from https to http, and never carry
credentials or a request body to another origin (scheme, host, port), and `timeout` is one
deadline covering connect, TLS, sending and the whole response, across redirects. docs/HTTP-SHIM.md lists every difference from micropython-lib and why.

Portable: runs unmodified under CPython 3.9+ and MicroPython (unix port, mbedTLS `ssl`). Only
`socket`, `errno`, `sys`, `time` at import; `ssl`, `json`, `binascii` when first needed.

Errors: OSError for network problems (the errno of the cause; timeouts carry ETIMEDOUT, which is
TimeoutError on CPython; refused certificates raise TLSVerifyError, an OSError), ValueError for
protocol problems (malformed status line or headers, body over `max_body`, too many redirects, a
redirect the policy above refuses).
Every message names the method, the URL (without its query string) and host:port, and says what
to do.

Must never: put a query string, a header value or a request body into an error message (they may
hold secrets); leave a socket open after an error; keep a connection alive between requests.
"""

import errno
import socket
import sys

_HEX = b"0123456789abcdefABCDEF"  # chunk sizes are hex digits only

_MICROPYTHON = sys.implementation.name == "micropython"

try:  # CPython: a monotonic float clock
    from time import monotonic as _monotonic

    def _deadline_after(seconds):
        return _monotonic() + seconds

    def _seconds_left(deadline):
        return deadline - _monotonic()

except ImportError:  # MicroPython: wrapping millisecond ticks
    from time import ticks_add, ticks_diff, ticks_ms

    def _deadline_after(seconds):
        # ticks wrap after 2**30 ms on the unix port; ticks_add accepts at most half of that.
        return ticks_add(ticks_ms(), int(min(seconds, 500000.0) * 1000))

    def _seconds_left(deadline):
        return ticks_diff(deadline, ticks_ms()) / 1000.0


DEFAULT_MAX_BODY = 1024 * 1024   # refuse larger responses unless the caller raises max_body
MAX_REDIRECTS = 5
MAX_LINE = 8192                  # longest status, header or chunk-size line accepted
MAX_HEADERS = 100                # most header (or trailer) lines accepted in one response
_RECV = 4096 if _MICROPYTHON else 65536
_REDIRECTS = (301, 302, 303, 307, 308)
# Dropped when a redirect leaves the origin (scheme, host, port) of the previous request, and not
# restored if a later redirect comes back.
_CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie")
# Set by the shim from the request itself; a caller's copy would desynchronise the framing.
_FRAMING_HEADERS = ("content-length", "transfer-encoding", "connection", "host")
# Tried in order under MicroPython, whose mbedTLS has no default trust store.
SYSTEM_CA_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",   # Debian, Ubuntu, Yocto, Buildroot, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",     # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",               # openSUSE
    "/etc/ssl/cert.pem",                    # Alpine, BSDs
)
_TOO_BIG = "response body exceeds max_body=%d bytes; raise max_body if such a response is expected"
_BAD = "; the server's response is not valid HTTP/1.1, report it to the server's operator"
_TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class TLSVerifyError(OSError):
    """The server's certificate or host name was refused (an OSError, so callers of plain
    urequests code still catch it; distinct so that callers can report it as a configuration or
    security problem rather than a transient network error)."""


# ---------------------------------------------------------------------------------------------
# Pure helpers (no I/O): URLs, request head, response head parsing.


def split_url(url):
    """Split an http(s) URL into (scheme, host, port, target); target is path plus query."""
    if not isinstance(url, str):
        raise TypeError("urequests: URL must be str, got %s" % type(url).__name__)
    for ch in url:
        if ch <= " " or ch == "\x7f":
            raise ValueError("urequests: URL contains a space or control character; percent-encode it")
    i = url.find("://")
    scheme = url[:i].lower() if i > 0 else ""
    if scheme not in ("http", "https"):
        raise ValueError("urequests: unsupported URL scheme in %r; use http:// or https://" % _safe_url(url))
    rest = url[i + 3:]
    cut = len(rest)
    for sep in "/?#":
        j = rest.find(sep)
        if 0 <= j < cut:
            cut = j
    authority, target = rest[:cut], rest[cut:]
    j = target.find("#")
    if j >= 0:
        target = target[:j]
    if not target.startswith("/"):
        target = "/" + target
    if "@" in authority:
        raise ValueError("urequests: credentials in the URL are not supported; pass auth=(user, password)")
    port = 443 if scheme == "https" else 80
    if authority.startswith("["):  # IPv6 literal
        j = authority.find("]")
        if j < 0:
            raise ValueError("urequests: unterminated IPv6 address in URL %s" % _safe_url(url))
        host, tail = authority[1:j], authority[j + 1:]
        if tail and not tail.startswith(":"):
            raise ValueError("urequests: unexpected text after the IPv6 address in URL %s" % _safe_url(url))
        port_text = tail[1:] if tail else None
    else:
        host, sep, port_text = authority.partition(":")
        if not sep:
            port_text = None
    if port_text is not None and port_text != "":
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError("urequests: invalid port in URL %s; expected 1-65535" % _safe_url(url))
        port = int(port_text)
    if not host:
        raise ValueError("urequests: no host in URL %s" % _safe_url(url))
    return scheme, host.lower(), port, target


def _authority(scheme, host, port):
    h = "[" + host + "]" if ":" in host else host
    if port == (443 if scheme == "https" else 80):
        return h
    return h + ":" + str(port)


def _safe_url(url):
    """The URL without query string or fragment, for messages (a query may carry secrets)."""
    for sep in "?#":
        i = url.find(sep)
        if i >= 0:
            url = url[:i]
    return url


def _remove_dot_segments(path):
    out = []
    segments = path.split("/")
    for k, seg in enumerate(segments):
        if seg == "..":
            if len(out) > 1:
                out.pop()
            if k == len(segments) - 1:
                out.append("")
        elif seg == ".":
            if k == len(segments) - 1:
                out.append("")
        else:
            out.append(seg)
    res = "/".join(out)
    return res if res.startswith("/") else "/" + res


def resolve_url(base, location):
    """Resolve a Location header against the URL it answered (RFC 3986 section 5, reduced)."""
    loc = location.strip()
    scheme, host, port, target = split_url(base)
    i = loc.find(":")
    if i > 0 and loc[:i].isalpha() and loc[i:i + 3] == "://":
        return loc
    if loc.startswith("//"):
        return scheme + ":" + loc
    origin = scheme + "://" + _authority(scheme, host, port)
    path, _, query = target.partition("?")
    if loc.startswith("/"):
        p, q, rest = loc.partition("?")
        return origin + _remove_dot_segments(p) + q + rest
    if loc.startswith("?"):
        return origin + path + loc
    if loc == "":
        return origin + target
    p, q, rest = loc.partition("?")
    merged = path[:path.rfind("/") + 1] + p
    return origin + _remove_dot_segments(merged) + q + rest


def _check_token(kind, text):
    if not text:
        raise ValueError("urequests: empty %s" % kind)
    for ch in text:
        if ch not in _TOKEN_CHARS:
            raise ValueError("urequests: invalid character %r in %s %r" % (ch, kind, text))


def _as_bytes(value, what):
    if isinstance(value, str):
        value = value.encode("utf-8")
    elif not isinstance(value, (bytes, bytearray)):
        raise TypeError("urequests: %s must be str or bytes, got %s" % (what, type(value).__name__))
    return bytes(value)


def build_head(method, host_header, target, headers):
    """The request line and header block as bytes. `headers` is a dict of str -> str/bytes."""
    _check_token("method", method)
    lines = [("%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, host_header)).encode("utf-8")]
    for name in headers:
        _check_token("header name", name)
        value = _as_bytes(headers[name], "the value of header " + name)
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            raise ValueError("urequests: header %s contains CR, LF or NUL; remove them" % name)
        lines.append(name.encode("utf-8") + b": " + value + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def parse_status_line(line):
    """b'HTTP/1.1 200 OK\\r\\n' -> (200, b'OK'). ValueError when it is not an HTTP/1.x status."""
    line = line.rstrip(b"\r\n")
    parts = line.split(b" ", 2)
    if (len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3
            or not parts[1].isdigit() or not 100 <= int(parts[1]) <= 599):
        raise ValueError("malformed status line %r" % line[:80] + _BAD)
    return int(parts[1]), (parts[2] if len(parts) > 2 else b"")


def parse_header_line(line):
    """b'Name: value\\r\\n' -> ('Name', 'value'). ValueError for anything else."""
    raw = line.rstrip(b"\r\n")
    if raw[:1] in (b" ", b"\t"):
        raise ValueError("folded header line %r (obsolete line folding is refused)" % raw[:80] + _BAD)
    i = raw.find(b":")
    if i <= 0:
        raise ValueError("malformed header line %r (no name or no colon)" % raw[:80] + _BAD)
    try:
        name = str(raw[:i], "utf-8")
        value = str(raw[i + 1:], "utf-8").strip()
    except UnicodeError:
        raise ValueError("header line is not valid UTF-8: %r" % raw[:80] + _BAD)
    for ch in name:
        if ch not in _TOKEN_CHARS:
            raise ValueError("malformed header name %r" % name[:80] + _BAD)
    return name, value


def _framing(status, method, fields):
    """How the body is delimited: ('none', 0), ('length', n), ('chunked', 0) or ('close', 0).

    `fields` maps lower-cased names to lists of values.
    """
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return "none", 0
    te = fields.get("transfer-encoding")
    if te:
        codings = [c.strip().lower() for c in ",".join(te).split(",") if c.strip()]
        if codings == ["chunked"]:
            return "chunked", 0  # overrides any Content-Length (RFC 9112 section 6.3)
        raise ValueError("unsupported Transfer-Encoding %r (only chunked is understood)" % ",".join(te) + _BAD)
    cl = fields.get("content-length")
    if cl:
        values = []
        for v in ",".join(cl).split(","):
            v = v.strip()
            if not v.isdigit():
                raise ValueError("invalid Content-Length %r" % v[:40] + _BAD)
            values.append(int(v))
        for v in values:
            if v != values[0]:
                raise ValueError("conflicting Content-Length values %r" % values + _BAD)
        return "length", values[0]
    return "close", 0


# ---------------------------------------------------------------------------------------------
# I/O: one connection, read under a deadline.


def _is_timeout(exc):
    sock_timeout = getattr(socket, "timeout", None)
    if sock_timeout is not None and isinstance(exc, sock_timeout):
        return True
    # MicroPython reports a socket timeout as EAGAIN (plain) or ETIMEDOUT (TLS).
    return getattr(exc, "errno", None) in (errno.EAGAIN, errno.ETIMEDOUT)


def _errno_name(code):
    name = errno.errorcode.get(code) if isinstance(code, int) else None
    return name or str(code)


class _Conn:
    """A socket plus a read buffer; every blocking call is bounded by the request's deadline."""

    def __init__(self, sock, deadline, where):
        self.sock = sock          # what we read and write (a TLS socket after wrap)
        self.timer = sock         # what takes settimeout (the raw socket under MicroPython)
        self.deadline = deadline  # None: no limit
        self.where = where        # "GET https://host:port/path" for messages
        self.buf = b""
        self.eof = False

    def close(self):
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
            if self.timer is not sock:
                try:
                    self.timer.close()
                except OSError:
                    pass

    def arm(self, doing):
        """Give the socket what is left of the deadline before a blocking call."""
        if self.deadline is None:
            return
        left = _seconds_left(self.deadline)
        if left <= 0:
            raise self.timeout_error(doing)
        self.timer.settimeout(left)

    def timeout_error(self, doing):
        return OSError(errno.ETIMEDOUT, "urequests: %s: timed out %s; the server is too slow or "
                       "unreachable, retry later or raise timeout" % (self.where, doing))

    def net_error(self, exc, doing):
        if _is_timeout(exc):
            return self.timeout_error(doing)
        code = getattr(exc, "errno", None)
        detail = _errno_name(code) if isinstance(code, int) else ""
        text = str(exc)
        if text and text != "None" and "[Errno" not in text:
            detail = (detail + " " if detail else "") + text
        return OSError(code if isinstance(code, int) else errno.EIO,
                       "urequests: %s: network error %s (%s); check the network and that the server "
                       "is up, then retry" % (self.where, doing, detail or type(exc).__name__))

    def send(self, data):
        self.arm("sending the request")
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise self.net_error(e, "sending the request")

    def _recv(self, doing):
        self.arm(doing)
        try:
            data = self.sock.recv(_RECV)
        except OSError as e:
            raise self.net_error(e, doing)
        if not data:
            self.eof = True
        return data

    def readline(self, doing):
        """One line including its LF; b'' at end of stream. ValueError past MAX_LINE."""
        while True:
            i = self.buf.find(b"\n")
            if 0 <= i < MAX_LINE:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line
            if len(self.buf) >= MAX_LINE:
                raise ValueError("line longer than %d bytes while %s" % (MAX_LINE, doing) + _BAD)
            data = b"" if self.eof else self._recv(doing)
            if not data:
                line, self.buf = self.buf, b""
                return line
            self.buf += data

    def read_some(self, n, doing):
        """Up to n bytes (at least one unless the stream ended)."""
        if not self.buf and not self.eof:
            self.buf = self._recv(doing)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


class _Body:
    """The decoded response body as a readable stream, bounded by max_body."""

    def __init__(self, conn, mode, length, max_body):
        self.conn = conn
        self.mode = mode              # none, length, chunked or close
        self.left = length            # bytes left in the message (length) or current chunk (chunked)
        self.max_body = max_body
        self.total = 0
        self.done = mode == "none" or (mode == "length" and length == 0)
        if mode == "length" and length > max_body:
            raise ValueError("response body of %d bytes exceeds max_body=%d; raise max_body if "
                             "such a response is expected" % (length, max_body))

    def _count(self, data):
        self.total += len(data)
        if self.total > self.max_body:
            raise ValueError(_TOO_BIG % self.max_body)
        return data

    def _chunk_header(self):
        line = self.conn.readline("reading a chunk size")
        if not line.endswith(b"\n"):
            raise OSError(errno.ECONNRESET, "connection closed inside the chunked body")
        size = line.split(b";", 1)[0].strip()
        try:
            # Hex digits only: int(x, 16) would also take "-1", "+1", "0x1" and "1_0".
            if not size or len(size) > 16 or any(c not in _HEX for c in size):
                raise ValueError
            self.left = int(str(size, "ascii"), 16)
        except ValueError:
            raise ValueError("malformed chunk size line %r" % line[:40] + _BAD)
        if self.left == 0:
            for _ in range(MAX_HEADERS + 1):  # trailer section, ignored
                line = self.conn.readline("reading the chunked trailer")
                if line in (b"\r\n", b"\n"):
                    self.done = True
                    return
                if not line:
                    raise OSError(errno.ECONNRESET, "connection closed inside the chunked trailer")
            raise ValueError("more than %d trailer lines" % MAX_HEADERS + _BAD)
        if self.total + self.left > self.max_body:
            raise ValueError(_TOO_BIG % self.max_body)

    def read(self, n=-1):
        """Up to n bytes of body (all of it when n < 0); b'' once the body is complete.

        Any error closes the connection and names the request."""
        try:
            if n is None or n < 0:
                parts = []
                while not self.done:
                    parts.append(self._read(_RECV))
                return b"".join(parts)
            return self._read(n)
        except BaseException as e:
            _fail(self.conn, e)

    def _read(self, n):
        while not self.done and n > 0:
            if self.mode == "close":
                data = self.conn.read_some(n, "reading the body")
                if not data:
                    self.done = True
                    return b""
                return self._count(data)
            if self.mode == "chunked" and self.left == 0:
                self._chunk_header()
                continue
            data = self.conn.read_some(min(n, self.left), "reading the body")
            if not data:
                raise OSError(errno.ECONNRESET, "connection closed with %d body bytes missing" % self.left)
            self.left -= len(data)
            if self.left == 0:
                if self.mode == "length":
                    self.done = True
                elif self.conn.readline("reading a chunk end") not in (b"\r\n", b"\n"):
                    raise ValueError("chunk data not followed by CRLF" + _BAD)
            return self._count(data)
        return b""

    def readinto(self, buf):
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def close(self):
        self.conn.close()


class Response:
    """One HTTP response. `headers` is absent when the request used parse_headers=False."""

    def __init__(self, raw):
        self.raw = raw            # _Body while the body is unread (stream=True), else None
        self.encoding = "utf-8"
        self._cached = None
        self.status_code = 0
        self.reason = b""
        self.url = ""

    def close(self):
        raw, self.raw = self.raw, None
        if raw is not None:
            raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def content(self):
        if self._cached is None:
            if self.raw is None:
                raise ValueError("urequests: response body was closed before it was read")
            raw, self.raw = self.raw, None
            self._cached = raw.read()  # closes the connection itself on error
            raw.close()
        return self._cached

    @property
    def text(self):
        return str(self.content, self.encoding)

    def json(self):
        import json

        return json.loads(self.content)


def _fail(conn, exc):
    """Close the connection, then raise `exc` with the request named in its message."""
    conn.close()
    text = str(exc)
    if "urequests:" in text:
        raise exc
    if isinstance(exc, OSError):
        if _is_timeout(exc):
            raise conn.timeout_error("reading the response")
        detail = exc.args[-1] if exc.args else text
        raise OSError(getattr(exc, "errno", None) or errno.EIO,
                      "urequests: %s: %s; retry later" % (conn.where, detail))
    if isinstance(exc, ValueError):
        raise ValueError("urequests: %s: %s" % (conn.where, text))
    raise exc


# ---------------------------------------------------------------------------------------------
# TLS


_contexts = {}  # (ca_file, verify) -> context; building one costs a CA bundle parse


def _pem_to_der(pem):
    import binascii

    out, cur = [], None
    for line in pem.split(b"\n"):
        line = line.strip()
        if line.startswith(b"-----BEGIN CERTIFICATE-----"):
            cur = []
        elif line.startswith(b"-----END CERTIFICATE-----"):
            if cur is not None:
                out.append(binascii.a2b_base64(b"".join(cur)))
            cur = None
        elif cur is not None:
            cur.append(line)
    return out


def _tls_context(ca_file, verify):
    key = (ca_file, bool(verify))
    ctx = _contexts.get(key)
    if ctx is not None:
        return ctx
    import ssl

    if _MICROPYTHON:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if verify:
            # mbedTLS here loads DER only, one certificate per call, and has no default store.
            path = ca_file
            if path is None:
                for candidate in SYSTEM_CA_FILES:
                    try:
                        open(candidate, "rb").close()
                        path = candidate
                        break
                    except OSError:
                        pass
                if path is None:
                    raise OSError(errno.ENOENT, "urequests: no system CA bundle found (looked for %s); "
                                  "pass ca_file=PEM_FILE" % ", ".join(SYSTEM_CA_FILES))
            ders = _pem_to_der(_read_ca_file(path))
            if not ders:
                raise OSError(errno.EINVAL, "urequests: CA file %s holds no PEM certificate; "
                              "give a PEM bundle as ca_file" % path)
            for der in ders:
                try:
                    ctx.load_verify_locations(cadata=der)
                except ValueError:
                    pass  # one unparsable certificate must not void the bundle
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.verify_mode = ssl.CERT_NONE
    else:
        if verify:
            if ca_file is not None:
                _read_ca_file(ca_file)  # a clear message when it is missing
            ctx = ssl.create_default_context(cafile=ca_file)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _contexts[key] = ctx
    return ctx


def _read_ca_file(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise OSError(getattr(e, "errno", None) or errno.ENOENT,
                      "urequests: cannot read CA file %s (%s); fix the ca_file setting" % (path, e))


def _wrap_tls(conn, host, ctx):
    conn.arm("during the TLS handshake")
    raw = conn.sock
    try:
        conn.sock = ctx.wrap_socket(raw, server_hostname=host)
    except ValueError as e:  # MicroPython: mbedTLS verification failures
        raise TLSVerifyError(errno.ECONNABORTED, "urequests: %s: TLS certificate refused (%s); "
                             "check the host name and the CA bundle (ca_file)" % (conn.where, str(e).strip()))
    except OSError as e:
        reason = getattr(e, "verify_message", None) or getattr(e, "reason", None)
        if type(e).__name__ == "SSLCertVerificationError":
            raise TLSVerifyError(errno.ECONNABORTED, "urequests: %s: TLS certificate refused (%s); "
                                 "check the host name and the CA bundle (ca_file)" % (conn.where, reason))
        code = getattr(e, "errno", None)
        if _MICROPYTHON and isinstance(code, int) and code < 0:  # mbedTLS error codes are negative
            reason = e.args[-1] if e.args else code
        if reason and not _is_timeout(e):
            raise OSError(errno.ECONNABORTED, "urequests: %s: TLS handshake failed (%s); check that "
                          "the server speaks TLS on this port" % (conn.where, reason))
        raise conn.net_error(e, "during the TLS handshake")
    if not _MICROPYTHON:
        conn.timer = conn.sock   # CPython's SSLSocket owns the descriptor now
    # MicroPython: the TLS object has no settimeout; the raw socket's timeout governs its reads.


def _connect(scheme, host, port, deadline, where, ca_file, verify):
    # Build the TLS context first: a bad ca_file is a configuration error, found before any socket.
    ctx = _tls_context(ca_file, verify) if scheme == "https" else None
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except OSError as e:
        raise OSError(errno.EHOSTUNREACH, "urequests: %s: cannot resolve host %s (%s); check the host "
                      "name and DNS" % (where, host, e.args[-1] if e.args else e))
    last = None
    for info in infos:
        sock = socket.socket(info[0], socket.SOCK_STREAM, info[2])
        conn = _Conn(sock, deadline, where)
        try:
            conn.arm("connecting to %s:%d" % (host, port))
            sock.connect(info[-1])
        except OSError as e:
            conn.close()
            last = conn.net_error(e, "connecting to %s:%d" % (host, port))
            if last.errno == errno.ETIMEDOUT:
                break  # the deadline is spent; do not start another attempt
            continue
        try:
            nodelay = getattr(socket, "TCP_NODELAY", None)
            if nodelay is not None:
                sock.setsockopt(socket.IPPROTO_TCP, nodelay, 1)
            if ctx is not None:
                _wrap_tls(conn, host, ctx)
        except BaseException:
            conn.close()
            raise
        return conn
    raise last or OSError(errno.EHOSTUNREACH, "urequests: %s: no address for %s" % (where, host))


# ---------------------------------------------------------------------------------------------
# The request loop


def _send_one(method, url, headers, body, deadline, parse_headers, ca_file, verify):
    """One request/response exchange. Returns (status, reason, fields, header dict, conn, where)."""
    scheme, host, port, target = split_url(url)
    where = "%s %s://%s:%d%s" % (method, scheme, host if ":" not in host else "[" + host + "]",
                                 port, _safe_url(target))
    head = build_head(method, _authority(scheme, host, port), target, headers)
    conn = _connect(scheme, host, port, deadline, where, ca_file, verify)
    try:
        if body is None or isinstance(body, bytes):
            conn.send(head + body if body else head)  # one write: no Nagle/delayed-ACK stall
        else:
            conn.send(head)
            for chunk in body:
                chunk = _as_bytes(chunk, "a chunk of data")
                if chunk:
                    conn.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            conn.send(b"0\r\n\r\n")
        while True:
            line = conn.readline("waiting for the status line")
            if not line:
                raise OSError(errno.ECONNRESET, "urequests: %s: connection closed before any response; "
                              "retry later" % where)
            status, reason = parse_status_line(line)
            fields, hdict = _read_headers(conn, parse_headers)
            if status >= 200 or status == 101:
                return status, reason, fields, hdict, conn, where
            # 1xx interim responses are skipped
    except BaseException as e:
        _fail(conn, e)


def _read_headers(conn, parse_headers):
    fields = {}
    hdict = {} if parse_headers is not False else None
    for _ in range(MAX_HEADERS + 1):
        line = conn.readline("reading the headers")
        if line in (b"\r\n", b"\n"):
            return fields, hdict
        if not line.endswith(b"\n"):
            raise OSError(errno.ECONNRESET, "connection closed inside the response headers")
        name, value = parse_header_line(line)
        key = name.lower()
        fields.setdefault(key, []).append(value)
        if parse_headers is True:
            hdict[name] = hdict[name] + ", " + value if name in hdict else value
        elif parse_headers is not False:
            parse_headers(line, hdict)  # micropython-lib's hook: raw line, the dict
    raise ValueError("more than %d header lines" % MAX_HEADERS + _BAD)


def _same_origin(a, b):
    sa, ha, pa, _ = split_url(a)
    sb, hb, pb, _ = split_url(b)
    return sa == sb and ha == hb and pa == pb


def request(method, url, data=None, json=None, headers=None, stream=None, auth=None, timeout=None,
            parse_headers=True, *, ca_file=None, max_body=None, max_redirects=MAX_REDIRECTS, verify=True):
    """Send one HTTP request (following up to `max_redirects` redirects) and return a Response.

    timeout: seconds for the whole call (connect, TLS, send, headers, body, every redirect);
      None waits for ever, as micropython-lib does.
    stream: when true the body is read on first use of content/text/json() or raw.read(), still
      under the deadline and max_body; otherwise it is read before returning and the socket closed.
    ca_file: PEM bundle to trust instead of the system store. verify=False disables certificate
      checks (tests only). max_body: largest body accepted, default DEFAULT_MAX_BODY bytes.
    """
    method, hdrs, body = _prepare(method, headers, auth, data, json)
    deadline = None if timeout is None else _deadline_after(float(timeout))
    for hop in range(max_redirects + 1):
        status, reason, fields, hdict, conn, where = _send_one(
            method, url, _hop_headers(hdrs, body, method), body, deadline, parse_headers, ca_file, verify)
        location = fields.get("location")
        if status not in _REDIRECTS or not location or max_redirects <= 0:
            break
        conn.close()
        if hop == max_redirects:
            raise ValueError("urequests: %s: more than %d redirects; check the URL for a redirect loop"
                             % (where, max_redirects))
        url, method, body = _follow(url, location[-1], status, method, hdrs, body, where)
    return _response(conn, status, reason, url, fields, hdict, method, max_body, parse_headers, stream)


def _prepare(method, headers, auth, data, json):
    """(METHOD, the caller's headers without framing ones plus Authorization and Content-Type, body
    as bytes, an iterator of bytes or None): what every hop starts from."""
    if not isinstance(method, str):
        raise TypeError("urequests: method must be str")
    hdrs = {}
    for name in headers or {}:
        if name.lower() not in _FRAMING_HEADERS:
            hdrs[name] = headers[name]
    if auth is not None:
        import binascii

        user, password = auth
        token = binascii.b2a_base64(_as_bytes(user, "auth user") + b":" + _as_bytes(password, "auth password"))
        hdrs["Authorization"] = "Basic " + str(token, "ascii").strip()
    if json is not None:
        if data is not None:
            raise ValueError("urequests: pass data= or json=, not both")
        import json as _json

        data = _json.dumps(json)
        if not _has(hdrs, "content-type"):
            hdrs["Content-Type"] = "application/json"
    return method.upper(), hdrs, _encode_body(data)


def _hop_headers(hdrs, body, method):
    """The headers of one hop: the prepared ones plus the framing this agent decides (never the caller)."""
    h = dict(hdrs)
    if isinstance(body, bytes):
        if body or method in ("POST", "PUT", "PATCH"):
            h["Content-Length"] = str(len(body))
    elif body is not None:
        h["Transfer-Encoding"] = "chunked"
    h["Connection"] = "close"
    return h


def _follow(url, location, status, method, hdrs, body, where):
    """(next URL, method, body) for a redirect answer, or ValueError when it must not be followed.

    The security rules: never from https to http; credentials (_CREDENTIAL_HEADERS, removed from
    hdrs in place) and a body never go to another origin (scheme, host and port); 303, and 301/302
    after a POST, become a GET without a body; an iterator body cannot be sent twice."""
    try:
        new_url = resolve_url(url, location)
        split_url(new_url)
    except (ValueError, TypeError) as e:
        raise ValueError("urequests: %s: unusable redirect Location (%s)" % (where, e))
    if split_url(url)[0] == "https" and split_url(new_url)[0] == "http":
        raise ValueError("urequests: %s: refusing to follow a %d redirect from https to http (%s): the "
                         "request would travel in clear text; use an https URL" % (where, status,
                                                                                    _safe_url(new_url)))
    same = _same_origin(url, new_url)
    if not same:
        for name in list(hdrs):
            if name.lower() in _CREDENTIAL_HEADERS:
                del hdrs[name]
    if status == 303 or (status in (301, 302) and method == "POST"):
        if method != "HEAD":
            method = "GET"
        body = None
        for name in list(hdrs):
            if name.lower() in ("content-type",):
                del hdrs[name]
    elif body and not same:
        raise ValueError("urequests: %s: not following a %d redirect to another origin (%s): it would "
                         "resend the request body there; send the request to that URL yourself if you "
                         "trust it" % (where, status, _safe_url(new_url)))
    elif body is not None and not isinstance(body, bytes):
        raise ValueError("urequests: %s: redirect %d needs the request body again, but it was an "
                         "iterator; send bytes instead" % (where, status))
    return new_url, method, body


def _response(conn, status, reason, url, fields, hdict, method, max_body, parse_headers, stream):
    """The Response of the final hop; its body is read now unless `stream` (the socket then closes)."""
    try:
        mode, length = _framing(status, method, fields)
        raw = _Body(conn, mode, length, DEFAULT_MAX_BODY if max_body is None else max_body)
    except BaseException as e:
        _fail(conn, e)
    resp = Response(raw)
    resp.status_code = status
    resp.reason = reason
    resp.url = url
    if parse_headers is not False:
        resp.headers = hdict
    if not stream:
        resp.content  # noqa: B018 -- read now, under the deadline, and close the socket
    return resp


def _has(hdrs, lname):
    for k in hdrs:
        if k.lower() == lname:
            return True
    return False


def _encode_body(data):
    if data is None:
        return None
    if isinstance(data, str):
        return data.encode("utf-8")  # Content-Length counts these bytes, not characters
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if hasattr(data, "__next__"):
        return data  # an iterator or generator of bytes: sent with chunked transfer coding
    raise TypeError("urequests: data must be str, bytes or an iterator of bytes (encode forms and "
                    "dicts first), got %s"
                    % type(data).__name__)


def head(url, **kw):
    return request("HEAD", url, **kw)


def get(url, **kw):
    return request("GET", url, **kw)


def post(url, **kw):
    return request("POST", url, **kw)


def put(url, **kw):
    return request("PUT", url, **kw)


def patch(url, **kw):
    return request("PATCH", url, **kw)


def delete(url, **kw):
    return request("DELETE", url, **kw)
