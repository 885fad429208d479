"""`AsyncClient` against the real embedded platform: the same surface as `Client`, awaited."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path

import pytest
from PIL import Image

from tests.varedit_client.conftest import DEADLINE_S, SCALES, SECOND_SCALE, Platform, png, wait_for
from tests.varedit_client.faulty_proxy import FaultyProxy
from varedit_client import (
    AsyncClient,
    AsyncJob,
    InvalidRequest,
    JobFailed,
    JobProgressEvent,
    JobStatus,
    JobStatusEvent,
    NotFound,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _token() -> str:
    return uuid.uuid4().hex[:10]


def test_concurrent_edits_from_a_path_bytes_and_a_pil_image(platform: Platform, tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(png(4))

    async def main() -> list[tuple[AsyncJob, bytes, Image.Image]]:
        async with AsyncClient(platform.url) as client:
            jobs = await asyncio.gather(
                client.edit(path, "async from a path", seed=1),
                client.edit(png(5), "async from bytes", seed=2),
                client.edit(Image.open(io.BytesIO(png(6))), "async from PIL", seed=3),
            )
            assert [j.data.params.seed for j in jobs] == [1, 2, 3]
            done = await asyncio.gather(*(j.wait(timeout=DEADLINE_S) for j in jobs))
            assert [d is j for d, j in zip(done, jobs, strict=True)] == [True] * 3
            return [(j, await j.result(), await j.result(as_image=True)) for j in jobs]

    for (job, content, image), source in zip(asyncio.run(main()), (png(4), png(5), png(6)), strict=True):
        assert job.status is JobStatus.SUCCEEDED
        assert content.startswith(b"\x89PNG") and content != source
        assert image.size == (40, 40)


def test_wait_awaits_an_async_progress_callback_with_scales_in_order(platform: Platform) -> None:
    token = _token()
    seen: list[int] = []

    async def progress(event: JobProgressEvent) -> None:
        await asyncio.sleep(0)  # a coroutine callback is awaited, not dropped
        seen.append(event.scale)
        platform.open_gate(token)  # the job is held until a report arrives: reports are live

    async def main() -> AsyncJob:
        async with AsyncClient(platform.url) as client:
            job = await client.edit(png(), f"async hold gate:{token}")
            return await job.wait(progress=progress, timeout=DEADLINE_S)

    job = asyncio.run(main())
    assert job.status is JobStatus.SUCCEEDED
    assert seen == list(range(1, SCALES + 1))  # each scale once, in order


def test_wait_falls_back_to_long_polls_without_an_event_stream(platform: Platform) -> None:
    proxy = FaultyProxy(platform.port)
    proxy.refuse(rb"^GET /v1/jobs/[^ ]+/events ")

    async def main() -> AsyncJob:
        async with AsyncClient(proxy.url) as client:
            job = await client.edit(png(), "async without a stream")
            return await job.wait(timeout=DEADLINE_S)

    try:
        job = asyncio.run(main())
    finally:
        proxy.close()
    assert job.status is JobStatus.SUCCEEDED and proxy.refused >= 1


def test_events_after_a_dropped_stream_yield_each_scale_once(platform: Platform) -> None:
    """See the sync client's test: the reopened stream's restatement of scales 1-2 is not yielded."""
    proxy = FaultyProxy(platform.port)
    proxy.cut_answer(rb"^GET /v1/jobs/[^ ]+/events ", after=SECOND_SCALE)
    token = _token()

    def open_once_restated() -> None:
        wait_for(lambda: proxy.answered.count(SECOND_SCALE) >= 2, "the reopened stream's scale 2")
        platform.open_gate(token)

    async def main() -> list[int]:
        async with AsyncClient(proxy.url) as client:
            job = await client.edit(png(), f"async dropped stream gate:{token}")
            opener = asyncio.create_task(asyncio.to_thread(open_once_restated))
            scales = [e.scale async for e in job.events() if isinstance(e, JobProgressEvent)]
            await opener
            assert job.status is JobStatus.SUCCEEDED
            return scales

    try:
        assert asyncio.run(main()) == list(range(1, SCALES + 1))
    finally:
        proxy.close()
    assert proxy.cut == 1


def test_cancel_events_list_and_errors(platform: Platform) -> None:
    token = _token()

    async def main() -> None:
        async with AsyncClient(platform.url) as client:
            # events of a job, held until the stream has shown progress
            job = await client.edit(png(), f"async events gate:{token}")
            events = []
            async for event in job.events():
                events.append(event)
                if isinstance(event, JobProgressEvent):
                    platform.open_gate(token)
            statuses = [e.job.status.value for e in events if isinstance(e, JobStatusEvent)]
            assert statuses[-1] == "succeeded" and len(statuses) == len(set(statuses))
            assert job.status is JobStatus.SUCCEEDED

            # a held job canceled: wait and result raise JobFailed with the job
            held = _token()
            doomed = await client.edit(png(), f"async doomed gate:{held}")
            await asyncio.to_thread(wait_for, lambda: platform.blocked(held), "the gate")
            await doomed.cancel()
            platform.open_gate(held)
            with pytest.raises(JobFailed) as failed:
                await doomed.wait(timeout=DEADLINE_S)
            assert failed.value.job.status is JobStatus.CANCELED
            with pytest.raises(JobFailed):
                await doomed.result()

            # pages
            ids = [(await client.edit(png(i), f"async page {i}")).id for i in range(3)]
            listed = [j.id async for j in client.jobs.list(limit=3, page_size=2)]
            assert set(listed) == set(ids)
            assert (await client.jobs.get(ids[0])).id == ids[0]

            # typed errors
            with pytest.raises(NotFound):
                await client.jobs.get("no-such-job")
            with pytest.raises(InvalidRequest) as invalid:
                await client.edit(png(), "")
            assert "instruction" in json.dumps(invalid.value.details)

    asyncio.run(main())
