"""The gateway's upstream shell: decides in the loop what can be answered at once, and carries out
exchanges with Adobe in a few threads.

Job: `Gateway.handle(request, sink)` (loop thread) answers from the configuration cache, or refuses at
once (all threads busy: 503; no token: 503 with the agent's reason; the box's budget spent: 429 with
Retry-After, from the governor's try mode), or hands the request, its token and its grant to an idle
`Runner` thread. The thread drives agent/gateway/core.py's `Exchange`: it sends with the urequests
shim (verified TLS, `[adobe] ca_file`, no redirects followed, `[adobe] timeout` per request), asks
the governor before every retry, reports answers to the lifecycle, waits for a refreshed token after
a 401, and hands the reply back to the loop (`post`, i.e. loop.call_soon_threadsafe), streamed in
pieces when it is not read whole. The HTTP shell (server.py) and JSON-RPC `api.call` (agent/rpc.py)
both come through `handle`, so both behave the same.

Why threads: the shim is blocking (as MicroPython's is) and the loop must never wait on the network.
Why at most `max_inflight` (4) of them and no queue: Adobe's budget is 1 request/s after the burst, so
more calls in flight buy nothing; a request that finds them all busy is answered 503 with Retry-After
at once. Nothing waits without bound: a retry waits at most MAX_GRANT_WAIT for the governor, a 401 at
most `refresh_wait` for a token, an item retry at most core.MAX_RETRY_WAIT.

Must never: block the loop, send without a grant, log a token or a body, or keep a player's answer after
it was delivered.
"""

from __future__ import annotations

import errno
import json
import logging
import queue
import threading
import time
from typing import Any, Callable

from agent import clock as _clock
from agent import dcr
from agent.gateway import core

INSPECT_BYTES = 64 * 1024   # JSON answers up to this size are read whole and inspected; larger ones stream
CHUNK = 16 * 1024
MAX_GRANT_WAIT = 2.0        # a retry waits this long at most for the governor, else the player gets what is known


class Sink:
    """Where a reply goes (loop thread only): `start(reply, streamed)` once (streamed: `data` pieces and
    `end` follow; else reply.body is the whole body), then `data(bytes)`..., `end(ok)`."""

    def start(self, reply: core.Reply, streamed: bool = False) -> None:
        raise NotImplementedError

    def data(self, chunk: bytes) -> None:
        pass

    def end(self, ok: bool = True) -> None:
        pass


class Job:
    __slots__ = ("req", "token", "ticket", "sink")

    def __init__(self, req: core.Request, token: str, ticket: int | None, sink: Sink) -> None:
        self.req, self.token, self.ticket, self.sink = req, token, ticket, sink


def _upstream_refusal(exc: BaseException, host: str) -> core.Refusal:
    """A failed send as the player's answer (what dcr.send says for the agent's own requests)."""
    detail = dcr._shim_detail(exc)
    if exc.__class__.__name__ == "TLSVerifyError":
        return core.Refusal(502, "tls_verify", "the TLS certificate of %s was refused: %s" % (host, detail),
                            "check [adobe] ca_file and the box's clock")
    if isinstance(exc, ValueError):
        return core.Refusal(502, "malformed_response", "invalid HTTP answer from %s: %s" % (host, detail),
                            "a proxy or captive portal may answer instead of Adobe", retry_after=5.0)
    if getattr(exc, "errno", None) == errno.ETIMEDOUT or "timed out" in str(exc).lower():
        return core.Refusal(504, "timeout", "no answer from %s in time" % host,
                            "retry later; raise [adobe] timeout if Adobe is slow to answer from here", retry_after=5.0)
    return core.Refusal(502, "network", "cannot reach %s: %s" % (host, detail),
                        "check the box's network path to " + host, retry_after=5.0)


class Runner:
    """The threads that talk to Adobe for the gateway (see the module header)."""

    def __init__(self, service: Any, origin: str, post: Callable[[Callable[[], None]], None], *,
                 ca_file: str | None = None, timeout: float = 15.0, max_inflight: int = 4,
                 max_answer: int = 1048576, refresh_wait: float = 35.0, item_retries: int = 2,
                 retry_backoff: float = 1.0, request: Callable[..., Any] | None = None,
                 log: logging.Logger | None = None) -> None:
        self.service = service
        self.origin = origin
        self.host = dcr.printable(origin.split("://", 1)[-1], 80)
        self.post = post
        self.ca_file, self.timeout = ca_file, timeout
        self.max_inflight, self.max_answer = max_inflight, max_answer
        self.refresh_wait, self.item_retries, self.retry_backoff = refresh_wait, item_retries, retry_backoff
        self._request = request
        self.log = log or logging.getLogger("pass-agent.gateway")
        self._jobs: queue.Queue = queue.Queue()
        self._threads: list = []
        self._stop = threading.Event()
        self.busy = 0               # jobs handed out and not finished (loop thread's count)
        self.c = {"sent": 0, "refreshed": 0, "item_retries": 0, "throttled": 0, "reported": 0, "failed": 0}

    # -- loop side ------------------------------------------------------------------------------
    def full(self) -> bool:
        return self.busy >= self.max_inflight

    def submit(self, job: Job) -> None:
        """Loop thread: hand a granted job to a thread (started on first use: an idle gateway has none)."""
        self.busy += 1
        if len(self._threads) < min(self.busy, self.max_inflight):
            t = threading.Thread(target=self._work, name="gateway-%d" % len(self._threads), daemon=True)
            self._threads.append(t)
            t.start()
        self._jobs.put(job)

    def _done(self) -> None:
        self.busy -= 1

    def stop(self) -> None:
        self._stop.set()
        for _ in self._threads:
            self._jobs.put(None)

    # -- thread side ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception as e:  # a bug: the player gets a 500, the thread lives on
                self.log.error("gateway: internal error while forwarding %s %s: %s", job.req.method,
                               dcr.printable(job.req.path, 80), type(e).__name__)
                self._deliver(job, core.Refusal(500, "internal_error", "internal error in the gateway (%s); the "
                                                "agent log has details" % type(e).__name__,
                                                "report it with the agent log").reply())
            finally:
                self.post(self._done)

    def _deliver(self, job: Job, reply: core.Reply) -> None:
        sink = job.sink
        self.post(lambda: sink.start(reply))

    def _grant(self) -> dict:
        g = self.service.api_acquire()
        if not g["granted"] and g["retry_after"] <= MAX_GRANT_WAIT and not self._stop.wait(g["retry_after"]):
            g = self.service.api_acquire()
        return g

    def _run(self, job: Job) -> None:
        req = job.req
        ex = core.Exchange(req, item_retries=self.item_retries, backoff=self.retry_backoff)
        step = ex.first()
        token, ticket = job.token, job.ticket
        last: core.Reply | None = None   # what the player gets if a retry cannot be sent
        while True:
            if step.kind == "reply":
                self._deliver(job, step.reply)  # type: ignore[arg-type]
                return
            if step.kind == "refresh":
                self.c["refreshed"] += 1
                tok = self.service.wait_new_token(token, self.refresh_wait, req.app)
                if tok is not None:
                    token = tok["access_token"]
                step = ex.on_token(tok is not None)
                continue
            if step.kind == "wait":
                self.c["item_retries"] += 1
                if self._stop.wait(step.delay):
                    return self._deliver(job, last or core.Refusal(503, "stopping", "the agent is stopping",
                                                                   "retry in a moment", retry_after=1.0).reply())
            body = step.body
            if ticket is None:  # a retry: a grant of its own, and the token as it is now
                g = self._grant()
                if not g["granted"]:
                    return self._deliver(job, last or core.Refusal(
                        429, "budget_spent", "the box's budget of requests to Adobe is spent for now",
                        "retry after Retry-After seconds", retry_after=g["retry_after"]).reply())
                ticket = g["ticket"]
                now_tok = self.service.token(0, req.app)
                if now_tok is not None:
                    token = now_tok["access_token"]
            try:
                outcome = self._send(req, token, body)
            except (OSError, ValueError) as e:
                self.c["failed"] += 1
                return self._deliver(job, last or _upstream_refusal(e, self.host).reply())
            finally:
                used, ticket = ticket, None
            status, headers, whole, resp, prefix = outcome
            self.c["sent"] += 1
            retry_after = None
            ra = headers.get("Retry-After") or headers.get("retry-after")
            if ra is not None:
                retry_after = dcr.parse_retry_after(ra, time.time())
            pause = None
            if status == 429:
                self.c["throttled"] += 1
                pause = self.service.api_throttled(used, retry_after)
            try:
                step = ex.on_answer(status, list(headers.items()), whole, retry_after)
            except Exception:
                if resp is not None:
                    resp.close()
                raise
            if step.report:
                self.c["reported"] += 1
                self.service.report_error(status, whole if whole is not None else b"", access_token=token,
                                          uid=req.uid, app=req.app)
            if step.kind == "reply" and step.reply is not None:
                r = step.reply
                if status == 429 and r.header("Retry-After") is None:
                    r.headers.append(("Retry-After", "%d" % core.retry_after_seconds(pause or 1.0)))
                if resp is not None:  # not read whole: stream it
                    self._stream(job, r, resp, prefix)
                    return
                last = r
                self._deliver(job, r)
                return
            if resp is not None:
                resp.close()
            last = core.Reply(status, core.reply_headers(list(headers.items())), whole or b"")
            if ex.merged is not None:
                last = core.Reply(200, core.reply_headers(ex.merged_headers),
                                  json.dumps(ex.merged).encode("utf-8"))

    def _send(self, req: core.Request, token: str, body: bytes | None) -> tuple:
        """One request to Adobe. (status, headers dict, whole body or None, open response or None, the
        bytes already read of a streamed body)."""
        from agent import urequests

        ident = self.service.identity(req.app)
        headers = core.upstream_headers(req.headers, token, ident)
        request = self._request or urequests.request
        r = request(req.method, self.origin + req.target, data=body if req.method == "POST" else None,
                    headers=headers, timeout=self.timeout, ca_file=self.ca_file, max_redirects=0, stream=True,
                    max_body=self.max_answer)
        hdrs = r.headers or {}
        if core.inspectable(hdrs):
            parts, n = [], 0
            raw = r.raw
            while raw is not None and not raw.done and n <= INSPECT_BYTES:
                piece = raw.read(CHUNK)
                if not piece:
                    break
                parts.append(piece)
                n += len(piece)
            if raw is None or raw.done:
                r.close()
                return r.status_code, hdrs, b"".join(parts), None, b""
            return r.status_code, hdrs, None, r, b"".join(parts)
        return r.status_code, hdrs, None, r, b""

    def _stream(self, job: Job, reply: core.Reply, resp: Any, prefix: bytes) -> None:
        """An answer not read whole: head now, then the body in pieces as it arrives (bounded by max_answer)."""
        sink = job.sink
        head = core.Reply(reply.status, reply.headers, b"")
        self.post(lambda: sink.start(head, True))
        ok = True
        try:
            if prefix:
                self.post(lambda p=prefix: sink.data(p))
            raw = resp.raw
            while raw is not None and not raw.done:
                piece = raw.read(CHUNK)
                if not piece:
                    break
                self.post(lambda p=piece: sink.data(p))
        except (OSError, ValueError) as e:
            ok = False
            self.log.warning("gateway: the answer from %s broke off while streaming: %s", self.host,
                             dcr._shim_detail(e))
        finally:
            resp.close()
            self.post(lambda: sink.end(ok))


class _Caching(Sink):
    """Puts a configuration answer into the cache on its way to the player's sink."""

    def __init__(self, gw: Gateway, req: core.Request, sink: Sink, mark: str) -> None:
        self.gw, self.req, self.sink, self.mark = gw, req, sink, mark

    def start(self, reply: core.Reply, streamed: bool = False) -> None:
        if not streamed:
            self.gw.cache.put(self.req, reply, self.gw.now())
        reply.headers.append(("X-Pass-Agent-Cache", self.mark))
        self.sink.start(reply, streamed)

    def data(self, chunk: bytes) -> None:
        self.sink.data(chunk)

    def end(self, ok: bool = True) -> None:
        self.sink.end(ok)


class Gateway:
    """The part both front ends share (loop thread): cache, refusals, and the hand-over to the Runner."""

    def __init__(self, service: Any, post: Callable[[Callable[[], None]], None], cfg: Any, *,
                 request: Callable[..., Any] | None = None, now: Callable[[], float] = _clock.now,
                 log: logging.Logger | None = None) -> None:
        from agent import config as configmod

        g = cfg.gateway
        self.service = service
        self.cfg = g
        self.now = now
        self.origin = configmod.gateway_origin(g.base_url or cfg.adobe.base_url)
        self.cache = core.ConfigCache(g.config_cache_ttl)
        self.log = log or logging.getLogger("pass-agent.gateway")
        self.runner = Runner(service, self.origin, post, ca_file=cfg.adobe.ca_file, timeout=cfg.adobe.timeout,
                             max_inflight=g.max_inflight, max_answer=g.max_answer_bytes, refresh_wait=g.refresh_wait,
                             item_retries=g.item_retries, retry_backoff=g.retry_backoff, request=request, log=self.log)
        self.c = {"requests": 0, "refused": 0, "budget_refused": 0, "busy": 0, "not_ready": 0, "cached": 0}

    def handle(self, req: core.Request, sink: Sink) -> None:
        """Answer `req` (checked, with its application and uid) through `sink`; never blocks."""
        self.c["requests"] += 1
        now = self.now()
        hit = self.cache.get(req, now)
        if hit is not None:
            self.c["cached"] += 1
            sink.start(hit)
            return
        try:
            job = self._admit(req, sink)
        except core.Refusal as r:
            self.c["refused"] += 1
            sink.start(r.reply())
            return
        self.runner.submit(job)

    def _admit(self, req: core.Request, sink: Sink) -> Job:
        if self.runner.full():
            self.c["busy"] += 1
            raise core.Refusal(503, "gateway_busy", "the gateway already has %d calls to Adobe in flight "
                               "([gateway] max_inflight)" % self.runner.max_inflight,
                               "retry after Retry-After seconds", retry_after=1.0)
        tok = self.service.token(0, req.app)
        if tok is None:
            self.c["not_ready"] += 1
            e = self.service.not_ready_error(req.app)
            raise core.Refusal(503, e.code or "not_ready", "no valid access token to forward with: %s" % e.message,
                               e.hint or "retry after Retry-After seconds", retry_after=e.retry_after or 1.0)
        g = self.service.api_acquire()
        if not g["granted"]:
            self.c["budget_refused"] += 1
            raise core.Refusal(429, "budget_spent", "the box's budget of requests to Adobe is spent for now (Adobe "
                               "allows about 1 request/s per address, shared by every application on this box)",
                               "retry after Retry-After seconds; cache what you can (configuration is cached "
                               "here)", retry_after=g["retry_after"])
        if req.is_configuration() and self.cache.ttl > 0:
            sink = _Caching(self, req, sink, "bypass" if req.wants_fresh() else "miss")
        return Job(req, tok["access_token"], g["ticket"], sink)

    def stop(self) -> None:
        self.runner.stop()

    def stats(self) -> dict:
        d = dict(self.c)
        d.update(self.runner.c, inflight=self.runner.busy, cache=self.cache.view(), upstream=self.origin)
        return d

    # -- JSON-RPC api.call (agent/rpc.py) -------------------------------------------------------
    def rpc_call(self, params: dict, app: str | None, uid: int | None,
                 deliver: Callable[[core.Reply], None]) -> None:
        """api.call: the same checks and path as an HTTP request; `deliver(reply)` once, in the loop thread,
        with the whole body (a streamed answer is collected, bounded by max_answer_bytes)."""
        headers = [(str(k), str(v)) for k, v in (params.get("headers") or {}).items()]
        body = (params.get("body") or "").encode("utf-8")
        try:
            if len(body) > self.cfg.max_body_bytes:
                raise core.Refusal(413, "body_too_large", "the request body is %d bytes; at most %d are forwarded "
                                   "([gateway] max_body_bytes)" % (len(body), self.cfg.max_body_bytes),
                                   "send a smaller body")
            req = core.check_request(params.get("method") or "GET", params["path"], headers, body)
        except core.Refusal as r:
            deliver(r.reply())
            return
        req.app, req.uid = app, uid
        self.handle(req, _Collect(deliver, self.cfg.max_answer_bytes))


class _Collect(Sink):
    def __init__(self, deliver: Callable[[core.Reply], None], limit: int) -> None:
        self.deliver, self.limit = deliver, limit
        self.reply: core.Reply | None = None
        self.parts: list = []
        self.n = 0

    def start(self, reply: core.Reply, streamed: bool = False) -> None:
        if not streamed:
            self.deliver(reply)
            return
        self.reply = reply

    def data(self, chunk: bytes) -> None:
        self.n += len(chunk)
        if self.n <= self.limit:
            self.parts.append(chunk)

    def end(self, ok: bool = True) -> None:
        r = self.reply
        if r is None:
            return
        if not ok or self.n > self.limit:
            self.deliver(core.Refusal(502, "answer_incomplete", "Adobe's answer broke off or exceeded [gateway] "
                                      "max_answer_bytes", "retry, or use the HTTP socket, which streams").reply())
            return
        self.deliver(core.Reply(r.status, r.headers, b"".join(self.parts)))
