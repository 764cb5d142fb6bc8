"""The `pass-agent` command line: argument parsing, and dispatch through the COMMANDS table to
agent/commands.py (which holds every subcommand).

Exit codes: 0 success, 1 operational failure, 2 usage or configuration error (also a Python older
than 3.9 or a missing runtime package: one line, checked before anything else is imported);
`status` exits 3 when the agent answers but holds no valid token. Every subcommand imports what it
needs lazily so that `pass-agent token` stays fast and small on a box. This module must import on
old Pythons (no 3.9+ syntax or imports at module level) so it can say which Python is needed.
Must never: print a traceback for an expected failure, or a secret outside `token`/`headers`.
"""

from __future__ import annotations

import sys

from agent import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing (with re) is not on `run`'s start path (issue 20)
    import argparse  # imported by build_parser only: `run` never needs it (issue 20, start-up time)
    from typing import Sequence

DEFAULT_SOCKET = "/run/pass-agent/agent.sock"
MIN_PYTHON = (3, 9)
# What each command imports beyond the standard library (tomli: only where tomllib is missing).
_NEEDS_CONFIG = ("run", "check", "reset", "device-info", "demo", "login")
_NEEDS_CRYPTO = ("run", "check", "reset", "demo")
# Subcommand -> the agent.commands function that runs it (parsed arguments in, exit code out).
COMMANDS = {"run": "run", "demo": "demo", "emulator": "emulator", "device-info": "device_info",
            "token": "client", "headers": "client", "status": "status", "check": "check", "reset": "reset",
            "console-hash": "console_hash", "login": "login"}
# Subcommands that talk to the agent: their socket path is resolved here (--socket, else the config's).
_SOCKET_COMMANDS = ("token", "headers", "status")


def runtime_problem(command: str | None, version: tuple = tuple(sys.version_info)) -> str | None:
    """One line saying why this Python cannot run `command` (too old, a package missing), or None."""
    here = "%s (%s)" % (".".join(str(v) for v in version[:3]), sys.executable)
    if tuple(version[:2]) < MIN_PYTHON:
        return "pass-agent needs Python %d.%d or newer; this is Python %s: run it with a newer Python" % (
            MIN_PYTHON + (here,))
    missing = []
    if command in _NEEDS_CONFIG and tuple(version[:2]) < (3, 11):
        if command == "run":  # found, not imported: tomli brings re and datetime, which stage 1 does without
            if _path_finder().find_spec("tomli") is None:
                missing.append("tomli")
        else:
            try:
                import tomli  # noqa: F401
            except ImportError:
                missing.append("tomli")
    if command == "run":  # the daemon's AES-GCM runs in its helper process: found, not loaded here
        if not _crypto_found():
            missing.append("cryptography")
    elif command in _NEEDS_CRYPTO:
        try:
            from agent.sealing import aesgcm

            aesgcm()  # the compiled AES-GCM the store uses, loaded as the command loads it
        except ImportError:
            missing.append("cryptography")
    if missing:
        return ("pass-agent %s needs the Python package%s %s, which %s not installed for Python %s: install %s"
                " (pip install %s, or add %s to the image)" % (
                    command, "s" if len(missing) > 1 else "", " and ".join(missing),
                    "are" if len(missing) > 1 else "is", here, "them" if len(missing) > 1 else "it",
                    " ".join(missing), "them" if len(missing) > 1 else "it"))
    return None


def _path_finder():  # noqa: ANN202 - importlib.machinery.PathFinder, not imported for its annotation
    """The import system's own PathFinder (importlib.machinery's, without importing importlib and warnings):
    finds a package's files without running any of it."""
    finder = next((f for f in sys.meta_path if getattr(f, "__name__", "") == "PathFinder"), None)
    if finder is None:  # pragma: no cover - an unusual import system
        from importlib.machinery import PathFinder as finder
    return finder


def _crypto_found() -> bool:
    """Whether cryptography's compiled binding is installed, found by the path finder without running
    anything of the package (not even its __init__: stage 1 of `run` imports no cryptography at all,
    tests/test_startup_imports.py). A package that cannot be imported there lacks the binding's file."""
    import os

    finder = _path_finder()
    spec = finder.find_spec("cryptography")
    places = (spec.submodule_search_locations or []) if spec is not None else []
    return any(finder.find_spec("_rust", [os.path.join(p, "hazmat", "bindings")]) is not None for p in places)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE",
                   help="configuration file (default: $PASS_AGENT_CONFIG or /etc/pass-agent/agent.toml)")


def _socket_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", "-s", metavar="PATH",
                   help="agent socket (default: [socket] path of the config, else %s)" % DEFAULT_SOCKET)
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print the raw JSON result")


def has_emulator() -> bool:
    """Whether this build carries agent.emulator and agent.demo, which `demo` and `emulator` need: the
    wheel and a checkout do, the box's zipapp leaves both out (its --help must not offer them). Looks
    the modules up without importing them: only those two commands import the emulator."""
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in ("agent.emulator", "agent.demo"))
    except (ImportError, ValueError):
        return False


def build_parser() -> argparse.ArgumentParser:
    import argparse

    emulator = has_emulator()
    parser = argparse.ArgumentParser(
        prog="pass-agent",
        description="Adobe Pass DCR agent for set-top boxes: registers the box, keeps a valid access token "
                    "and serves it to the player over a local Unix socket.",
        epilog="Run 'pass-agent demo' to see the whole flow against the bundled Adobe Pass emulator."
        if emulator else None)
    parser.add_argument("--version", action="version", version="pass-agent " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the agent daemon", description="Run the agent in the foreground "
                       "(systemd Type=notify). SIGHUP reloads the configuration, SIGTERM stops.")
    _config_arg(p)

    if emulator:  # not in the box's zipapp: list only the commands this build has
        p = sub.add_parser("demo", help="the whole flow against the bundled emulator, on temporary paths",
                           description="Start the Adobe Pass emulator (HTTPS) and the agent on temporary paths, "
                                       "then show device info, registration, the first token (masked), a player "
                                       "call and the serial console. Runs until Ctrl-C.")
        p.add_argument("--once", action="store_true", help="exit after the sample player call")
        p.add_argument("--keep", action="store_true", help="keep the temporary directory")

        p = sub.add_parser("emulator", help="run the Adobe Pass emulator (see docs/EMULATOR.md)", add_help=False,
                           description="Run the Adobe Pass emulator. All arguments are passed on; "
                                       "'pass-agent emulator --help' lists them.")
        p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser("device-info", help="print the X-Device-Info header of this box",
                       description="Build X-Device-Info and AP-Device-Identifier from the box's identifiers.")
    _config_arg(p)
    p.add_argument("--board", help="board profile name or path (overrides the config)")
    p.add_argument("--root", help="filesystem root to read identifiers from (overrides the config)")
    p.add_argument("--decode", action="store_true", help="print the decoded JSON instead of the header value")
    p.add_argument("--explain", action="store_true", help="show where each field came from")

    for name, text in (("token", "print the current access token (a secret: for scripts and debugging)"),
                       ("headers", "print the headers a player sends to Adobe Pass protected APIs"),
                       ("status", "print the agent's state (no secrets)")):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        _socket_arg(p)
        p.add_argument("--app", "-a", metavar="NAME", help="the registered application ([[app]] name); needed "
                       "when this user may use several")
        if name != "status":
            p.add_argument("--min-ttl", type=float, metavar="S", help="require at least S seconds of validity")
            p.add_argument("--wait", type=float, metavar="S", help="wait up to S seconds for the agent to start and for a first token")

    p = sub.add_parser("login", help="the second-screen login through the REST API v2 gateway",
                       description="As a player would, through the gateway socket ([gateway] enabled): show a "
                                   "registration code for a second screen, wait for the login (profiles every 3-5 s), "
                                   "ask an authorize decision and show its media token, then log out. "
                                   "docs/GATEWAY.md.")
    p.add_argument("--socket", "-s", metavar="PATH", help="gateway socket (default: [gateway] path of the config, "
                   "else /run/pass-agent/api.sock)")
    _config_arg(p)
    p.add_argument("--app", "-a", metavar="NAME", help="the registered application (X-Pass-App); needed when this "
                   "user may use several")
    p.add_argument("--sp", default="REF30", metavar="SP", help="service provider (requestor id; default REF30, "
                   "Adobe's test requestor)")
    p.add_argument("--mvpd", metavar="ID", help="the MVPD to log in with (default: the first listed)")
    p.add_argument("--resource", metavar="ID", help="the resource to authorize (default: the service provider)")
    p.add_argument("--emulate-browser", action="store_true", help="complete the login as the emulator's second "
                   "screen would (emulator only: GET /api/v2/authenticate/SP/CODE?complete=1)")
    p.add_argument("--poll", type=float, default=4.0, metavar="S", help="seconds between profile polls (3-5 s; "
                   "never less than 3)")
    p.add_argument("--stay", action="store_true", help="stay logged in (skip the logout)")

    p = sub.add_parser("check", help="validate the configuration and the environment",
                       description="Validate the configuration file and what it points to. Exit 2 when the "
                                   "configuration is invalid, 1 when an environment check fails.")
    _config_arg(p)
    p.add_argument("--as-user", metavar="USER", help="run the environment checks as USER (the service's "
                   "user; needs root) to test file permissions as the agent sees them")

    p = sub.add_parser("reset", help="wipe the stored client credentials (forces a new registration)",
                       description="Overwrite and remove the stored credentials. The next start registers "
                                   "again, which logs the user out of authenticated sessions. Stop the agent first.")
    _config_arg(p)
    p.add_argument("--app", "-a", metavar="NAME", help="the registered application whose credentials to wipe "
                   "([[app]] name; needed when several are configured)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = sub.add_parser("keys", help="the store's key provider: status, accept-rollback (docs/SECURITY.md)",
                       add_help=False, description="The store's key provider (python3 -m agent.keys).")
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser("console-hash", help="make a console.password_hash value", add_help=False,
                       description="Hash a console password for [console] password_hash.")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _socket_path(args: argparse.Namespace) -> str:
    """--socket, else the configuration's [socket] path. Raises ConfigError when the configuration is
    invalid or a file named by --config or $PASS_AGENT_CONFIG is missing: guessing another socket would
    hide the mistake (issue 21). Only with no file at the default path (nobody wrote one: a laptop, a
    box whose agent runs with the defaults) is DEFAULT_SOCKET used, without reading any TOML."""
    if args.socket:
        return args.socket
    import os

    from agent.config import DEFAULT_PATH, ENV_VAR

    path = args.config or os.environ.get(ENV_VAR) or DEFAULT_PATH
    if path == DEFAULT_PATH and not args.config and not os.path.lexists(path):
        return DEFAULT_SOCKET
    from agent import config as configmod

    return configmod.load(path, check_files=False).socket.path


def _forwarded(argv: list[str]) -> int | None:
    """`emulator`, `console-hash` and `keys` own their arguments: hand them over before argparse sees them."""
    if not argv or argv[0] not in ("emulator", "console-hash", "keys"):
        return None
    from agent import commands

    if argv[0] == "emulator":
        return commands.emulator_command(argv[1:])
    if argv[0] == "keys":
        from agent.keys.__main__ import main as keys_main

        return keys_main(argv[1:], prog="pass-agent keys")
    return commands.console_hash_command(argv[1:], sys.stdin, sys.stdout)


def _run_config(argv: list[str]) -> tuple | None:
    """(config path or None,) when argv is `run` with at most its --config/-c option, the way the
    unit starts the daemon: parsed by hand, since argparse with its help formatter costs the box
    ~6 ms of start-up (docs/bench/weight.txt). Anything else (--help, a typo) goes to argparse."""
    if argv[:1] != ["run"]:
        return None
    rest = argv[1:]
    if not rest:
        return (None,)
    if len(rest) == 2 and rest[0] in ("--config", "-c") and not rest[1].startswith("-"):
        return (rest[1],)
    if len(rest) == 1 and rest[0].startswith("--config=") and len(rest[0]) > len("--config="):
        return (rest[0][len("--config="):],)
    return None


def _command_of(argv: list) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    problem = runtime_problem(_command_of(argv))
    if problem:
        print(problem, file=sys.stderr)
        return 2
    run = _run_config(argv)
    if run is not None:  # the unit's `run --config FILE`, without argparse; errors as below
        from agent import startup  # stage 1 (issue 20): agent.daemon is imported after READY=1
        from agent.errors import ConfigError

        try:
            return startup.run(run[0])
        except ConfigError as e:
            print("pass-agent: invalid configuration:\n%s" % e, file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    try:
        rc = _forwarded(argv)
    except KeyboardInterrupt:
        return 130
    if rc is not None:
        return rc
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd = args.command
    if cmd is None:
        parser.print_help()
        return 2
    from agent import commands
    from agent.errors import ConfigError

    try:
        if cmd in _SOCKET_COMMANDS:
            args.socket = _socket_path(args)
        return getattr(commands, COMMANDS[cmd])(args)
    except ConfigError as e:  # every command that reads the configuration: one message, exit 2
        print("pass-agent: invalid configuration%s:\n%s" % (
            " (pass --socket PATH to use a socket without it)" if cmd in _SOCKET_COMMANDS else "", e),
            file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
