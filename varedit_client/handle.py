"""What `Job` and `AsyncJob` share: the job as last seen, how events update it, progress reporting and the
wait deadline. The two handles add only the IO."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import httpx

from varedit_client.calls import MAX_WAIT_S
from varedit_client.errors import ApiError, ConnectionFailed, JobFailed
from varedit_client.types import (
    JobEvent,
    JobPreviewEvent,
    JobProgressEvent,
    JobPublic,
    JobStatus,
    JobStatusEvent,
    Progress,
)

ProgressCallback = Callable[[JobProgressEvent], object]
AsyncProgressCallback = Callable[[JobProgressEvent], Awaitable[object] | object]
# Called with a preview's event and its image (PNG bytes), for jobs submitted with ``previews=True``.
PreviewCallback = Callable[[JobPreviewEvent, bytes], object]
AsyncPreviewCallback = Callable[[JobPreviewEvent, bytes], Awaitable[object] | object]

SERVER_PING_S = 15.0  # the server sends a keep-alive comment this often on an event stream
STREAM_SILENCE_S = 45.0  # no byte for this long: the stream is dead (three missed pings)
POLL_WITH_PROGRESS_S = 2  # long-poll chunk when a progress callback wants to hear about scales
# The event stream failed (or a proxy mangled it): a wait goes on with long polls, which retry and raise
# real errors themselves.
STREAM_FAILURES = (httpx.TransportError, ConnectionFailed, ApiError, ValueError)


class JobHandleBase:
    """The job as last seen (``data``, a `JobPublic`) and the shortcuts callers use most."""

    def __init__(self, data: JobPublic) -> None:
        self._data = data

    @property
    def data(self) -> JobPublic:
        return self._data

    @property
    def id(self) -> str:
        return self._data.id

    @property
    def status(self) -> JobStatus:
        return self._data.status

    @property
    def progress(self) -> Progress | None:
        return self._data.progress

    @property
    def done(self) -> bool:
        """Terminal: succeeded, failed, canceled or expired."""
        return self._data.status.terminal

    def __repr__(self) -> str:
        progress = f" {self.progress.scale}/{self.progress.scales}" if self.progress else ""
        return f"<{type(self).__name__} {self.id} {self.status.value}{progress}>"

    def _set(self, data: JobPublic) -> None:
        self._data = data

    def _apply(self, event: JobEvent) -> None:
        """Fold an event into the job as last seen (a progress event carries only the scale)."""
        if isinstance(event, JobStatusEvent):
            self._data = event.job
        elif isinstance(event, JobProgressEvent):
            progress = Progress(scale=event.scale, scales=event.scales)
            self._data = self._data.model_copy(update={"status": event.status, "progress": progress})

    def _check_succeeded(self) -> None:
        if self.done and self.status is not JobStatus.SUCCEEDED:
            raise JobFailed(self._data)


class ProgressReporter:
    """Turns what a wait sees (events or polled jobs) into progress reports: each scale once, in order.
    A job that runs again after a worker died restarts at scale 1; the report does not go back."""

    def __init__(self) -> None:
        self._last: tuple[int, int] = (0, 0)

    def advance(self, job: JobPublic) -> list[JobProgressEvent]:
        """The reports to make now that the job looks like ``job``: one per scale reached since the
        last report (a poll can see several scales end at once), none when nothing advanced."""
        progress = job.progress
        if progress is None or progress.scale <= self._last[0]:
            return []
        first = self._last[0] + 1
        self._last = (progress.scale, progress.scales)
        return [
            JobProgressEvent(id=job.id, status=job.status, scale=k, scales=progress.scales)
            for k in range(first, progress.scale + 1)
        ]


class Deadline:
    """``timeout`` seconds from now (None: never)."""

    def __init__(self, timeout: float | None) -> None:
        self._at = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float:
        return math.inf if self._at is None else self._at - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0

    def stream_silence_s(self) -> float:
        return max(0.05, min(STREAM_SILENCE_S, self.left()))

    def near(self) -> bool:
        """Too close for an event stream to notice in time (its next byte may be a ping 15 s away): a
        long poll bounded by what is left ends the wait on time."""
        return self.left() < SERVER_PING_S

    def poll_wait_s(self, with_progress: bool) -> int:
        chunk = POLL_WITH_PROGRESS_S if with_progress else MAX_WAIT_S
        left = self.left()
        return chunk if math.isinf(left) else max(1, min(chunk, math.ceil(left)))


def timed_out(job_id: str, timeout: float | None) -> TimeoutError:
    return TimeoutError(f"job {job_id} did not finish within {timeout:g}s")


class StreamNews:
    """What `events()` passes on of the streams it opens. A reopened stream restates the job: its status,
    then every scale of the run so far and every preview stored so far; only what is new gets through, so
    each status change, each scale of a run and each preview is yielded once, in order."""

    def __init__(self) -> None:
        self._status: JobStatus | None = None
        self._scale = 0  # scales 1.._scale of this run were passed on
        self._preview = 0  # previews 1.._preview were passed on

    def __call__(self, event: JobEvent) -> bool:
        if isinstance(event, JobStatusEvent):
            if event.job.status is self._status:  # a reopened stream restating the job
                return False
            self._status = event.job.status
            self._scale = self._preview = 0  # a new run (a retry starts again at scale 1)
            return True
        if isinstance(event, JobProgressEvent):
            if event.scale <= self._scale:
                return False
            self._scale = event.scale
            return True
        if isinstance(event, JobPreviewEvent):
            if event.scale <= self._preview:
                return False
            self._preview = event.scale
        return True
