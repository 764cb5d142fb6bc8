"""A local stand-in for Adobe Pass Dynamic Client Registration, for tests, demos and laptops.

`Emulator` runs it in-process; `python -m tools.emulator` (or `pass-agent emulator`) runs it as a
process. See docs/EMULATOR.md. Modules: `service` (sans-I/O core), `admin` (admin API), `server`
(HTTP/TLS shell), `throttle`, `faults`, `deviceinfo`, `jwtutil`, `keys`, `cli`.
"""

from .server import Emulator
from .service import DEFAULT_APP_ID

__all__ = ["Emulator", "DEFAULT_APP_ID"]
