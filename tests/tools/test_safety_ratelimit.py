"""Per-user rate limits: bursts are stopped with a clear message and a retry time."""

from __future__ import annotations

import pytest

from tools.errors import RateLimitedError
from tools.safety import RateLimiter


def test_burst_over_the_limit_is_refused_with_retry_time():
    limiter = RateLimiter("5/minute;100/day")
    for _ in range(5):
        limiter.hit("alice")
    with pytest.raises(RateLimitedError) as err:
        limiter.hit("alice")
    assert 0 < err.value.retry_after <= 60
    assert "5 per minute" in str(err.value) and "try again in" in str(err.value)
    assert err.value.code == "rate_limited"


def test_users_have_separate_budgets_and_refused_hits_are_not_counted():
    limiter = RateLimiter("3/minute")
    for _ in range(3):
        limiter.hit("alice")
    for _ in range(10):
        with pytest.raises(RateLimitedError):
            limiter.hit("alice")
    limiter.hit("bob")
    assert limiter.remaining("bob") == 2


def test_daily_limit_applies_even_when_the_minute_allows():
    limiter = RateLimiter("10/minute;4/day")
    for _ in range(4):
        limiter.hit("carol")
    with pytest.raises(RateLimitedError) as err:
        limiter.hit("carol")
    assert err.value.retry_after > 60
    assert "4 per day" in str(err.value)
