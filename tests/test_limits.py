"""Connection counting and the publish token bucket."""

import pytest
from twisted.internet.task import Clock

from reactorapp.auth.limits import ConnectionLimiter, TokenBucket


def test_total_limit():
    limiter = ConnectionLimiter(max_total=2)
    assert limiter.admit("a") and limiter.admit("b")
    assert not limiter.admit("c")
    limiter.release("a")
    assert limiter.admit("c")
    assert limiter.refused == 1


def test_per_address_limit():
    limiter = ConnectionLimiter(max_per_address=2)
    assert limiter.admit("a") and limiter.admit("a")
    assert not limiter.admit("a") and limiter.admit("b")
    limiter.release("a")
    assert limiter.admit("a")
    limiter.release("a"), limiter.release("a"), limiter.release("b")
    assert limiter.total == 0 and limiter.by_address == {}


def test_no_limits():
    limiter = ConnectionLimiter()
    assert all(limiter.admit("a") for _ in range(1000))


def test_bucket_allows_a_burst_then_asks_to_wait():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert [bucket.take() for _ in range(5)] == [0.0] * 5
    assert bucket.take() == pytest.approx(0.1)
    assert bucket.take() == pytest.approx(0.2)  # debt accumulates
    clock.advance(0.2)
    assert bucket.take() == pytest.approx(0.1)


def test_bucket_refills_up_to_the_burst():
    clock = Clock()
    bucket = TokenBucket(rate=1, burst=3, clock=clock)
    for _ in range(3):
        bucket.take()
    clock.advance(100)
    assert [bucket.take() for _ in range(3)] == [0.0] * 3
    assert bucket.take() == pytest.approx(1.0)
