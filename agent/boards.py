"""Board profiles: load and validate `board/<name>/board.toml`, and run device identification for
the config's `[device]` table (the daemon and `pass-agent device-info` call this). The result, an
`Identity`, rebuilds its header when the network changed (the service asks once per upstream
request), and `check_required` tells `pass-agent check` which required fields are left `Unknown`.

A profile is returned as a plain JSON-able dict (the shape `agent.deviceinfo.identify` takes, so it
can also be handed to MicroPython as JSON): name, description, path, fields, sources, identity,
network_interfaces, display_connectors, console_port, storage_dir.

`device_id_for` finds only the device id (what the store key derives from) with the same reads
identify() makes for it, for the daemon's first stage (agent/startup.py), which must reach READY=1
without building X-Device-Info; the second stage runs identify_for with the same profile and checks
that both found the same id. tomllib is imported only when a profile file is parsed (the daemon's
validated-configuration cache holds the parsed profile, agent/configcache.py).

CPython only (tomllib/tomli, socket/fcntl for the interface IPv4). Must never: accept a profile with
an unknown key or source (a typo would silently change a box's identity), or look up the real
machine's interfaces when identifying a fixture root.
"""

from __future__ import annotations

import os

import agent
from agent import devfields, devfiles, deviceinfo
from agent.errors import ConfigError, DeviceInfoError

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not on the daemon's start path (issue 20)
    from typing import Any, Callable

    from agent.config import DeviceConfig

ENV_BOARD_DIR = "PASS_AGENT_BOARD_DIR"
DEFAULT_BOARD = "generic-linux"
_SIOCGIFADDR = 0x8915

# table -> {key: (expected description, checker)}
_LIST = "a list of strings"
_SCHEMA: dict[str, dict[str, str]] = {
    "board": {"name": "a string", "description": "a string"},
    "fields": {},  # X-Device-Info field names, checked by agent.devfields.check_field
    "sources": {f: _LIST for f in deviceinfo.SOURCE_FIELDS},
    "identity": {"sources": _LIST},
    "network": {"interfaces": _LIST},
    "display": {"connectors": _LIST},
    "console": {"port": "a string (a device path such as /dev/ttyS0)"},
    "storage": {"dir": "an absolute path"},
}


def board_dir() -> str:
    """Where board folders live: $PASS_AGENT_BOARD_DIR, else the profiles installed with the package
    (agent/board_profiles/, which setup.py puts into the wheel), else `board/` of the checkout."""
    packaged = os.path.join(os.path.dirname(agent.__file__), "board_profiles")
    return os.environ.get(ENV_BOARD_DIR) or (packaged if os.path.isdir(packaged) else
                                             os.path.join(os.path.dirname(os.path.dirname(agent.__file__)), "board"))


def list_boards() -> list[str]:
    base = board_dir()
    try:
        names = os.listdir(base)
    except OSError:
        return []
    return sorted(n for n in names if os.path.isfile(os.path.join(base, n, "board.toml")))


def _resolve(name_or_path: str) -> str:
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        return name_or_path
    return os.path.join(board_dir(), name_or_path, "board.toml")


def profile_path(name_or_path: str) -> str:
    """Where load_profile reads the profile of a board name or path ("" is the default board)."""
    return _resolve(name_or_path or DEFAULT_BOARD)


def load_profile(name_or_path: str) -> dict:
    """The validated profile dict for a board name (under board_dir()) or a path to a .toml file."""
    return load_profile_bytes(name_or_path)[0]


def load_profile_bytes(name_or_path: str) -> tuple[dict, bytes]:
    """load_profile(), and the exact bytes the profile was parsed from (the configuration cache's key)."""
    from agent.config import toml_module

    tomllib = toml_module()
    path = _resolve(name_or_path)
    if not os.path.isfile(path):
        known = ", ".join(list_boards()) or "none"
        raise ConfigError("board %r: no profile at %s; known boards: %s (or give a path to a board.toml)"
                          % (name_or_path, path, known))
    try:
        with open(path, "rb") as f:
            raw = f.read()
        data = tomllib.loads(raw.decode("utf-8"))  # what tomllib.load(f) does, keeping the bytes
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("cannot read board profile: %s" % e, path)
    problems: list[str] = []
    profile = _validate(data, problems)
    if problems:
        raise ConfigError(problems, path)
    profile["path"] = path
    if not profile["name"]:
        profile["name"] = os.path.basename(os.path.dirname(path))
    return profile, raw


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


def _validate(data: dict, problems: list[str]) -> dict:
    for table, value in data.items():
        if table not in _SCHEMA:
            problems.append("[%s]: unknown table; expected one of %s" % (table, ", ".join("[%s]" % t for t in _SCHEMA)))
        elif not isinstance(value, dict):
            problems.append("%s: found %r, expected a table" % (table, value))
    t = {k: (data.get(k) if isinstance(data.get(k), dict) else {}) for k in _SCHEMA}
    for table, keys in _SCHEMA.items():
        if table == "fields":
            continue
        for key, value in t[table].items():
            if key not in keys:
                problems.append("[%s] %s: unknown key; expected one of %s" % (table, key, ", ".join(keys) or "none"))
            elif keys[key] == _LIST and not _strings(value):
                problems.append("[%s] %s: found %r, expected %s" % (table, key, value, _LIST))
            elif keys[key] != _LIST and not isinstance(value, str):
                problems.append("[%s] %s: found %r, expected %s" % (table, key, value, keys[key]))
    for key, value in t["fields"].items():
        try:
            devfields.check_field(key, value)
        except DeviceInfoError as e:
            problems.append("[fields] %s: %s" % (key, e.message))
    for table, key in [("sources", f) for f in t["sources"]] + [("identity", "sources")]:
        for spec in t[table].get(key, []) if _strings(t[table].get(key, [])) else []:
            try:
                devfiles.parse_source(spec)
            except ValueError as e:
                problems.append("[%s] %s: %s" % (table, key, e))
    storage = t["storage"].get("dir", "/var/lib/pass-agent")
    if isinstance(storage, str) and not storage.startswith("/"):
        problems.append("[storage] dir: found %r, expected an absolute path" % storage)
    return {
        "name": t["board"].get("name", ""),
        "description": t["board"].get("description", ""),
        "fields": dict(t["fields"]),
        "sources": {k: list(v) for k, v in t["sources"].items()},
        "identity": list(t["identity"].get("sources", deviceinfo.DEFAULT_PROFILE["identity"])),
        "network_interfaces": list(t["network"].get("interfaces", deviceinfo.DEFAULT_PROFILE["network_interfaces"])),
        "display_connectors": list(t["display"].get("connectors", [])),
        "console_port": t["console"].get("port", "/dev/ttyS0"),
        "storage_dir": storage,
    }


def interface_ipv4(ifname: str) -> str | None:
    """The IPv4 address of a local interface (SIOCGIFADDR), or None when it has none or on error."""
    import socket  # here, not at the top: the daemon's first stage reads the device id without it
    import struct

    try:
        import fcntl
    except ImportError:  # pragma: no cover - not Linux
        return None
    name = ifname.encode("utf-8", "replace")[:15]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            res = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name))
    except OSError:
        return None
    return socket.inet_ntoa(res[20:24])


def _is_real_root(root: str) -> bool:
    return os.path.realpath(root or "/") == "/"


class Identity(dict):
    """`agent.deviceinfo.identify`'s dict plus `board`, and `refresh_network()` to follow the network.

    The service calls refresh_network() once before each upstream (DCR) request, never on the
    token.get path: a box that moves from Wi-Fi to LAN, gets a new lease, or started before DHCP
    sends a header that describes its connection as it is now. The check is cheap
    (`deviceinfo.network_signature`: one listing, one operstate read per interface, the default
    route); the header is rebuilt only when that changed. The device id, AP-Device-Identifier and
    `board` are never touched after construction. Readers on other threads only read keys; a
    rebuild replaces them with one dict.update (values replaced whole, never edited in place).
    """

    def __init__(self, result: dict, *, root: str, profile: dict, overrides: dict, application_id: str | None,
                 ip_lookup: Callable[[str], str | None] | None, signature: str) -> None:
        super().__init__(result)
        self._args = {"root": root, "profile": profile, "overrides": overrides, "application_id": application_id,
                      "ip_lookup": ip_lookup}
        self._signature = signature
        self.refreshes = 0  # rebuilds done (for status and tests)

    def refresh_network(self) -> bool:
        """Rebuild the header when the network changed; True when X-Device-Info changed. Never raises:
        on any problem the last good header stays."""
        from agent import log as agentlog

        log = agentlog.get("deviceinfo")
        try:
            sig = deviceinfo.network_signature(self._args["root"], self._args["ip_lookup"])
        except Exception as e:  # pragma: no cover - network_signature never raises on its own
            log.debug("network check failed: %s", e)
            return False
        if sig == self._signature:
            return False
        self._signature = sig
        try:
            d = deviceinfo.describe(**self._args)
        except Exception as e:
            log.warning("the network changed but X-Device-Info could not be rebuilt (%s); the previous one is kept", e)
            return False
        self.refreshes += 1
        old_fields, old, old_warnings = self["fields"], self["x_device_info"], self["warnings"]
        warnings = d["warnings"] + [w for w in self.get("device_id_warnings", []) if w not in d["warnings"]]
        self.update(fields=d["fields"], x_device_info=d["x_device_info"], sources=d["sources"], warnings=warnings,
                    omitted=d["omitted"])
        if d["x_device_info"] == old:
            return False
        f = d["fields"]
        log.info("the network changed: X-Device-Info rebuilt (connectionType %s -> %s, connectionIp %s -> %s)",
                 old_fields.get("connectionType"), f.get("connectionType"), old_fields.get("connectionIp", "not sent"),
                 f.get("connectionIp", "not sent"))
        for w in d["warnings"]:
            if w not in old_warnings:
                log.warning("device info: %s", w)
        return True


def device_id_for(device_cfg: DeviceConfig, profile: dict) -> str:
    """The device id identify_for() finds for this [device] table and (loaded) board profile, and
    nothing else: no X-Device-Info field is read or built. Raises what identify() raises first: a
    bad override (DeviceInfoError), then no usable identity source (DeviceInfoError)."""
    overrides = dict(device_cfg.overrides or {})
    for key in overrides:  # identify() checks these before reading anything: the same error first
        devfields.check_field(key, overrides[key])
    p = dict(deviceinfo.DEFAULT_PROFILE, **profile)  # the keys identity reading uses, as _merge_profile
    box = deviceinfo._Box(device_cfg.root or "/", p.get("network_interfaces"), [])
    return deviceinfo.device_identity(box, p.get("identity") or deviceinfo.DEFAULT_PROFILE["identity"])[0]


def identify_for(device_cfg: DeviceConfig, ip_lookup: Callable[[str], str | None] | None = None,
                 profile: dict | None = None) -> Identity:
    """identify() for the configuration's `[device]` table (board, root, application_id, overrides).

    The result is an Identity: `agent.deviceinfo.identify`'s dict plus `board` (the profile dict).
    The real interfaces' IPv4 is looked up only when root is the real `/`. `profile`: the board's
    profile when the caller loaded it already (the daemon), else it is loaded here.
    """
    if profile is None:
        profile = load_profile(device_cfg.board or DEFAULT_BOARD)
    root = device_cfg.root or "/"
    if ip_lookup is None and _is_real_root(root):
        ip_lookup = interface_ipv4
    overrides = dict(device_cfg.overrides or {})
    # the signature first: a change while identify() runs is then seen by the next refresh
    signature = deviceinfo.network_signature(root, ip_lookup)
    result = deviceinfo.identify(root=root, profile=profile, overrides=overrides,
                                 application_id=device_cfg.application_id, ip_lookup=ip_lookup)
    result["board"] = profile
    return Identity(result, root=root, profile=profile, overrides=overrides,
                    application_id=device_cfg.application_id, ip_lookup=ip_lookup, signature=signature)


class UnknownFieldsError(ValueError):
    """Required X-Device-Info fields are `Unknown` (for `pass-agent check`); `fix` says how to set each."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.fix = fix


def check_required(ident: dict) -> None:
    """Raise UnknownFieldsError naming every required field left `Unknown` and how to set it."""
    unknown = devfields.unknown_required(ident["fields"])
    if not unknown:
        return
    path = (ident.get("board") or {}).get("path") or "the board profile"
    detail = ("required X-Device-Info fields left %r: %s; Adobe classifies the box as an unknown platform "
              "(more restrictive rules, shorter authentication TTLs)" % (devfields.FALLBACK, ", ".join(unknown)))
    fix = "; ".join("%s: %s" % (f, devfields.HOW_TO_SET[f].replace("the board profile", path)) for f in unknown)
    raise UnknownFieldsError(detail, fix)
