"""The optional loopback WebSocket endpoint for web apps, in Thunder's JSON-RPC dialect (issue 18).

Job: let a web app on the box (WPE WebKit, Lightning, HTML5) reach the socket API's methods the way
RDK web apps reach Thunder plugins: `ws://127.0.0.1:PORT/jsonrpc?token=...`, methods named
`PassAgent.1.<method>`, events through `register`/`unregister`. docs/WEB.md is the contract.

  guard.py    who may connect (sans-I/O): listen address, Host and Origin allow-lists, the token from
              the upgrade request, the root-only tokens file, SecurityAgent's `validate` call and answer
  dialect.py  Thunder JSON-RPC <-> the agent's methods (sans-I/O), through agent/rpc.py's Dispatcher:
              one implementation of every method, two dialects
  server.py   the thin shell on the daemon's event loop: TCP on loopback, h11 for the upgrade
              handshake, wsproto for frames, the Unix socket's limits

Must never: be imported unless `[web] listen` is set (the daemon imports it lazily; h11 and wsproto
are the optional extra `pass-agent[web]`), listen on anything but loopback, or let a page from an
origin that is not allowed (or a request without an Origin, or with a foreign Host) get a token.
This file imports nothing: `agent.config` imports `agent.web.guard` (standard library only) to
validate `[web]`.
"""
