"""A real browser against the real daemon (issue 18's "done when"): headless Debian chromium loads a
page served by this test on 127.0.0.1; the page opens the agent's WebSocket the way ThunderJS does
(subprotocol "notification", the token as ?token=), registers for `tokenchanged`, parks a
`PassAgent.1.headers` request, and writes the headers and the event into its DOM. The test reads the
DOM chromium dumps. Synchronisation is by events only: the page tells the test (POST /registered)
when it is registered, the test then lets the emulator issue the token, and the page's load event
waits for an image the test serves only once the page reported that it is done (POST /done)."""

from __future__ import annotations

import html.parser
import http.server
import json
import shutil
import subprocess
import threading
from typing import Any

import pytest

pytest.importorskip("h11", reason="the web endpoint needs the optional packages h11 and wsproto (pass-agent[web])")
pytest.importorskip("wsproto", reason="the web endpoint needs the optional packages h11 and wsproto (pass-agent[web])")

from agent.client import Client  # noqa: E402
from tests.test_web import GOOD, FakeSecurityAgent, free_port  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LIMIT = 120.0  # guard against hangs only

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>pass-agent web test</title></head><body>
<pre id="headers">pending</pre>
<pre id="event">pending</pre>
<pre id="status">started</pre>
<script>
const EVENTS = "client.PassAgent.events";          // the id ThunderJS registers with
const ws = new WebSocket("ws://127.0.0.1:%(ws_port)d/jsonrpc?token=%(token)s", "notification");
let reported = false;
function show(id, value) { document.getElementById(id).textContent = value; }
function done(status) {
  show("status", status);
  if (!reported) { reported = true; fetch("/done", {method: "POST", body: status}); }
}
function finishIfComplete() {
  if (document.getElementById("headers").textContent !== "pending" &&
      document.getElementById("event").textContent !== "pending") done("done");
}
ws.onopen = () => ws.send(JSON.stringify({jsonrpc: "2.0", id: 1, method: "PassAgent.1.register",
                                          params: {event: "tokenchanged", id: EVENTS}}));
ws.onmessage = (m) => {
  const msg = JSON.parse(m.data);
  if (msg.id === 1) {
    ws.send(JSON.stringify({jsonrpc: "2.0", id: 2, method: "PassAgent.1.headers", params: {wait: 90}}));
    fetch("/registered", {method: "POST", body: JSON.stringify(msg)});
  } else if (msg.id === 2) {
    show("headers", JSON.stringify(msg.result || msg));
    finishIfComplete();
  } else if (msg.method === EVENTS + ".tokenchanged") {
    show("event", JSON.stringify(msg));
    finishIfComplete();
  }
};
ws.onclose = (e) => done("closed " + e.code + " protocol=" + ws.protocol);
</script>
<img src="/gate.png" alt="">
</body></html>
"""


class PageServer:
    """Serves the page and the events the page reports, on 127.0.0.1 (the allowed origin)."""

    def __init__(self, page: str) -> None:
        self.registered = threading.Event()
        self.done = threading.Event()
        self.page = page.encode()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/index.html":
                    self._answer(200, outer.page, "text/html; charset=utf-8")
                elif self.path == "/gate.png":
                    outer.done.wait(LIMIT)  # the page's load event waits for this image
                    self._answer(404, b"", "text/plain")
                else:
                    self._answer(404, b"", "text/plain")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                {"/registered": outer.registered, "/done": outer.done}.get(self.path, threading.Event()).set()
                self._answer(204, b"", "text/plain")

            def _answer(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.origin = "http://127.0.0.1:%d" % self.port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.done.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Pre(html.parser.HTMLParser):
    """The text of every <pre id=...> in a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: dict = {}
        self._id: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "pre":
            self._id = dict(attrs).get("id")
            self.texts[self._id] = ""

    def handle_endtag(self, tag: str) -> None:
        self._id = None

    def handle_data(self, data: str) -> None:
        if self._id is not None:
            self.texts[self._id] += data


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed here (.ci/run installs it with "
                    "apt-get install chromium); the real-browser test needs it")
def test_a_real_browser_gets_headers_and_a_tokenchanged_event(make_agent, emu, tmp_path):  # noqa: F811
    ws_port = free_port()
    page = PageServer("")
    page.page = (PAGE % {"ws_port": ws_port, "token": GOOD}).encode()
    with FakeSecurityAgent({GOOD}) as sa:
        agent = make_agent(emu, web__listen="127.0.0.1:%d" % ws_port, web__allowed_origins=[page.origin],
                           web__securityagent=sa.url)
        agent.seen_secrets.add(GOOD)
        emu.add_fault("token", hang=True, count=-1)  # no token until the page is registered
        agent.start()
        argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--user-data-dir=%s" % (tmp_path / "chromium-profile"), "--dump-dom", page.origin + "/index.html"]
        browser = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            assert page.registered.wait(LIMIT) or page.done.is_set(), "the page never registered"
            emu.clear_faults()  # now the token comes: the event and the parked answer follow
            out, err = browser.communicate(timeout=LIMIT)
        finally:
            if browser.poll() is None:
                browser.kill()
                browser.wait()
            page.close()
        dom = _Pre()
        dom.feed(out.decode("utf-8", "replace"))
        assert dom.texts.get("status") == "done", (dom.texts, err.decode("utf-8", "replace")[-2000:], agent.log())
        headers = json.loads(dom.texts["headers"])
        event = json.loads(dom.texts["event"])
        with Client(agent.socket_path, timeout=20) as c:
            tok = c.token()
            agent.seen_secrets.add(tok["access_token"])
            assert c.call("headers.get") == headers  # what the page got is what the socket serves
        assert headers["headers"]["Authorization"] == "Bearer " + tok["access_token"]
        assert event["method"] == "client.PassAgent.events.tokenchanged" and "id" not in event
        assert event["params"]["expires_at"] == headers["expires_at"]
        assert agent.stop() == 0
    assert sa.requests and sa.requests[0][1]["method"] == "SecurityAgent.1.validate"
