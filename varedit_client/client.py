"""The synchronous client: `Client`, its `Jobs` and the `Job` handle.

    from varedit_client import Client

    with Client("http://127.0.0.1:8000") as client:
        job = client.edit("photo.png", "make the sky purple", seed=42)
        job.wait(progress=lambda p: print(f"scale {p.scale}/{p.scales}"))
        job.result(as_image=True).save("edited.png")

Requests are retried on connection errors, 429, 503 (honouring ``Retry-After``) and 409
``idempotency_request_in_flight`` with backoff (`varedit_client.retry`); a submit sends one
``Idempotency-Key`` on all its tries, so a retry after a lost answer never makes a second job.
`AsyncClient` (``varedit_client.aio``) has the same surface for asyncio.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any, Literal, overload

import httpx
from PIL import Image

from varedit_client import calls
from varedit_client.config import ClientConfig
from varedit_client.errors import ApiError, ConnectionFailed, VareditError, from_response
from varedit_client.handle import (
    STREAM_FAILURES,
    STREAM_SILENCE_S,
    Deadline,
    JobHandleBase,
    PreviewCallback,
    ProgressCallback,
    ProgressReporter,
    StreamNews,
    timed_out,
)
from varedit_client.images import ImageInput, Upload, prepare
from varedit_client.retry import RetryPolicy
from varedit_client.sse import SseDecoder, job_event
from varedit_client.types import JobEvent, JobPreviewEvent, JobPublic, JobStatus


class Client:
    """One connection pool to the API; a context manager. ``url``/``api_key`` default to ``VAREDIT_URL``
    and ``VAREDIT_API_KEY``; ``timeout`` is per request (long polls and streams get what they need);
    ``max_attempts`` bounds the tries of one request (or pass a whole `RetryPolicy` as ``retry``)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_attempts: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.config = ClientConfig.build(url, api_key, timeout, max_attempts, retry)
        self.http = httpx.Client(**self.config.http_options())
        self.jobs = Jobs(self)

    @property
    def url(self) -> str:
        return self.config.url

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the API --------------------------------------------------------------------------------

    def edit(
        self,
        image: ImageInput,
        instruction: str,
        *,
        negative_instruction: str | None = None,
        model: str | None = None,
        resolution: int | None = None,
        seed: int | None = None,
        cfg: float | None = None,
        tau: float | None = None,
        priority: int | None = None,
        start_timeout_s: int | None = None,
        webhook_url: str | None = None,
        webhook_events: list[str] | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> Job:
        """Submit an edit of ``image`` (a path, bytes, a PIL image or an http(s) URL the server fetches).
        ``negative_instruction``: what guidance steers away from (default: none, the model's null text).
        Parameters left out take the model's recommended values; ``params`` passes fields this client does
        not name yet."""
        fields = {
            "negative_instruction": negative_instruction,
            "model": model,
            "resolution": resolution,
            "seed": seed,
            "cfg": cfg,
            "tau": tau,
            "priority": priority,
            "start_timeout_s": start_timeout_s,
            "webhook_url": webhook_url,
            "webhook_events": webhook_events,
            **params,
        }
        key = idempotency_key or calls.new_idempotency_key()
        response = self._send(calls.edit(prepare(image), instruction, fields, key))
        return Job(self, calls.job(response))

    # -- sending ----------------------------------------------------------------------------------

    def _send(self, call: calls.Call, *, stream: bool = False, retry: bool = True) -> httpx.Response:
        """The answer to ``call``, retried as the policy says; error answers raise their `ApiError`."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.http.send(call.request(self.http, self.config.timeout), stream=stream)
            except httpx.TransportError as exc:
                error: VareditError = ConnectionFailed(self.url, exc)
            else:
                if response.status_code < 400:
                    return response
                if stream:
                    response.read()
                    response.close()
                error = from_response(response)
            delay = self.config.retry.delay(attempt, error) if retry else None
            if delay is None:
                raise error from (error.cause if isinstance(error, ConnectionFailed) else None)
            time.sleep(delay)

    def _job_stream(self, job_id: str, silence_s: float) -> Iterator[JobEvent | None]:
        """The job's event stream, one item per line read: its event, or None (pings, partial events),
        so a waiting caller can look at its clock. Opened once; the caller decides about failures."""
        response = self._send(calls.events(job_id, silence_s), stream=True, retry=False)
        try:
            decoder = SseDecoder()
            for line in response.iter_lines():
                sse = decoder.feed(line)
                yield job_event(sse) if sse is not None else None
        finally:
            response.close()

    def _download(self, job_id: str) -> bytes:
        response = self._send(calls.result(job_id))
        redirect = calls.presigned(response)
        return self._send(redirect).content if redirect is not None else response.content

    # -- the first client's methods (plain dicts), kept for existing callers -------------------------

    def submit(
        self,
        image: bytes,
        instruction: str,
        *,
        filename: str = "image.png",
        content_type: str = "image/png",
        idempotency_key: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """``POST /v1/edits`` (multipart); the queued job as JSON. New code: `edit`."""
        key = idempotency_key or calls.new_idempotency_key()
        upload = Upload(filename, image, content_type)
        return self._send(calls.edit(upload, instruction, params, key)).json()

    def get(self, job_id: str, wait_s: int = 0) -> dict[str, Any]:
        """The job as JSON (``wait_s``: a long poll). New code: ``jobs.get``."""
        return self._send(calls.get_job(job_id, wait_s)).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._send(calls.cancel(job_id)).json()

    def result(self, job_id: str) -> bytes:
        """The result image's bytes (409 `Conflict` until the job succeeded). New code: `Job.result`."""
        return self._download(job_id)

    def wait(
        self,
        job_id: str,
        timeout_s: float = 600.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Long-poll until the job ends, whatever the outcome; the job as JSON. New code: `Job.wait`."""
        deadline = Deadline(timeout_s)
        while True:
            if deadline.expired():
                raise timed_out(job_id, timeout_s)
            job = self.get(job_id, wait_s=deadline.poll_wait_s(with_progress=False))
            if on_update is not None:
                on_update(job)
            if job["status"] in calls.TERMINAL:
                return job


class Jobs:
    """``client.jobs``: one job by id, or the caller's jobs newest first across all pages."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, job_id: str) -> Job:
        return Job(self._client, calls.job(self._client._send(calls.get_job(job_id))))

    def cancel(self, job_id: str) -> Job:
        """Cancel by id (see `Job.cancel`)."""
        return Job(self._client, calls.job(self._client._send(calls.cancel(job_id))))

    def list(
        self, status: JobStatus | str | None = None, limit: int | None = None, page_size: int = 20
    ) -> Iterator[Job]:
        """Jobs newest first, following ``next_cursor`` page by page; ``limit``: at most that many."""
        cursor: str | None = None
        seen = 0
        while limit is None or seen < limit:
            size = min(page_size, calls.MAX_PAGE_SIZE, limit - seen if limit is not None else page_size)
            page, cursor = calls.page(self._client._send(calls.list_jobs(status, size, cursor)))
            for data in page:
                yield Job(self._client, data)
            seen += len(page)
            if cursor is None or not page:
                return


class Job(JobHandleBase):
    """A job on the server and what this client last saw of it (``data``, a `JobPublic`)."""

    def __init__(self, client: Client, data: JobPublic) -> None:
        super().__init__(data)
        self._client = client

    def refresh(self) -> Job:
        self._set(calls.job(self._client._send(calls.get_job(self.id))))
        return self

    def cancel(self) -> Job:
        """Ask for cancellation: a queued job ends at once, a running one at its next scale."""
        self._set(calls.job(self._client._send(calls.cancel(self.id))))
        return self

    def wait(
        self,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        preview: PreviewCallback | None = None,
    ) -> Job:
        """Until the job ends; raises `JobFailed` unless it succeeded, `TimeoutError` after ``timeout``
        seconds (None: no limit). Follows the event stream, and long polls when the stream fails.
        ``progress`` is called with a `JobProgressEvent` for each scale, in order; ``preview`` (for a
        job submitted with ``previews=True``) with each preview's event and its PNG, as the stream
        announces them (previews arrive only over the stream)."""
        deadline = Deadline(timeout)
        reporter = ProgressReporter()

        def seen(event: JobEvent | None = None) -> None:
            if isinstance(event, JobPreviewEvent):
                if preview is not None:
                    preview(event, self.preview(event.scale))
                return
            for report in reporter.advance(self._data):
                if progress is not None:
                    progress(report)

        seen()
        streaming = True
        while not self.done:
            if deadline.expired():
                raise timed_out(self.id, timeout)
            if streaming and not deadline.near():
                self._follow(deadline, seen)
                streaming = False
            else:
                wait_s = deadline.poll_wait_s(with_progress=progress is not None)
                self._set(calls.job(self._client._send(calls.get_job(self.id, wait_s))))
                seen()
        self._check_succeeded()
        return self

    def preview(self, scale: int) -> bytes:
        """The PNG of the preview of scale ``scale`` (404 `NotFound` until it is stored)."""
        return self._client._send(calls.preview(self.id, scale)).content

    def _follow(self, deadline: Deadline, seen: Callable[[JobEvent | None], None]) -> None:
        """Follow the event stream until the job ends, the stream fails or the deadline draws near; the
        caller long-polls from there (a poll bounded by the time left ends the wait on time, where the
        stream's next byte may be a ping 15 s away)."""
        with closing(self._client._job_stream(self.id, deadline.stream_silence_s())) as stream:
            while True:
                try:  # only the stream's own failures: a progress callback's errors reach the caller
                    event = next(stream)
                except (StopIteration, *STREAM_FAILURES):
                    return
                if event is not None:
                    self._apply(event)
                    seen(event)
                if self.done or deadline.near():
                    return

    def events(self) -> Iterator[JobEvent]:
        """The job's events (`JobStatusEvent`, `JobProgressEvent`, `JobPreviewEvent`) until it ends; a
        dropped stream is reopened (bounded by the retry policy) without repeating what it already
        yielded: each status change, each scale of a run and each preview once, in order."""
        attempt = 0
        news = StreamNews()
        while True:
            try:
                with closing(self._client._job_stream(self.id, STREAM_SILENCE_S)) as stream:
                    for event in stream:
                        if event is None:
                            continue
                        self._apply(event)
                        if not news(event):  # a reopened stream restating what was yielded
                            continue
                        attempt = 0  # news: the stream works
                        yield event
                if self.done:
                    return
                error: VareditError = ConnectionFailed(self._client.url, EOFError("the event stream ended"))
            except httpx.TransportError as exc:
                error = ConnectionFailed(self._client.url, exc)
            except (ConnectionFailed, ApiError) as exc:
                error = exc
            attempt += 1
            delay = self._client.config.retry.delay(attempt, error)
            if delay is None:
                raise error
            time.sleep(delay)

    @overload
    def result(self, as_image: Literal[False] = False, timeout: float | None = None) -> bytes: ...

    @overload
    def result(self, as_image: Literal[True], timeout: float | None = None) -> Image.Image: ...

    def result(self, as_image: bool = False, timeout: float | None = None) -> bytes | Image.Image:
        """The edited image once the job succeeded (waiting for it first): its bytes, or a loaded PIL image
        with ``as_image=True``. Raises `JobFailed` when the job ended otherwise."""
        self.wait(timeout=timeout)
        content = self._client._download(self.id)
        if not as_image:
            return content
        image = Image.open(io.BytesIO(content))
        image.load()
        return image
