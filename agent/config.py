"""Configuration: one TOML file, validated completely at start.

Every problem is reported with the file, the key, what was found and what was expected; all
problems are collected before failing, so an integrator fixes a file in one pass. The result is a
typed, read-only `Config` (frozen records of agent/record.py, one per TOML table: `cfg.adobe.software_statement`),
with every default filled in, so a misspelt key is an AttributeError the type checker and the first
test see, not a KeyError on a box. `SCHEMA` (checker and default per key) is what validation
runs; the records mirror it field for field, and tests/test_config_typed.py fails when the two
disagree on a name, a type or a default. Validation covers every
value the agent would otherwise reject later (the console password hash, pyserial for a console
port), so `pass-agent check` passing means `run` gets past its configuration, and `run` fails
before it touches the store, the socket or the network.

Several registered applications (issue 16): an array of tables, `[[app]]`, one per application
(name, software_statement, redirect_uri, application_id, allow_uids/allow_gids/allow_groups), each
element an `AppConfig` checked by APP_SCHEMA's per-key checkers, held by Config as the tuple `app`.
Why `[[app]]` and not `[app.NAME]`: the name is a value checked like any other (a TOML key may be
any quoted string, dots and spaces included, and it becomes a directory name), a duplicate name is
our clear error instead of the TOML parser's "cannot redefine table", and the file's order is the
order status shows. A file without `[[app]]` (every file before issue 16) is one application named
"default" built from [adobe] software_statement/redirect_uri, [device] application_id and [socket]
allow_*: `Config.apps` gives the applications either way. Mixing the two forms is an error.

Must never: start the agent with a partially valid configuration, print a traceback for a bad
file, or hand out a configuration object that can be changed in place (reload builds a new one).
"""

from __future__ import annotations

import _collections_abc as abc  # what collections.abc re-exports; `collections` itself costs ~0.6 ms (issue 20)
import grp
import math
import os
import sys

from agent import record
from agent.errors import ConfigError
from agent.record import field

# What this module imports is on the daemon's start path (issue 20: agent/startup.py builds the Config
# from the validated-configuration cache before READY=1): no typing (annotations only; each checker's
# `produces` is the record field's annotation as text), and ipaddress, urllib.parse and importlib.util
# only inside the checks that need them (validation runs them; a cache hit does not).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, Optional, Tuple, Union  # noqa: F401

    # One checker per value kind: returns (ok, normalised value, expected-description).
    Check = Callable[[Any], "tuple[bool, Any, str]"]
    OverrideValue = Union[str, int, float, bool]

_MappingProxy = type(type.__dict__)  # types.MappingProxyType, as types.py itself defines it (no import)

DEFAULT_PATH = "/etc/pass-agent/agent.toml"
ENV_VAR = "PASS_AGENT_CONFIG"
PRODUCTION_BASE_URL = "https://sp.auth.adobe.com/o"

def _produces(kind: str) -> Callable[[Check], Check]:
    """Record the Python type a checker's normalised value has, as the record field's annotation text
    (tests/test_config_typed.py evaluates both and compares)."""
    def mark(check: Check) -> Check:
        check.produces = kind  # type: ignore[attr-defined]
        return check

    return mark


@_produces("str")
def _str(v: Any) -> tuple[bool, Any, str]:
    return isinstance(v, str), v, "a string"


@_produces("Optional[str]")
def _opt_str(v: Any) -> tuple[bool, Any, str]:
    return isinstance(v, str), (v or None), "a string (empty for none)"


def _finite(v: Any) -> bool:
    """A real number that fits a float and is not inf/nan (TOML allows inf, nan and huge integers)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


@_produces("float")
def _pos_number(v: Any) -> tuple[bool, Any, str]:
    ok = _finite(v) and v > 0
    return ok, float(v) if ok else v, "a positive, finite number"


@_produces("int")
def _pos_int(v: Any) -> tuple[bool, Any, str]:
    ok = isinstance(v, int) and not isinstance(v, bool) and v > 0
    return ok, v, "a positive integer"


@_produces("bool")
def _bool(v: Any) -> tuple[bool, Any, str]:
    return isinstance(v, bool), v, "true or false"


def _fraction(lo: float, hi: float) -> Check:
    @_produces("float")
    def check(v: Any) -> tuple[bool, Any, str]:
        ok = _finite(v) and lo <= v <= hi
        return ok, float(v) if ok else v, "a number from %g to %g" % (lo, hi)

    return check


def _choice(*choices: str) -> Check:
    @_produces("str")
    def check(v: Any) -> tuple[bool, Any, str]:
        return v in choices, v, "one of " + ", ".join('"%s"' % c for c in choices)

    return check


def _int_range(lo: int, hi: int) -> Check:
    @_produces("int")
    def check(v: Any) -> tuple[bool, Any, str]:
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        return ok, v, "an integer from %d to %d" % (lo, hi)

    return check


@_produces("int")
def _mode(v: Any) -> tuple[bool, Any, str]:
    ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0o777
    return ok, v, "a file mode as an integer, e.g. 0o660 (TOML octal)"


@_produces("Tuple[int, ...]")
def _int_list(v: Any) -> tuple[bool, Any, str]:
    ok = isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
    return ok, tuple(v) if ok else v, "a list of non-negative integers, e.g. [1000, 1001]"


@_produces("Tuple[str, ...]")
def _str_list(v: Any) -> tuple[bool, Any, str]:
    ok = isinstance(v, (list, tuple)) and all(isinstance(x, str) and x for x in v)
    return ok, tuple(v) if ok else v, "a list of group names, e.g. [\"pass-client\"]"


@_produces("Tuple[str, ...]")
def _origin_list(v: Any) -> tuple[bool, Any, str]:
    ok = isinstance(v, (list, tuple)) and all(isinstance(x, str) and x for x in v)
    return ok, tuple(v) if ok else v, "a list of web origins, e.g. [\"http://127.0.0.1:8080\"]"


# [upstream]: the box-wide budget of agent/governor.py. Bounds: a rate above 10/s or a burst above 100
# is no throttle any Adobe documentation describes (1/s, burst 10) and would only buy 429s.
RATE_MAX, BURST_MAX = 10.0, 100


@_produces("float")
def _rate(v: Any) -> tuple[bool, Any, str]:
    ok = _finite(v) and 0 < v <= RATE_MAX
    return ok, float(v) if ok else v, ("a number from 0 (exclusive) to %g requests per second, e.g. 1.0 "
                                       "(Adobe's documented rate)" % RATE_MAX)


@_produces("int")
def _burst(v: Any) -> tuple[bool, Any, str]:
    ok = isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= BURST_MAX
    return ok, v, "an integer from 1 to %d, e.g. 10 (Adobe's documented burst)" % BURST_MAX


APP_NAME_MAX = 32
MAX_APPS = 32  # the governor's line holds one request per application (agent/governor.py max_waiters 64)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


@_produces("str")
def _app_name(v: Any) -> tuple[bool, Any, str]:
    # A directory name (storage), a command-line word and a JSON string: keep it plain.
    ok = (isinstance(v, str) and 0 < len(v) <= APP_NAME_MAX and v[0] not in "-_"
          and all(c in _NAME_CHARS for c in v))
    return ok, v, ("a name of 1-%d characters: lower-case letters, digits, '-' and '_', starting with a letter "
                   "or digit, e.g. \"news-app\"" % APP_NAME_MAX)



# [storage.pkcs11] and [storage.kernel]: sub-tables of [storage], each one frozen record; their
# checkers take the TOML table (or an instance, for defaults and replace()) and reject unknown keys.
@record.record
class Pkcs11Config:
    """[storage.pkcs11]: the token that seals the store key (key_provider = "pkcs11", agent/keys/pkcs11.py)."""

    module: str = ""
    token_label: str = ""
    slot: Optional[int] = None
    pin_file: str = ""


@record.record
class KernelConfig:
    """[storage.kernel]: the kernel key that seals the store key (key_provider = "kernel", agent/keys/kernel.py)."""

    key_type: str = "trusted"
    master: str = ""
    blob_file: str = ""


def _sub_table(cls: type, kinds: dict, example: str) -> Check:
    @_produces(cls.__name__)
    def check(v: Any) -> tuple[bool, Any, str]:
        if isinstance(v, cls):
            return True, v, ""
        expected = "a table with %s, e.g. %s" % (", ".join(kinds), example)
        if not isinstance(v, abc.Mapping):
            return False, v, expected
        bad = [k for k in v if k not in kinds]
        if bad:
            return False, v, "%s (unknown key %s)" % (expected, ", ".join(repr(k) for k in bad))
        for k, (kind, what) in kinds.items():
            if k in v and not (isinstance(v[k], kind) and not isinstance(v[k], bool)):
                return False, v, "%s (%s must be %s)" % (expected, k, what)
        return True, cls(**dict(v)), ""

    return check


_pkcs11_table = _sub_table(Pkcs11Config, {"module": (str, "a path"), "token_label": (str, "a string"),
                                          "slot": (int, "a slot id"), "pin_file": (str, "a path")},
                           '{ module = "/usr/lib/libckteec.so.0", token_label = "pass-agent", pin_file = '
                           '"/etc/pass-agent/token.pin" }')
_kernel_table = _sub_table(KernelConfig, {"key_type": (str, '"trusted" or "encrypted"'),
                                          "master": (str, 'a master key, e.g. "trusted:kmk"'),
                                          "blob_file": (str, "a path")}, '{ key_type = "trusted" }')


@_produces("Mapping[str, OverrideValue]")
def _overrides(v: Any) -> tuple[bool, Any, str]:
    ok = isinstance(v, abc.Mapping) and all(isinstance(x, (str, int, float, bool)) for x in v.values())
    return ok, _MappingProxy(dict(v)) if ok else v, \
        "a table of X-Device-Info fields with string, number or boolean values"


# (table, key) -> (checker, default). None as default means "not set" (board or built-in decides).
SCHEMA: dict[str, dict[str, tuple[Check, Any]]] = {
    "adobe": {
        "base_url": (_str, PRODUCTION_BASE_URL),
        "software_statement": (_str, "/etc/pass-agent/software-statement.jwt"),
        "redirect_uri": (_opt_str, None),
        "ca_file": (_opt_str, None),
        "timeout": (_pos_number, 15.0),
    },
    "device": {
        "board": (_str, "generic-linux"),
        "root": (_str, "/"),
        "application_id": (_opt_str, None),
        "overrides": (_overrides, {}),
    },
    "storage": {
        "dir": (_opt_str, None),
        "token_cache": (_choice("flash", "runtime", "memory"), "flash"),
        "runtime_dir": (_str, "/run/pass-agent"),
        # Who seals the store key (issue 19, docs/SECURITY.md "Key providers"); anchor_dir: where the
        # device/kernel providers keep the generation counter for rollback detection ("" none).
        "key_provider": (_choice("device", "pkcs11", "kernel"), "device"),
        "anchor_dir": (_str, ""),
        "pkcs11": (_pkcs11_table, Pkcs11Config()),
        "kernel": (_kernel_table, KernelConfig()),
    },
    "socket": {
        "path": (_str, "/run/pass-agent/agent.sock"),
        "mode": (_mode, 0o660),
        "allow_uids": (_int_list, ()),
        "allow_gids": (_int_list, ()),
        "allow_groups": (_str_list, ()),
        "max_connections": (_pos_int, 512),
        "max_per_uid": (_pos_int, 64),
        "idle_timeout": (_pos_number, 300.0),
    },
    "console": {
        "port": (_str, ""),
        "baudrate": (_pos_int, 115200),
        "password_hash": (_str, ""),
        "dumb": (_bool, False),
        "idle_lock": (_pos_number, 300.0),
    },
    "refresh": {
        "at": (_fraction(0.1, 0.95), 0.8),
        "jitter": (_fraction(0.0, 0.5), 0.1),
        "backoff_cap": (_pos_number, 300.0),
    },
    # The box-wide upstream budget (agent/governor.py): Adobe throttles the public address, so every
    # application's requests share it; an integrator behind a carrier NAT may assume less (docs/OPERATIONS.md).
    "upstream": {
        "rate": (_rate, 1.0),
        "burst": (_burst, 10),
        "assume_burst": (_bool, True),
        "slack": (_fraction(0.0, 10.0), 0.1),
        "pause_cap": (_fraction(1.0, 86400.0), 300.0),
    },
    "log": {
        "level": (_choice("debug", "info", "warning", "error"), "info"),
    },
    # The optional loopback WebSocket endpoint for web apps (issue 18, docs/WEB.md); "" listen: off.
    "web": {
        "listen": (_str, ""),
        "allowed_origins": (_origin_list, ()),
        "tokens_file": (_str, ""),
        "securityagent": (_str, ""),
        "max_connections": (_pos_int, 64),
        "max_message": (_pos_int, 65536),
        "idle_timeout": (_pos_number, 300.0),
        "handshake_timeout": (_pos_number, 10.0),
    },
    # The REST API v2 gateway on a second Unix socket (issue 17, docs/GATEWAY.md); off unless enabled.
    "gateway": {
        "enabled": (_bool, False),
        "path": (_str, "/run/pass-agent/api.sock"),
        "mode": (_mode, 0o660),
        "base_url": (_opt_str, None),
        "max_header_bytes": (_pos_int, 16384),
        "max_body_bytes": (_pos_int, 65536),
        "max_answer_bytes": (_pos_int, 1048576),
        "idle_timeout": (_pos_number, 60.0),
        "max_connections": (_pos_int, 64),
        "max_per_uid": (_pos_int, 16),
        "max_inflight": (_pos_int, 4),
        "config_cache_ttl": (_fraction(0.0, 300.0), 180.0),
        "refresh_wait": (_fraction(0.0, 120.0), 35.0),
        "item_retries": (_int_range(0, 3), 2),
        "retry_backoff": (_fraction(0.01, 30.0), 1.0),
    },
}

# One [[app]] table: (key) -> (checker, default). `name` and `software_statement` are required in a
# file; their defaults are those of the single-application form's application "default".
APP_SCHEMA: dict[str, tuple[Check, Any]] = {
    "name": (_app_name, "default"),
    "software_statement": (_str, "/etc/pass-agent/software-statement.jwt"),
    "redirect_uri": (_opt_str, None),
    "application_id": (_opt_str, None),
    "allow_uids": (_int_list, ()),
    "allow_gids": (_int_list, ()),
    "allow_groups": (_str_list, ()),
}
APP_REQUIRED = ("name", "software_statement")
DEFAULT_APP = "default"
# Keys of the single-application form that an [[app]] table replaces: setting one next to [[app]] is
# an error (which application would it belong to?).
_LEGACY_APP_KEYS = (("adobe", "software_statement"), ("adobe", "redirect_uri"), ("device", "application_id"),
                    ("socket", "allow_uids"), ("socket", "allow_gids"), ("socket", "allow_groups"))

# Keys that hold paths to files which must exist when set.
_MUST_EXIST = {("adobe", "software_statement"), ("adobe", "ca_file")}
STORAGE_DEFAULT_DIR = "/var/lib/pass-agent"


# -- the typed, read-only configuration ----------------------------------------------------------
# One frozen record (agent/record.py) per SCHEMA table, fields in SCHEMA order with the same defaults and the type
# each key's checker produces (tests/test_config_typed.py keeps them in step). Lists are tuples and
# [device.overrides] a read-only mapping, so nothing reachable from a Config can be changed in place.


def _empty_overrides() -> Mapping[str, OverrideValue]:
    return _MappingProxy({})


@record.record
class AdobeConfig:
    """[adobe]: where Adobe Pass is and which registered application this box is."""

    base_url: str = PRODUCTION_BASE_URL
    software_statement: str = "/etc/pass-agent/software-statement.jwt"
    redirect_uri: Optional[str] = None
    ca_file: Optional[str] = None
    timeout: float = 15.0


@record.record
class DeviceConfig:
    """[device]: how this box describes itself in X-Device-Info (agent/boards.py)."""

    board: str = "generic-linux"
    root: str = "/"
    application_id: Optional[str] = None
    overrides: Mapping[str, OverrideValue] = field(default_factory=_empty_overrides)


@record.record
class StorageConfig:
    """[storage]: where credentials live (None dir: the board profile's, else STORAGE_DEFAULT_DIR)."""

    dir: Optional[str] = None
    token_cache: str = "flash"
    runtime_dir: str = "/run/pass-agent"
    key_provider: str = "device"
    anchor_dir: str = ""
    pkcs11: Pkcs11Config = field(default_factory=Pkcs11Config)
    kernel: KernelConfig = field(default_factory=KernelConfig)


@record.record
class SocketConfig:
    """[socket]: the local API's socket and who may connect."""

    path: str = "/run/pass-agent/agent.sock"
    mode: int = 0o660
    allow_uids: Tuple[int, ...] = ()
    allow_gids: Tuple[int, ...] = ()
    allow_groups: Tuple[str, ...] = ()
    max_connections: int = 512
    max_per_uid: int = 64
    idle_timeout: float = 300.0


@record.record
class ConsoleConfig:
    """[console]: the serial console ("" port: off)."""

    port: str = ""
    baudrate: int = 115200
    password_hash: str = ""
    dumb: bool = False
    idle_lock: float = 300.0


@record.record
class RefreshConfig:
    """[refresh]: when to refresh the token, as fractions of its lifetime, and the backoff cap."""

    at: float = 0.8
    jitter: float = 0.1
    backoff_cap: float = 300.0


@record.record
class UpstreamConfig:
    """[upstream]: the box-wide budget every request to Adobe passes (agent/governor.py): `rate` requests
    per second after a one-time `burst`; `assume_burst` false: assume the address already spent the burst
    (another box behind the same NAT), `slack` seconds added to each spacing for arrival jitter,
    `pause_cap` the longest pause a 429's Retry-After can impose on every application."""

    rate: float = 1.0
    burst: int = 10
    assume_burst: bool = True
    slack: float = 0.1
    pause_cap: float = 300.0


@record.record
class LogConfig:
    """[log]"""

    level: str = "info"


@record.record
class WebConfig:
    """[web]: the optional loopback WebSocket endpoint in Thunder's JSON-RPC dialect ("" listen: off)."""

    listen: str = ""
    allowed_origins: Tuple[str, ...] = ()
    tokens_file: str = ""
    securityagent: str = ""
    max_connections: int = 64
    max_message: int = 65536
    idle_timeout: float = 300.0
    handshake_timeout: float = 10.0


@record.record
class GatewayConfig:
    """[gateway]: the REST API v2 gateway on a second Unix socket (docs/GATEWAY.md); off unless enabled."""

    enabled: bool = False
    path: str = "/run/pass-agent/api.sock"
    mode: int = 0o660
    base_url: Optional[str] = None
    max_header_bytes: int = 16384
    max_body_bytes: int = 65536
    max_answer_bytes: int = 1048576
    idle_timeout: float = 60.0
    max_connections: int = 64
    max_per_uid: int = 16
    max_inflight: int = 4
    config_cache_ttl: float = 180.0
    refresh_wait: float = 35.0
    item_retries: int = 2
    retry_backoff: float = 1.0


# TOML table -> its record class; the root's fields are these tables plus `path`.
SECTIONS: dict[str, type] = {"adobe": AdobeConfig, "device": DeviceConfig, "storage": StorageConfig,
                             "socket": SocketConfig, "console": ConsoleConfig, "refresh": RefreshConfig,
                             "upstream": UpstreamConfig, "log": LogConfig, "web": WebConfig, "gateway": GatewayConfig}


@record.record
class AppConfig:
    """One registered application ([[app]], or the single-application form's "default"): its software
    statement, the applicationId of its X-Device-Info, and which local users may use its token."""

    name: str = "default"
    software_statement: str = "/etc/pass-agent/software-statement.jwt"
    redirect_uri: Optional[str] = None
    application_id: Optional[str] = None
    allow_uids: Tuple[int, ...] = ()
    allow_gids: Tuple[int, ...] = ()
    allow_groups: Tuple[str, ...] = ()


@record.record
class Config:
    """The whole validated configuration. Build it with load(), validate(), defaults() or local();
    derive a changed copy with replace() (tests, tools); never change one in place."""

    adobe: AdobeConfig = field(default_factory=AdobeConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    socket: SocketConfig = field(default_factory=SocketConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    log: LogConfig = field(default_factory=LogConfig)
    web: WebConfig = field(default_factory=WebConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    path: Optional[str] = None  # the file it was read from; None when built in code
    app: Tuple[AppConfig, ...] = ()  # the [[app]] tables; () for a single-application file (see `apps`)

    @property
    def apps(self) -> Tuple[AppConfig, ...]:
        """Every registered application: the [[app]] tables, or the single-application form's one,
        named "default" (derived on each call, so replace(adobe=...) on such a file is seen)."""
        if self.app:
            return self.app
        s = self.socket
        return (AppConfig(name=DEFAULT_APP, software_statement=self.adobe.software_statement,
                          redirect_uri=self.adobe.redirect_uri, application_id=self.device.application_id,
                          allow_uids=s.allow_uids, allow_gids=s.allow_gids, allow_groups=s.allow_groups),)

    def app_named(self, name: str) -> Optional[AppConfig]:
        for a in self.apps:
            if a.name == name:
                return a
        return None

    def replace(self, *, path: Any = record.MISSING, app: Any = record.MISSING,
                **tables: Mapping[str, Any]) -> Config:
        """A copy with keys of some tables changed: cfg.replace(adobe={"timeout": 5.0}). An unknown table
        or key raises TypeError at once. Values are frozen (lists to tuples) but not validated: this is
        for code that builds configurations (tests, tools), the file goes through validate().
        `app`: the [[app]] tables, as AppConfigs or dicts of APP_SCHEMA keys ([] or (): single-application)."""
        changes: dict[str, Any] = {}
        if app is not record.MISSING:
            changes["app"] = tuple(a if isinstance(a, AppConfig) else AppConfig(**{k: _freeze(v) for k, v in a.items()})
                                   for a in app)
        for table, values in tables.items():
            if table not in SECTIONS:
                raise TypeError("unknown configuration table [%s]; expected one of %s" % (table, ", ".join(SECTIONS)))
            changes[table] = record.replace(getattr(self, table), **{k: _freeze(v) for k, v in values.items()})
        if path is not record.MISSING:
            changes["path"] = path
        return record.replace(self, **changes)

    def to_dict(self) -> dict:
        """The tables as plain nested dicts and lists (TOML and JSON shaped); `path` left out. With
        [[app]] tables: "app" is their list, and the single-application keys they replace are left out."""
        out = {table: {f.name: _thaw(getattr(getattr(self, table), f.name))
                       for f in record.fields(getattr(self, table))} for table in SECTIONS}
        if self.app:
            for table, key in _LEGACY_APP_KEYS:
                out[table].pop(key, None)
            out["app"] = [{f.name: _thaw(getattr(a, f.name)) for f in record.fields(AppConfig)} for a in self.app]
        return out


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(v)
    if isinstance(v, dict):
        return _MappingProxy(dict(v))
    return v


def _thaw(v: Any) -> Any:
    if record.is_record(v) and not isinstance(v, type):  # [storage.pkcs11]: a sub-table
        return {f.name: _thaw(getattr(v, f.name)) for f in record.fields(v) if getattr(v, f.name) is not None}
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, abc.Mapping):
        return dict(v)
    return v


def _section(table: str, values: Mapping[str, Any]) -> Any:
    """One table's record from its complete, normalised values (the multi-app [[app]] elements reuse it)."""
    return SECTIONS[table](**{k: _freeze(v) for k, v in values.items()})


def _build(cfg: Mapping[str, Mapping[str, Any]], path: str | None) -> Config:
    return Config(path=path, **{table: _section(table, cfg[table]) for table in SECTIONS})


def _default_tables() -> dict:
    return {t: {k: (dict(d) if isinstance(d, dict) else list(d) if isinstance(d, list) else d)
                for k, (_, d) in keys.items()} for t, keys in SCHEMA.items()}


def defaults() -> Config:
    """Every key at its SCHEMA default (no file read, nothing checked)."""
    return _build(_default_tables(), None)


def _describe(v: Any) -> str:
    text = repr(v)
    if len(text) > 60:
        text = text[:57] + "..."
    return "%s (%s)" % (text, type(v).__name__)


def is_loopback(host: str) -> bool:
    """A loopback literal (127.0.0.0/8, ::1) or "localhost" (also agent/web/guard.py's test)."""
    if host == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _has_module(name: str) -> bool:
    """Whether a package is installed for this Python, without importing it."""
    import importlib.util

    return importlib.util.find_spec(name) is not None


def validate(data: Mapping[str, Any], path: str | None = None, check_files: bool = True) -> Config:
    """Merge `data` (parsed TOML) over the defaults; raise ConfigError listing every problem."""
    from urllib.parse import urlsplit

    problems: list[str] = []
    cfg = _default_tables()
    base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    for table, value in data.items():
        if table == "app":  # [[app]]: _validate_apps below
            continue
        if table not in SCHEMA:
            problems.append("unknown table [%r]; expected one of %s, [[app]]" % (table, ", ".join("[%s]" % t for t in SCHEMA)))
            continue
        if not isinstance(value, abc.Mapping):
            problems.append("[%s] must be a table, found %s" % (table, _describe(value)))
            continue
        for key, v in value.items():
            if key not in SCHEMA[table]:
                problems.append("[%s] unknown key %r; known keys: %s" % (table, key, ", ".join(SCHEMA[table])))
                continue
            ok, norm, expected = SCHEMA[table][key][0](v)
            if not ok:
                problems.append("[%s] %s: found %s, expected %s" % (table, key, _describe(v), expected))
                continue
            cfg[table][key] = norm
    # Relative paths are relative to the config file, so a config dir can be moved as a whole.
    for table, key in (("adobe", "software_statement"), ("adobe", "ca_file"), ("storage", "dir"),
                       ("storage", "runtime_dir"), ("socket", "path"), ("device", "root"), ("web", "tokens_file"),
                       ("gateway", "path")):
        v = cfg[table][key]
        if isinstance(v, str) and v and not os.path.isabs(v) and "://" not in v:
            cfg[table][key] = os.path.normpath(os.path.join(base_dir, v))
    url = cfg["adobe"]["base_url"]
    if isinstance(url, str):
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:  # e.g. an unclosed IPv6 bracket
            parts, host = None, None
        if parts is None or parts.scheme not in ("http", "https") or not host:
            problems.append("[adobe] base_url: found %r, expected an https:// URL such as %s" % (url, PRODUCTION_BASE_URL))
        elif parts.scheme == "http" and not is_loopback(host):
            problems.append("[adobe] base_url: found %r; plain http:// is allowed only for loopback hosts "
                            "(localhost, 127.0.0.1, ::1), use https://" % url)
    for name in cfg["socket"]["allow_groups"]:  # a checked tuple (a wrong type stayed the default)
        try:
            grp.getgrnam(name)
        except KeyError:
            problems.append("[socket] allow_groups: no group named %r on this system; create it (sysusers.d) or "
                            "use allow_gids" % name)
    ph = cfg["console"]["password_hash"]
    if isinstance(ph, str) and ph:
        from agent import consolehash

        try:
            consolehash.parse(ph)
        except ConfigError as e:  # its message never echoes the hash
            problems.extend("[console] password_hash: " + p.split(": ", 1)[-1] for p in e.problems)
    if cfg["web"]["listen"]:
        problems.extend(_web_problems(cfg["web"], check_files, data.get("app")))
    problems.extend(_gateway_problems(cfg["gateway"], cfg["adobe"]["base_url"], cfg["socket"]["path"]))
    if check_files:
        port = cfg["console"]["port"]
        if isinstance(port, str) and port and not _has_module("serial"):
            problems.append("[console] port: set to %r, but pyserial is not installed for this Python; install "
                            "pyserial, or set port = \"\" to run without the console" % port)
        for table, key in _MUST_EXIST:
            if (table, key) in _LEGACY_APP_KEYS and "app" in data:
                continue  # each [[app]] table's statement is checked in _validate_apps
            p = cfg[table][key]
            if p and not os.path.isfile(p):
                problems.append("[%s] %s: file %s does not exist or is not a regular file" % (table, key, p))
            elif p and not os.access(p, os.R_OK):
                problems.append("[%s] %s: file %s is not readable by this user" % (table, key, p))
    apps = _validate_apps(data, base_dir, check_files, problems) if "app" in data else ()
    if cfg["storage"]["key_provider"] != "device" or cfg["storage"]["anchor_dir"]:
        from agent import keys  # standard library only until a provider is used

        problems.extend(keys.config_problems(cfg["storage"], check_files))
    if problems:
        raise ConfigError(problems, path)
    return record.replace(_build(cfg, path), app=apps)


# -- the validated-configuration cache's side (agent/configcache.py) --------------------------------
# validate() depends on the file's bytes, on the file's directory (relative paths) and on the box:
# groups named by allow_groups, files named by software_statement/ca_file, pyserial for a console
# port, and, for optional parts, packages and files of their own. A cached configuration keeps only
# what the bytes and the path decide; environment_ok() re-runs the box's checks on every start.


def cacheable(cfg: Config) -> bool:
    """Whether a validated configuration may be cached: its box-dependent checks are those of
    environment_ok(). A [web] endpoint, the [gateway] and a key provider other than the default
    "device" (or an anchor_dir) check packages and files of their own: such a file is always
    validated in full, as before the cache."""
    s = cfg.storage
    return (not cfg.web.listen and not cfg.gateway.enabled and s.key_provider == "device" and not s.anchor_dir
            and not s.pkcs11.module)


def environment_ok(cfg: Config) -> bool:
    """True when every box-dependent check validate() made on this (cacheable) configuration still
    passes (check_files=True). False sends the caller to the full validate(), which says what is wrong."""
    for name in cfg.socket.allow_groups + tuple(g for a in cfg.app for g in a.allow_groups):
        try:
            grp.getgrnam(name)
        except KeyError:
            return False
    if cfg.console.port and not _has_module("serial"):
        return False
    files = [a.software_statement for a in cfg.app] if cfg.app else [cfg.adobe.software_statement]
    files.append(cfg.adobe.ca_file)
    return all(not f or (os.path.isfile(f) and os.access(f, os.R_OK)) for f in files)  # as validate(): set ones


def to_plain(cfg: Config) -> dict:
    """A validated Config as plain dicts, lists and scalars (what marshal stores); from_plain inverts it."""
    out = cfg.to_dict()
    for table, key in _LEGACY_APP_KEYS:  # [[app]] files: to_dict leaves these out, they hold the defaults
        out[table].setdefault(key, _thaw(getattr(getattr(cfg, table), key)))
    out["app"] = [{f.name: _thaw(getattr(a, f.name)) for f in record.fields(AppConfig)} for a in cfg.app]
    out["storage"]["pkcs11"] = {f.name: getattr(cfg.storage.pkcs11, f.name) for f in record.fields(Pkcs11Config)}
    out["storage"]["kernel"] = {f.name: getattr(cfg.storage.kernel, f.name) for f in record.fields(KernelConfig)}
    return out


def from_plain(plain: Mapping[str, Any], path: str | None) -> Config:
    """The Config to_plain() described (raises KeyError/TypeError on a malformed description)."""
    tables = {}
    for table, cls in SECTIONS.items():
        values = dict(plain[table])
        if table == "storage":
            values["pkcs11"] = Pkcs11Config(**values["pkcs11"])
            values["kernel"] = KernelConfig(**values["kernel"])
        tables[table] = cls(**{k: _freeze(v) for k, v in values.items()})
    apps = tuple(AppConfig(**{k: _freeze(v) for k, v in a.items()}) for a in plain["app"])
    return Config(path=path, app=apps, **tables)


def _validate_apps(data: Mapping[str, Any], base_dir: str, check_files: bool, problems: list[str]) -> tuple:
    """The [[app]] tables as AppConfigs; every problem appended to `problems`."""
    raw = data["app"]
    if isinstance(raw, abc.Mapping):
        problems.append("[app] must be an array of tables, one per application: write [[app]] with name = \"...\" "
                        "in each (not [app] or [app.NAME])")
        return ()
    if not isinstance(raw, (list, tuple)) or not raw:
        problems.append("app: found %s, expected one or more [[app]] tables" % _describe(raw))
        return ()
    if len(raw) > MAX_APPS:
        problems.append("[[app]]: %d applications, at most %d are supported" % (len(raw), MAX_APPS))
    for table, key in _LEGACY_APP_KEYS:
        section = data.get(table)
        if isinstance(section, abc.Mapping) and key in section:
            problems.append("[%s] %s is set next to [[app]] tables: with [[app]], each application has its own "
                            "%s; move it into the [[app]] table(s) it belongs to" % (table, key, key))
    overrides = (data.get("device") or {}).get("overrides") if isinstance(data.get("device"), abc.Mapping) else None
    if isinstance(overrides, abc.Mapping) and "applicationId" in overrides:
        problems.append("[device.overrides] applicationId is set next to [[app]] tables: set application_id in each "
                        "[[app]] table instead")
    apps, seen = [], {}
    for i, element in enumerate(raw, 1):
        where = "[[app]] #%d" % i
        if not isinstance(element, abc.Mapping):
            problems.append("%s must be a table, found %s" % (where, _describe(element)))
            continue
        name = element.get("name")
        if isinstance(name, str) and _app_name(name)[0]:
            where = "[[app]] %r" % name
            if name in seen:
                problems.append("%s: the name is used twice (tables #%d and #%d); each application needs its own "
                                "name" % (where, seen[name], i))
            seen.setdefault(name, i)
        values = {k: (list(d) if isinstance(d, tuple) else d) for k, (_, d) in APP_SCHEMA.items()}
        ok_all = True
        for key in APP_REQUIRED:
            if key not in element:
                problems.append("%s: missing %s (required in every [[app]] table)" % (where, key))
                ok_all = False
        for key, v in element.items():
            if key not in APP_SCHEMA:
                problems.append("%s unknown key %r; known keys: %s" % (where, key, ", ".join(APP_SCHEMA)))
                ok_all = False
                continue
            ok, norm, expected = APP_SCHEMA[key][0](v)
            if not ok:
                problems.append("%s %s: found %s, expected %s" % (where, key, _describe(v), expected))
                ok_all = False
                continue
            values[key] = norm
        st = values["software_statement"]
        if isinstance(st, str) and st and not os.path.isabs(st):
            values["software_statement"] = st = os.path.normpath(os.path.join(base_dir, st))
        for gname in values["allow_groups"]:
            try:
                grp.getgrnam(gname)
            except KeyError:
                problems.append("%s allow_groups: no group named %r on this system; create it (sysusers.d) or use "
                                "allow_gids" % (where, gname))
        if check_files and "software_statement" in element and ok_all:
            if not st:
                problems.append("%s software_statement: empty; give the path of the application's statement" % where)
            elif not os.path.isfile(st):
                problems.append("%s software_statement: file %s does not exist or is not a regular file" % (where, st))
            elif not os.access(st, os.R_OK):
                problems.append("%s software_statement: file %s is not readable by this user" % (where, st))
        if ok_all:
            apps.append(AppConfig(**{k: _freeze(v) for k, v in values.items()}))
    return tuple(apps)


def _web_problems(web: Mapping[str, Any], check_files: bool, app_tables: Any) -> list[str]:
    """[web] when the endpoint is on: loopback only, origins, an authenticator, the optional packages, and
    a tokens file naming only configured applications. The checks live in agent/web/guard.py (standard
    library only, no h11/wsproto), imported only here."""
    from agent.web import guard

    names = ("default",)
    if isinstance(app_tables, list) and app_tables:
        names = tuple(a.get("name") for a in app_tables if isinstance(a, abc.Mapping) and isinstance(a.get("name"), str))
    return guard.config_problems(web, check_files, names)


def gateway_origin(base_url: str) -> str:
    """scheme://host[:port] of a base URL: where the gateway sends /api/v2/ calls ([gateway] base_url,
    else the host of [adobe] base_url: REST API v2 lives on the same host as DCR, reference section 8)."""
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    return "%s://%s" % (parts.scheme, parts.netloc)


def _gateway_problems(gw: Mapping[str, Any], adobe_url: Any, socket_path: Any) -> list[str]:
    """[gateway]: its upstream must be https (plain http for loopback hosts only, like [adobe]), without
    a path of its own, and its socket must not be the JSON-RPC socket."""
    problems = []
    url = gw["base_url"]
    if isinstance(url, str) and url:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            parts, host = None, None
        if parts is None or parts.scheme not in ("http", "https") or not host:
            problems.append("[gateway] base_url: found %r, expected an https:// URL such as https://sp.auth.adobe.com"
                            % url)
        elif parts.scheme == "http" and not is_loopback(host):
            problems.append("[gateway] base_url: found %r; plain http:// is allowed only for loopback hosts "
                            "(localhost, 127.0.0.1, ::1), use https://" % url)
        elif parts.path not in ("", "/") or parts.query or parts.fragment:
            problems.append("[gateway] base_url: found %r; give the host only (scheme://host[:port]): the gateway "
                            "forwards the player's /api/v2/ path as it is" % url)
    if gw["enabled"] and not _has_module("h11"):
        problems.append("[gateway] enabled: the gateway needs the Python package h11, which is not installed for "
                        "this Python; pip install 'pass-agent[gateway]', or set enabled = false")
    if gw["enabled"] and gw["path"] == socket_path:
        problems.append("[gateway] path: %r is also [socket] path; the gateway needs its own socket, e.g. "
                        "/run/pass-agent/api.sock" % gw["path"])
    return problems


def app_gids(app: AppConfig) -> list[int]:
    """An application's `allow_gids` plus the gids of its `allow_groups` (resolved now, like allowed_gids)."""
    gids = list(app.allow_gids)
    for name in app.allow_groups:
        try:
            gids.append(grp.getgrnam(name).gr_gid)
        except KeyError:
            pass
    return sorted(set(gids))


def app_acls(cfg: Config) -> dict[str, tuple[frozenset, frozenset]]:
    """Application name -> (allowed uids, allowed gids), in the configuration's order (the socket server's
    per-application access lists; root and the agent's own uid are allowed every application)."""
    return {a.name: (frozenset(a.allow_uids), frozenset(app_gids(a))) for a in cfg.apps}


def allowed_gids(cfg: Config) -> list[int]:
    """`allow_gids` plus the gids of `allow_groups` (names resolved now: sysusers may assign them at boot)."""
    gids = list(cfg.socket.allow_gids)
    for name in cfg.socket.allow_groups:
        try:
            gids.append(grp.getgrnam(name).gr_gid)
        except KeyError:
            pass
    return sorted(set(gids))


def resolve_path(cli_path: str | None) -> str:
    return cli_path or os.environ.get(ENV_VAR) or DEFAULT_PATH


def toml_module() -> Any:
    """tomllib, or tomli before 3.11 (ImportError without it); imported here, not at the top, so that
    `agent.config` (its types, paths and defaults) imports on a box whose client-only Python lacks
    tomli, and stage 1 of `run` imports no TOML parser on a configuration-cache hit. Board profiles
    (agent/boards.py) are read with it too."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.9/3.10 only
        import tomli as tomllib
    return tomllib


def _toml(path: str) -> Any:
    """toml_module(), or the ConfigError naming the missing package for `path`."""
    try:
        return toml_module()
    except ImportError:
        raise ConfigError(["cannot be read: Python %d.%d has no tomllib and the package tomli is not installed; "
                           "install tomli" % sys.version_info[:2]], path)


def load(path: str | None = None, check_files: bool = True) -> Config:
    """Read and validate the config file (`--config`, else $PASS_AGENT_CONFIG, else the default path)."""
    path = resolve_path(path)
    _toml(path)  # a missing tomli is said before anything else, as always
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(["file not found; create it (see README.md, Configuration) or pass --config FILE"], path)
    except IsADirectoryError:
        raise ConfigError(["is a directory, expected a TOML file"], path)
    except PermissionError:
        raise ConfigError(["not readable by this user"], path)
    return parse(raw, path, check_files)


def parse(raw: bytes, path: str, check_files: bool = True) -> Config:
    """Parse and validate a configuration file's bytes (load() after reading them; the daemon's start
    reads the bytes itself, for the validated-configuration cache's key, agent/configcache.py)."""
    tomllib = _toml(path)
    try:
        data = tomllib.loads(raw.decode("utf-8"))  # what tomllib.load(f) does
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(["not valid TOML: %s" % e], path)
    except UnicodeDecodeError:
        raise ConfigError(["not valid UTF-8"], path)
    except RecursionError:
        raise ConfigError(["not usable TOML: arrays or tables nested too deeply"], path)
    except ValueError as e:  # e.g. an integer beyond Python's digit limit
        raise ConfigError(["not usable TOML: %s" % str(e)[:200]], path)
    return validate(data, path, check_files)


SECRET_KEYS = {("console", "password_hash")}


def view(cfg: Config) -> dict:
    """The effective configuration for display: secrets masked, plain dicts and lists (as JSON)."""
    out = cfg.to_dict()
    for table, key in SECRET_KEYS:
        if out[table][key]:
            out[table][key] = "<set, hidden>"
    return out


def local(base_dir: str, base_url: str, statement: str, ca_file: str | None = None,
          **tables: Mapping[str, Any]) -> Config:
    """A complete config with every path under `base_dir` (demo, tests, benchmarks, a developer's laptop).

    `tables` update tables by name, e.g. local(..., log={"level": "debug"}).
    """
    cfg = defaults().replace(
        adobe={"base_url": base_url, "software_statement": statement, "ca_file": ca_file, "timeout": 5.0},
        storage={"dir": os.path.join(base_dir, "store"), "runtime_dir": os.path.join(base_dir, "run")},
        socket={"path": os.path.join(base_dir, "agent.sock"), "mode": 0o600})
    return cfg.replace(**tables)


def write(cfg: Config, path: str) -> str:
    """Write `cfg` as TOML to `path` (0600: it may name a console password hash); returns the path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(to_toml(cfg))
    return path


def to_toml(cfg: Config | Mapping[str, Any]) -> str:
    """Render a Config (or a dict of tables, e.g. a test's deliberately broken file) as TOML."""
    if isinstance(cfg, Config):
        cfg = cfg.to_dict()
    lines: list[str] = []

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return '"%s"' % s

    for table, keys in cfg.items():
        if table == "app" and isinstance(keys, list):  # [[app]] arrays of tables
            for element in keys:
                lines.append("[[app]]")
                lines.extend("%s = %s" % (k, val(v)) for k, v in element.items() if v is not None)
                lines.append("")
            continue
        if table.startswith("_") or not isinstance(keys, dict):
            continue
        plain = {k: v for k, v in keys.items() if v is not None and not isinstance(v, dict)}
        nested = {k: v for k, v in keys.items() if isinstance(v, dict)}
        lines.append("[%s]" % table)
        lines.extend("%s = %s" % (k, val(v)) for k, v in plain.items())
        for k, sub in nested.items():
            lines.append("[%s.%s]" % (table, k))
            lines.extend("%s = %s" % (sk, val(sv)) for sk, sv in sub.items())
        lines.append("")
    return "\n".join(lines)
