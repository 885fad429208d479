"""Per-caller limits on POST /v1/edits: a request rate and a cap on work in the system.

The rate is a moving window kept in Redis (the broker), so every API replica counts the same requests;
with a non-Redis broker each process counts its own. The cap counts the caller's queued and running
jobs in the database. Both answer 429 with Retry-After and store nothing. When Redis is unreachable the
rate is not enforced (fail open): accepting jobs must not depend on the broker.
"""

from __future__ import annotations

import math
import time

import structlog
from limits import RateLimitItem, parse, storage, strategies
from sqlalchemy.orm import Session

from api.deps import Principal
from api.errors import RateLimited, TooManyInFlight
from jobs import queries
from jobs.notify import is_redis_url
from jobs.settings import Settings

IN_FLIGHT_RETRY_S = 5  # a guess at when one of the caller's jobs will have finished

log = structlog.get_logger(__name__)


class EditLimits:
    def __init__(self, settings: Settings) -> None:
        uri = settings.broker_url if is_redis_url(settings.broker_url) else "memory://"
        self.limiter = strategies.MovingWindowRateLimiter(storage.storage_from_string(uri))
        self.default_rate: RateLimitItem = parse(settings.rate_limit)
        self.default_in_flight = settings.max_in_flight

    def check(self, principal: Principal, session: Session) -> None:
        """Count this request against the caller's rate; raise when it or the in-flight cap is over."""
        rate = parse(principal.rate_limit) if principal.rate_limit else self.default_rate
        try:
            allowed = self.limiter.hit(rate, "edits", principal.id)
        except Exception:  # Redis down: keep accepting (the outbox already covers a broker outage)
            log.warning("rate_limit_unavailable", exc_info=True)
            allowed = True
        if not allowed:
            reset_at, _ = self.limiter.get_window_stats(rate, "edits", principal.id)
            raise RateLimited(
                f"more than {rate} edits",
                max(1, math.ceil(reset_at - time.time())),
                details={"limit": str(rate)},
            )
        cap = principal.max_in_flight or self.default_in_flight
        if queries.count_in_flight(session, principal.id) >= cap:
            raise TooManyInFlight(
                f"{cap} jobs are already queued or running", IN_FLIGHT_RETRY_S, details={"max_in_flight": cap}
            )
