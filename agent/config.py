"""Configuration: one TOML file, validated completely at start.

Every problem is reported with the file, the key, what was found and what was expected; all
problems are collected before failing, so an integrator fixes a file in one pass. The result is a
plain nested dict mirroring the TOML tables, with every default filled in. Validation covers every
value the agent would otherwise reject later (the console password hash, pyserial for a console
port), so `pass-agent check` passing means `run` gets past its configuration, and `run` fails
before it touches the store, the socket or the network.

Must never: start the agent with a partially valid configuration, or print a traceback for a bad file.
"""

from __future__ import annotations

import grp
import importlib.util
import ipaddress
import math
import os
import sys
from typing import Any, Callable
from urllib.parse import urlsplit

from agent.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

DEFAULT_PATH = "/etc/pass-agent/agent.toml"
ENV_VAR = "PASS_AGENT_CONFIG"
PRODUCTION_BASE_URL = "https://sp.auth.adobe.com/o"

# One checker per value kind: returns (ok, normalised value, expected-description).
Check = Callable[[Any], "tuple[bool, Any, str]"]


def _str(v: Any) -> tuple[bool, Any, str]:
    return isinstance(v, str), v, "a string"


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


def _pos_number(v: Any) -> tuple[bool, Any, str]:
    ok = _finite(v) and v > 0
    return ok, float(v) if ok else v, "a positive, finite number"


def _pos_int(v: Any) -> tuple[bool, Any, str]:
    ok = isinstance(v, int) and not isinstance(v, bool) and v > 0
    return ok, v, "a positive integer"


def _bool(v: Any) -> tuple[bool, Any, str]:
    return isinstance(v, bool), v, "true or false"


def _fraction(lo: float, hi: float) -> Check:
    def check(v: Any) -> tuple[bool, Any, str]:
        ok = _finite(v) and lo <= v <= hi
        return ok, float(v) if ok else v, "a number from %g to %g" % (lo, hi)

    return check


def _choice(*choices: str) -> Check:
    def check(v: Any) -> tuple[bool, Any, str]:
        return v in choices, v, "one of " + ", ".join('"%s"' % c for c in choices)

    return check


def _mode(v: Any) -> tuple[bool, Any, str]:
    ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0o777
    return ok, v, "a file mode as an integer, e.g. 0o660 (TOML octal)"


def _int_list(v: Any) -> tuple[bool, Any, str]:
    ok = isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
    return ok, v, "a list of non-negative integers, e.g. [1000, 1001]"


def _str_list(v: Any) -> tuple[bool, Any, str]:
    ok = isinstance(v, list) and all(isinstance(x, str) and x for x in v)
    return ok, v, "a list of group names, e.g. [\"pass-client\"]"


def _overrides(v: Any) -> tuple[bool, Any, str]:
    ok = isinstance(v, dict) and all(isinstance(x, (str, int, float, bool)) for x in v.values())
    return ok, v, "a table of X-Device-Info fields with string, number or boolean values"


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
    },
    "socket": {
        "path": (_str, "/run/pass-agent/agent.sock"),
        "mode": (_mode, 0o660),
        "allow_uids": (_int_list, []),
        "allow_gids": (_int_list, []),
        "allow_groups": (_str_list, []),
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
    "log": {
        "level": (_choice("debug", "info", "warning", "error"), "info"),
    },
}

# Keys that hold paths to files which must exist when set.
_MUST_EXIST = {("adobe", "software_statement"), ("adobe", "ca_file")}
STORAGE_DEFAULT_DIR = "/var/lib/pass-agent"


def defaults() -> dict:
    cfg = {t: {k: (dict(d) if isinstance(d, dict) else list(d) if isinstance(d, list) else d)
               for k, (_, d) in keys.items()} for t, keys in SCHEMA.items()}
    cfg["_path"] = None
    return cfg


def _describe(v: Any) -> str:
    text = repr(v)
    if len(text) > 60:
        text = text[:57] + "..."
    return "%s (%s)" % (text, type(v).__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate(data: dict, path: str | None = None, check_files: bool = True) -> dict:
    """Merge `data` (parsed TOML) over the defaults; raise ConfigError listing every problem."""
    problems: list[str] = []
    cfg = defaults()
    cfg["_path"] = path
    base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    for table, value in data.items():
        if table not in SCHEMA:
            problems.append("unknown table [%r]; expected one of %s" % (table, ", ".join("[%s]" % t for t in SCHEMA)))
            continue
        if not isinstance(value, dict):
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
                       ("storage", "runtime_dir"), ("socket", "path"), ("device", "root")):
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
        elif parts.scheme == "http" and not _is_loopback(host):
            problems.append("[adobe] base_url: found %r; plain http:// is allowed only for loopback hosts "
                            "(localhost, 127.0.0.1, ::1), use https://" % url)
    for name in cfg["socket"]["allow_groups"] if isinstance(cfg["socket"]["allow_groups"], list) else []:
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
    if check_files:
        port = cfg["console"]["port"]
        if isinstance(port, str) and port and importlib.util.find_spec("serial") is None:
            problems.append("[console] port: set to %r, but pyserial is not installed for this Python; install "
                            "pyserial, or set port = \"\" to run without the console" % port)
        for table, key in _MUST_EXIST:
            p = cfg[table][key]
            if p and not os.path.isfile(p):
                problems.append("[%s] %s: file %s does not exist or is not a regular file" % (table, key, p))
            elif p and not os.access(p, os.R_OK):
                problems.append("[%s] %s: file %s is not readable by this user" % (table, key, p))
    if problems:
        raise ConfigError(problems, path)
    return cfg


def allowed_gids(cfg: dict) -> list[int]:
    """`allow_gids` plus the gids of `allow_groups` (names resolved now: sysusers may assign them at boot)."""
    gids = list(cfg["socket"]["allow_gids"])
    for name in cfg["socket"]["allow_groups"]:
        try:
            gids.append(grp.getgrnam(name).gr_gid)
        except KeyError:
            pass
    return sorted(set(gids))


def resolve_path(cli_path: str | None) -> str:
    return cli_path or os.environ.get(ENV_VAR) or DEFAULT_PATH


def load(path: str | None = None, check_files: bool = True) -> dict:
    """Read and validate the config file (`--config`, else $PASS_AGENT_CONFIG, else the default path)."""
    path = resolve_path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(["file not found; create it (see README.md, Configuration) or pass --config FILE"], path)
    except IsADirectoryError:
        raise ConfigError(["is a directory, expected a TOML file"], path)
    except PermissionError:
        raise ConfigError(["not readable by this user"], path)
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


def view(cfg: dict) -> dict:
    """The effective configuration for display: secrets masked, internal keys dropped."""
    out: dict = {}
    for table, keys in cfg.items():
        if table.startswith("_"):
            continue
        out[table] = {}
        for k, v in keys.items():
            if (table, k) in SECRET_KEYS and v:
                v = "<set, hidden>"
            out[table][k] = v
    return out


def local(base_dir: str, base_url: str, statement: str, ca_file: str | None = None, **tables: dict) -> dict:
    """A complete config with every path under `base_dir` (demo, tests, benchmarks, a developer's laptop).

    `tables` update tables by name, e.g. local(..., log={"level": "debug"}).
    """
    cfg = defaults()
    cfg["adobe"].update(base_url=base_url, software_statement=statement, ca_file=ca_file, timeout=5.0)
    cfg["storage"].update(dir=os.path.join(base_dir, "store"), runtime_dir=os.path.join(base_dir, "run"))
    cfg["socket"].update(path=os.path.join(base_dir, "agent.sock"), mode=0o600)
    for table, values in tables.items():
        cfg[table].update(values)
    return cfg


def write(cfg: dict, path: str) -> str:
    """Write `cfg` as TOML to `path` (0600: it may name a console password hash); returns the path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(to_toml(cfg))
    return path


def to_toml(cfg: dict) -> str:
    """Render a config dict as TOML (used by demo and tests to write config files)."""
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
