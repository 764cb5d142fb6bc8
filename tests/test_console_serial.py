"""SerialConsole over real ptys and pyserial's loop://.

The "cable": two pty pairs whose masters a relay thread joins, like `socat pty pty`. The agent's
SerialConsole opens pty A's slave through a symlink (its console.port); the technician is a pyserial
client on pty B's slave. Unplugging closes pty A; replugging makes a new pty and re-points the
symlink, which is what udev does for a USB serial adapter that comes back.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import tty
import uuid

import pytest
import serial
from console_fakes import FAKE_TOKEN, FakeService

from agent.console import Console
from agent.consolehash import hash_password
from agent.serialconsole import SerialConsole

LIMIT = 30.0  # guard against hangs only; tests assert behaviour, not speed


def wait_for(cond, what: str, limit: float = LIMIT) -> None:
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, "timed out waiting for " + what
        time.sleep(0.01)


class Cable:
    def __init__(self, tmp_path) -> None:
        self.link = str(tmp_path / "ttyCONSOLE")
        self.b_master, self.b_slave = os.openpty()
        tty.setraw(self.b_slave)
        self.client_path = os.ttyname(self.b_slave)
        self.a = None
        self.relay = None
        self.plug()

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # ptys start cooked (echo!) until someone opens them raw
        self.a = (master, slave)
        tmp = self.link + ".new"
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.link)
        stop = threading.Event()
        t = threading.Thread(target=self._relay, args=(master, stop), daemon=True)
        t.start()
        self.relay = (t, stop)

    def _relay(self, a_master: int, stop: threading.Event) -> None:
        pair = {a_master: self.b_master, self.b_master: a_master}
        while not stop.is_set():
            r, _, _ = select.select(list(pair), [], [], 0.05)
            for fd in r:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    time.sleep(0.01)
                    continue
                try:
                    os.write(pair[fd], data)
                except OSError:
                    pass

    def unplug(self) -> None:
        t, stop = self.relay
        stop.set()
        t.join()
        for fd in self.a:
            os.close(fd)
        self.a = None

    def close(self) -> None:
        if self.a:
            self.unplug()
        os.close(self.b_master)
        os.close(self.b_slave)


class Client:
    """The technician: a pyserial client on the other end of the cable."""

    def __init__(self, path: str) -> None:
        self.ser = serial.Serial(path, 115200, timeout=0.05)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.ser.write(data)

    def expect(self, pattern: bytes, limit: float = LIMIT) -> bytes:
        end = time.monotonic() + limit
        while pattern not in self.buf:
            assert time.monotonic() < end, "never saw %r; got %r" % (pattern, self.buf[-300:])
            self.buf += self.ser.read(max(self.ser.in_waiting, 1))
        i = self.buf.index(pattern) + len(pattern)
        got, self.buf = self.buf[:i], self.buf[i:]
        return got

    def close(self) -> None:
        self.ser.close()


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def rig(tmp_path):
    made = []

    def make(dumb=False, password_hash=None, **kw):
        cable = Cable(tmp_path)
        svc = FakeService()
        logger = logging.getLogger("test.console." + uuid.uuid4().hex)
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        handler = ListHandler()
        logger.addHandler(handler)
        sc = SerialConsole(svc, cable.link, dumb=dumb, password_hash=password_hash, log=logger,
                           backoff_initial=0.02, backoff_max=0.2, **kw)
        client = Client(cable.client_path)  # first: pyserial flushes its input when it opens
        sc.start()
        made.append((sc, client, cable))
        return sc, client, cable, svc, handler

    yield make
    for sc, client, cable in made:
        sc.stop()
        client.close()
        cable.close()


def test_commands_over_a_pty(rig):
    sc, client, _, svc, _ = rig()
    client.expect(b"pass-agent> ")
    client.send(b"version\r")
    assert client.expect(b"pass-agent> ") == b"version\r\npass-agent 0.1.0\r\npass-agent> "
    client.send(b"status\r\n")  # CRLF: one command only
    out = client.expect(b"pass-agent> ")
    assert b"state:" in out and b"token.expires_at:" in out
    client.send(b"tok\tn")  # tab completion on the wire: "token " then a stray n
    client.send(b"\x7f\r")
    out = client.expect(b"pass-agent> ")
    assert b"token:" in out and FAKE_TOKEN[:9].encode() not in out
    client.send(b"refresh\r")
    client.expect(b"pass-agent> ")
    assert svc.calls.count("refresh") == 1
    st = sc.stats()
    assert st["open"] and st["opens"] == 1 and st["console"]["commands"] == 4 and st["bytes_in"] > 0


def test_follow_log_over_a_pty(rig):
    sc, client, _, svc, _ = rig(dumb=True)
    client.expect(b"pass-agent>\r\n")
    client.send(b"log follow\r")
    client.expect(b"press Ctrl-C to stop\r\n")
    wait_for(lambda: sc.stats()["console"]["commands"] == 1 and svc.logs._subs, "follow to subscribe")
    for i in range(5):
        svc.logs.append("INFO    line %d" % i)
    out = client.expect(b"line 4\r\n")
    assert out == b"".join(b"INFO    line %d\r\n" % i for i in range(5))
    client.send(b"\x03")
    assert client.expect(b"pass-agent>\r\n").endswith(b"stopped following the log\r\nOK\r\npass-agent>\r\n")
    assert not svc.logs._subs


def test_garbage_and_overlong_input_over_a_pty(rig):
    sc, client, _, _, _ = rig(dumb=True)
    client.expect(b"pass-agent>\r\n")
    junk = bytes((i * 37 + 11) % 256 for i in range(20000))
    for control in b"\r\n\x03\x15":  # line ends and line-cancelling keys would just reset the line
        junk = junk.replace(bytes([control]), b"")
    client.send(junk + b"\r")
    assert client.expect(b"pass-agent>\r\n").startswith(b"ERR line_too_long")
    client.send(b"\x03version\r")
    assert b"pass-agent 0.1.0\r\nOK\r\n" in client.expect(b"OK\r\n")
    st = sc.stats()
    assert st["console"]["garbage_chars"] > 0 and st["opens"] == 1


def test_unplug_and_replug(rig):
    sc, client, cable, _, logs = rig()
    client.expect(b"pass-agent> ")
    cable.unplug()
    wait_for(lambda: not sc.stats()["open"], "the console to notice the unplug")
    wait_for(lambda: sc.stats()["open_failures"] >= 3, "several failed reopen attempts")
    lost = [m for m in logs.messages if "lost" in m or "cannot open" in m]
    assert len(lost) == 1, logs.messages  # once per outage, not once per attempt
    assert "reopening with backoff" in lost[0]
    cable.plug()
    assert b"serial console" in client.expect(b"pass-agent> ")  # a new session: banner again
    client.send(b"version\r")
    assert b"pass-agent 0.1.0" in client.expect(b"pass-agent> ")
    st = sc.stats()
    assert st["opens"] == 2 and st["outages"] == 1 and st["open"]
    assert any("is back" in m for m in logs.messages)
    # a second outage is logged again
    cable.unplug()
    wait_for(lambda: sc.stats()["outages"] == 2, "the second outage")
    cable.plug()
    client.expect(b"pass-agent> ")
    assert len([m for m in logs.messages if "lost" in m or "cannot open" in m]) == 2


def test_port_missing_at_start(tmp_path):
    handler = ListHandler()
    logger = logging.getLogger("test.console." + uuid.uuid4().hex)
    logger.addHandler(handler)
    logger.propagate = False
    sc = SerialConsole(FakeService(), str(tmp_path / "nope"), log=logger, backoff_initial=0.01, backoff_max=0.05)
    sc.start()
    try:
        wait_for(lambda: sc.stats()["open_failures"] >= 5, "open attempts")
        assert len(handler.messages) == 1 and "cannot open" in handler.messages[0]
        assert "check console.port" in handler.messages[0]
        assert sc.stats()["last_error"].startswith("open: ")
    finally:
        sc.stop()
    assert not sc.stats()["running"]


def test_locked_console_over_a_pty(rig):
    pw = "bench 1234"
    sc, client, _, svc, _ = rig(password_hash=hash_password(pw))
    client.expect(b"[locked] pass-agent> ")
    client.send(b"token\r")
    assert b"needs the console unlocked" in client.expect(b"pass-agent> ")
    client.send(b"unlock\r")
    client.expect(b"Password: ")
    client.send(pw.encode() + b"\r")
    out = client.expect(b"pass-agent> ")
    assert pw.encode() not in out and b"unlocked" in out
    client.send(b"token\r")
    assert b"sha256:" in client.expect(b"pass-agent> ")


def test_stalled_peer_does_not_block_the_agent(rig):
    """The technician stops reading while following a busy log: output is dropped, logging never blocks."""
    sc, client, _, svc, _ = rig(dumb=True, out_queue_bytes=8192)
    client.expect(b"pass-agent>\r\n")
    client.send(b"log follow\r")
    client.expect(b"press Ctrl-C to stop\r\n")
    wait_for(lambda: svc.logs._subs, "follow to subscribe")
    line = "INFO    " + "x" * 200
    n = 0
    end = time.monotonic() + LIMIT
    while sc.stats()["output_dropped_bytes"] == 0:  # the client reads nothing meanwhile
        assert time.monotonic() < end, sc.stats()
        for _ in range(200):
            svc.logs.append(line)  # the "token service" logging: must always return
            n += 1
        time.sleep(0.01)
    assert n >= 200
    client.send(b"\x03")
    client.expect(b"stopped following the log\r\nOK\r\n")  # still responsive once the peer reads again


def test_reconfigure_switches_mode(rig):
    sc, client, _, _, logs = rig()
    client.expect(b"pass-agent> ")
    sc.reconfigure(sc.stats()["port"], 115200, None, True)
    assert b"dumb mode" in client.expect(b"pass-agent>\r\n")
    client.send(b"version\r")
    assert client.expect(b"OK\r\n") == b"pass-agent 0.1.0\r\nOK\r\n"
    assert sc.stats()["dumb"] and any("settings reloaded" in m for m in logs.messages)


def test_loop_url(tmp_path):
    """loop:// is a loopback plug: the console hears everything it says and must stay quiet."""
    ports = []

    def opener(url, **kw):
        ports.append(serial.serial_for_url(url, **kw))
        return ports[-1]

    svc = FakeService()
    sc = SerialConsole(svc, "loop://", dumb=True, opener=opener)
    ref = Console(FakeService(), dumb=True)
    expected = len(ref.banner()) + len(ref.feed(b"version\r\n"))
    sc.start()
    try:
        wait_for(lambda: sc.stats()["bytes_out"] > 0, "the banner")
        ports[0].write(b"version\r\n")  # a command arrives on the line
        wait_for(lambda: sc.stats()["console"]["echo_suppressed"] >= 7, "the echoes to come back")
        st = sc.stats()
        assert st["console"]["commands"] == 1 and st["bytes_out"] == expected
        assert st["port"] == "loop://" and st["opens"] == 1
    finally:
        sc.stop()


def test_bad_url_is_an_outage_not_a_crash():
    sc = SerialConsole(FakeService(), "nosuchscheme://x", backoff_initial=0.01, backoff_max=0.02)
    sc.start()
    try:
        wait_for(lambda: sc.stats()["open_failures"] >= 2, "open attempts")
        assert sc.stats()["running"]
    finally:
        sc.stop()


def test_reconfigure_to_no_port_releases_it(rig):
    sc, client, cable, _, _ = rig()
    client.expect(b"pass-agent> ")
    port = sc.stats()["port"]
    sc.reconfigure("", 115200, None, False)
    wait_for(lambda: not sc.stats()["open"] and sc.stats()["port"] == "", "the port to be released")
    client.send(b"version\r")
    time.sleep(0.2)  # nothing may answer while the console is off
    assert client.ser.read(100) == b"" and sc.stats()["open_failures"] == 0
    sc.reconfigure(port, 115200, None, False, idle_lock=60)
    assert b"serial console" in client.expect(b"pass-agent> ")
    client.send(b"version\r")
    assert b"pass-agent 0.1.0" in client.expect(b"pass-agent> ")
