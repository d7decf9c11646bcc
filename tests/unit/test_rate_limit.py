"""Per-user rate limits of the gateway (mltf_flow.gateway.rate_limit), with an injected clock: no sleeps."""

from __future__ import annotations

import threading

import pytest

from mltf_flow.errors import ConfigError, RequestRejected
from mltf_flow.gateway.rate_limit import RateLimited, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refused(limiter: RateLimiter, user: str) -> RateLimited:
    with pytest.raises(RequestRejected) as caught:
        limiter.check(user)
    assert isinstance(caught.value, RateLimited) and caught.value.status == 429
    return caught.value


def test_burst_then_refused_with_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=6, burst=3, clock=clock)
    for _ in range(3):
        limiter.check("alice")
    refused = _refused(limiter, "alice")
    assert refused.retry_after == 10  # one token every 10 s
    assert "too many requests from alice: at most 6 a minute (bursts of 3); retry in 10 s" in str(refused)
    clock.now += 4
    assert _refused(limiter, "alice").retry_after == 6
    clock.now += 6
    limiter.check("alice")
    assert _refused(limiter, "alice").retry_after == 10


def test_retry_after_is_at_least_one_second() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=600, burst=1, clock=clock)  # a token every 0.1 s
    limiter.check("alice")
    clock.now += 0.05
    assert _refused(limiter, "alice").retry_after == 1


def test_one_user_does_not_slow_another() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=2, clock=clock)
    limiter.check("alice")
    limiter.check("alice")
    _refused(limiter, "alice")
    limiter.check("bob")
    limiter.check("bob")
    _refused(limiter, "bob")


def test_tokens_refill_up_to_the_burst_only() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=2, clock=clock)
    limiter.check("alice")
    clock.now += 3600
    limiter.check("alice")
    limiter.check("alice")
    _refused(limiter, "alice")


def test_refusals_take_no_token() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=1, clock=clock)
    limiter.check("alice")
    for _ in range(5):
        _refused(limiter, "alice")
    clock.now += 1
    limiter.check("alice")


def test_many_users_are_pruned_once_full_again() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=1, clock=clock)
    for i in range(5000):
        limiter.check(f"user{i}")
    clock.now += 1
    limiter.check("last")
    assert len(limiter._buckets) < 100
    limiter.check("user0")  # a pruned user starts full
    _refused(limiter, "user0")


def test_threads_share_one_bucket_exactly() -> None:
    limiter = RateLimiter(per_minute=1, burst=50, clock=Clock())
    passed: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            try:
                limiter.check("alice")
            except RateLimited:
                with lock:
                    refused.append(1)
            else:
                with lock:
                    passed.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(passed), len(refused)) == (50, 110)


@pytest.mark.parametrize(("per_minute", "burst"), [(0, None), (10, 0), (-1, 5)])
def test_bad_limits(per_minute: int, burst: int | None) -> None:
    with pytest.raises(ConfigError, match="both must be at least 1"):
        RateLimiter(per_minute, burst)
