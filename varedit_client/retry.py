"""When to send a request again, shared by the sync and async clients (they differ only in how they sleep).

Retried: connection errors, 429 and 503 (after ``Retry-After`` when the server sends one) and 409
``idempotency_request_in_flight`` (the first try of the same submit is still being processed). Anything
else is final. Every request is safe to repeat: reads are reads, cancel is idempotent and a submit
carries the same ``Idempotency-Key`` on each try.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from varedit_client.errors import Conflict, ConnectionFailed, RateLimited, ServiceUnavailable, VareditError

IN_FLIGHT = "idempotency_request_in_flight"

# Each wait is logged at INFO, so a program (and the `varedit-client` CLI, which prints it) can say why
# a call is taking long: a Retry-After of a minute is otherwise a silent minute.
log = logging.getLogger("varedit_client")


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` tries in all; exponential backoff from ``backoff_s`` up to ``max_backoff_s`` with
    jitter, so many clients that failed together do not return together. A ``Retry-After`` longer than
    ``max_retry_after_s`` is not waited for: the error goes to the caller at once."""

    max_attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay(self, attempt: int, error: VareditError) -> float | None:
        """Seconds to wait before try ``attempt + 1`` after ``error`` ended try ``attempt``; None: give up."""
        if attempt >= self.max_attempts or not retryable(error):
            return None
        ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        backoff = random.uniform(ceiling / 2, ceiling)  # "equal jitter": never zero, never in lockstep
        wait = backoff
        if isinstance(error, RateLimited | ServiceUnavailable) and error.retry_after is not None:
            if error.retry_after > self.max_retry_after_s:
                return None
            wait = max(error.retry_after, backoff)
        log.info("%s; trying again in %.0f s (try %d of %d)", error, wait, attempt + 1, self.max_attempts)
        return wait


def retryable(error: VareditError) -> bool:
    if isinstance(error, ConnectionFailed | RateLimited | ServiceUnavailable):
        return True
    return isinstance(error, Conflict) and error.code == IN_FLIGHT
