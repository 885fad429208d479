"""Rate limits in the `limits` notation ("60/minute", "1000 per day"), checked for what the Redis
limiter can hold and enforce: for an API key's own rate and for VAREDIT_RATE_LIMIT alike."""

from __future__ import annotations

import re

from limits import RateLimitItem, parse_many

# A rate limit allows 1 to MAX_RATE_AMOUNT requests per window of 1 second to 1 year (the `limits` year:
# 12 months of 30 days). Past these a key was stored and then broken: Redis's moving-window script reads
# the count as a Lua number and indexes a list with it, and 10**23/second failed there at every request;
# 1/1000000000000 years answered Retry-After 31104000000000000000 after one request.
MAX_RATE_AMOUNT = 2**31 - 1
MAX_RATE_WINDOW_S = 360 * 86400
# A single rate in the `limits` notation; group 1 is the window's count ("10/5 seconds": 5), which
# `limits` reads as 1 when it is 0.
_ONE_RATE = re.compile(r"\s*[0-9]+\s*(?:/|\s*per\s*)\s*([0-9]+)?\s*[a-z]+\s*", re.IGNORECASE)


def check_rate_limit(text: str) -> RateLimitItem:
    """The one rate ``text`` states in the `limits` notation ("60/minute", "1000 per day", "10/5
    seconds"), or ValueError naming ``text`` and what is wrong: not a rate, several rates (the limiter
    uses the first), none or more than MAX_RATE_AMOUNT requests, a window of 0 (`limits` reads it as
    1) or longer than MAX_RATE_WINDOW_S. For a key's rate and for VAREDIT_RATE_LIMIT alike."""
    try:
        rates = parse_many(text)
    except ValueError:
        raise ValueError(f"rate limit {text!r} is not a rate such as 60/minute or 1000 per day") from None
    if len(rates) != 1:
        raise ValueError(f"rate limit {text!r} states {len(rates)} rates; give one, such as 60/minute")
    [rate] = rates
    if rate.amount < 1:
        raise ValueError(f"rate limit {text!r} allows no request")
    if rate.amount > MAX_RATE_AMOUNT:
        raise ValueError(f"rate limit {text!r} allows more than {MAX_RATE_AMOUNT} requests per window")
    count = match[1] if (match := _ONE_RATE.fullmatch(text)) else None
    if count is not None and int(count) == 0:
        raise ValueError(f"rate limit {text!r} has a window of 0")
    if rate.get_expiry() > MAX_RATE_WINDOW_S:
        raise ValueError(f"rate limit {text!r} has a window longer than 1 year ({MAX_RATE_WINDOW_S} seconds)")
    return rate
