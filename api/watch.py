"""Wake waiting requests (``Prefer: wait``, SSE) when a job changes, via one Redis pub/sub connection.

Waiters re-read the database on every wake-up and at least every ``recheck_s``, so a lost notification
or a Redis outage only adds latency; correctness never depends on pub/sub.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import redis.asyncio as aioredis
import structlog

from jobs.notify import CHANNEL_PATTERN, CHANNEL_PREFIX, is_redis_url

RECONNECT_S = 1.0  # pause before re-subscribing after Redis went away
LISTEN_POLL_S = 1.0  # bounded reads: redis-py's blocking listen() can swallow task cancellation

log = structlog.get_logger(__name__)


class JobWatcher:
    """One pattern subscription fanned out to per-job asyncio events."""

    def __init__(self, url: str, recheck_s: float = 1.0) -> None:
        self.url = url
        self.recheck_s = recheck_s
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        if is_redis_url(self.url):
            self._task = asyncio.create_task(self._listen(), name="job-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            # The flag too: redis-py can swallow a cancel that lands while it (re)connects.
            self._stopping = True
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=LISTEN_POLL_S * 2)
            self._task = None

    @asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever ``job_id`` changes; enter before reading the job so no change is missed."""
        event = asyncio.Event()
        self._waiters[job_id].add(event)
        try:
            yield event
        finally:
            self._waiters[job_id].discard(event)
            if not self._waiters[job_id]:
                del self._waiters[job_id]

    async def wait(self, event: asyncio.Event, timeout_s: float) -> None:
        """Until the job changes, ``timeout_s`` passes, or the periodic re-check is due."""
        with suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(0.0, min(timeout_s, self.recheck_s)))
        event.clear()

    async def _listen(self) -> None:
        while not self._stopping:
            try:
                client = aioredis.Redis.from_url(self.url)
                async with client, client.pubsub() as pubsub:
                    await pubsub.psubscribe(CHANNEL_PATTERN)
                    while not self._stopping:
                        message = await pubsub.get_message(timeout=LISTEN_POLL_S)
                        if message is not None and message["type"] == "pmessage":
                            self._wake(message["channel"].decode().removeprefix(CHANNEL_PREFIX))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("job_watcher_disconnected", exc_info=True)
                await asyncio.sleep(RECONNECT_S)

    def _wake(self, job_id: str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()
