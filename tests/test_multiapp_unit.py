"""Several registered applications (issue 16), without root and without the network: the peer ->
application mapping (server.acl_apps, rpc.resolve_app), the dispatcher's routing and errors, and
the service's per-application isolation and governor wiring with a scripted upstream."""

from __future__ import annotations

import base64
import json
import threading

import pytest

from agent import config, governor, lifecycle, rpc
from agent.errors import AgentError
from agent.server import acl_apps, acl_apps_need_groups
from agent.service import Service
from agent.storagepaths import app_runtime_dir, app_storage_dir
from tests.conftest import app_statement, machine_identity

ACLS = {"news": (frozenset({1001}), frozenset()),
        "sport": (frozenset(), frozenset({2002})),
        "kids": (frozenset({1001}), frozenset({3003}))}
OWN = 999


@pytest.mark.parametrize("uid,gid,groups,want", [
    (0, 0, frozenset(), ("news", "sport", "kids")),         # root: every application
    (OWN, 50, frozenset(), ("news", "sport", "kids")),       # the agent's own uid: every application
    (1001, 50, frozenset(), ("news", "kids")),               # by uid
    (1500, 2002, frozenset(), ("sport",)),                   # by primary group
    (1500, 50, frozenset({3003}), ("kids",)),                # by supplementary group
    (1500, 2002, frozenset({3003}), ("sport", "kids")),
    (1500, 50, frozenset({4004}), ()),                       # nothing: the socket refuses the peer
])
def test_acl_apps_maps_a_peer_to_its_applications(uid, gid, groups, want):
    assert acl_apps(uid, gid, groups, ACLS, OWN) == want


def test_acl_apps_needs_groups_only_when_a_group_list_could_still_admit():
    assert acl_apps_need_groups(50, ACLS)
    assert not acl_apps_need_groups(50, {"a": (frozenset({1}), frozenset())})
    assert not acl_apps_need_groups(7, {"a": (frozenset(), frozenset({7}))})


CONFIGURED = ("news", "sport", "kids")


def test_resolve_app_defaults_to_the_peers_only_application():
    assert rpc.resolve_app("token.get", None, ("sport",), CONFIGURED, 1500) == "sport"
    assert rpc.resolve_app("token.get", "sport", ("sport",), CONFIGURED, 1500) == "sport"
    assert rpc.resolve_app("token.get", None, None, ("default",), None) == "default"  # trusted, one application


def test_resolve_app_several_need_a_name_listing_the_peers_applications():
    with pytest.raises(rpc.RpcError) as ei:
        rpc.resolve_app("token.get", None, ("news", "kids"), CONFIGURED, 1001)
    e = ei.value
    assert e.code == rpc.INVALID_PARAMS and e.data["code"] == "app_required"
    assert e.data["apps"] == ["news", "kids"] and "news, kids" in e.message and "sport" not in e.message


@pytest.mark.parametrize("asked", ["sport", "no-such-app"])
def test_resolve_app_another_application_is_denied_the_same_way(asked):
    with pytest.raises(rpc.RpcError) as ei:
        rpc.resolve_app("token.get", asked, ("news",), CONFIGURED, 1001)
    e = ei.value
    assert e.code == rpc.DENIED and e.data["code"] == "denied" and e.data["kind"] == "operator"
    assert "uid 1001" in e.message and e.data["apps"] == ["news"]
    # configured or not: the same words (a peer learns nothing about applications it may not use)
    assert e.message.replace(repr(asked), "X") == _denied_message("other")


def _denied_message(asked: str) -> str:
    try:
        rpc.resolve_app("token.get", asked, ("news",), CONFIGURED, 1001)
    except rpc.RpcError as e:
        return e.message.replace(repr(asked), "X")
    raise AssertionError("not denied")


# -- the dispatcher over a real Service with a scripted upstream ------------------------------------


class Upstream:
    """Adobe in a script: every register gets a new client, every token a new token; records the
    order of requests (which application asked) and answers 429 when told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.throttle_next = 0
        self.refuse: set = set()  # application ids whose registration is refused (revoked statement)
        self.lock = threading.Lock()
        self.n = 0

    def send(self, req, timeout=None, ca_file=None, wall_now=None):
        body = req["body"] if isinstance(req.get("body"), (bytes, str)) else b""
        body = body.decode() if isinstance(body, bytes) else body
        with self.lock:
            self.n += 1
            n = self.n
        if "/register" in req["url"]:
            sub = json.loads(base64.urlsafe_b64decode(json.loads(body)["software_statement"].split(".")[1] + "==")
                             )["sub"]
            self.calls.append(("register", sub))
            if self.throttle_next:
                self.throttle_next -= 1
                return 429, {"content-type": "text/html"}, b"<html>Too Many Requests</html>"
            if sub in self.refuse:
                return 400, {"content-type": "application/json"}, b'{"error":"invalid_software_statement"}'
            return 201, {"content-type": "application/json"}, json.dumps(
                {"client_id": "client-%s-%d" % (sub, n), "client_secret": "secret-%s-%d-xxxxxxxx" % (sub, n),
                 "client_id_issued_at": 1700000000, "redirect_uris": []}).encode()
        cid = body.split("client_id=")[1].split("&")[0]
        self.calls.append(("token", cid))
        return 200, {"content-type": "application/json"}, json.dumps(
            {"access_token": "tok-%s-%d-%s" % (cid, n, "x" * 20), "token_type": "bearer", "expires_in": 3600}).encode()


def _multi(tmp_path, names, **kw) -> tuple[Service, Upstream]:
    apps = []
    for n in names:
        p = tmp_path / ("%s.jwt" % n)
        p.write_text(app_statement("com.example." + n))
        apps.append({"name": n, "software_statement": str(p), "application_id": "com.example." + n})
    cfg = config.local(str(tmp_path), "https://127.0.0.1:9/o", str(tmp_path / "unused.jwt")).replace(app=apps)
    up = Upstream()
    return Service(cfg, identity=machine_identity(str(tmp_path)), send=up.send, **kw), up


def _wait_all(svc: Service, names) -> dict:
    return {n: svc.wait_token(30, app=n) for n in names}


def test_each_application_gets_its_own_client_token_and_x_device_info(tmp_path):
    svc, up = _multi(tmp_path, ["news", "sport"])
    svc.start()
    try:
        toks = _wait_all(svc, ["news", "sport"])
        assert toks["news"]["access_token"] != toks["sport"]["access_token"]
        assert sorted(c[1] for c in up.calls if c[0] == "register") == ["com.example.news", "com.example.sport"]
        assert svc.lc.client["client_id"].startswith("client-com.example.news")
        for n in ("news", "sport"):
            fields = json.loads(base64.b64decode(svc.identity(n)["x_device_info"]))
            assert fields["applicationId"] == "com.example." + n
        assert "applicationId" not in json.loads(base64.b64decode(svc.identity()["x_device_info"]))
        st = svc.status()
        assert [a["app"] for a in st["apps"]] == ["news", "sport"] and "state" not in st
        assert all(a["token"] for a in st["apps"]) and st["governor"]["granted"] == 4
        with pytest.raises(AgentError) as ei:
            svc.token()
        assert ei.value.code == "app_required" and "news, sport" in ei.value.message
        with pytest.raises(AgentError) as ei:
            svc.token(app="nope")
        assert ei.value.code == "unknown_app"
    finally:
        svc.stop()


def test_a_refused_registration_stays_with_its_application(tmp_path):
    svc, up = _multi(tmp_path, ["news", "sport"])
    up.refuse.add("com.example.sport")  # sport's statement is revoked
    svc.start()
    try:
        assert svc.wait_token(30, app="news") is not None
        assert svc.wait_token(0.5, app="sport") is None
        st = {a["app"]: a for a in svc.status()["apps"]}
        assert st["sport"]["state"] == lifecycle.NEEDS_OPERATOR
        assert st["sport"]["last_error"]["code"] == "invalid_software_statement"
        assert st["news"]["state"] == lifecycle.TOKEN_VALID and st["news"]["last_error"] is None
        err = svc.not_ready_error("sport")
        assert err.code == "invalid_software_statement"
        svc.force_register("sport")  # an operator's action for one application
        assert svc.status("news")["client_id_hint"] == st["news"]["client_id_hint"]
    finally:
        svc.stop()


def test_first_tokens_go_before_a_refresh_and_a_429_pauses_every_application(tmp_path):
    clock = [1000.0]
    gov = governor.Governor(initial=1, slack=0.0, random=lambda: 0.5)  # no burst: one grant per second
    svc, up = _multi(tmp_path, ["a", "b", "c"], gov=gov, clock=lambda: clock[0], wall=lambda: 1.7e9 + clock[0])
    with svc._cond:
        now = clock[0]
        for a in svc._apps.values():
            ident, digest, _ = svc._refresh_statement(a, force=True)
            a.lc.load(None, ident, digest, now, 1.7e9)
        # "a" holds a valid token and is due for its refresh; "b" and "c" have nothing yet
        A = svc._apps["a"]
        A.lc.client = {"client_id": "client-a", "client_secret": "s"}
        A.lc._set_token({"access_token": "t" * 30, "token_type": "bearer", "expires_in": 3600}, now, 3600, 3600,
                        now)
        A.lc.state, A.lc.due = lifecycle.TOKEN_VALID, now
        job = svc._pick(now)
    assert job is not None and job[0].name == "b" and job[1] == "register"  # a first token before a refresh
    with svc._cond:
        assert svc._pick(now) is None  # the budget is spent: c and a wait in the governor's line
        assert svc._apps["a"].queued and svc._apps["c"].queued
        order = [k for k, _ in sorted(gov._waiting.items(), key=lambda kv: kv[1])]
    assert order == ["c", "a"]
    # Adobe answers 429 to b: every application pauses, not only b
    up.throttle_next = 1
    svc._perform(svc._apps["b"], "register", svc._apps["b"].statement, "auth.adobe.com|com.example.b", None)
    assert gov.paused_until > clock[0] + 0.99 and gov.pauses == 1
    clock[0] += 0.5
    with svc._cond:
        assert svc._pick(clock[0]) is None  # paused: nobody, though c was first in line and due
    clock[0] = gov.paused_until + 0.01
    with svc._cond:
        job = svc._pick(clock[0])
    assert job is not None and job[0].name == "c"


def test_storage_layout_keeps_default_in_place():
    assert app_storage_dir("/var/lib/pass-agent", "default") == "/var/lib/pass-agent"
    assert app_storage_dir("/var/lib/pass-agent", "news") == "/var/lib/pass-agent/apps/news"
    assert app_runtime_dir("/run/pass-agent", "news") == "/run/pass-agent/apps/news"


class _Svc:
    """Only what the dispatcher needs: two applications with a token each."""

    version = "t"

    def __init__(self) -> None:
        self.asked: list = []

    def apps(self):
        return ["news", "sport"]

    def token(self, min_ttl=0, app=None):
        self.asked.append(app)
        if app is None:
            raise AgentError("x", code="app_required")
        return {"access_token": "tok-" + app, "token_type": "bearer", "expires_at": 2e9, "expires_in": 100,
                "refresh_at": 1.9e9}

    def report_error(self, status, body=None, access_token=None, management=False, uid=None, app=None):
        return {"decision": "ignored", "app": app}

    def status(self, app=None):
        return {"apps": [{"app": "news"}, {"app": "sport"}], **({"app": app} if app else {})}


def _call(d, method, params=None, apps=None, uid=1001):
    req = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        req["params"] = params
    return json.loads(d.handle_line(json.dumps(req).encode(), uid, apps))


def test_dispatcher_routes_by_peer_and_denies_without_closing():
    s = _Svc()
    d = rpc.Dispatcher(s)
    assert _call(d, "token.get", apps=("sport",))["result"]["access_token"] == "tok-sport"  # the hot path
    assert _call(d, "token.get", {"app": "news"}, apps=("news", "sport"))["result"]["access_token"] == "tok-news"
    err = _call(d, "token.get", apps=("news", "sport"))["error"]
    assert err["code"] == rpc.INVALID_PARAMS and err["data"]["code"] == "app_required"
    assert err["data"]["apps"] == ["news", "sport"]
    err = _call(d, "token.get", {"app": "news"}, apps=("sport",))["error"]
    assert err["code"] == rpc.DENIED and err["data"]["code"] == "denied"
    err = _call(d, "token.get", {"app": 5}, apps=("sport",))["error"]
    assert err["code"] == rpc.INVALID_PARAMS
    # status: only the peer's applications; its only one at the top level
    st = _call(d, "agent.status", apps=("sport",))["result"]
    assert st["app"] == "sport" and [a["app"] for a in st["apps"]] == ["sport"]
    st = _call(d, "agent.status", apps=("news", "sport"))["result"]
    assert "app" not in st and len(st["apps"]) == 2
    assert _call(d, "agent.status", {"app": "news"}, apps=("sport",))["error"]["code"] == rpc.DENIED
    # a subscription names its application
    act = d.handle_line(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "token.subscribe",
                                    "params": {"app": "sport"}}).encode(), 1001, ("news", "sport"))
    assert isinstance(act, rpc.Action) and act.kind == "subscribe" and act.app == "sport"
    assert _call(d, "error.report", {"status": 500, "app": "sport"}, apps=("news", "sport"))["result"]["app"] == "sport"
    line = rpc.token_changed({"params": {"app": "sport", "expires_at": 1.0, "refresh_at": 0.5}})
    assert json.loads(line)["params"] == {"app": "sport", "expires_at": 1.0, "refresh_at": 0.5}


def test_console_names_applications(tmp_path):
    from agent.console import Console

    svc, up = _multi(tmp_path, ["news", "sport"])
    svc.start()
    try:
        toks = _wait_all(svc, ["news", "sport"])
        con = Console(svc, dumb=True)
        con.banner()

        def run(text: str) -> str:
            return con.feed(text.encode()).decode()

        out = run("token\n")
        assert "app_required" in out and "news, sport" in out
        out = run("token sport\n")
        assert "token" in out and toks["sport"]["access_token"] not in out  # masked, as always
        out = run("status\n")
        assert "news" in out and "sport" in out and toks["news"]["access_token"] not in out
        assert "unknown_app" in run("status nope\n")
        assert "app_required" in run("register\n")
        before = svc.status("news")["client_id_hint"]
        run("refresh sport\n")
        assert svc.status("news")["client_id_hint"] == before
    finally:
        svc.stop()
