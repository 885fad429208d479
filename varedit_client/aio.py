"""The asynchronous client: `AsyncClient`, `AsyncJobs` and `AsyncJob`, the same surface as `Client` with
``await`` (and ``async for`` over job lists and events). Requests, parsing, retries and progress reporting
are the sync client's (``calls``, ``retry``, ``handle``); only the sending differs.

    async with AsyncClient("http://127.0.0.1:8000") as client:
        job = await client.edit("photo.png", "make the sky purple")
        await job.wait(progress=lambda p: print(p.scale, p.scales))
        png = await job.result()
"""

from __future__ import annotations

import inspect
import io
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, Literal, overload

import anyio
import httpx
from anyio import to_thread
from PIL import Image

from varedit_client import calls
from varedit_client.config import ClientConfig
from varedit_client.errors import ApiError, ConnectionFailed, VareditError, from_response
from varedit_client.handle import (
    STREAM_FAILURES,
    STREAM_SILENCE_S,
    AsyncPreviewCallback,
    AsyncProgressCallback,
    Deadline,
    JobHandleBase,
    ProgressReporter,
    StreamNews,
    timed_out,
)
from varedit_client.images import ImageInput, prepare
from varedit_client.retry import RetryPolicy
from varedit_client.sse import SseDecoder, job_event
from varedit_client.types import JobEvent, JobPreviewEvent, JobPublic, JobStatus


class AsyncClient:
    """`Client` for asyncio (httpx.AsyncClient underneath); ``async with`` closes it."""

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
        self.http = httpx.AsyncClient(**self.config.http_options())
        self.jobs = AsyncJobs(self)

    @property
    def url(self) -> str:
        return self.config.url

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def edit(
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
    ) -> AsyncJob:
        """See `Client.edit`."""
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
        upload = await to_thread.run_sync(prepare, image)  # reading a file must not block the loop
        response = await self._send(calls.edit(upload, instruction, fields, key))
        return AsyncJob(self, calls.job(response))

    async def _send(self, call: calls.Call, *, stream: bool = False, retry: bool = True) -> httpx.Response:
        """See `Client._send`."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self.http.send(call.request(self.http, self.config.timeout), stream=stream)
            except httpx.TransportError as exc:
                error: VareditError = ConnectionFailed(self.url, exc)
            else:
                if response.status_code < 400:
                    return response
                if stream:
                    await response.aread()
                    await response.aclose()
                error = from_response(response)
            delay = self.config.retry.delay(attempt, error) if retry else None
            if delay is None:
                raise error from (error.cause if isinstance(error, ConnectionFailed) else None)
            await anyio.sleep(delay)

    async def _job_stream(self, job_id: str, silence_s: float) -> AsyncIterator[JobEvent | None]:
        """See `Client._job_stream`."""
        response = await self._send(calls.events(job_id, silence_s), stream=True, retry=False)
        try:
            decoder = SseDecoder()
            async for line in response.aiter_lines():
                sse = decoder.feed(line)
                yield job_event(sse) if sse is not None else None
        finally:
            await response.aclose()

    async def _download(self, job_id: str) -> bytes:
        response = await self._send(calls.result(job_id))
        redirect = calls.presigned(response)
        return (await self._send(redirect)).content if redirect is not None else response.content


class AsyncJobs:
    """``client.jobs`` of an `AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, job_id: str) -> AsyncJob:
        return AsyncJob(self._client, calls.job(await self._client._send(calls.get_job(job_id))))

    async def cancel(self, job_id: str) -> AsyncJob:
        """Cancel by id (see `AsyncJob.cancel`)."""
        return AsyncJob(self._client, calls.job(await self._client._send(calls.cancel(job_id))))

    async def list(
        self, status: JobStatus | str | None = None, limit: int | None = None, page_size: int = 20
    ) -> AsyncIterator[AsyncJob]:
        """See `Jobs.list`: ``async for job in client.jobs.list(...)``."""
        cursor: str | None = None
        seen = 0
        while limit is None or seen < limit:
            size = min(page_size, calls.MAX_PAGE_SIZE, limit - seen if limit is not None else page_size)
            page, cursor = calls.page(await self._client._send(calls.list_jobs(status, size, cursor)))
            for data in page:
                yield AsyncJob(self._client, data)
            seen += len(page)
            if cursor is None or not page:
                return


class AsyncJob(JobHandleBase):
    """See `Job`; ``progress`` callbacks may be plain functions or coroutine functions."""

    def __init__(self, client: AsyncClient, data: JobPublic) -> None:
        super().__init__(data)
        self._client = client

    async def refresh(self) -> AsyncJob:
        self._set(calls.job(await self._client._send(calls.get_job(self.id))))
        return self

    async def cancel(self) -> AsyncJob:
        self._set(calls.job(await self._client._send(calls.cancel(self.id))))
        return self

    async def wait(
        self,
        progress: AsyncProgressCallback | None = None,
        timeout: float | None = None,
        preview: AsyncPreviewCallback | None = None,
    ) -> AsyncJob:
        """See `Job.wait`."""
        deadline = Deadline(timeout)
        reporter = ProgressReporter()

        async def seen(event: JobEvent | None = None) -> None:
            if isinstance(event, JobPreviewEvent):
                if preview is not None:
                    outcome = preview(event, await self.preview(event.scale))
                    if inspect.isawaitable(outcome):
                        await outcome
                return
            for report in reporter.advance(self._data):
                if progress is not None and inspect.isawaitable(outcome := progress(report)):
                    await outcome

        await seen()
        streaming = True
        while not self.done:
            if deadline.expired():
                raise timed_out(self.id, timeout)
            if streaming and not deadline.near():
                await self._follow(deadline, seen)
                streaming = False
            else:
                wait_s = deadline.poll_wait_s(with_progress=progress is not None)
                self._set(calls.job(await self._client._send(calls.get_job(self.id, wait_s))))
                await seen()
        self._check_succeeded()
        return self

    async def preview(self, scale: int) -> bytes:
        """See `Job.preview`."""
        return (await self._client._send(calls.preview(self.id, scale))).content

    async def _follow(self, deadline: Deadline, seen: Callable[[JobEvent | None], Any]) -> None:
        """See `Job._follow`."""
        async with aclosing(self._client._job_stream(self.id, deadline.stream_silence_s())) as stream:
            while True:
                try:
                    event = await anext(stream)
                except (StopAsyncIteration, *STREAM_FAILURES):
                    return
                if event is not None:
                    self._apply(event)
                    await seen(event)
                if self.done or deadline.near():
                    return

    async def events(self) -> AsyncIterator[JobEvent]:
        """See `Job.events`: ``async for event in job.events()``."""
        attempt = 0
        news = StreamNews()
        while True:
            try:
                async with aclosing(self._client._job_stream(self.id, STREAM_SILENCE_S)) as stream:
                    async for event in stream:
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
            await anyio.sleep(delay)

    @overload
    async def result(self, as_image: Literal[False] = False, timeout: float | None = None) -> bytes: ...

    @overload
    async def result(self, as_image: Literal[True], timeout: float | None = None) -> Image.Image: ...

    async def result(self, as_image: bool = False, timeout: float | None = None) -> bytes | Image.Image:
        """See `Job.result`."""
        await self.wait(timeout=timeout)
        content = await self._client._download(self.id)
        if not as_image:
            return content
        image = Image.open(io.BytesIO(content))
        image.load()
        return image
