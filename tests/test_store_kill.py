"""SIGKILL a writer process at random moments during a loop of saves; every reload must be valid.

The writer is a forked child (fork keeps the per-kill cost to a millisecond, so hundreds of kills
fit in a few seconds). It saves states 1, 2, 3... on real files and acknowledges each save on a
pipe after save() returned. After each kill the parent checks that the store loads a complete state,
never older than the last acknowledged one, and never going backwards across kills.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import time

from agent.store import Store

DEV = "serial:0123456789|mac:00:11:22:33:44:55"
KILLS = 300


def make_state(seq: int) -> dict:
    return {
        "client": {"client_id": "client-%d" % (seq // 10), "client_secret": "secret-%d" % (seq // 10)},
        "statement_hash": "%064x" % (seq // 10),
        "registered_at": 1700000000 + seq // 10,
        "seq": seq,
        "token": {"access_token": "tok-%d" % seq, "token_type": "bearer", "expires_in": 21600,
                  "received_at": 1700000000 + seq, "expires_at": 1700021600 + seq},
    }


def _writer(directory: str, ack_fd: int) -> None:
    """Child body: never returns (os._exit), whatever happens."""
    code = 1
    try:
        s = Store(directory, DEV)
        s.open()
        cur = s.load()
        seq = cur["seq"] if cur else 0
        os.write(ack_fd, struct.pack(">I", 0))  # ready: the saves start now
        while True:
            seq += 1
            s.save(make_state(seq))
            os.write(ack_fd, struct.pack(">I", seq))
    except BaseException:
        code = 2
    finally:
        os._exit(code)


def _read_exactly(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:  # the writer died early; the assertions below say why
            break
        data += chunk
    return data


def _read_acks(fd: int, data: bytes = b"") -> list[int]:
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    acks = [struct.unpack(">I", data[i:i + 4])[0] for i in range(0, len(data) - len(data) % 4, 4)]
    return [a for a in acks if a]  # 0 is the writer's "ready"


def test_sigkill_during_saves_always_leaves_a_valid_store(tmp_path, capsys):
    d = str(tmp_path / "store")
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    last_seq = 0
    mid_save = 0
    no_progress = 0
    for i in range(KILLS):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(r)
            _writer(d, w)
        os.close(w)
        try:
            # A random moment within the saves, whatever the machine's load: wait for the writer's
            # "ready" and for 0-2 completed saves (events, not time), then a random delay.
            seen = _read_exactly(r, 4 * (1 + rng.randrange(3)))
            time.sleep(rng.uniform(0, 0.006))
            os.kill(pid, signal.SIGKILL)
        finally:
            _, status = os.waitpid(pid, 0)
        acks = _read_acks(r, seen)
        os.close(r)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            "writer exited by itself (status %r): it failed before being killed" % status)
        if any(n.endswith(".tmp") for n in os.listdir(d)) if os.path.isdir(d) else False:
            mid_save += 1
        reader = Store(d, DEV)
        got = reader.load()
        if got is None:
            assert last_seq == 0 and not acks and reader.problem == "empty", (i, reader.problem_detail)
            no_progress += 1
            continue
        seq = got["seq"]
        assert got == make_state(seq), "a mixed state was loaded"
        assert seq >= last_seq, "the store went back from %d to %d" % (last_seq, seq)
        if acks:  # an acknowledged save is never lost; at most one more completed unacknowledged
            assert acks[-1] <= seq <= acks[-1] + 1, (acks[-1], seq)
        else:
            assert seq <= last_seq + 1, (last_seq, seq)
        last_seq = seq
    assert last_seq > KILLS // 4, "the writer barely made progress: the test did not exercise saves"
    with capsys.disabled():
        print("\n[store sigkill] %d kills, %d saves completed, %d kills left a temp file (mid-save),"
              " %d before the first save; every reload valid" % (KILLS, last_seq, mid_save, no_progress))
