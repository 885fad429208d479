"""Holding a reply until a job changes: `Prefer: wait=N` on reads and submits, and the event stream.

Each step re-reads the job in a short session (a long wait must not hold a database connection); the
watcher wakes it on a change and at least every few seconds (`api/watch.py`). A caller holds at most
`max_waits` waits open in one API process (`take_wait`).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from api.deps import read_owned_job
from api.errors import TooManyWaits
from api.slots import WAITS, Slot, SlotsTaken
from api.watch import JobWatcher
from jobs.models import Job
from jobs.settings import Settings

PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)


def preferred_wait_s(prefer: str | None, settings: Settings) -> int | None:
    """Seconds a `Prefer: wait=N` header asks to hold the reply (capped at `max_wait_s`), or None."""
    match = PREFER_WAIT.search(prefer or "")
    if match is None:
        return None
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > len(str(settings.max_wait_s)):  # over the cap; int() refuses over 4300 digits
        return settings.max_wait_s
    return min(int(digits), settings.max_wait_s)


def take_wait(owner: str, settings: Settings) -> Slot:
    """One of the caller's `max_waits` open waits (release it when the wait ends); 429 `too_many_waits`
    when all are open, so a client cannot pile up connections and database reads without bound."""
    try:
        return WAITS.take(owner, settings.max_waits)
    except SlotsTaken:
        raise TooManyWaits(
            f"at most {settings.max_waits} waits (Prefer: wait, event streams) may be open per caller; "
            "retry when one ends",
            retry_after_s=1,
            details={"limit": settings.max_waits},
        ) from None


async def changes(
    sessions: sessionmaker[Session],
    watcher: JobWatcher,
    job_id: str,
    owner: str,
    timeout_s: float,
    client_gone: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[Job]:
    """The job now and after every change, until it is terminal or ``timeout_s`` passes, or (checked at
    every wake-up) ``client_gone()``: a reply nobody will read need not hold its wait any longer."""
    deadline = time.monotonic() + timeout_s
    async with watcher.watch(job_id) as changed:
        while True:
            job = await run_in_threadpool(read_owned_job, sessions, job_id, owner)
            yield job
            remaining = deadline - time.monotonic()
            if job.status.terminal or remaining <= 0:
                return
            await watcher.wait(changed, remaining)
            if client_gone is not None and await client_gone():
                return


async def held_until_done(
    request: Request,
    sessions: sessionmaker[Session],
    watcher: JobWatcher,
    job_id: str,
    owner: str,
    wait_s: float,
    slot: Slot,
) -> Job:
    """The job once it is terminal, ``wait_s`` has passed or its client has gone; ``slot`` (`take_wait`)
    is held until then."""
    try:
        async for job in changes(
            sessions, watcher, job_id, owner, wait_s, client_gone=request.is_disconnected
        ):
            latest = job
    finally:
        slot.release()
    return latest
