"""A local stand-in for Adobe Pass Dynamic Client Registration, for tests, demos and laptops.

`Emulator` runs it in-process; `python -m agent.emulator` (or `pass-agent emulator`) runs it as a
process. See docs/EMULATOR.md. Modules: `service` (sans-I/O core), `admin` (admin API), `server`
(HTTP/TLS shell), `restv2` (REST API v2 sessions, profiles, decisions), `eec` (Enhanced Error Codes),
`throttle`, `faults`, `deviceinfo`, `jwtutil`, `keys`, `cli`, `client`, `bench`.

It lives inside `agent` so that an installed wheel has what `pass-agent demo` and `pass-agent emulator`
need; tools/build_overlay.py leaves it (and agent/demo.py) out of the box's zipapp. Must never: be
imported by the daemon or any other command (only `demo` and `emulator` import it), or be shipped
on a box.
"""

from .server import Emulator
from .service import DEFAULT_APP_ID

__all__ = ["Emulator", "DEFAULT_APP_ID"]
