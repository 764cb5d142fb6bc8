"""Run the real agent daemon as a child process for end-to-end tests.

Gives each test a fake systemd NOTIFY_SOCKET, a config file on temporary paths pointing at an
emulator, the captured stderr, and a secrets check: everything the daemon printed is searched for
every client secret the emulator issued and every token the test saw.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from agent import config as configmod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class AgentProc:
    def __init__(self, tmp, emu, *, name: str = "agent", watchdog_usec: int | None = None, **overrides) -> None:
        self.tmp = str(tmp)
        self.emu = emu
        self.name = name
        self.watchdog_usec = watchdog_usec
        self.statement = os.path.join(self.tmp, "statement.jwt")
        if emu is not None and not os.path.exists(self.statement):
            emu.write_statement(self.statement)
        cfg = configmod.local(self.tmp, emu.base_url if emu else "https://127.0.0.1:9/o", self.statement,
                              emu.ca_file if emu else None, adobe={"timeout": 3.0}, log={"level": "debug"})
        for key, value in overrides.items():
            table, k = key.split("__", 1)
            cfg = cfg.replace(**{table: {k: value}})
        self.cfg = cfg
        self.config_path = os.path.join(self.tmp, "agent.toml")
        self.write_config()
        self.socket_path = cfg.socket.path
        self.proc: subprocess.Popen | None = None
        self.notify_sock: socket.socket | None = None
        self.notifications: list[str] = []
        self.seen_secrets: set[str] = set()
        self.runs = 0
        self.argv_prefix: list[str] = []  # e.g. an `unshare -m ...` wrapper that execs the agent
        self.popen_kw: dict = {}          # e.g. preexec_fn for limits or credentials, cwd

    def write_config(self, text: str | None = None) -> None:
        if text is None:
            configmod.write(self.cfg, self.config_path)
            return
        with open(self.config_path, "w") as f:
            f.write(text)

    @property
    def log_path(self) -> str:
        return os.path.join(self.tmp, "%s-%d.log" % (self.name, self.runs))

    def start(self, wait_ready: bool = True) -> AgentProc:
        self.runs += 1
        path = os.path.join(self.tmp, "notify-%d.sock" % self.runs)
        self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_sock.bind(path)
        self.notifications = []
        env = dict(os.environ, NOTIFY_SOCKET=path, PYTHONUNBUFFERED="1")
        env.pop("WATCHDOG_USEC", None)
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        self._log = open(self.log_path, "wb")
        kw = dict(stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
        kw.update(self.popen_kw)
        self.proc = subprocess.Popen(self.argv_prefix + [sys.executable, "-m", "agent", "run", "--config",
                                                          self.config_path], **kw)
        if wait_ready:
            self.wait_notify("READY=1")
        return self

    def wait_notify(self, needle: str, timeout: float = 20.0) -> str:
        """Wait for a notification datagram containing `needle` (earlier ones are kept)."""
        for msg in self.notifications:
            if needle in msg:
                self.notifications.remove(msg)
                return msg
        deadline = time.monotonic() + timeout
        assert self.notify_sock is not None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("agent exited with %s before %r:\n%s" % (self.proc.returncode, needle, self.log()))
            self.notify_sock.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
            try:
                msg = self.notify_sock.recv(65536).decode()
            except socket.timeout:
                continue
            if needle in msg:
                return msg
            self.notifications.append(msg)
        raise AssertionError("no %r notification within %.0f s; got %r\n%s" % (needle, timeout, self.notifications,
                                                                             self.log()))

    def drain_notifications(self) -> list[str]:
        assert self.notify_sock is not None
        self.notify_sock.settimeout(0.0)
        try:
            while True:
                self.notifications.append(self.notify_sock.recv(65536).decode())
        except (BlockingIOError, socket.timeout):
            pass
        return self.notifications

    def token(self, **kw) -> dict:
        """token.get over the agent's socket (agent.client, 20 s timeout); the access token it answers
        joins seen_secrets, so the secrets check looks for it in the logs."""
        from agent.client import Client

        with Client(self.socket_path, timeout=20) as c:
            t = c.token(**kw)
        self.seen_secrets.add(t["access_token"])
        return t

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("agent did not exit within %.0f s of signal %d" % (timeout, sig))
        self._log.close()
        if self.notify_sock is not None:
            self.drain_notifications()
            self.notify_sock.close()
        self.assert_no_secrets()
        return rc

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def all_logs(self) -> str:
        out = []
        for i in range(1, self.runs + 1):
            p = os.path.join(self.tmp, "%s-%d.log" % (self.name, i))
            if os.path.exists(p):
                with open(p, "rb") as f:
                    out.append(f.read().decode("utf-8", "replace"))
        return "\n".join(out)

    def secrets(self) -> set[str]:
        found = set(self.seen_secrets)
        if self.emu is not None:
            svc = self.emu._service  # test-only peek at what the emulator issued
            for c in getattr(svc, "clients", {}).values():
                if isinstance(c, dict) and c.get("secret"):
                    found.add(c["secret"])
        with open(self.statement) as f:
            found.add(f.read().strip())
        return found

    def assert_no_secrets(self) -> None:
        text = self.all_logs()
        for s in self.secrets():
            assert s not in text, "a secret (%s…, %d chars) appears in the agent's output" % (s[:4], len(s))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
