"""Per-caller request rate on every write route (submit, cancel, delete, redeliver).

The rate is a moving window kept in Redis (the broker), so every API replica counts the same requests;
with a non-Redis broker each process counts its own. Over it: 429 with Retry-After, nothing stored.
When Redis is unreachable the rate is not enforced (fail open): accepting jobs must not depend on the
broker. The cap on a caller's work in the system (queued + running jobs) is checked atomically with
the insert, in `jobs.service.submit_edit`.
"""

from __future__ import annotations

import math
import time
from typing import Annotated

import structlog
from fastapi import Depends, Request
from limits import RateLimitItem, parse, storage, strategies

from api.deps import Principal, PrincipalDep
from api.errors import RateLimited
from jobs.notify import is_redis_url
from jobs.settings import Settings

WINDOW = "writes"

log = structlog.get_logger(__name__)


class WriteLimits:
    def __init__(self, settings: Settings) -> None:
        uri = settings.broker_url if is_redis_url(settings.broker_url) else "memory://"
        self.limiter = strategies.MovingWindowRateLimiter(storage.storage_from_string(uri))
        self.default_rate: RateLimitItem = parse(settings.rate_limit)

    def check(self, principal: Principal) -> dict[str, str]:
        """Count this request against the caller's rate; raise `RateLimited` when it is over. Returns
        the `RateLimit-*` headers that tell the caller where it stands (empty when Redis is down)."""
        rate = parse(principal.rate_limit) if principal.rate_limit else self.default_rate
        try:
            allowed = self.limiter.hit(rate, WINDOW, principal.id)
            reset_at, remaining = self.limiter.get_window_stats(rate, WINDOW, principal.id)
        except Exception:  # Redis down: keep accepting (the outbox already covers a broker outage)
            log.warning("rate_limit_unavailable", exc_info=True)
            return {}
        reset_s = max(1, math.ceil(reset_at - time.time()))
        headers = {
            "RateLimit-Limit": str(rate.amount),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(reset_s),
        }
        if not allowed:
            error = RateLimited(f"more than {rate} write requests", reset_s, details={"limit": str(rate)})
            error.headers = {**headers, **(error.headers or {})}
            raise error
        return headers


def rate_limited_writer(request: Request, principal: PrincipalDep) -> Principal:
    """The caller of a write route, after counting the request against its rate; the answer carries
    `RateLimit-Limit`, `-Remaining` and `-Reset` (added by `api.middleware`)."""
    request.state.response_headers = request.app.state.limits.check(principal)
    return principal


WriterDep = Annotated[Principal, Depends(rate_limited_writer)]
