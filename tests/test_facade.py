"""Every implementation of the service facade matches agent/facade.py's Protocol, signature for
signature: the real Service and the four stand-ins front-end tests and tools run against (issue 21).
A stand-in that drifts (a missing method, a parameter renamed, a default changed, `uid` not taken)
fails here instead of letting a front-end test pass against something the real Service is not."""

from __future__ import annotations

import inspect
import os
import re

import pytest

from agent import config, facade
from agent.log import LogBuffer
from agent.service import Service
from tests import console_fakes, fakes
from tools import bench_socket
from tools.fuzz import fakes as fuzz_fakes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDENTITY = {"x_device_info": "eyJtb2RlbCI6IngifQ==", "ap_device_identifier": "fingerprint eA==",
            "device_id": "serial:1", "fields": {"model": "x"}, "sources": {}, "warnings": []}

IMPLEMENTATIONS = {
    "agent.service.Service": Service,
    "tests.fakes.FakeService": fakes.FakeService,
    "tests.console_fakes.FakeService": console_fakes.FakeService,
    "tools.fuzz.fakes.FakeService": fuzz_fakes.FakeService,
    "tools.bench_socket.CachedService": bench_socket.CachedService,
}


def _norm(annotation: object) -> str:
    return "<none>" if annotation is inspect.Parameter.empty else re.sub(r"\s+", "", str(annotation))


def _shape(fn: object) -> tuple:
    """What must agree: every parameter's name, kind, default and annotation, and the return annotation."""
    sig = inspect.signature(fn)
    norm = _norm
    params = tuple((p.name, p.kind.name, "<none>" if p.default is inspect.Parameter.empty else repr(p.default),
                    norm(p.annotation)) for p in sig.parameters.values())
    return params, norm(sig.return_annotation)


def test_the_protocol_lists_the_documented_facade():
    assert facade.ATTRIBUTES == ("version", "logs")
    assert set(facade.METHODS) == {
        "token", "wait_token", "not_ready_error", "identity", "report_error", "status", "status_line", "health",
        "subscribe", "unsubscribe", "request_refresh", "force_register", "reset_credentials", "config_view", "apps"}
    params, _ = _shape(facade.ServiceFacade.report_error)
    assert [p[0] for p in params] == ["self", "status", "body", "access_token", "management", "uid", "app"]


@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("member", facade.METHODS)
def test_every_method_has_the_protocols_signature(name, member):
    cls = IMPLEMENTATIONS[name]
    assert hasattr(cls, member), "%s has no %s()" % (name, member)
    want, got = _shape(getattr(facade.ServiceFacade, member)), _shape(getattr(cls, member))
    assert got == want, "%s.%s%s differs from the facade's %s%s" % (
        name, member, inspect.signature(getattr(cls, member)), member,
        inspect.signature(getattr(facade.ServiceFacade, member)))


def _instance(name: str, tmp_path) -> object:
    if name == "agent.service.Service":
        return Service(config.defaults().replace(adobe={"software_statement": str(tmp_path / "s.jwt")}),
                       identity=IDENTITY)
    return IMPLEMENTATIONS[name]()


@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_every_implementation_has_the_attributes(name, tmp_path):
    obj = _instance(name, tmp_path)
    try:
        assert isinstance(obj.version, str) and obj.version
        assert isinstance(obj.logs, LogBuffer)
    finally:
        if isinstance(obj, Service):
            obj.stop()


FRONT_ENDS = ["agent/rpc.py", "agent/server.py", "agent/console.py", "agent/serialconsole.py", "agent/demo.py"]


@pytest.mark.parametrize("path", FRONT_ENDS)
def test_front_ends_call_only_the_facade(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        text = f.read()
    used = set(re.findall(r"\bservice\.([a-z_]+)", text))
    allowed = set(facade.METHODS) | set(facade.ATTRIBUTES) | {"py"}  # "agent/service.py" in prose
    assert used <= allowed, "%s uses %s, which the facade (agent/facade.py) does not have" % (
        path, sorted(used - allowed))
