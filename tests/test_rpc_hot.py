"""token.get's hot path (issue 20: p50 <= 2x the echo floor): the canonical request line, as
agent/client.py, token_client.c and the benchmarks send it, is recognised by its bytes and answered
without parsing JSON; the answer is byte-identical to the generic path's, and every line that is not
exactly that (leading zeros, signs, fractions, other spacing, no token) goes the generic way."""

from __future__ import annotations

import json

import pytest

from agent import rpc

try:
    from tests.fakes import TOKEN, FakeService
except ImportError:  # tests/ on sys.path instead of the repo root
    from fakes import TOKEN, FakeService

CANON = b'{"jsonrpc":"2.0","id":%s,"method":"token.get"}'


def _no_parse(line: bytes):
    raise AssertionError("parsed JSON on the hot path")


def test_the_canonical_token_get_line_is_answered_without_parsing_json(monkeypatch):
    d = rpc.Dispatcher(FakeService())
    monkeypatch.setattr(rpc, "parse", _no_parse)
    out = json.loads(d.handle_line(CANON % b"42"))
    assert out["id"] == 42 and out["result"]["access_token"] == TOKEN
    assert d.requests == 1 and d.errors == 0


@pytest.mark.parametrize("req_id", [b"0", b"7", b"123456789012345678"])
def test_the_answer_is_byte_identical_to_the_generic_paths(req_id):
    svc = FakeService()
    fast = rpc.Dispatcher(svc).handle_line(CANON % req_id)
    spaced = b'{"method": "token.get", "id": %s, "jsonrpc": "2.0"}' % req_id  # parsed, then dispatched
    assert fast == rpc.Dispatcher(svc).handle_line(spaced)
    assert fast.endswith(b"}\n") and json.loads(fast)["id"] == int(req_id)


@pytest.mark.parametrize("raw,want_id", [(b"-1", -1), (b"1.0", 1.0), (b"1e3", 1000.0), (b" 5", 5),
                                         (b"1234567890123456789012", 1234567890123456789012), (b'"7"', "7")])
def test_lines_that_are_not_exactly_canonical_are_answered_as_json_reads_them(raw, want_id):
    out = json.loads(rpc.Dispatcher(FakeService()).handle_line(CANON % raw))
    assert out["id"] == want_id and out["result"]["access_token"] == TOKEN


@pytest.mark.parametrize("raw", [b"01", b"", b"1_0", b"\xd9\xa1"])  # not JSON numbers (U+0661 is a digit to str)
def test_invalid_ids_are_still_parse_errors(raw):
    d = rpc.Dispatcher(FakeService())
    out = json.loads(d.handle_line(CANON % raw))
    assert out["error"]["code"] == rpc.PARSE_ERROR and out["id"] is None and d.errors == 1


def test_without_a_token_the_canonical_line_gets_the_generic_not_ready_answer():
    svc = FakeService(token=None)
    out = json.loads(rpc.Dispatcher(svc).handle_line(CANON % b"3"))
    want = json.loads(rpc.Dispatcher(svc).handle_line(b'{"id": 3, "jsonrpc": "2.0", "method": "token.get"}'))
    assert out == want and "error" in out and out["id"] == 3


class _Svc:
    def kw_only(self, status, body=None, *, uid=None): ...
    def var_kw(self, status, **kw): ...
    def pos_only(self, status, uid, /, app=None): ...
    def plain(self, status): ...

    @staticmethod
    def static(status, uid=None): ...


def test_whether_report_error_takes_uid_or_app_is_read_as_inspect_would():
    # The Dispatcher asks this once per service; read from the code object (no inspect at start-up).
    import functools
    import inspect

    s = _Svc()
    fns = [s.kw_only, s.var_kw, s.pos_only, s.plain, s.static, _Svc.plain, functools.partial(_Svc.kw_only, s),
           lambda status, uid: None, print]
    for fn in fns:
        for name in ("uid", "app", "status"):
            try:
                ps = inspect.signature(fn).parameters.values()
                want = any((p.name == name and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD
                           for p in ps)
            except (TypeError, ValueError):
                want = False
            assert rpc._accepts_keyword(fn, name) is want, (fn, name)
