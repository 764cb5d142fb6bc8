"""`pass-agent demo`: the whole flow on this machine against the bundled Adobe Pass emulator.

Starts the emulator (HTTPS with a generated CA) and the real agent daemon as a child process on
temporary paths, then shows what a newcomer needs to see: this box's X-Device-Info, the
registration, the first token (masked), a player's call through the socket to a protected API,
and the serial console's `status` over a pty. Needs nothing configured.

Must never: print a full token or client secret, or leave processes or files behind.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from agent import config as configmod
from agent.console import mask_token

BOLD = "\033[1m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""


def _step(n: int, text: str) -> None:
    print("\n%s[%d] %s%s" % (BOLD, n, text, RESET), flush=True)


def _relay(stream, prefix: str, lines: list) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip()
        lines.append(line)
        print("%s%s" % (prefix, line), flush=True)


def _read_until(master: int, done, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done(buf):
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                buf += os.read(master, 4096)
            except OSError:
                break
    return buf


def _console_exchange(master: int, command: bytes, timeout: float = 5.0) -> str:
    """Send a console command over the pty (dumb mode) and collect its answer up to OK/ERR."""
    _read_until(master, lambda b: b.rstrip().endswith(b">"), 2.0)  # the banner and first prompt
    os.write(master, command + b"\r")
    out = _read_until(master, lambda b: b"\nOK" in b or b"\nERR" in b, timeout)
    return out.decode("utf-8", "replace")


def main(once: bool = False, keep: bool = False) -> int:
    from agent import boards, urequests
    from agent.client import Client
    from agent.emulator import Emulator  # shipped beside this module; the box's zipapp leaves out both

    # SIGTERM (timeout, kill, a service manager) stops the demo as Ctrl-C does, so the clean-up below
    # runs: otherwise the agent would be left running and the temp dir behind.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    tmp = tempfile.mkdtemp(prefix="pass-agent-demo-")
    emu = None
    agent_proc = None
    master = slave = -1
    ok = True
    try:
        print("%spass-agent demo%s: the agent against the bundled Adobe Pass emulator, in %s" % (BOLD, RESET, tmp))
        _step(1, "Starting the Adobe Pass emulator (HTTPS, generated CA)")
        emu = Emulator(state_dir=os.path.join(tmp, "emulator"), tls=True)
        emu.start()
        statement = os.path.join(tmp, "software-statement.jwt")
        emu.write_statement(statement)
        print("    listening on %s\n    CA file %s\n    software statement %s" % (emu.base_url, emu.ca_file, statement))

        master, slave = os.openpty()
        console_port = os.ttyname(slave)
        cfg = configmod.local(tmp, emu.base_url, statement, emu.ca_file, console={"port": console_port, "dumb": True})
        cfg_path = configmod.write(cfg, os.path.join(tmp, "agent.toml"))
        cfg = configmod.load(cfg_path)
        print("    agent configuration %s" % cfg_path)

        _step(2, "This box's X-Device-Info (board %s)" % cfg.device.board)
        ident = boards.identify_for(cfg.device)
        print("    " + json.dumps(ident["fields"], indent=2).replace("\n", "\n    "))
        print("    X-Device-Info: %s" % ident["x_device_info"])
        print("    AP-Device-Identifier: %s" % ident["ap_device_identifier"])
        for w in ident.get("warnings", []):
            print("    warning: %s" % w)

        _step(3, "Starting the agent daemon: pass-agent run --config %s" % cfg_path)
        log_lines: list[str] = []
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        agent_proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", cfg_path],
                                      stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        threading.Thread(target=_relay, args=(agent_proc.stderr, "    agent | ", log_lines), daemon=True).start()

        _step(4, "The player asks for a token over the socket (token.get, wait up to 15 s)")
        sock = cfg.socket.path
        deadline = time.monotonic() + 15
        while not os.path.exists(sock) and time.monotonic() < deadline and agent_proc.poll() is None:
            time.sleep(0.05)
        with Client(sock, timeout=20) as c:
            tok = c.token(wait=15)
            print("    access token %s, type %s, expires in %d s" % (mask_token(tok["access_token"]), tok["token_type"],
                                                                   tok["expires_in"]))
            _step(5, "A player call to a protected API with headers.get")
            hdrs = c.headers()["headers"]
            for k, v in hdrs.items():
                print("    %s: %s" % (k, mask_token(v[7:]) if k == "Authorization" else (v[:48] + ("…" if len(v) > 48 else ""))))
        r = urequests.get(emu.origin + "/api/v2/demo-sp/configuration", headers=hdrs, ca_file=emu.ca_file, timeout=5)
        print("    GET /api/v2/demo-sp/configuration -> %d %s" % (r.status_code, r.reason.decode()))
        ok = ok and r.status_code == 200
        r.close()

        _step(6, "The technician's serial console (%s): status" % console_port)
        out = _console_exchange(master, b"status")
        print("    " + out.strip().replace("\r", "").replace("\n", "\n    "))

        st = emu.stats()
        _step(7, "What Adobe saw (emulator stats)")
        print("    registrations %s, token requests %s, protected calls %s, throttled %s" % (
            st["register"], st["token"], st["protected"], st["throttled"]))
        ok = ok and st["throttled"] == 0

        if not once:
            # The hint is printed inside the try: a Ctrl-C or SIGTERM sent as soon as it is read lands
            # between print() writing it and the next statement, and must stop the demo cleanly too.
            try:
                print("\n%sRunning.%s Try in another shell:\n    pass-agent token --socket %s\n    pass-agent status "
                      "--socket %s\n    picocom %s   (the console)\nCtrl-C stops the demo." % (BOLD, RESET, sock, sock,
                                                                                             console_port), flush=True)
                while agent_proc.poll() is None:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                print()
        _step(8, "Stopping the agent (SIGTERM)")
        agent_proc.send_signal(signal.SIGTERM)
        rc = agent_proc.wait(10)
        print("    agent exited with code %d" % rc)
        ok = ok and rc == 0
    except Exception as e:
        ok = False
        print("\npass-agent demo: FAILED: %s: %s" % (type(e).__name__, e), file=sys.stderr)
    finally:
        if agent_proc is not None and agent_proc.poll() is None:
            agent_proc.kill()
            agent_proc.wait()
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)
        if emu is not None:
            emu.stop()
        if keep:
            print("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    print("\n%s" % ("demo finished: OK" if ok else "demo finished: FAILED"))
    return 0 if ok else 1
