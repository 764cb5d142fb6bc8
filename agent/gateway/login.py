"""`pass-agent login`: the whole second-screen user story through the gateway socket (issue 17).

Job: as a player would, with no credentials of its own: read the configuration (MVPD list), create an
authentication session (a registration code), show the code and the URL a second screen opens, have
the login completed (`--emulate-browser`: the emulator's one-request completion, sent through the
gateway like any /api/v2/ call; otherwise a person opens the URL), poll the profile every `poll`
seconds (3-5 s, reference section 8) until it appears or the code expires, ask an authorize decision
for a resource and show its media token (shortened), then log out (unless `--stay`).

Standard library only (http.client over the Unix socket, agent/gateway/client.py): it runs where the
players run. Exit 0: every step succeeded; 1: a step failed (the message names the step, the HTTP
status and Adobe's error code); 2: usage.
Must never: print an access token (it never sees one), or poll faster than every 3 s.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, TextIO
from urllib.parse import quote

from agent.gateway import client as gwclient

MIN_POLL = 3.0
REDIRECT_URL = "https://adobe.com"


class StepFailed(Exception):
    pass


def _when(ms: Any) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(int(ms) / 1000.0))
    except (TypeError, ValueError, OverflowError):
        return "?"


def _what(status: int, body: bytes) -> str:
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return "HTTP %d" % status
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        data = data["error"]
    if isinstance(data, dict) and data.get("code"):
        return "HTTP %d, %s%s" % (status, data["code"], ": " + str(data.get("message"))[:160] if data.get("message")
                                  else "")
    return "HTTP %d" % status


def login_command(socket_path: str, sp: str, out: TextIO, err: TextIO, *, app: str | None = None,
                  mvpd: str | None = None, resource: str | None = None, emulate_browser: bool = False,
                  stay: bool = False, poll: float = 4.0, timeout: float = 1800.0, origin: str | None = None,
                  sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> int:
    poll = max(MIN_POLL, poll)
    conn = gwclient.UnixHTTPConnection(socket_path, timeout=60)
    base = "/api/v2/%s/" % quote(sp, safe="")

    def call(step: str, method: str, path: str, **kw: Any) -> Any:
        try:
            status, _, body = gwclient.call(conn, method, base + path if not path.startswith("/") else path,
                                            app=app, **kw)
        except OSError as e:
            conn.close()
            raise StepFailed("%s: cannot talk to the gateway at %s (%s); is the agent running with [gateway] "
                             "enabled = true?" % (step, socket_path, e))
        if status != 200:
            raise StepFailed("%s: %s" % (step, _what(status, body)))
        try:
            return json.loads(body.decode("utf-8")) if body.strip().startswith(b"{") else body
        except (ValueError, UnicodeDecodeError):
            raise StepFailed("%s: Adobe's answer is not JSON" % step)

    try:
        print("pass-agent login: service provider %s%s, through %s" % (sp, ", application " + app if app else "",
                                                                      socket_path), file=out)
        cfg = call("configuration", "GET", "configuration")
        mvpds = [m for m in (cfg.get("requestor", {}).get("mvpds") or cfg.get("mvpds") or []) if isinstance(m, dict)]
        names = ", ".join("%s (%s)" % (m.get("id"), m.get("displayName", "")) for m in mvpds)
        chosen = mvpd or (mvpds[0].get("id") if mvpds else None)
        if not chosen:
            raise StepFailed("configuration: the service provider lists no MVPD; name one with --mvpd")
        print("configuration: %d MVPD(s): %s; using %s" % (len(mvpds), names or "none", chosen), file=out)
        s = call("sessions", "POST", "sessions", form={"mvpd": chosen, "domainName": "adobe.com",
                                                       "redirectUrl": REDIRECT_URL})
        code = s.get("code")
        if s.get("actionName") == "authorize":
            print("sessions: this device is already logged in with %s" % chosen, file=out)
        elif not code:
            raise StepFailed("sessions: no registration code in the answer (actionName %r)" % s.get("actionName"))
        else:
            url = s.get("url") or ""
            print("registration code: %s (valid until %s)" % (code, _when(s.get("notAfter"))), file=out)
            print("on a second screen, open: %s%s" % (origin or "", url), file=out)
            if emulate_browser:
                page = call("emulated browser", "GET", "/api/v2/authenticate/%s/%s?complete=1" % (
                    quote(sp, safe=""), quote(code, safe="")))
                print("emulated browser: signed in (%d bytes of page)" % len(page), file=out)
            deadline = clock() + timeout
            try:
                deadline = min(deadline, clock() + max(0.0, int(s.get("notAfter")) / 1000.0 - time.time()))
            except (TypeError, ValueError):
                pass
            print("waiting for the login (profiles every %g s)" % poll, file=out)
            while True:
                prof = call("profiles", "GET", "profiles/%s" % quote(chosen, safe=""))
                if (prof.get("profiles") or {}).get(chosen):
                    break
                if clock() + poll > deadline:
                    raise StepFailed("profiles: no login before the code expired; start again")
                sleep(poll)
        prof = call("profiles", "GET", "profiles/%s" % quote(chosen, safe=""))
        p = (prof.get("profiles") or {}).get(chosen) or {}
        print("profile: %s, valid until %s" % (chosen, _when(p.get("notAfter"))), file=out)
        res = resource or sp
        d = call("authorize", "POST", "decisions/authorize/%s" % quote(chosen, safe=""), body={"resources": [res]})
        dec = next((x for x in d.get("decisions") or [] if isinstance(x, dict) and x.get("resource") == res), None)
        if not dec or not dec.get("authorized"):
            why = (dec or {}).get("error", {}).get("code") if dec else "no decision"
            raise StepFailed("authorize: %s is not authorized (%s)" % (res, why))
        media = (dec.get("token") or {}).get("serializedToken") or ""
        print("authorize %s: authorized, media token %s... (%d characters), valid until %s" % (
            res, media[:12], len(media), _when((dec.get("token") or {}).get("notAfter"))), file=out)
        if stay:
            print("staying logged in (--stay)", file=out)
        else:
            lo = call("logout", "GET", "logout/%s?redirectUrl=%s" % (quote(chosen, safe=""),
                                                                  quote(REDIRECT_URL, safe="")))
            entry = (lo.get("logouts") or {}).get(chosen) or {}
            print("logout %s: %s" % (chosen, entry.get("actionName", "?")), file=out)
        return 0
    except StepFailed as e:
        print("pass-agent login: %s" % e, file=err)
        return 1
    finally:
        conn.close()
