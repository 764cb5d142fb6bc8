"""`pass-agent run` as a real process: it warns at start when a required X-Device-Info field is `Unknown`
(Adobe then classifies the box as an unknown platform, with shorter authentication TTLs)."""

from __future__ import annotations

import os
import shutil
import signal

from tests.agentproc import AgentProc

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "boards")


def test_run_warns_at_start_naming_each_unknown_field(tmp_path, emu):
    root = tmp_path / "box"
    shutil.copytree(os.path.join(FIXTURES, "raspberrypi"), root)
    shutil.rmtree(root / "proc" / "device-tree")  # no model; cpuinfo keeps only the serial (no revision)
    (root / "proc" / "cpuinfo").write_text("Serial\t\t: 100000001234abcd\n")
    agent = AgentProc(tmp_path, emu, device__board="raspberrypi", device__root=str(root))
    try:
        agent.start()
        assert agent.stop(signal.SIGTERM) == 0
    finally:
        agent.kill()
    warnings = [ln for ln in agent.log().splitlines() if "WARNING" in ln and "unknown platform" in ln]
    assert len(warnings) == 1, agent.log()
    for text in ("model", "version", "[device.overrides]", "pass-agent check"):
        assert text in warnings[0]
    assert "osVersion" not in warnings[0]
