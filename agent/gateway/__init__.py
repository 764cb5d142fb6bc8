"""The REST API v2 gateway (issue 17, docs/GATEWAY.md): players call Adobe Pass REST API v2 through the
agent without handling tokens.

- `core.py`: the sans-I/O core: which requests are forwarded (the path policy), which headers go out
  (the application's token, AP-Device-Identifier, X-Device-Info; never the player's Authorization),
  what each answer of Adobe leads to (a 401: one refresh and one retry; Enhanced Error Codes reported
  to the lifecycle; items marked `retry` retried alone), and the configuration cache. Standard
  library only; time and bytes come in as arguments.
- `runner.py`: the upstream half of the shell: a few threads that carry out an exchange with the
  urequests shim (verified TLS), asking the box-wide governor before every request.
- `server.py`: the player half of the shell: HTTP/1.1 with h11 on a second Unix socket, in the
  daemon's event loop, with the JSON-RPC socket's SO_PEERCRED rules.
- `client.py`: a few lines of http.client over a Unix socket (`pass-agent login`, tests, players).

Only agent/daemon.py imports `server`/`runner` (and thereby h11), and only when `[gateway] enabled`
is true. Importing this package imports nothing.
"""
