"""Shared pieces of the emulator's own tests (tests/test_emulator_*.py): a clock the test moves by
hand and one HTTP request to a running emulator through its client (agent/emulator/client.py).

Must never: start or stop an emulator (the test files' fixtures own its lifetime).
"""

from __future__ import annotations

from agent.emulator.client import request


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def call(emu, method, path, body=None, headers=None):
    return request(emu.origin, method, path, body, headers, ca_file=emu.ca_file)
