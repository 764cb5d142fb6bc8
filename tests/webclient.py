"""A small blocking WebSocket client for the web endpoint's tests (wsproto as client, raw socket).

It can send what a browser would never send (no Origin, a foreign Host, huge frames) so that the
tests can check each refusal; `connect` returns a WsClient, or the refusal (HTTP status, JSON body).
"""

from __future__ import annotations

import json
import socket
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


class Refused(Exception):
    def __init__(self, status: int, body: dict) -> None:
        Exception.__init__(self, "refused with HTTP %d: %s" % (status, body))
        self.status = status
        self.body = body
        self.code = (body.get("error") or {}).get("code")


class WsClient:
    def __init__(self, sock: socket.socket, ws: WSConnection, subprotocol: str | None) -> None:
        self.sock, self.ws, self.subprotocol = sock, ws, subprotocol
        self.closed: CloseConnection | None = None
        self._pending: list = []
        self._parts: list = []
        self._next_id = 0

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.ws.send(Message(data=text)))

    def send(self, obj: Any) -> None:
        self.send_text(json.dumps(obj))

    def call(self, method: str, params: dict | None = None) -> dict:
        """One request; returns its whole answer object (result or error), skipping notifications."""
        self._next_id += 1
        req: dict = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            req["params"] = params
        self.send(req)
        while True:
            msg = self._read()
            if msg.get("id") == self._next_id:
                return msg
            self._pending.append(msg)  # a notification (or another answer): recv() returns it later

    def recv(self) -> dict:
        """The next message (JSON); raises ConnectionError with the close code when the server closes."""
        if self._pending:
            return self._pending.pop(0)
        return self._read()

    def _read(self) -> dict:
        while True:
            for ev in self.ws.events():
                if isinstance(ev, TextMessage):
                    self._parts.append(ev.data)
                    if ev.message_finished:
                        text, self._parts = "".join(self._parts), []
                        return json.loads(text)
                elif isinstance(ev, Ping):
                    self.sock.sendall(self.ws.send(ev.response()))
                elif isinstance(ev, CloseConnection):
                    self.closed = ev
                    raise ConnectionError("closed by the server: %s %s" % (ev.code, ev.reason))
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)

    def close(self) -> None:
        try:
            self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        except Exception:
            pass
        self.sock.close()

    def __enter__(self) -> WsClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect(port: int, token: str | None = "t", *, origin: str | None = "http://127.0.0.1:8000",
            host: str | None = None, path: str = "/jsonrpc", subprotocols: list | None = None,
            timeout: float = 20.0) -> WsClient:
    """Open ws://127.0.0.1:port/path?token=token with the given Origin and Host (None: header left out)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    ws = WSConnection(ConnectionType.CLIENT)
    target = path + ("?token=%s" % token if token is not None else "")
    extra = [("Origin", origin)] if origin is not None else []
    req = Request(host=host if host is not None else "127.0.0.1:%d" % port, target=target, extra_headers=extra,
                  subprotocols=subprotocols or [])
    sock.sendall(ws.send(req))
    status, body, chunks = 0, b"", []
    while True:
        data = sock.recv(65536)
        ws.receive_data(data or None)
        for ev in ws.events():
            if isinstance(ev, AcceptConnection):
                return WsClient(sock, ws, ev.subprotocol)
            if isinstance(ev, RejectConnection):
                status = ev.status_code
                if not ev.has_body:
                    sock.close()
                    raise Refused(status, {})
            elif isinstance(ev, RejectData):
                chunks.append(ev.data)
                if ev.body_finished:
                    sock.close()
                    body = b"".join(chunks)
                    raise Refused(status, json.loads(body) if body else {})
        if not data:
            sock.close()
            raise Refused(status, {})
