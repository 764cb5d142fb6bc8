"""Adobe Pass throttling as documented: one token bucket per client (IP or X-Forwarded-For).

Sans-I/O: the caller passes the monotonic time. Each bucket starts full (`burst` tokens, the
one-time burst), refills at `rate` tokens per second up to `burst`, and every admitted request
takes one token; a refused request takes none. Must never: read a clock itself, or let a refused
request consume a token.
"""

from __future__ import annotations

import math


class Throttle:
    def __init__(self, rate: float = 1.0, burst: int = 10, enabled: bool = True) -> None:
        self.configure(rate, burst, enabled)

    def configure(self, rate: float | None = None, burst: int | None = None, enabled: bool | None = None) -> None:
        """Change the limits; every bucket starts again full so tests reason from a clean slate."""
        if rate is not None:
            if not rate > 0:
                raise ValueError("rate must be > 0 requests per second (got %r); use throttle off to disable" % rate)
            self.rate = float(rate)
        if burst is not None:
            if int(burst) < 1:
                raise ValueError("burst must be >= 1 request (got %r)" % burst)
            self.burst = int(burst)
        if enabled is not None:
            self.enabled = bool(enabled)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    def take(self, key: str, now: float) -> tuple[bool, float]:
        """Admit or refuse one request; on refusal also return the seconds until a token is back."""
        if not self.enabled:
            return True, 0.0
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return True, 0.0
        self._buckets[key] = (tokens, now)
        return False, (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after_seconds(wait: float) -> int:
        """The whole seconds a client must wait: never 0, never less than the real wait."""
        return max(1, int(math.ceil(wait - 1e-9)))
