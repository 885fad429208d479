"""Best-effort "job changed" notifications over Redis pub/sub, published after each commit.

The message carries only the job id: listeners re-read the database, which stays the truth, so a lost
notification only delays a waiting client until its next periodic re-check.
"""

from __future__ import annotations

import redis
import structlog

CHANNEL_PREFIX = "varedit:job:"
CHANNEL_PATTERN = CHANNEL_PREFIX + "*"
SOCKET_TIMEOUT_S = 1.0

log = structlog.get_logger(__name__)


def job_channel(job_id: str) -> str:
    return CHANNEL_PREFIX + job_id


def is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


class Notifier:
    """Publishes job changes; a no-op when the broker is not Redis. Never raises."""

    def __init__(self, url: str) -> None:
        self._client = (
            redis.Redis.from_url(
                url, socket_connect_timeout=SOCKET_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S
            )
            if is_redis_url(url)
            else None
        )

    def job_changed(self, job_id: str) -> None:
        """Call after the transaction that changed the job has committed."""
        if self._client is None:
            return
        try:
            self._client.publish(job_channel(job_id), job_id)
        except redis.RedisError:
            log.warning("job_notify_failed", job_id=job_id, exc_info=True)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
