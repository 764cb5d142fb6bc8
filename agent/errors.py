"""Error types shared by every module: a stable machine-readable code plus a human message.

Portable (runs under MicroPython): plain classes only. An error message must say what was
wrong, where, and what to do; it must never contain a client secret or an access token.
"""

# What a caller should do about an error. Every AgentError carries one of these.
RETRY = "retry"          # transient: try again later (optionally after retry_after seconds)
OPERATOR = "operator"    # configuration is wrong: a person must fix something; retrying will not help
REREGISTER = "reregister"  # the client credentials are no longer accepted: register again
FATAL = "fatal"          # a bug or an impossible state


class AgentError(Exception):
    """Base of every error the agent raises on purpose.

    code: stable snake_case identifier (documented in docs/PROTOCOL.md), e.g. ``config_invalid``.
    kind: one of RETRY, OPERATOR, REREGISTER, FATAL.
    retry_after: seconds the caller should wait before retrying, when known.
    hint: one sentence telling a person what to do.
    """

    code = "agent_error"
    kind = FATAL

    def __init__(self, message, code=None, kind=None, retry_after=None, hint=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if kind is not None:
            self.kind = kind
        self.retry_after = retry_after
        self.hint = hint

    def __str__(self):
        if self.hint:
            return self.message + " (" + self.hint + ")"
        return self.message

    def to_dict(self):
        d = {"code": self.code, "kind": self.kind, "message": self.message}
        if self.retry_after is not None:
            d["retry_after"] = self.retry_after
        if self.hint:
            d["hint"] = self.hint
        return d


class ConfigError(AgentError):
    """The configuration file or a file it names is invalid. Exit code 2."""

    code = "config_invalid"
    kind = OPERATOR

    def __init__(self, problems, path=None):
        # problems: list of one-line strings, each naming the key, what was found and what was expected
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        self.path = path
        where = (str(path) + ": ") if path else ""
        AgentError.__init__(self, "\n".join(where + p for p in self.problems))


class DeviceInfoError(AgentError):
    """X-Device-Info or the device identity cannot be built from this box."""

    code = "device_info_invalid"
    kind = OPERATOR


class UpstreamError(AgentError):
    """Adobe Pass (or the network to it) answered with an error.

    code: the OAuth error from Adobe (``invalid_client``, ``invalid_software_statement``...) or one
    of ``throttled``, ``server_error``, ``network``, ``timeout``, ``tls_verify``,
    ``malformed_response``, ``redirected``, ``unknown_error``, ``http_<status>``.
    status: HTTP status, or None when no answer came.
    undocumented: True when the answer is not one Adobe documents for the endpoint (a redirect, a
    401/403 without an OAuth body, an unknown code, a 2xx without usable credentials or token):
    retried, but a streak of them means something in the way needs an operator (agent/lifecycle.py).
    """

    code = "upstream_error"
    kind = RETRY
    undocumented = False

    def __init__(self, message, code=None, kind=None, retry_after=None, hint=None, status=None,
                 undocumented=None):
        AgentError.__init__(self, message, code, kind, retry_after, hint)
        self.status = status
        if undocumented is not None:
            self.undocumented = bool(undocumented)

    def to_dict(self):
        d = AgentError.to_dict(self)
        if self.status is not None:
            d["status"] = self.status
        return d


class StoreError(AgentError):
    """The credential store could not be read or written."""

    code = "store_error"
    kind = RETRY


class NotReady(AgentError):
    """No valid token is held yet."""

    code = "not_ready"
    kind = RETRY
