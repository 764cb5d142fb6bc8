"""Command line of the emulator: `python -m agent.emulator [options]` and `... mint [options]`.

`main(argv)` returns an exit status (0 ok, 1 could not start, 2 bad usage) instead of exiting, so
`pass-agent emulator` can forward to it. On start it prints, one per line and flushed, exactly:
`listening <base URL>`, `ca-file <path>` (TLS only), `statement-file <path>` (with
--statement-out), `ready`. Must never: print a secret, or keep running after SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import ssl
import sys
import threading
import time
import urllib.request
from urllib.parse import urlsplit

from .faults import parse_spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pass-agent emulator", description=(
        "Local Adobe Pass DCR emulator. Subcommand 'mint' prints a new software statement "
        "(run 'mint --help')."))
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; loopback only unless "
                   "you mean it)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default 0 = pick a free one)")
    p.add_argument("--no-tls", action="store_true", help="plain HTTP instead of HTTPS")
    p.add_argument("--state-dir", help="where ca.pem, the server certificate and the signing key live "
                   "(default: a temporary directory removed at exit)")
    p.add_argument("--statement-out", metavar="FILE", help="write a software statement for the default app here")
    p.add_argument("--app-id", help="registered application id for --statement-out (default pass-agent-dev-app)")
    p.add_argument("--token-ttl", type=int, default=21600, metavar="SECONDS", help="access token lifetime "
                   "(expires_in; default 21600)")
    p.add_argument("--legacy", action="store_true", help="older variants: token 200 OK, times in seconds")
    p.add_argument("--strict-device-info", action="store_true", help="reject bad X-Device-Info with 400 "
                   "invalid_request (default: record only)")
    p.add_argument("--rate", type=float, default=1.0, help="throttle: requests per second after the burst (default 1)")
    p.add_argument("--burst", type=int, default=10, help="throttle: the one-time initial burst (default 10)")
    p.add_argument("--refilling-burst", action="store_true", help="refill the burst when a client is idle (a "
                   "classic token bucket; Adobe documents a one-time allowance)")
    p.add_argument("--no-throttle", action="store_true", help="turn throttling off")
    p.add_argument("--retry-after", choices=("none", "seconds", "date"), default="none",
                   help="Retry-After on 429: none (Adobe's sample), seconds or an HTTP date")
    p.add_argument("--ignore-forwarded-for", action="store_true", help="throttle per peer address, ignoring "
                   "X-Forwarded-For (Adobe identifies clients by it; the default follows its first entry)")
    p.add_argument("--trust-forwarded-for", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.add_argument("--register-content-type", choices=("strict", "exact", "relaxed"), default="strict",
                   help="register's Content-Type check: strict (application/json with charset=utf-8, as Adobe "
                   "requires), exact (those bytes only) or relaxed (any application/json)")
    p.add_argument("--error-style", choices=("current", "2023"), default="current",
                   help="protected-API errors: current (plain 401 for a bad or expired token) or 2023 "
                   "(access_token_expired with action application-registration)")
    p.add_argument("--error-form", choices=("top", "wrapped", "item"), default="top",
                   help="where protected-API errors sit: top (the body), wrapped ({\"error\": ...}) or item "
                   "(HTTP 200, on each item of a decisions answer)")
    p.add_argument("--redirect-uri-prefix", action="append", metavar="PREFIX",
                   help="allowed redirect_uri prefix (repeatable; default http://localhost)")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="inject a fault: ENDPOINT[:knob=value,...] or a JSON object (repeatable); "
                   "e.g. token:status=503,count=2")
    p.add_argument("--log-file", help="append the request log here instead of stderr")
    p.add_argument("--quiet", action="store_true", help="log only warnings and errors")
    return p


def build_mint_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pass-agent emulator mint", description=(
        "Mint a software statement: from a running emulator (--url) or offline from a state dir's key "
        "(--state-dir; only the default app is approved by a freshly started emulator)."))
    p.add_argument("--url", help="running emulator: its base URL or origin")
    p.add_argument("--ca-file", help="CA to trust for an https --url (the emulator's ca.pem)")
    p.add_argument("--state-dir", help="sign offline with this state dir's signing key")
    p.add_argument("--app-id", help="registered application id (default pass-agent-dev-app)")
    p.add_argument("--unapproved", action="store_true", help="do not approve the app (--url only): register "
                   "then answers unapproved_software_statement")
    p.add_argument("--out", help="write the statement to this file instead of stdout")
    return p


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    try:
        return parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed what was wrong
        return int(e.code or 0)


def _mint(argv: list[str]) -> int:
    args = _parse(build_mint_parser(), argv)
    if isinstance(args, int):
        return args
    if bool(args.url) == bool(args.state_dir):
        print("emulator mint: give exactly one of --url (running emulator) or --state-dir (offline)", file=sys.stderr)
        return 2
    if args.url:
        parts = urlsplit(args.url)
        url = "%s://%s/_emulator/statements" % (parts.scheme, parts.netloc)
        ctx = ssl.create_default_context(cafile=args.ca_file) if parts.scheme == "https" else None
        body = json.dumps({"app_id": args.app_id, "approved": not args.unapproved}).encode()
        req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                statement = json.loads(r.read())["software_statement"]
        except (OSError, ValueError, KeyError) as e:
            print("emulator mint: could not mint at %s: %s (is the emulator running, and is --ca-file its "
                  "ca.pem?)" % (url, e), file=sys.stderr)
            return 1
    else:
        from . import jwtutil, keys
        from .service import DEFAULT_APP_ID, ISSUER

        key = keys.load_or_create_signing_key(args.state_dir)
        iat = int(time.time())
        statement = jwtutil.sign({"sub": args.app_id or DEFAULT_APP_ID, "iss": ISSUER, "iat": iat, "nbf": iat},
                                 key, jwtutil.key_id(key))
    if args.out:
        with open(args.out, "w", encoding="ascii") as f:
            f.write(statement)
        print("statement-file %s" % args.out, flush=True)
    else:
        print(statement, flush=True)
    return 0


def _setup_logging(log_file: str | None, quiet: bool) -> logging.Handler:
    logger = logging.getLogger("pass-emulator")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return handler


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "mint":
        return _mint(argv[1:])
    args = _parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    from .server import Emulator  # imported late: `--help` stays instant

    try:
        faults = [parse_spec(s) for s in args.fault]
        emu = Emulator(host=args.host, port=args.port, tls=not args.no_tls, state_dir=args.state_dir,
                       token_ttl=args.token_ttl, legacy=args.legacy, strict_device_info=args.strict_device_info,
                       rate=args.rate, burst=args.burst, retry_after=args.retry_after,
                       trust_forwarded_for=not args.ignore_forwarded_for, throttle=not args.no_throttle,
                       redirect_uri_prefixes=tuple(args.redirect_uri_prefix or ("http://localhost",)),
                       burst_refill=args.refilling_burst, register_content_type=args.register_content_type,
                       error_style=args.error_style, error_form=args.error_form)
    except ValueError as e:
        print("emulator: %s" % e, file=sys.stderr)
        return 2
    except OSError as e:
        print("emulator: cannot prepare state dir %s: %s" % (args.state_dir, e), file=sys.stderr)
        return 1
    handler = _setup_logging(args.log_file, args.quiet)
    stop = threading.Event()
    try:
        emu.start()
    except OSError as e:
        print("emulator: %s" % (e.strerror or e), file=sys.stderr)
        emu.stop()
        logging.getLogger("pass-emulator").removeHandler(handler)  # in-process callers (tests) keep no stale stream
        handler.close()
        return 1
    try:
        for fault in faults:
            emu.add_fault(**fault)
        print("listening %s" % emu.base_url, flush=True)
        if emu.ca_file:
            print("ca-file %s" % emu.ca_file, flush=True)
        if args.statement_out:
            emu.write_statement(args.statement_out, app_id=args.app_id)
            print("statement-file %s" % args.statement_out, flush=True)
        print("ready", flush=True)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
    except OSError as e:
        print("emulator: %s" % e, file=sys.stderr)
        return 1
    finally:
        emu.stop()
        logging.getLogger("pass-emulator").removeHandler(handler)
        handler.close()
    return 0
