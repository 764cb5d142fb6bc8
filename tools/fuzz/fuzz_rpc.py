"""Harness: the JSON-RPC dispatcher (agent/rpc.py) on arbitrary request lines.

Each input is split on newlines; every line goes to `Dispatcher.handle_line` (token held or not),
parked waits are resumed; every answer must be one valid JSON-RPC 2.0 response line. Must never:
do I/O.
"""

from __future__ import annotations

import json

from agent import rpc
from tools.fuzz.fakes import TOKEN, FakeService

_WITH, _WITHOUT = rpc.Dispatcher(FakeService(True)), rpc.Dispatcher(FakeService(False))


def _check(ans: bytes) -> None:
    assert ans.endswith(b"\n") and ans.count(b"\n") == 1, ans[:200]
    msg = json.loads(ans)
    assert msg["jsonrpc"] == "2.0" and "id" in msg and (("result" in msg) != ("error" in msg)), msg
    if "error" in msg:
        e = msg["error"]
        assert isinstance(e["code"], int) and e["message"] and e["data"]["kind"] in rpc.KINDS, msg
        assert TOKEN not in e["message"]


def test_one_input(data: bytes) -> None:
    d = _WITH if data[:1] < b"\x80" else _WITHOUT
    for line in data[1:].split(b"\n"):
        ans = d.handle_line(line)
        if isinstance(ans, rpc.Action):
            if ans.kind == "park":
                _check(d.resume(ans, final=True))
            continue
        if ans is not None:
            _check(ans)


KNOWN: list = []  # the lone-surrogate and infinite-id bugs it found are fixed (00928b7)

DICT = [b'{"jsonrpc":"2.0"', b'"id":', b'"method":', b'"params":', b'"token.get"', b'"headers.get"',
        b'"error.report"', b'"token.subscribe"', b'"agent.status"', b'"device.info"', b'"status":401',
        b'"body":', b'"wait":', b'"min_ttl":', b'"access_token":', b"\\ud800", b"1e400", b"null", b"}", b"\n"]
