"""The client's IO-free parts, fast: event-stream decoding, the retry policy, image inputs, error mapping and
webhook verification of a locally signed message."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from PIL import Image
from standardwebhooks import Webhook

from varedit_client import (
    AsyncClient,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    WebhookVerificationFailed,
    verify_webhook,
)
from varedit_client.calls import edit
from varedit_client.cli import api_error_text
from varedit_client.cli import main as cli_main
from varedit_client.errors import Conflict, from_response
from varedit_client.handle import StreamNews
from varedit_client.images import RemoteImage, Upload, prepare
from varedit_client.retry import RetryPolicy
from varedit_client.sse import SseDecoder, job_event
from varedit_client.types import JobPreviewEvent, JobProgressEvent, JobPublic, JobStatusEvent

JOB = JobPublic.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index]  # a valid job
SECRET = "whsec_" + "dGVzdC1zZWNyZXQtb2YtdGhlLXRlc3RzLTMyLWJ5dGVz"


def _response(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("GET", "http://api.test/v1/jobs/x")
    return httpx.Response(status, json=body, headers=headers, request=request)


def _envelope(code: str, details: object = None) -> dict:
    return {"error": {"code": code, "message": f"{code} happened", "details": details}}


def test_the_decoder_reads_crlf_events_skips_pings_and_joins_data_lines() -> None:
    decoder = SseDecoder()
    stream = (
        'event: progress\r\ndata: {"id": "j", "status": "running",\r\ndata:  "scale": 2, "scales": 4}\r\n\r\n'
    )
    lines = [": ping - 2026-01-01", "", *stream.split("\r\n")]
    events = [e for e in (decoder.feed(line) for line in lines) if e is not None]
    assert [(e.event, e.data) for e in events] == [
        ("progress", '{"id": "j", "status": "running",\n "scale": 2, "scales": 4}')
    ]
    progress = job_event(events[0])
    assert isinstance(progress, JobProgressEvent) and (progress.scale, progress.scales) == (2, 4)
    status = job_event(type(events[0])("status", json.dumps(JOB)))
    assert isinstance(status, JobStatusEvent) and status.job.id == JOB["id"]
    assert job_event(type(events[0])("something-newer", "{}")) is None


def test_the_policy_retries_what_is_transient_and_gives_up_on_the_rest() -> None:
    policy = RetryPolicy(max_attempts=3, backoff_s=1.0, max_backoff_s=30.0, max_retry_after_s=60.0)
    refused = ConnectionFailed("http://api.test", httpx.ConnectError("refused"))
    delays = [policy.delay(n, refused) for n in (1, 2, 3)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0 and delays[2] is None  # bounded attempts
    assert policy.delay(1, from_response(_response(404, _envelope("job_not_found")))) is None
    assert policy.delay(1, from_response(_response(422, _envelope("invalid_request")))) is None
    short = from_response(_response(429, _envelope("rate_limited"), {"Retry-After": "7"}))
    assert isinstance(short, RateLimited) and short.retry_after == 7 and policy.delay(1, short) == 7
    long = from_response(_response(503, _envelope("model_not_ready"), {"Retry-After": "600"}))
    assert isinstance(long, ServiceUnavailable) and policy.delay(1, long) is None  # not worth waiting
    in_flight = from_response(_response(409, _envelope("idempotency_request_in_flight")))
    assert isinstance(in_flight, Conflict) and policy.delay(1, in_flight) is not None
    assert policy.delay(1, from_response(_response(409, _envelope("result_not_ready")))) is None


def test_error_answers_map_to_their_classes_with_code_message_and_details() -> None:
    missing = from_response(_response(404, _envelope("job_not_found")))
    assert isinstance(missing, NotFound) and (missing.status, missing.code) == (404, "job_not_found")
    details = [{"loc": ["body", "model"], "msg": "one of ['tiny']", "input": "nope"}]
    invalid = from_response(_response(422, _envelope("invalid_request", details)))
    assert isinstance(invalid, InvalidRequest) and invalid.details == details
    assert invalid.message == "invalid_request happened"
    proxy_page = httpx.Response(
        502, text="<html>bad gateway</html>", request=httpx.Request("GET", "http://x")
    )
    assert (
        from_response(proxy_page).code == "http_error" and "bad gateway" in from_response(proxy_page).details
    )


def test_a_server_that_does_not_answer_is_not_called_unreachable() -> None:
    refused = ConnectionFailed("http://h:1", httpx.ConnectError("refused"))
    assert not refused.unanswered and str(refused).startswith("cannot reach the API at http://h:1")
    slow = ConnectionFailed("http://h:1", httpx.ReadTimeout("timed out"))
    assert slow.unanswered and str(slow).startswith("the API at http://h:1 did not answer in time")


@pytest.mark.parametrize(
    ("detail", "line"),
    [
        ({"loc": ["body", "cfg"], "msg": "too big", "input": 50}, "body.cfg: too big (got 50)"),
        ({"loc": ["body", "webhook_url"], "msg": "", "input": "x"}, 'body.webhook_url: (got "x")'),
        ({"loc": ["body", "seed"], "msg": "required"}, "body.seed: required"),
        ({"msg": "bad"}, "bad"),
    ],
)
def test_each_error_detail_is_one_tidy_line(detail: dict, line: str) -> None:
    error = from_response(_response(422, _envelope("invalid_request", [detail])))
    assert api_error_text(error).splitlines()[1] == f"  {line}"


def test_images_travel_as_uploads_or_as_urls(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(path, format="JPEG")
    assert prepare(path) == Upload("photo.jpg", path.read_bytes(), "image/jpeg")
    assert prepare(str(path)).filename == "photo.jpg"
    raw = path.read_bytes()
    assert prepare(raw) == Upload("image.jpg", raw, "image/jpeg")
    pil = prepare(Image.new("RGBA", (4, 4)))
    assert isinstance(pil, Upload) and Image.open(io.BytesIO(pil.content)).mode == "RGBA"
    assert prepare("https://example.com/cat.png") == RemoteImage("https://example.com/cat.png")
    with pytest.raises(FileNotFoundError):
        prepare(tmp_path / "missing.png")
    remote = edit(RemoteImage("https://example.com/cat.png"), "hat", {"seed": 1, "cfg": None}, "key-1")
    assert remote.json == {"instruction": "hat", "image_url": "https://example.com/cat.png", "seed": 1}
    assert remote.headers == {"Idempotency-Key": "key-1"} and remote.files is None
    form = edit(
        Upload("a.png", b"x", "image/png"), "hat", {"webhook_events": ["job.failed"], "tau": 0.5}, "k"
    )
    assert form.data == {"instruction": "hat", "webhook_events": ["job.failed"], "tau": "0.5"}


def test_a_pil_image_in_a_mode_png_cannot_hold_is_uploaded_as_the_server_would_read_it() -> None:
    """A CMYK JPEG (Pillow opens it as CMYK) is accepted as a file; opened with Pillow first, it is
    sent as its RGB form instead of failing with "cannot write mode CMYK as PNG"."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 40)).convert("CMYK").save(buffer, format="JPEG")
    cmyk = Image.open(io.BytesIO(buffer.getvalue()))
    assert cmyk.mode == "CMYK"
    sent = Image.open(io.BytesIO(prepare(cmyk).content))
    assert sent.mode == "RGB" and sent.getpixel((3, 3)) == cmyk.convert("RGB").getpixel((3, 3))
    faded = Image.new("RGBA", (8, 8), (10, 20, 30, 128)).convert("RGBa")  # premultiplied alpha
    assert Image.open(io.BytesIO(prepare(faded).content)).mode == "RGBA"
    wide = Image.new("I", (8, 8), 70000)  # 32-bit grey: read as 16-bit, clipped
    sent = Image.open(io.BytesIO(prepare(wide).content))
    assert sent.mode.startswith("I") and sent.getpixel((0, 0)) == 65535


def test_the_negative_instruction_is_sent_and_read_back(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(
            202, json={**JOB, "params": {**JOB["params"], "negative_instruction": "blurry"}}
        )

    transport = httpx.MockTransport(answer)
    sync, async_ = httpx.Client, httpx.AsyncClient
    monkeypatch.setattr(httpx, "Client", lambda **kw: sync(transport=transport, **kw))
    monkeypatch.setattr(httpx, "AsyncClient", lambda **kw: async_(transport=transport, **kw))
    path = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(path)
    # the CLI's flag, as a multipart field of Client.edit
    assert cli_main(["submit", str(path), "hat", "--negative", "blurry", "--url", "http://api.test"]) == 0
    assert capsys.readouterr().out.strip() == JOB["id"]
    assert b'name="negative_instruction"\r\n\r\nblurry\r\n' in sent[0].read()

    async def submit_url() -> JobPublic:
        async with AsyncClient("http://api.test") as client:
            job = await client.edit("https://example.com/cat.png", "hat", negative_instruction="blurry")
            return job.data

    data = asyncio.run(submit_url())
    assert json.loads(sent[1].read())["negative_instruction"] == "blurry"
    assert data.params.negative_instruction == "blurry"
    # an answer from a server that predates negatives still reads, as none
    assert JobPublic.model_validate(JOB).params.negative_instruction == ""


def test_output_dash_writes_the_image_to_stdout_not_to_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    image = b"\x89PNG the result"
    done = {**JOB, "status": "succeeded", "progress": None}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/result"):
            return httpx.Response(200, content=image, headers={"content-type": "image/png"})
        return httpx.Response(200, json=done)

    transport = httpx.MockTransport(answer)
    sync = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: sync(transport=transport, **kw))
    monkeypatch.chdir(tmp_path)
    for command in ("result", "wait"):
        assert cli_main([command, JOB["id"], "-o", "-", "--url", "http://api.test"]) == 0
        assert capsysbinary.readouterr().out == image, command  # the bytes alone, no path
    assert cli_main(["result", JOB["id"], "--url", "http://api.test"]) == 0  # stdout is the default
    assert capsysbinary.readouterr().out == image
    assert list(tmp_path.iterdir()) == []  # no file named "-"
    assert cli_main(["result", JOB["id"], "-o", "./-", "--url", "http://api.test"]) == 0  # unless asked
    assert (tmp_path / "-").read_bytes() == image
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli_main(["wait", JOB["id"], "-o", "-", "--url", "http://api.test"]) == 2  # not to a terminal
    assert b"redirect stdout" in capsysbinary.readouterr().err


def test_a_locally_signed_webhook_verifies_and_a_tampered_one_does_not() -> None:
    body = json.dumps({"type": "job.succeeded", "timestamp": "2026-01-01T00:00:00Z", "data": JOB}).encode()
    now = datetime.now(UTC)
    headers = {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(int(now.timestamp())),
        "Webhook-Signature": Webhook(SECRET).sign("msg_1", now, body.decode()),
    }
    event = verify_webhook(body, headers, SECRET)
    assert event.type == "job.succeeded" and event.data.id == JOB["id"]
    with pytest.raises(WebhookVerificationFailed, match="signature"):
        verify_webhook(body.replace(b"succeeded", b"failed", 1), headers, SECRET)
    stale = {**headers, "Webhook-Timestamp": str(int(now.timestamp()) - 3600)}
    with pytest.raises(WebhookVerificationFailed):
        verify_webhook(body, stale, SECRET)
    with pytest.raises(ValueError):
        verify_webhook(body, headers, [])


def test_reopened_streams_pass_on_each_scale_and_preview_once_per_run() -> None:
    news = StreamNews()

    def status(value: str) -> JobStatusEvent:
        return JobStatusEvent(job=JobPublic.model_validate({**JOB, "status": value}))

    def progress(k: int) -> JobProgressEvent:
        return JobProgressEvent(id=JOB["id"], status="running", scale=k, scales=4)

    def preview(k: int) -> JobPreviewEvent:
        return JobPreviewEvent(id=JOB["id"], scale=k, scales=4, url=f"/p/{k}")

    def passed(events: list) -> list[str]:
        def name(e: JobStatusEvent | JobProgressEvent | JobPreviewEvent) -> str:
            if isinstance(e, JobStatusEvent):
                return f"status:{e.job.status}"
            return f"{'progress' if isinstance(e, JobProgressEvent) else 'preview'}:{e.scale}"

        return [name(e) for e in events if news(e)]

    first = [status("running"), progress(1), preview(1), progress(2), preview(2)]
    assert passed(first) == ["status:running", "progress:1", "preview:1", "progress:2", "preview:2"]
    reopened = [status("running"), progress(1), preview(1), progress(2), preview(2), progress(3), preview(3)]
    assert passed(reopened) == ["progress:3", "preview:3"]
    # the worker was lost: the job runs again from scale 1, and that run's scales and previews are news
    retry = [status("queued"), status("running"), progress(1), preview(1)]
    assert passed(retry) == ["status:queued", "status:running", "progress:1", "preview:1"]
