"""Adobe Pass throttling as documented: one token bucket per client (IP or X-Forwarded-For).

Adobe (reference section 6, Adobe's "Throttling mechanism" page): "a maximum of 1 request per
second, with an initial burst of 10 requests (one-time allowance on the first interaction of the
identified client ...)". So by default the burst is NOT given back when a client goes idle: a
bucket starts with `burst` tokens, refills at `rate` per second but only up to 1 token (one request
per second), and the unused rest of the initial allowance is kept but never topped up. The page
does not say whether that rest survives steady use; this is the stricter reading, so a client that
stays within it stays within Adobe's. `refill_burst=True` keeps the classic bucket that refills up
to `burst` (the emulator's behaviour before issue 14).

Sans-I/O: the caller passes the monotonic time. Every admitted request takes one token; a refused
request takes none. Must never: read a clock itself, or let a refused request consume a token.
"""

from __future__ import annotations

import math

DISABLE_HINT = "to turn throttling off use --no-throttle (command line) or {\"throttle\": false} (admin API)"


class Throttle:
    def __init__(self, rate: float = 1.0, burst: int = 10, enabled: bool = True, refill_burst: bool = False) -> None:
        self.refill_burst = bool(refill_burst)
        self.configure(rate, burst, enabled)

    def configure(self, rate: float | None = None, burst: int | None = None, enabled: bool | None = None,
                  refill_burst: bool | None = None) -> None:
        """Change the limits; every bucket starts again full so tests reason from a clean slate."""
        if rate is not None:
            if not rate > 0:
                raise ValueError("rate must be > 0 requests per second (got %r); %s" % (rate, DISABLE_HINT))
            self.rate = float(rate)
        if burst is not None:
            if int(burst) < 1:
                raise ValueError("burst must be >= 1 request (got %r)" % burst)
            self.burst = int(burst)
        if enabled is not None:
            self.enabled = bool(enabled)
        if refill_burst is not None:
            self.refill_burst = bool(refill_burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    def take(self, key: str, now: float) -> tuple[bool, float]:
        """Admit or refuse one request; on refusal also return the seconds until a token is back."""
        if not self.enabled:
            return True, 0.0
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        # Refill ceiling: the whole burst for the classic bucket, one request otherwise. Tokens
        # above the ceiling are the rest of the one-time allowance: kept, never added to.
        ceiling = float(self.burst) if self.refill_burst else 1.0
        if tokens < ceiling:
            tokens = min(ceiling, tokens + max(0.0, now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return True, 0.0
        self._buckets[key] = (tokens, now)
        return False, (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after_seconds(wait: float) -> int:
        """The whole seconds a client must wait: never 0, never less than the real wait."""
        return max(1, int(math.ceil(wait - 1e-9)))
