"""`check_rate_limit`: one rate in the `limits` notation that the Redis limiter can hold and that a key
can wait out, for a key's rate (`keys.create`) and VAREDIT_RATE_LIMIT alike."""

from __future__ import annotations

import pytest
from limits import storage, strategies

from jobs.rates import MAX_RATE_AMOUNT, MAX_RATE_WINDOW_S, check_rate_limit
from serve.redis_server import RedisServer


@pytest.mark.parametrize(
    ("text", "amount", "window_s"),
    [
        ("60/minute", 60, 60),
        ("1000 per day", 1000, 86400),
        ("10/5 seconds", 10, 5),
        ("12/2 months", 12, 2 * 30 * 86400),
        ("1/year", 1, MAX_RATE_WINDOW_S),
        (f"{MAX_RATE_AMOUNT}/second", MAX_RATE_AMOUNT, 1),
    ],
)
def test_a_rate_the_limiter_can_hold_is_taken(text: str, amount: int, window_s: int) -> None:
    rate = check_rate_limit(text)
    assert (rate.amount, rate.get_expiry()) == (amount, window_s)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("lots", "is not a rate such as 60/minute"),
        ("0/minute", "allows no request"),
        ("99999999999999999999999/second", f"allows more than {MAX_RATE_AMOUNT} requests"),
        (f"{MAX_RATE_AMOUNT + 1}/second", f"allows more than {MAX_RATE_AMOUNT} requests"),
        ("1/0 second", "has a window of 0"),  # `limits` reads it as 1/second
        ("1/00 seconds", "has a window of 0"),
        ("1/ 1000000000000 years", "has a window longer than 1 year"),
        ("1/361 days", "has a window longer than 1 year"),
        ("1/second;100/day", "states 2 rates"),  # the limiter enforces the first only
    ],
)
def test_a_rate_the_limiter_cannot_hold_is_refused_with_its_text(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="rate limit") as refused:
        check_rate_limit(text)
    assert problem in str(refused.value) and repr(text) in str(refused.value)


def test_redis_holds_the_largest_rate_and_window() -> None:
    # before the bounds, 10**23/second failed in Redis's script at every request
    with RedisServer() as server:
        limiter = strategies.MovingWindowRateLimiter(storage.storage_from_string(server.url))
        for text in (f"{MAX_RATE_AMOUNT}/second", "1/year"):
            rate = check_rate_limit(text)
            assert limiter.hit(rate, "writes", "key")
            assert limiter.get_window_stats(rate, "writes", "key").remaining == rate.amount - 1
