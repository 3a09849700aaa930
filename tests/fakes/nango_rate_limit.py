"""Nango's API rate limit, for the fake Nango (``tests/fakes/nango.py``).

As ``packages/server/lib/middleware/ratelimit.middleware.ts`` (NangoHQ/nango 2f4c0af) does it,
after authentication, per account: a fixed window (rate-limiter-flexible, ``duration: 60``) that
starts with the first request; every answer carries ``X-RateLimit-Limit``, ``-Remaining`` and
``-Reset`` (Unix seconds); a refused request is 429 ``{"error": {"code": "too_many_request",
"method", "path"}}`` with ``Retry-After`` in whole seconds, rounded down (so ``0`` happens).
Nango Cloud allows 200 requests a minute on the default plan; the fake is off until told.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Verdict:
    """What the limiter says about one request: the headers, and whether it is refused."""

    headers: dict[str, str]
    refused: bool


@dataclass
class RateLimiter:
    limit: int | None = None  # requests per window; None: no limit
    window: float = 60.0  # seconds
    forced: list[float] = field(default_factory=list)  # Retry-After of the next forced 429s
    refusals: int = 0
    _started: float = 0.0
    _used: int = 0

    def per_window(self, limit: int, window: float = 60.0) -> None:
        """Allow ``limit`` requests per ``window`` seconds, from the next request on."""
        self.limit, self.window, self._started, self._used = limit, window, 0.0, 0

    def refuse_next(self, count: int, *, retry_after: float = 0.0) -> None:
        """Answer the next ``count`` requests 429 whatever the window says."""
        self.forced.extend(retry_after for _ in range(count))

    def take(self) -> Verdict:
        now = time.monotonic()
        if self.forced:
            self.refusals += 1
            return self._refusal(self.limit or 200, self.forced.pop(0))
        if self.limit is None:
            return Verdict({}, refused=False)
        if not self._used or now >= self._started + self.window:
            self._started, self._used = now, 0
        self._used += 1
        before_next = self._started + self.window - now
        if self._used > self.limit:
            self.refusals += 1
            return self._refusal(self.limit, before_next)
        return Verdict(_headers(self.limit, self.limit - self._used, before_next), refused=False)

    @staticmethod
    def _refusal(limit: int, before_next: float) -> Verdict:
        headers = _headers(limit, 0, before_next)
        headers["Retry-After"] = str(math.floor(before_next))
        return Verdict(headers, refused=True)


def _headers(limit: int, remaining: int, before_next: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(math.floor(time.time() + before_next)),
    }
