"""The socket's access decision, without root (issue 21: the uid/gid checks were caught only by the
root-only tests of test_server_security.py).

Two layers:
- the pure functions agent.server.acl_allows / acl_needs_groups / acl_recheck, over a table of peers
  and configurations;
- the real Server (real Unix socket, real Loop thread) with only the kernel's answers replaced:
  `peer_credentials` (SO_PEERCRED) and `peer_groups` (/proc/<pid>/status) are patched to describe a
  peer of another uid, so accept-time and SIGHUP-time decisions run as they do for a real one.
"""

from __future__ import annotations

import socket

import pytest

from agent import rpc, server
from agent.server import acl_allows, acl_needs_groups, acl_recheck

try:
    from tests.fakes import LineReader, ServerHarness, connect, request
except ImportError:  # tests/ on sys.path instead of the repo root
    from fakes import LineReader, ServerHarness, connect, request

OWN = 54320          # the agent's uid in the pure tests
PEER = 54321         # a peer of another uid (no real user has it here)
PEER_GID = 54322     # its primary group
SUPP = 54323         # one of its supplementary groups
OTHER = 54324        # a group it is not in

F = frozenset


@pytest.mark.parametrize("uid, gid, groups, allow_uids, allow_gids, expected", [
    (0, 0, F(), F(), F(), True),                          # root always
    (OWN, 1, F(), F(), F(), True),                        # the agent's own user (its CLI) always
    (PEER, PEER_GID, F(), F(), F(), False),               # nothing allowed: only root and own uid
    (PEER, PEER_GID, F(), F({PEER}), F(), True),          # allow_uids
    (PEER, PEER_GID, F(), F({PEER + 1}), F(), False),     # another uid allowed
    (PEER, PEER_GID, F(), F(), F({PEER_GID}), True),      # primary group allowed
    (PEER, PEER_GID, F({SUPP}), F(), F({SUPP}), True),    # supplementary group allowed
    (PEER, PEER_GID, F({SUPP}), F(), F({OTHER}), False),  # none of its groups allowed
    (PEER, PEER_GID, F({SUPP}), F(), F(), False),         # groups, but allow_gids empty: no group allows
    (PEER, PEER_GID, F({PEER_GID}), F(), F(), False),     # ... even its primary one
    (PEER, 0, F({0}), F(), F({OTHER}), False),            # gid 0 is not root: only uid 0 is
])
def test_acl_allows(uid, gid, groups, allow_uids, allow_gids, expected) -> None:
    assert acl_allows(uid, gid, groups, allow_uids, allow_gids, OWN) is expected


@pytest.mark.parametrize("gid, allow_gids, expected", [
    (PEER_GID, F(), False),            # no group allowed: groups cannot matter
    (PEER_GID, F({PEER_GID}), False),  # the primary group decides already
    (PEER_GID, F({SUPP}), True),       # only a supplementary group could allow it
])
def test_acl_needs_groups(gid, allow_gids, expected) -> None:
    assert acl_needs_groups(gid, allow_gids) is expected


def test_recheck_reads_groups_again_before_denying() -> None:
    """Accepted by uid (its groups never read), then SIGHUP allows only its supplementary group."""
    reads = []

    def read() -> frozenset:
        reads.append(1)
        return F({SUPP})

    assert acl_recheck(PEER, PEER_GID, F(), F(), F({SUPP}), OWN, read) == (True, F({SUPP}))
    assert reads == [1]


def test_recheck_denies_when_the_fresh_groups_do_not_allow() -> None:
    assert acl_recheck(PEER, PEER_GID, F(), F(), F({OTHER}), OWN, lambda: F({SUPP})) == (False, F({SUPP}))


def test_recheck_keeps_an_allowed_peer_without_reading_groups() -> None:
    def read() -> frozenset:
        raise AssertionError("groups read although the peer is still allowed")

    assert acl_recheck(PEER, PEER_GID, F({SUPP}), F({PEER}), F(), OWN, read) == (True, F({SUPP}))


# -- the real server, with the kernel's answers about the peer replaced ------------------------------

@pytest.fixture
def peer(monkeypatch):
    """Every connection is from uid PEER, gid PEER_GID; its supplementary groups are `peer["groups"]`
    (mutable), and `peer["reads"]` counts how often the server asked for them."""
    state = {"groups": F({SUPP}), "reads": 0}

    def creds(sock: socket.socket) -> tuple[int, int, int]:
        return 4242, PEER, PEER_GID

    def groups(pid: int, uid: int) -> frozenset:
        assert (pid, uid) == (4242, PEER)
        state["reads"] += 1
        return state["groups"]

    monkeypatch.setattr(server, "peer_credentials", creds)
    monkeypatch.setattr(server, "peer_groups", groups)
    return state


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "run" / "agent.sock")


def health(s: socket.socket, r: LineReader) -> dict:
    s.sendall(request("agent.health", None, 1))
    return r.json()


def assert_denied(r: LineReader) -> None:
    e = r.json()["error"]
    assert e["code"] == rpc.DENIED and e["data"]["kind"] == "operator"
    assert "uid %d is not allowed" % PEER in e["message"] and "allow_gids" in e["message"]
    assert r.eof()


@pytest.mark.parametrize("acl, allowed", [
    ({}, False),
    ({"allow_uids": (PEER,)}, True),
    ({"allow_gids": (PEER_GID,)}, True),
    ({"allow_gids": (SUPP,)}, True),
    ({"allow_gids": (OTHER,)}, False),
    ({"allow_uids": (PEER + 1,), "allow_gids": (OTHER,)}, False),
])
def test_accept_decision(peer, path, acl, allowed) -> None:
    with ServerHarness(path, **acl) as h:
        h.server._own_uid = OWN  # the agent is not the peer's user (even when the test runs as root)
        s = connect(path)
        r = LineReader(s)
        if allowed:
            assert health(s, r)["result"]["live"]
            assert h.stats()["denied"] == 0
        else:
            assert_denied(r)
            assert h.stats()["denied"] == 1
        s.close()


def test_accept_reads_groups_only_when_they_can_decide(peer, path) -> None:
    with ServerHarness(path, allow_uids=(PEER,), allow_gids=(PEER_GID,)) as h:
        h.server._own_uid = OWN
        s = connect(path)
        assert health(s, LineReader(s))["result"]["live"]
        assert peer["reads"] == 0
        s.close()
    with ServerHarness(path, allow_gids=(SUPP,)) as h:
        h.server._own_uid = OWN
        s = connect(path)
        assert health(s, LineReader(s))["result"]["live"]
        assert peer["reads"] == 1
        s.close()


def test_sighup_allowing_a_supplementary_group_keeps_the_peer(peer, path) -> None:
    """Issue 21: allowed by uid at accept (groups not read then); a reload that allows only one of its
    supplementary groups must read them and keep the connection."""
    with ServerHarness(path, allow_uids=(PEER,)) as h:
        h.server._own_uid = OWN
        s = connect(path)
        r = LineReader(s)
        assert health(s, r)["result"]["live"]
        assert peer["reads"] == 0
        h.call(lambda: h.server.set_acl((), (SUPP,)))
        assert peer["reads"] == 1
        assert h.stats()["connections"] == 1 and h.stats()["denied"] == 0
        assert health(s, r)["result"]["live"]  # still served on the same connection
        s.close()


def test_sighup_removing_the_peer_disconnects_it(peer, path) -> None:
    with ServerHarness(path, allow_gids=(SUPP,)) as h:
        h.server._own_uid = OWN
        s = connect(path)
        r = LineReader(s)
        assert health(s, r)["result"]["live"]
        h.call(lambda: h.server.set_acl((), (OTHER,)))  # its group is no longer allowed
        assert_denied(r)
        assert h.stats()["connections"] == 0 and h.stats()["denied"] == 1
        s.close()
