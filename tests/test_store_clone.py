"""Clone test end to end: a flash image of box A copied onto box B (two fixture device roots with
different hardware serials) is refused by B's store and leads B's lifecycle to a fresh registration,
while the foreign slots survive until B's new credentials are saved.

Uses the real device-identity module (agent.deviceinfo) and the real lifecycle (agent.lifecycle).
"""

from __future__ import annotations

import os
import shutil

from agent import deviceinfo
from agent.lifecycle import Lifecycle
from agent.store import SLOT_NAMES, Store

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "boards", "raspberrypi")
STORE = os.path.join("var", "lib", "pass-agent")


def _set_serial(root: str, serial: str) -> None:
    # The board's hardware serial: what a cloned image cannot carry over to another board.
    with open(os.path.join(root, "proc", "device-tree", "serial-number"), "wb") as f:
        f.write(serial.encode() + b"\x00")
    cpuinfo = os.path.join(root, "proc", "cpuinfo")
    text = open(cpuinfo).read()
    with open(cpuinfo, "w") as f:
        f.write("\n".join(("Serial\t\t: " + serial) if line.startswith("Serial") else line
                          for line in text.splitlines()) + "\n")


def _slots(d: str) -> dict:
    return {n: open(os.path.join(d, n), "rb").read() if os.path.exists(os.path.join(d, n)) else None
            for n in SLOT_NAMES}


def test_cloned_image_is_refused_and_box_b_registers_afresh(tmp_path):
    root_a, root_b = str(tmp_path / "boxA"), str(tmp_path / "boxB")
    shutil.copytree(FIXTURE, root_a)
    id_a = deviceinfo.identify(root=root_a)["device_id"]

    # Box A registers and gets a token; its lifecycle's snapshots go to its store.
    store_a = Store(os.path.join(root_a, STORE), id_a)
    store_a.open()
    store_a.load()
    lc = Lifecycle(random=lambda: 0.5)
    lc.load(None, "app-1", "hash-1", now=0.0, wall=1700000000.0)
    assert lc.poll(0.0) == {"op": "register"}
    for kind, arg in lc.on_registered({"client_id": "client-A", "client_secret": "secret-A"}, "app-1",
                                      now=1.0, wall=1700000001.0):
        if kind == "save":
            store_a.save(arg)
    assert lc.poll(1.0) == {"op": "token"}
    for kind, arg in lc.on_token({"access_token": "token-A", "token_type": "bearer", "expires_in": 21600},
                                 now=2.0, wall=1700000002.0):
        if kind == "save":
            store_a.save(arg)
    store_a.close()

    # The whole image is cloned onto box B, whose hardware serial differs.
    shutil.copytree(root_a, root_b)
    _set_serial(root_b, "10000000feedf00d")
    id_b = deviceinfo.identify(root=root_b)["device_id"]
    assert id_b != id_a
    dir_b = os.path.join(root_b, STORE)
    foreign = _slots(dir_b)

    store_b = Store(dir_b, id_b)
    store_b.open()
    stored = store_b.load()
    assert stored is None and store_b.problem == "foreign_device"
    assert _slots(dir_b) == foreign
    lc_b = Lifecycle(random=lambda: 0.5)
    lc_b.load(stored, "app-1", "hash-1", now=0.0, wall=1700100000.0)
    assert lc_b.poll(0.0) == {"op": "register"}  # a fresh registration, not a token request
    assert _slots(dir_b) == foreign  # still untouched until the new credentials are saved
    for kind, arg in lc_b.on_registered({"client_id": "client-B", "client_secret": "secret-B"}, "app-1",
                                        now=1.0, wall=1700100001.0):
        if kind == "save":
            store_b.save(arg)
    assert sum(_slots(dir_b)[n] == foreign[n] for n in SLOT_NAMES) == 1
    store_b.close()

    reread = Store(dir_b, id_b).load()
    assert reread["client"]["client_id"] == "client-B" and reread["token"] is None

    # Box A, untouched, starts from its store with a valid token: no registration, no request yet.
    again = Store(os.path.join(root_a, STORE), id_a).load()
    lc_a = Lifecycle(random=lambda: 0.5)
    lc_a.load(again, "app-1", "hash-1", now=0.0, wall=1700000100.0)
    assert again["client"]["client_id"] == "client-A"
    assert lc_a.poll(0.0) is None and lc_a.token(0.0)["access_token"] == "token-A"
