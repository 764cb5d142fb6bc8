"""Harness: the urequests shim's response parsing (agent/urequests.py).

Each input is the server's whole answer: it is written into one end of a real socket pair, that
end shut down, and the shim's request() reads the other end (its `_connect` is pointed at the pair
for the run, so no TCP and no network). The call must return a Response (status 100-599, body
within max_body) or raise OSError / ValueError. Must never: connect anywhere.
"""

from __future__ import annotations

import socket

from agent import urequests

_MAX_BODY = 4096
_pending: list = []


def _connect(scheme, host, port, deadline, where, ca_file, verify):
    ours, theirs = socket.socketpair()
    theirs.sendall(_pending[0][:200000])
    theirs.shutdown(socket.SHUT_WR)
    _pending.append(theirs)  # closed after the request, so the request can still be written
    return urequests._Conn(ours, deadline, where)


urequests._connect = _connect  # this harness's process only


def test_one_input(data: bytes) -> None:
    _pending[:] = [data]
    try:
        r = urequests.request("POST", "http://127.0.0.1:9/o/client/token", data=b"a=b", timeout=5.0,
                              max_body=_MAX_BODY, max_redirects=0, stream=bool(data[:1] == b"S"))
        assert 100 <= r.status_code <= 599 and len(r.content) <= _MAX_BODY
    except (OSError, ValueError):
        pass
    finally:
        for s in _pending[1:]:
            s.close()


KNOWN: list = []

DICT = [b"HTTP/1.1 ", b"200 OK", b"\r\n", b"\r\n\r\n", b"Content-Length: ", b"Transfer-Encoding: chunked",
        b"Location: ", b"Connection: close", b"0\r\n\r\n", b"100 Continue", b"302 Found", b";ext", b": "]
