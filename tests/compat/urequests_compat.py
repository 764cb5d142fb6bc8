"""Compatibility checks for agent.urequests, run unmodified by CPython and by MicroPython.

Usage: <python or micropython> urequests_compat.py REPO_ROOT HTTP_PORT HTTPS_PORT WRONG_PORT UNTRUSTED_PORT
       CA_FILE REFUSED_PORT

The servers are started by tests/test_urequests_compat.py (routes listed there). Prints one line
per check, "ok NAME" or "FAIL NAME: detail", then "done PASSED/TOTAL"; exits 1 on any failure.
Must stay MicroPython-compatible: no f-strings, typing, pathlib or CPython-only modules.
"""

import sys

args = sys.argv[1:] if sys.argv[0].endswith(".py") else sys.argv
ROOT, HTTP, HTTPS, WRONG, UNTRUSTED, CA_FILE, REFUSED = args[0], int(args[1]), int(args[2]), \
    int(args[3]), int(args[4]), args[5], int(args[6])
sys.path.insert(0, ROOT)

import errno  # noqa: E402

from agent import urequests  # noqa: E402

H = "http://127.0.0.1:%d" % HTTP
OTHER_HOST = "http://localhost:%d" % HTTP
results = []


def check(name, fn):
    try:
        fn()
        results.append(True)
        print("ok " + name)
    except Exception as e:  # a failed check must not stop the others
        results.append(False)
        print("FAIL %s: %s %s" % (name, type(e).__name__, e))


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def raises(exc, fn):
    try:
        fn()
    except exc as e:
        return e
    raise AssertionError("did not raise " + exc.__name__)


def t_get():
    r = urequests.get(H + "/hello", timeout=10)
    expect(r.status_code == 200 and r.reason == b"OK", "status")
    expect(r.headers["Content-Type"] == "text/plain", "headers")
    expect(r.text == "hello", "text")
    r.close()


def t_post_json():
    r = urequests.post(H + "/echo", json={"software_statement": "abc"}, timeout=10)
    got = r.json()
    expect(got["content-type"] == "application/json", "content type")
    expect(got["body"] == '{"software_statement": "abc"}' or got["body"] == '{"software_statement":"abc"}',
           "body " + got["body"])


def t_non_ascii():
    text = "Gr\u00fc\u00dfe \u6771\u4eac"
    r = urequests.put(H + "/echo", data=text, timeout=10)
    got = r.json()
    expect(got["content-length"] == str(len(text.encode("utf-8"))), "content-length in bytes")
    expect(got["body"] == text, "body")


def t_chunked():
    expect(urequests.get(H + "/chunked", timeout=10).content == b"hello chunked world", "decoded")


def t_generator_body():
    def gen():
        yield b"one,"
        yield b"two"
    got = urequests.post(H + "/echo", data=gen(), timeout=10).json()
    expect(got["body"] == "one,two" and got["transfer-encoding"] == "chunked", "chunked upload")


def t_no_headers():
    r = urequests.get(H + "/hello", parse_headers=False, timeout=10)
    expect(not hasattr(r, "headers"), "headers absent")
    expect(r.content == b"hello", "content")


def t_relative_redirect():
    r = urequests.get(H + "/redirect-relative", timeout=10)
    expect(r.status_code == 200 and r.content == b"hello", "followed")


def t_cross_host_redirect():
    r = urequests.get(H + "/redirect-other-host", headers={"Authorization": "Bearer secret-token"}, timeout=10)
    expect(r.json()["authorization"] == "", "Authorization must be dropped")
    r = urequests.get(H + "/redirect-same", headers={"Authorization": "Bearer secret-token"}, timeout=10)
    expect(r.json()["authorization"] == "Bearer secret-token", "kept on the same origin")


def t_303():
    got = urequests.post(H + "/see-other", data=b"payload", timeout=10).json()
    expect(got["method"] == "GET" and got["body"] == "", "303 becomes GET without body")


def t_307():
    got = urequests.post(H + "/temporary", data=b"payload", timeout=10).json()
    expect(got["method"] == "POST" and got["body"] == "payload", "307 keeps method and body")


def t_307_other_origin():
    e = raises(ValueError, lambda: urequests.post(H + "/temporary-other-origin", data=b"payload", timeout=10))
    expect("another origin" in str(e) and "payload" not in str(e), str(e))


def t_https_to_http():
    e = raises(ValueError, lambda: urequests.get("https://localhost:%d/downgrade" % HTTPS, timeout=10,
                                                 ca_file=CA_FILE))
    expect("https to http" in str(e), str(e))


def t_loop():
    e = raises(ValueError, lambda: urequests.get(H + "/loop", timeout=10))
    expect("redirects" in str(e), str(e))


def t_malformed():
    raises(ValueError, lambda: urequests.get(H + "/malformed-status", timeout=10))
    raises(ValueError, lambda: urequests.get(H + "/malformed-header", timeout=10))


def t_oversize():
    raises(ValueError, lambda: urequests.get(H + "/big", timeout=10, max_body=1000))


def t_slow_drip():
    e = raises(OSError, lambda: urequests.get(H + "/drip", timeout=1.0))
    expect(e.errno == errno.ETIMEDOUT, "errno %r" % (e.errno,))


def t_refused():
    e = raises(OSError, lambda: urequests.get("http://127.0.0.1:%d/" % REFUSED, timeout=5))
    expect(e.errno == errno.ECONNREFUSED and ("127.0.0.1:%d" % REFUSED) in str(e), str(e))


def t_tls_good():
    for host in ("localhost", "127.0.0.1"):
        r = urequests.get("https://%s:%d/hello" % (host, HTTPS), timeout=10, ca_file=CA_FILE)
        expect(r.content == b"hello", host)


def t_tls_wrong_host():
    for host in ("localhost", "127.0.0.1"):  # DNS name and IP address checks
        e = raises(OSError, lambda h=host: urequests.get("https://%s:%d/hello" % (h, WRONG), timeout=10,
                                                  ca_file=CA_FILE))
        expect(isinstance(e, urequests.TLSVerifyError), repr(e))


def t_tls_untrusted():
    e = raises(OSError, lambda: urequests.get("https://localhost:%d/hello" % UNTRUSTED, timeout=10,
                                              ca_file=CA_FILE))
    expect(isinstance(e, urequests.TLSVerifyError), repr(e))


def t_tls_system_store_refuses_test_ca():
    e = raises(OSError, lambda: urequests.get("https://localhost:%d/hello" % HTTPS, timeout=10))
    expect(isinstance(e, urequests.TLSVerifyError), repr(e))


def t_stream_and_context_manager():
    with urequests.get(H + "/hello", stream=True, timeout=10) as r:
        expect(r.raw.read(2) == b"he", "raw read")
        expect(r.content == b"llo", "rest")


def t_helpers():
    for fn in (urequests.head, urequests.get, urequests.post, urequests.put, urequests.patch, urequests.delete):
        r = fn(H + "/echo", timeout=10)
        expect(r.status_code == 200, fn.__name__)


for _name, _fn in (("get", t_get), ("post_json", t_post_json), ("non_ascii", t_non_ascii),
                   ("chunked", t_chunked), ("generator_body", t_generator_body), ("no_headers", t_no_headers),
                   ("relative_redirect", t_relative_redirect), ("cross_host_redirect", t_cross_host_redirect),
                   ("redirect_303", t_303), ("redirect_307", t_307), ("redirect_loop", t_loop),
                   ("redirect_307_other_origin", t_307_other_origin), ("redirect_https_to_http", t_https_to_http),
                   ("malformed", t_malformed), ("oversize", t_oversize), ("slow_drip", t_slow_drip),
                   ("refused", t_refused), ("tls_good", t_tls_good), ("tls_wrong_host", t_tls_wrong_host),
                   ("tls_untrusted", t_tls_untrusted), ("tls_system_store", t_tls_system_store_refuses_test_ca),
                   ("stream", t_stream_and_context_manager), ("helpers", t_helpers)):
    check(_name, _fn)

print("done %d/%d" % (sum(1 for x in results if x), len(results)))
sys.exit(0 if all(results) else 1)
