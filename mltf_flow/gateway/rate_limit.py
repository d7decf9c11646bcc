"""How often each user may call the gateway: a token bucket per user (``per_minute`` tokens a minute, at most
``burst`` saved up), so one user's burst of submissions never slows another's requests."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from mltf_flow.errors import ConfigError, RequestRejected

# Past this many users, buckets that have filled up again are dropped (a full bucket is what a new one is).
_PRUNE_ABOVE = 4096


class RateLimited(RequestRejected):
    """429: the user has no request left for now; ``retry_after`` (whole seconds, >= 1) says when one is."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after


class RateLimiter:
    """Per-user token buckets, safe to share between threads. ``clock`` (seconds, monotonic) for tests."""

    def __init__(self, per_minute: int, burst: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1 or (burst is not None and burst < 1):
            raise ConfigError(
                f"rate limit of {per_minute} a minute (burst {burst}): both must be at least 1."
            )
        self.per_minute = per_minute
        self.burst = burst if burst is not None else per_minute
        self._per_second = per_minute / 60.0
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, when counted)

    def _tokens(self, user: str, now: float) -> float:
        tokens, then = self._buckets.get(user, (float(self.burst), now))
        return min(float(self.burst), tokens + max(0.0, now - then) * self._per_second)

    def check(self, user: str) -> None:
        """Take one of ``user``'s tokens, or raise :class:`RateLimited` (429) when none is left."""
        with self._lock:
            now = self._clock()
            tokens = self._tokens(user, now)
            if tokens >= 1.0:
                self._buckets[user] = (tokens - 1.0, now)
                if len(self._buckets) > _PRUNE_ABOVE:
                    self._prune(now)
                return
            self._buckets[user] = (tokens, now)
            retry_after = max(1, math.ceil((1.0 - tokens) / self._per_second))
        raise RateLimited(
            f"too many requests from {user}: at most {self.per_minute} a minute (bursts of {self.burst}); "
            f"retry in {retry_after} s.", retry_after,
        )

    def _prune(self, now: float) -> None:
        full = [user for user in self._buckets if self._tokens(user, now) >= self.burst]
        for user in full:
            del self._buckets[user]


__all__ = ["RateLimited", "RateLimiter"]
