"""`pass-agent status`'s view: the agent's `agent.status` answer as readable lines, and the exit code
that says whether the agent holds a valid token (agent/commands.py runs the command).

Exit codes: 0 a valid token is held, 3 the agent answers but holds no valid token (registering,
backing off, waiting for an operator), 1 the agent cannot be asked (not running, no permission).
Must never: print a secret (the answer is scrubbed of secret-named keys first) or a Python repr
(None, dicts, quotes): every value is turned into words here; `--json` gives the raw answer.
"""

from __future__ import annotations

import time
from typing import Any

EXIT_TOKEN, EXIT_UNAVAILABLE, EXIT_NO_TOKEN = 0, 1, 3

# store.problem -> what it means for the box
_STORE_WORDS = {
    None: "ok",
    "empty": "no credentials stored (first start or after reset)",
    "corrupt": "both slots unreadable: registering afresh",
    "foreign_device": "written by another device (cloned image): registering afresh",
    "unsupported_version": "written by a newer agent: registering afresh",
    "read_only": "read-only file system: stored credentials are served, new ones are kept in memory only",
}
_COUNT_WORDS = {"ok": "ok", "fail": "failed", "failed": "failed", "throttled": "throttled"}


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def duration(seconds: float) -> str:
    s = int(round(abs(seconds)))
    if s < 120:
        return "%d s" % s
    if s < 7200:
        return "%dm%02ds" % (s // 60, s % 60)
    return "%dh%02dm" % (s // 3600, (s % 3600) // 60)


def when(epoch: Any, now: float) -> str:
    if not _num(epoch):
        return "unknown"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    left = epoch - now
    return "%s (in %s)" % (stamp, duration(left)) if left >= 0 else "%s (%s ago)" % (stamp, duration(left))


def _counts(d: Any) -> str:
    """{"register": {"ok": 1, "fail": 2}, "token": {"ok": 0}} -> "register 1 ok, 2 failed; token 0 ok"."""
    if not isinstance(d, dict) or not d:
        return "none yet"
    parts = []
    for op in sorted(d):
        v = d[op]
        if isinstance(v, dict):
            keys = sorted(v, key=lambda k: (k != "ok", k not in ("fail", "failed"), str(k)))
            inner = ", ".join("%s %s" % (v[k], _COUNT_WORDS.get(str(k), str(k).replace("_", " ")))
                              for k in keys if _num(v[k]))
            parts.append("%s %s" % (op, inner or "none"))
        elif _num(v):
            parts.append("%s %s" % (str(op).replace("_", " "), v))
    return "; ".join(parts) or "none yet"


def _store(d: Any) -> str:
    if not isinstance(d, dict):
        return "unknown"
    problem = d.get("problem")
    text = _STORE_WORDS.get(problem, str(problem).replace("_", " "))
    if d.get("read_only") and problem != "read_only":
        text += "; " + _STORE_WORDS["read_only"]
    facts = []
    if _num(d.get("generation")) and d["generation"]:
        facts.append("generation %d" % d["generation"])
    if _num(d.get("writes")):
        facts.append("%d writes" % d["writes"])
    if _num(d.get("failures")) and d["failures"]:
        facts.append("%d failed saves" % d["failures"])
    return text + (" (%s)" % ", ".join(facts) if facts else "")


def lines(st: dict, now: float | None = None) -> list[tuple[str, str]]:
    """(label, text) rows for a status answer; every text is plain words."""
    now = time.time() if now is None else now
    tok = st.get("token") if isinstance(st.get("token"), dict) else None
    state = str(st.get("state") or "unknown")
    rows = [("state", "%s (%s)" % (st["state_text"], state) if st.get("state_text") else state)]
    if tok:
        rows.append(("token", "valid until %s" % when(tok.get("expires_at"), now)))
        rows.append(("refresh", when(tok.get("refresh_at"), now)))
    else:
        rows.append(("token", "no valid token"))
    nxt = st.get("next_request_in")
    if st.get("in_flight"):
        rows.append(("next request", "in flight now"))
    elif _num(nxt):
        rows.append(("next request", "in %s" % duration(nxt)))
    reg = st.get("registered_at")
    rows.append(("registered", when(reg, now) if _num(reg) else "not registered"))
    rows.append(("client id", str(st["client_id_hint"]) if st.get("client_id_hint") else "none"))
    err = st.get("last_error")
    if isinstance(err, dict) and err:
        text = "%s (%s): %s" % (err.get("code") or "error", err.get("kind") or "unknown", err.get("message") or "")
        if err.get("hint"):
            text += "; fix: %s" % err["hint"]
        rows.append(("last error", text))
    else:
        rows.append(("last error", "none"))
    rows.append(("upstream", _counts(st.get("upstream"))))
    rows.append(("store", _store(st.get("store"))))
    if st.get("base_url"):
        rows.append(("adobe", str(st["base_url"])))
    if st.get("statement_sha256"):
        rows.append(("statement", "SHA-256 %s..." % st["statement_sha256"]))
    up = st.get("uptime")
    rows.append(("agent", "version %s, up %s" % (st.get("version") or "unknown", duration(up) if _num(up) else "unknown")))
    return rows


def has_token(st: dict) -> bool:
    """A valid token is held: by the application shown, or (several applications, none chosen) by
    every application listed."""
    if "state" not in st and isinstance(st.get("apps"), list) and st["apps"]:
        return all(isinstance(a, dict) and has_token(a) for a in st["apps"])
    return isinstance(st.get("token"), dict) and bool(st["token"])


def app_blocks(st: dict, now: float | None = None) -> list[tuple[str, list[tuple[str, str]]]]:
    """Several applications (issue 16), none chosen: (name, rows) per application, then ("", the
    agent's own rows). One application (or one chosen): [("", lines(st))]."""
    apps = st.get("apps")
    if "state" in st or not isinstance(apps, list) or not apps:
        return [("", lines(st, now))]
    out = []
    for a in apps:
        if isinstance(a, dict):
            rows = [r for r in lines(a, now) if r[0] not in ("adobe", "agent")]
            out.append((str(a.get("app") or "?"), rows))
    gov = st.get("governor") if isinstance(st.get("governor"), dict) else {}
    own = [("adobe", str(st.get("base_url") or "unknown"))]
    if gov:
        own.append(("budget", "%s requests granted, %s throttled, %s waiting" % (
            gov.get("granted", 0), gov.get("throttled", 0), sum((gov.get("waiting") or {}).values()))))
    up = st.get("uptime")
    own.append(("agent", "version %s, up %s" % (st.get("version") or "unknown", duration(up) if _num(up) else "unknown")))
    out.append(("", own))
    return out
