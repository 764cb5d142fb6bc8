"""The `pass-agent` subcommands: each turns parsed arguments into output and an exit code.

Job: one function per subcommand, dispatched from agent/cli.py's COMMANDS table (`run`, `demo`,
`emulator`, `device-info`, `token`, `headers`, `status`, `check`, `reset`, `console-hash`, `login`), and the
`*_command` functions behind them, which take plain values and streams so tests drive them without
argparse. The domain modules (store, boards, client, statusview, check, consolehash) do the work;
this module only reads the configuration a command needs, asks, and prints. A configuration error
is raised as ConfigError: agent/cli.py reports it once for every command (exit 2).

Exit codes: 0 success, 1 operational failure or cancelled, 2 usage or configuration error; `status`
3 when the agent answers but holds no valid token. Every import beyond the standard library is done
inside the command that needs it, so `pass-agent token` stays fast and small on a box, and this
module imports on old Pythons (agent/cli.py says which Python is needed before importing it).
Must never: print a secret outside `token`/`headers`, a traceback for an expected failure, or wipe
the store without the word "yes" (or --yes).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Callable, TextIO

if TYPE_CHECKING:
    from agent.config import DeviceConfig

# -- the COMMANDS table's entries: parsed arguments in, exit code out -----------------------------


def run(args: Any) -> int:
    from agent import startup  # stage 1; agent.daemon (stage 2) after READY=1

    return startup.run(args.config)


def demo(args: Any) -> int:
    from agent import demo as demomod

    return demomod.main(once=args.once, keep=args.keep)


def emulator(args: Any) -> int:
    return emulator_command(list(args.args))


def device_info(args: Any) -> int:
    from agent import config as configmod
    from agent import record

    dev = configmod.load(args.config, check_files=False).device if args.config else configmod.defaults().device
    if args.board:
        dev = record.replace(dev, board=args.board)
    if args.root:
        dev = record.replace(dev, root=args.root)
    return device_info_command(dev, args.decode, args.explain, sys.stdout)


def status(args: Any) -> int:
    """args.socket: the socket path agent/cli.py resolved (--socket, else the configuration's)."""
    return status_command(args.socket, args.json, sys.stdout, sys.stderr, app=args.app)


def client(args: Any) -> int:
    """`token` and `headers`; args.socket as for status."""
    return client_command(args.command, args.socket, args.json, sys.stdout, min_ttl=args.min_ttl,
                          wait=args.wait, app=args.app)


def login(args: Any) -> int:
    """`pass-agent login` (issue 17): the second-screen user story through the gateway socket."""
    from agent.gateway.login import login_command

    path, origin = args.socket, None
    from agent import config as configmod

    cpath = configmod.resolve_path(args.config)
    if args.config or os.path.exists(cpath):
        cfg = configmod.load(cpath, check_files=False)
        path = path or cfg.gateway.path
        origin = configmod.gateway_origin(cfg.gateway.base_url or cfg.adobe.base_url)
    return login_command(path or "/run/pass-agent/api.sock", args.sp, sys.stdout, sys.stderr, app=args.app,
                         mvpd=args.mvpd, resource=args.resource, emulate_browser=args.emulate_browser,
                         stay=args.stay, poll=args.poll, origin=origin)


def check(args: Any) -> int:
    return check_command(args.config, sys.stdout, as_user=args.as_user)


def reset(args: Any) -> int:
    from agent import boards
    from agent import config as configmod
    from agent.storagepaths import app_runtime_dir, app_storage_dir, storage_dir

    cfg = configmod.load(args.config, check_files=False)
    names = [a.name for a in cfg.apps]
    app = args.app or (names[0] if len(names) == 1 else None)
    if app not in names:
        print("pass-agent reset: %s; say which with --app NAME (configured: %s)"
              % ("this agent serves several applications" if args.app is None else "no application named %r" % app,
                 ", ".join(names)), file=sys.stderr)
        return 2
    ident = boards.identify_for(cfg.device)
    directory = app_storage_dir(storage_dir(cfg, ident["board"]), app)
    keys = None
    if cfg.storage.key_provider != "device" or cfg.storage.anchor_dir:
        # The configured provider opens the slots, so reset can say what it removes; when it cannot
        # (token missing, wrong PIN) the store is still removable, only not described.
        from agent import keys as keyproviders
        from agent.errors import AgentError

        try:
            keys = keyproviders.keyset(cfg.storage, ident["device_id"], directory)
        except AgentError as e:
            print("pass-agent reset: the %s key provider is unavailable (%s); the store can still be removed"
                  % (cfg.storage.key_provider, e.code), file=sys.stderr)
    return reset_command(directory, ident["device_id"], args.yes, sys.stdin, sys.stdout,
                         runtime_dir=app_runtime_dir(cfg.storage.runtime_dir, app), keys=keys)


def console_hash(args: Any) -> int:
    return console_hash_command(list(args.args), sys.stdin, sys.stdout)


# -- the commands ----------------------------------------------------------------------------------


def emulator_command(argv: list[str]) -> int:
    """`pass-agent emulator ARGS`: the emulator's own command line, when this build has it."""
    from agent.cli import has_emulator

    if not has_emulator():
        print("pass-agent: the emulator is not part of this build (the box's zipapp leaves it out); run it "
              "where the pass-agent wheel is installed (pip install pass-agent) or from a source checkout",
              file=sys.stderr)
        return 1
    from agent.emulator import cli as emucli

    return emucli.main(argv)


def device_info_command(device_cfg: DeviceConfig, decode: bool, explain: bool, out: TextIO,
                        err: TextIO | None = None, ip_lookup: Callable[[str], str | None] | None = None) -> int:
    """`pass-agent device-info [--decode] [--explain]`: 0 on success, 2 with a message on err
    (default stderr) when the profile or the device information is invalid. --explain marks every
    required field left `Unknown` (`pass-agent check` fails on them)."""
    from agent import devfields
    from agent.boards import identify_for
    from agent.errors import ConfigError, DeviceInfoError

    err = err or sys.stderr
    try:
        r = identify_for(device_cfg, ip_lookup=ip_lookup)
    except (ConfigError, DeviceInfoError) as e:
        err.write("pass-agent device-info: %s\n" % e)
        return 2
    if decode:
        out.write(json.dumps(r["fields"], indent=2, ensure_ascii=False) + "\n")
    else:
        out.write("X-Device-Info: %s\n" % r["x_device_info"])
    out.write("AP-Device-Identifier: %s\n" % r["ap_device_identifier"])
    if explain:
        out.write("\nboard: %s (%s)\nroot: %s\n" % (r["board"]["name"], r["board"]["path"], device_cfg.root or "/"))
        out.write("fields:\n")
        width = max(len(k) for k in r["fields"])
        unknown = devfields.unknown_required(r["fields"])
        for key, value in r["fields"].items():
            mark = ""
            if key in unknown:
                mark = ("   UNKNOWN: required; Adobe treats the box as an unknown platform. Set %s"
                        % devfields.HOW_TO_SET[key])
            out.write("  %-*s = %-40s <- %s%s\n" % (width, key, json.dumps(value, ensure_ascii=False),
                                                   r["sources"].get(key, "?"), mark))
        for key, why in sorted(r.get("omitted", {}).items()):
            out.write("  %-*s   (not sent: %s)\n" % (width, key, why))
        out.write("device id: %s <- %s\n" % (r["device_id"], r["device_id_source"]))
        out.write("warnings:%s\n" % ("" if r["warnings"] else " none"))
        for w in r["warnings"]:
            out.write("  - %s\n" % w)
    return 0


def _when(epoch: Any) -> str:
    if not isinstance(epoch, (int, float)):
        return "-"
    left = epoch - time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    return "%s (in %ds)" % (stamp, left) if left >= 0 else "%s (%ds ago)" % (stamp, -left)


def _print_status(st: dict, out: TextIO) -> None:
    tok = st.get("token") or {}
    rows = [
        ("state", "%s (%s)" % (st.get("state"), st["state_text"]) if st.get("state_text") else st.get("state")),
        ("version", st.get("version")),
        ("uptime", "%ds" % st["uptime"] if isinstance(st.get("uptime"), (int, float)) else "-"),
        ("registered at", _when(st.get("registered_at"))),
        ("client id", st.get("client_id_hint") or "-"),
        ("token expires", _when(tok.get("expires_at")) if tok else "no token"),
        ("token refresh", _when(tok.get("refresh_at")) if tok else "-"),
    ]
    err = st.get("last_error")
    if err:
        rows.append(("last error", "%s [%s]: %s" % (err.get("code"), err.get("kind"), err.get("message"))))
    for group in ("upstream", "store"):
        d = st.get(group)
        if isinstance(d, dict) and d:
            rows.append((group, ", ".join("%s=%s" % kv for kv in sorted(d.items()))))
    for k, v in rows:
        out.write("%-14s %s\n" % (k + ":", "-" if v is None else v))


def client_command(
    name: str,
    socket_path: str,
    as_json: bool,
    out: TextIO,
    min_ttl: float | None = None,
    wait: float | None = None,
    err: TextIO | None = None,
    app: str | None = None,
) -> int:
    """`pass-agent token|headers|status`: print the answer; 0 on success, 1 on any failure."""
    from agent.client import Client, scrub
    from agent.errors import AgentError

    err = err or sys.stderr
    if name not in ("token", "headers", "status"):
        err.write("pass-agent: unknown client command %r (expected token, headers or status)\n" % name)
        return 2
    started = time.monotonic()
    try:
        # --wait covers an agent that is still starting (no socket yet) as well as a first token.
        with Client(socket_path, connect_wait=wait or 0.0, app=app) as c:
            if wait:
                wait = max(0.0, wait - (time.monotonic() - started))
            if name == "token":
                res = c.token(min_ttl, wait)
            elif name == "headers":
                res = c.headers(min_ttl, wait)
            else:
                res = scrub(c.status())
    except AgentError as e:
        extra = ""
        if e.retry_after is not None:
            extra = "; retry in %gs" % e.retry_after
        err.write("pass-agent %s: %s [%s, %s%s]\n" % (name, e, e.code, e.kind, extra))
        return 1
    if as_json:
        out.write(json.dumps(res, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    elif name == "token":
        out.write("access_token: %s\n" % res.get("access_token"))
        out.write("token_type:   %s\n" % res.get("token_type"))
        out.write("expires_at:   %s\n" % _when(res.get("expires_at")))
        out.write("refresh_at:   %s\n" % _when(res.get("refresh_at")))
    elif name == "headers":
        for k, v in (res.get("headers") or {}).items():
            out.write("%s: %s\n" % (k, v))  # ready for curl -H
    else:
        _print_status(res, out)
    return 0


def status_command(socket_path: str, as_json: bool, out: TextIO, err: TextIO, app: str | None = None) -> int:
    """Exit 0 when the application shown (or, several and none chosen, every one) holds a valid token."""
    from agent.client import Client, scrub
    from agent.errors import AgentError
    from agent.statusview import EXIT_NO_TOKEN, EXIT_TOKEN, EXIT_UNAVAILABLE, app_blocks, has_token

    try:
        with Client(socket_path, app=app) as c:
            st = scrub(c.status())
    except AgentError as e:
        extra = "; retry in %gs" % e.retry_after if e.retry_after is not None else ""
        err.write("pass-agent status: %s [%s, %s%s]\n" % (e, e.code, e.kind, extra))
        return EXIT_UNAVAILABLE
    if not isinstance(st, dict):
        err.write("pass-agent status: the agent at %s answered something that is not a status\n" % socket_path)
        return EXIT_UNAVAILABLE
    if as_json:
        out.write(json.dumps(st, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    else:
        blocks = app_blocks(st)
        for name, rows in blocks:
            if len(blocks) > 1:
                out.write("%s\n" % ("[%s]" % name if name else "[agent]"))
            for label, text in rows:
                out.write("%-13s %s\n" % (label + ":", text))
    return EXIT_TOKEN if has_token(st) else EXIT_NO_TOKEN


def check_command(config_path: str | None, out: TextIO, as_user: str | None = None) -> int:
    """`pass-agent check`: 2 when the configuration itself is invalid, 1 when only an environment
    check fails, 0 when everything passes."""
    from agent import check
    from agent import config as configmod
    from agent.errors import ConfigError

    path = configmod.resolve_path(config_path)
    try:
        cfg = configmod.load(path)
    except ConfigError as e:
        for p in e.problems:
            out.write("fail  config       %s: %s\n" % (path, p))
        out.write("the configuration is invalid: fix the lines above (README.md, Configuration)\n")
        return 2
    out.write("ok    config       %s\n" % path)
    failed = 0
    for name, ok, detail, hint in check.run(cfg, as_user):
        out.write("%-5s %-12s %s\n" % ("ok" if ok else "fail", name, detail))
        if not ok:
            failed += 1
            out.write("      %-12s fix: %s\n" % ("", hint))
    out.write("all checks passed\n" if not failed else "%d check(s) failed\n" % failed)
    return 1 if failed else 0


def _describe(store: Any, state: dict | None) -> str:
    if state is not None:
        client = state.get("client") if isinstance(state.get("client"), dict) else {}
        cid = str(client.get("client_id") or "?")
        return "holds client credentials for this device (client id %s…, generation %d)" % (
            cid[:8], store.stats["generation"])
    if store.problem == "empty":
        return "holds no credentials"
    return "holds no usable credentials (%s)" % store.problem


def reset_command(storage_dir: str, device_id: str, assume_yes: bool, inp, out, *,
                  runtime_dir: str | None = None, keys: Any = None) -> int:
    """`pass-agent reset`: confirm, then overwrite and unlink the stored credentials.

    Exit codes: 0 removed (or nothing to remove), 1 cancelled or failed (message on out).
    """
    from agent.errors import StoreError
    from agent.store import DEFAULT_RUNTIME_DIR, SLOT_NAMES, TMP_SUFFIX, Store

    rd = runtime_dir or DEFAULT_RUNTIME_DIR
    present = os.path.isdir(storage_dir) and any(
        n in SLOT_NAMES or n.endswith(TMP_SUFFIX) for n in os.listdir(storage_dir))
    if not present:
        out.write("nothing to reset: no credential store in %s\n" % storage_dir)
        return 0
    # The command says everything itself on `out`: the store's own log lines would repeat it on stderr.
    quiet = logging.getLogger("pass-agent.store.reset")
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    store = Store(storage_dir, device_id or "unknown-device", token_cache="runtime", runtime_dir=rd, log=quiet,
                  keys=keys)
    try:
        store.open()
    except StoreError as e:
        out.write("reset failed: %s\n" % e)
        return 1
    try:
        try:
            what = _describe(store, store.load())
        except StoreError:  # store_migration_failed: unreadable by this version, still removable
            what = _describe(store, None)
        out.write("The credential store in %s %s.\n" % (storage_dir, what))
        if not assume_yes:
            out.write("Removing it makes this box register again with Adobe Pass, and the viewer will"
                      " have to sign in again.\nType 'yes' to remove it: ")
            out.flush()
            answer = inp.readline()
            out.write("\n")
            if answer.strip() != "yes":  # only the word asked for: "y" or a stray newline must not wipe
                out.write("reset cancelled: nothing was removed (type yes to remove it)\n")
                return 1
        try:
            store.wipe()
        except StoreError as e:
            out.write("reset failed: %s\n" % e)
            return 1
        out.write("credential store removed from %s (overwritten with zeros, then deleted); the agent"
                  " registers again at its next start\n" % storage_dir)
        return 0
    finally:
        store.close()


def console_hash_command(argv: list[str], inp: IO[str] | None = None, out: IO[str] | None = None) -> int:
    """`pass-agent console-hash [--stdin] [--scheme S]`: print a hash line for console.password_hash.

    argv: the arguments after `console-hash`. Interactive: asks twice without echo (getpass).
    With --stdin: reads one line from `inp` (for scripts and image builds). Exit 0 ok, 1 mismatch, 2 usage.
    """
    import argparse
    import getpass

    from agent.consolehash import hash_password

    inp = inp if inp is not None else sys.stdin
    out = out if out is not None else sys.stdout
    ap = argparse.ArgumentParser(prog="pass-agent console-hash",
                                 description="Print a salted hash to put in console.password_hash.")
    ap.add_argument("--stdin", action="store_true", help="read the password from one line of standard input")
    ap.add_argument("--scheme", choices=("scrypt", "pbkdf2_sha256"), default="scrypt")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    if args.stdin:
        line = inp.readline()
        pw = line[:-1] if line.endswith("\n") else line
        pw = pw[:-1] if pw.endswith("\r") else pw
    else:
        if not (hasattr(inp, "isatty") and inp.isatty()):
            print("console-hash: standard input is not a terminal; pass --stdin to read the password "
                  "from it", file=sys.stderr)
            return 2
        pw = getpass.getpass("New console password: ")
        if getpass.getpass("Repeat it: ") != pw:
            print("console-hash: the two passwords differ; nothing printed, run it again", file=sys.stderr)
            return 1
    if not pw:
        print("console-hash: empty password; choose a non-empty one", file=sys.stderr)
        return 2
    out.write(hash_password(pw, args.scheme) + "\n")
    out.flush()
    return 0
