"""POST /v1/edits: accepted jobs are stored, committed, then published; bad input leaves no trace."""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import zlib
from datetime import timedelta
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from api.main import create_app
from jobs import idempotency, transitions
from jobs.db import session_scope
from jobs.models import IdempotencyRecord, Job, JobStatus
from jobs.reapers import stranded_queued
from jobs.settings import Settings
from jobs.workers import ModelFacts
from tests.conftest import ApiHarness, live_server, record_tiny_facts, wait_for


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares huge dimensions but carries no pixel data (a decompression-bomb probe)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def post_multipart(
    harness: ApiHarness, image: bytes = b"", headers: dict[str, str] | None = None, **fields: Any
):
    data = {"instruction": "make the sky purple", **fields}
    files = {"image": ("in.png", image or image_bytes(), "application/octet-stream")}
    return harness.client.post("/v1/edits", data=data, files=files, headers=headers or {})


def post_json(harness: ApiHarness, image: bytes = b"", headers: dict[str, str] | None = None, **fields: Any):
    body = {
        "instruction": "make the sky purple",
        "image_base64": base64.b64encode(image or image_bytes()).decode(),
    }
    return harness.client.post("/v1/edits", json={**body, **fields}, headers=headers or {})


def count_jobs(harness: ApiHarness) -> int:
    with harness.sessions() as session:
        return session.scalar(select(func.count()).select_from(Job))


def stored_objects(harness: ApiHarness) -> list[str]:
    return sorted(
        str(p.relative_to(harness.storage.root)) for p in harness.storage.root.rglob("*") if p.is_file()
    )


def test_multipart_edit_is_stored_committed_then_published(harness: ApiHarness) -> None:
    image = image_bytes()
    response = post_multipart(harness, image, seed="42", cfg="4.5", tau="0.5")
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}" == job["urls"]["self"]
    assert job["status"] == "queued" and job["instruction"] == "make the sky purple"
    assert job["params"] == {
        "model": "tiny",
        "resolution": 32,
        "seed": 42,
        "cfg": 4.5,
        "tau": 0.5,
        "previews": False,
        "negative_instruction": "",
    }
    assert (job["attempts"], job["progress"], job["error"], job["result"], job["webhook"]) == (
        0,
        None,
        None,
        None,
        None,
    )
    assert job["urls"]["result"] == f"/v1/jobs/{job['id']}/result"
    # Published once, after the commit: a fresh session already saw the queued row.
    assert harness.publisher.published == [(job["id"], "tiny")]
    assert harness.publisher.status_seen == ["queued"]
    assert harness.storage.get(f"jobs/{job['id']}/source.png") == image


def test_json_edit_fills_defaults_and_draws_a_seed(harness: ApiHarness) -> None:
    # The defaults are what the model's worker reported from its folder, not a table of the API's.
    record_tiny_facts(harness.sessions, ModelFacts("tiny", [64, 32], {"cfg": 2.5, "tau": 0.35}))
    response = post_json(harness, image_bytes("JPEG"))
    assert response.status_code == 202, response.text
    job = response.json()
    params = harness.settings
    assert (job["params"]["cfg"], job["params"]["tau"], job["params"]["resolution"]) == (2.5, 0.35, 64)
    assert isinstance(job["params"]["seed"], int) and 0 <= job["params"]["seed"] <= params.seed_max
    assert harness.storage.exists(f"jobs/{job['id']}/source.jpg")
    with harness.sessions() as session:
        assert session.get(Job, job["id"]).source_content_type == "image/jpeg"


@pytest.mark.parametrize("post", [post_multipart, post_json])
@pytest.mark.parametrize("instruction", ["", "   "])
def test_an_empty_instruction_is_called_empty(harness: ApiHarness, post: Any, instruction: str) -> None:
    # before, an empty form field was "Field required", as if the client had not sent it
    error = post(harness, instruction=instruction).json()["error"]
    assert (error["code"], error["message"]) == ("invalid_request", "instruction must not be empty")
    assert count_jobs(harness) == 0


@pytest.mark.parametrize("post", [post_multipart, post_json])
def test_a_negative_instruction_is_stored_and_shown(harness: ApiHarness, post: Any) -> None:
    response = post(harness, negative_instruction="  blurry, low quality ")
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["params"]["negative_instruction"] == "blurry, low quality"
    with harness.sessions() as session:
        assert session.get(Job, job["id"]).negative_instruction == "blurry, low quality"
    # as long as an instruction may be, and the same idempotent request with another negative is refused
    assert post(harness, negative_instruction="x" * 1000).status_code == 202
    key = {"Idempotency-Key": "negative-1"}
    assert post(harness, headers=key, negative_instruction="a").status_code == 202
    reused = post(harness, headers=key, negative_instruction="b")
    assert (reused.status_code, reused.json()["error"]["code"]) == (422, "idempotency_key_reused")
    error = post(harness, negative_instruction="x" * 1001).json()["error"]
    assert error["code"] == "invalid_request" and "at most 1000 characters" in error["message"]
    assert error["details"][0]["loc"] == ["body", "negative_instruction"]


def test_operator_override_adjusts_the_reported_defaults(
    make_settings, sqlite_url: str, redis_url: str
) -> None:
    override = {"tiny": {"cfg": 4.0, "resolutions": [32]}}
    settings = make_settings(database_url=sqlite_url, broker_url=redis_url, model_overrides=override)
    with ApiHarness(settings) as harness:
        record_tiny_facts(harness.sessions, ModelFacts("tiny", [64, 32], {"cfg": 2.5, "tau": 0.35}))
        job = post_json(harness, image_bytes()).json()
        assert (job["params"]["cfg"], job["params"]["tau"], job["params"]["resolution"]) == (4.0, 0.35, 32)
        refused = post_json(harness, image_bytes(), resolution=64)
        assert refused.status_code == 422 and refused.json()["error"]["details"][0]["msg"] == "one of [32]"


def test_a_model_default_outside_the_accepted_range_is_named_as_the_models(
    make_settings, sqlite_url: str, redis_url: str
) -> None:
    # the range is the deployment's, the default the model folder's: only known once a worker reported it
    settings = make_settings(database_url=sqlite_url, broker_url=redis_url, cfg_min=5.0)
    with ApiHarness(settings) as harness:
        record_tiny_facts(harness.sessions, ModelFacts("tiny", [64, 32], {"cfg": 2.5, "tau": 0.35}))
        refused = post_json(harness, image_bytes())
        assert refused.status_code == 422
        error = refused.json()["error"]
        # before: "cfg must be between 5.0 and 10.0", about a cfg this request never sent
        assert error["message"] == (
            "cfg must be between 5.0 and 10.0: send one, as model tiny's default cfg (2.5) lies outside "
            "this deployment's range"
        )
        assert error["details"][0]["loc"] == ["body", "cfg"]
        assert post_json(harness, image_bytes(), cfg=6.0).status_code == 202


def test_an_override_narrows_the_reported_resolutions_and_never_widens_them(
    make_settings, sqlite_url: str, redis_url: str
) -> None:
    # a side the workers cannot run (16: too small for tiny's VAE) is dropped; one that leaves none is
    # ignored, so the API never accepts jobs the workers would fail
    for chosen, served in (([16, 32], [32]), ([16], [64, 32])):
        override = {"tiny": {"resolutions": chosen}}
        settings = make_settings(database_url=sqlite_url, broker_url=redis_url, model_overrides=override)
        with ApiHarness(settings) as harness:
            record_tiny_facts(harness.sessions, ModelFacts("tiny", [64, 32], {"cfg": 2.5, "tau": 0.35}))
            refused = post_json(harness, image_bytes(), resolution=16)
            assert refused.status_code == 422, chosen
            assert refused.json()["error"]["details"][0]["msg"] == f"one of {served}"


def test_a_model_no_worker_has_reported_is_not_ready(make_settings, sqlite_url: str, redis_url: str) -> None:
    settings = make_settings(database_url=sqlite_url, broker_url=redis_url, models=["tiny", "other"])
    with ApiHarness(settings) as harness:
        before = count_jobs(harness)
        response = post_json(harness, image_bytes(), model="other")
        assert response.status_code == 503 and response.headers["retry-after"] == "10"
        assert response.json()["error"]["code"] == "model_not_ready"
        assert count_jobs(harness) == before and harness.publisher.published == []


def test_a_complete_override_serves_a_model_before_any_worker(
    make_settings, sqlite_url: str, redis_url: str
) -> None:
    override = {"other": {"resolutions": [512], "cfg": 3.0, "tau": 0.1}}
    settings = make_settings(
        database_url=sqlite_url, broker_url=redis_url, models=["tiny", "other"], model_overrides=override
    )
    with ApiHarness(settings) as harness:
        job = post_json(harness, image_bytes(), model="other").json()
        assert job["params"] | {"seed": 0} == {
            "model": "other",
            "resolution": 512,
            "seed": 0,
            "cfg": 3.0,
            "tau": 0.1,
            "previews": False,
            "negative_instruction": "",
        }


def test_webp_and_webhook_fields_are_accepted(harness: ApiHarness) -> None:
    response = post_json(
        harness, image_bytes("WEBP"), webhook_url="https://example.com/hook", webhook_events=["job.succeeded"]
    )
    assert response.status_code == 202, response.text
    assert response.json()["webhook"] == {"url": "https://example.com/hook", "events": ["job.succeeded"]}


def test_an_upper_case_webhook_scheme_is_accepted_and_stored_lower_case(harness: ApiHarness) -> None:
    response = post_json(harness, image_bytes(), webhook_url="HTTPS://example.com/Hook")
    assert response.status_code == 202, response.text
    assert response.json()["webhook"]["url"] == "https://example.com/Hook"


def test_webhook_url_needs_a_configured_secret(api_settings: Settings) -> None:
    with ApiHarness(api_settings.model_copy(update={"webhook_secrets": []})) as harness:
        response = post_json(harness, image_bytes(), webhook_url="https://example.com/hook")
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "webhooks_not_configured"
        assert harness.publisher.published == []


BAD_INPUTS = [
    ("not an image", dict(image=b"hello, this is text"), 422, "invalid_image"),
    ("truncated png", dict(image=image_bytes()[:60]), 422, "invalid_image"),
    ("gif", dict(image=image_bytes("GIF")), 415, "unsupported_image_format"),
    ("too many pixels", dict(image=png_header_only(5000, 5000)), 422, "invalid_image"),
    ("empty instruction", dict(instruction="   "), 422, "invalid_request"),
    ("long instruction", dict(instruction="x" * 1001), 422, "invalid_request"),
    ("long negative instruction", dict(negative_instruction="x" * 1001), 422, "invalid_request"),
    ("NUL in negative instruction", dict(negative_instruction="a\x00b"), 422, "invalid_request"),
    ("NUL in instruction", dict(instruction="a\x00b"), 422, "invalid_request"),
    ("cfg too high", dict(cfg="11"), 422, "invalid_request"),
    ("cfg not a number", dict(cfg="lots"), 422, "invalid_request"),
    ("tau zero", dict(tau="0"), 422, "invalid_request"),
    ("negative seed", dict(seed="-1"), 422, "invalid_request"),
    ("seed too large", dict(seed=str(2**31)), 422, "invalid_request"),
    ("unknown model", dict(model="huge"), 422, "invalid_request"),
    ("wrong resolution", dict(resolution="512"), 422, "invalid_request"),
    ("zero resolution", dict(resolution="0"), 422, "invalid_request"),  # not "the default"
    ("unknown field", dict(colour="red"), 422, "invalid_request"),
    ("bad webhook url", dict(webhook_url="ftp://x"), 422, "invalid_request"),
    ("upper-case ftp webhook", dict(webhook_url="FTP://x"), 422, "invalid_request"),
    ("upper-case loopback webhook", dict(webhook_url="HTTP://127.0.0.1:9/h"), 422, "webhook_url_not_allowed"),
    ("loopback webhook", dict(webhook_url="http://127.0.0.1:8080/hook"), 422, "webhook_url_not_allowed"),
    ("metadata webhook", dict(webhook_url="http://169.254.169.254/latest"), 422, "webhook_url_not_allowed"),
    ("private v6 webhook", dict(webhook_url="http://[fd00::1]/hook"), 422, "webhook_url_not_allowed"),
    ("webhook with password", dict(webhook_url="https://u:p@example.com/"), 422, "webhook_url_not_allowed"),
    ("non-ASCII webhook", dict(webhook_url="https://example.com/caf\u00e9"), 422, "webhook_url_not_allowed"),
    ("webhook events without a url", dict(webhook_events="job.succeeded"), 422, "invalid_request"),
]


@pytest.mark.parametrize(("case", "change", "status", "code"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_multipart_input_stores_and_queues_nothing(
    harness: ApiHarness, case: str, change: dict[str, Any], status: int, code: str
) -> None:
    response = post_multipart(harness, **change)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert count_jobs(harness) == 0
    assert stored_objects(harness) == []
    assert harness.publisher.published == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"instruction": "x", "image_base64": "%%%not base64"}, 422, "invalid_image"),
        ({"instruction": "x"}, 422, "invalid_request"),
        (
            {"instruction": "x", "image_url": "https://example.com/a.png", "image_base64": "AAAA"},
            422,
            "invalid_request",
        ),
        ({"instruction": "x", "image_url": "http://127.0.0.1:9/a.png"}, 422, "image_url_not_allowed"),
        (
            {"instruction": "x", "image_url": "https://example.com/a.png", "negative_instruction": 5},
            422,
            "invalid_request",
        ),
        ({"instruction": "x", "image_url": "http://169.254.169.254/latest"}, 422, "image_url_not_allowed"),
        ({"instruction": "x", "image_url": "file:///etc/passwd"}, 422, "image_url_not_allowed"),
        ({"image_base64": base64.b64encode(image_bytes()).decode()}, 422, "invalid_request"),
        (  # no events is not "all events"
            {
                "instruction": "x",
                "image_base64": base64.b64encode(image_bytes()).decode(),
                "webhook_url": "https://example.com/hook",
                "webhook_events": [],
            },
            422,
            "invalid_request",
        ),
        (["not", "an", "object"], 422, "invalid_request"),
    ],
)
def test_bad_json_input_stores_and_queues_nothing(
    harness: ApiHarness, body: Any, status: int, code: str
) -> None:
    response = harness.client.post("/v1/edits", json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert count_jobs(harness) == 0 and stored_objects(harness) == [] and harness.publisher.published == []


@pytest.mark.parametrize("field", ["instruction", "negative_instruction", "model"])
def test_a_lone_surrogate_in_a_text_field_is_refused_with_422(harness: ApiHarness, field: str) -> None:
    # JSON may escape half of a UTF-16 pair ("\ud800"): Python reads it into a str that no database,
    # and no UTF-8 answer, can hold. It must be a 422 like any other bad text, not a 500.
    fields = {"instruction": "make it blue", "image_base64": base64.b64encode(image_bytes()).decode()}
    fields[field] = "red \ud800 circle"
    body = json.dumps(fields)  # ensure_ascii: the surrogate travels as the escape \ud800
    response = harness.client.post("/v1/edits", content=body, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")
    assert response.json()["error"]["details"][0]["loc"] == ["body", field]
    assert count_jobs(harness) == 0 and stored_objects(harness) == [] and harness.publisher.published == []


def test_an_error_echoing_a_lone_surrogate_still_renders() -> None:
    from api.errors import error_response

    response = error_response(
        422, "invalid_request", "bad \ud800", details=[{"input": "x\udc00", "\ud800": 1}]
    )
    assert json.loads(response.body)["error"] == {
        "code": "invalid_request",
        "message": "bad \\ud800",
        "details": [{"input": "x\\udc00", "\\ud800": 1}],
    }


MALFORMED_FORMS = [
    ("no boundary", b"--x\r\n", "multipart/form-data"),
    ("part without a name", b"--B\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--B--\r\n", None),
    (
        "two files",
        b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nA\r\n'
        b'--B\r\nContent-Disposition: form-data; name="instruction"; filename="i.txt"\r\n\r\nI\r\n--B--\r\n',
        None,
    ),
    (
        "33 fields",
        b"".join(b'--B\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i for i in range(33)),
        None,
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type"), [c[1:] for c in MALFORMED_FORMS], ids=[c[0] for c in MALFORMED_FORMS]
)
def test_a_malformed_form_is_invalid_request(
    harness: ApiHarness, body: bytes, content_type: str | None
) -> None:
    # The documented answer to a body that cannot be read as the request (like unparseable JSON), not
    # the framework's undocumented 400.
    headers = {"content-type": content_type or "multipart/form-data; boundary=B"}
    response = harness.client.post("/v1/edits", content=body, headers=headers)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")
    assert response.json()["error"]["message"]
    assert count_jobs(harness) == 0 and stored_objects(harness) == [] and harness.publisher.published == []


@pytest.mark.parametrize("field", ["instruction", "negative_instruction", "model"])
def test_a_form_field_that_is_not_utf8_is_refused_with_422(harness: ApiHarness, field: str) -> None:
    # Before, such a field was read as latin-1 and stored: "\xff\xfe" became "ÿþ", text nobody sent.
    fields: dict[str, bytes] = {"instruction": b"make it blue", field: b"red \xff\xfe circle"}
    files = {"image": ("in.png", image_bytes(), "image/png")}
    response = harness.client.post("/v1/edits", data=fields, files=files)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert response.json()["error"]["details"][0]["loc"] == ["body", field]
    assert field in response.json()["error"]["message"]
    assert count_jobs(harness) == 0 and stored_objects(harness) == [] and harness.publisher.published == []
    # Non-ASCII text sent as UTF-8 is text like any other.
    sent = "café ÿþ → blue"
    accepted = harness.client.post("/v1/edits", data={"instruction": sent.encode()}, files=files)
    assert accepted.status_code == 202 and accepted.json()["instruction"] == sent


@pytest.mark.parametrize(
    ("field", "value"),
    [("image_url", "https://example.com/a.png"), ("image_base64", base64.b64encode(image_bytes()).decode())],
)
def test_a_form_with_a_json_image_field_is_refused(harness: ApiHarness, field: str, value: str) -> None:
    # A form sends its image as the `image` file; before, these fields were ignored without a word (next
    # to a file) or answered as a missing file.
    next_to_a_file = post_multipart(harness, **{field: value})
    alone = harness.client.post("/v1/edits", files={"instruction": (None, "x"), field: (None, value)})
    for response in (next_to_a_file, alone):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_request"
        assert response.json()["error"]["details"][0]["loc"] == ["body", field]
        assert field in response.json()["error"]["message"]
    assert count_jobs(harness) == 0 and stored_objects(harness) == [] and harness.publisher.published == []


def test_missing_image_file_is_invalid(harness: ApiHarness) -> None:
    response = harness.client.post("/v1/edits", data={"instruction": "x"}, files={"other": ("a", b"b")})
    assert response.json()["error"]["code"] == "invalid_request"


def test_other_content_types_are_unsupported(harness: ApiHarness) -> None:
    response = harness.client.post("/v1/edits", content=b"x", headers={"content-type": "text/plain"})
    assert (response.status_code, response.json()["error"]["code"]) == (415, "unsupported_media_type")


def test_upload_over_the_byte_limit_is_refused(make_settings, sqlite_url: str, redis_url: str) -> None:
    settings = make_settings(database_url=sqlite_url, broker_url=redis_url, max_upload_bytes=1000)
    with ApiHarness(settings) as harness:
        response = post_multipart(harness, image_bytes(size=(64, 64)) + b"\0" * 2000)
        assert (response.status_code, response.json()["error"]["code"]) == (413, "payload_too_large")
        response = post_json(harness, b"\0" * 5000)
        assert response.status_code == 413
        assert count_jobs(harness) == 0 and stored_objects(harness) == []


def test_idempotent_retry_replays_the_first_response(harness: ApiHarness) -> None:
    image = image_bytes()
    first = post_multipart(harness, image, headers={"Idempotency-Key": "k1"}, seed="1")
    again = post_multipart(harness, image, headers={"Idempotency-Key": "k1"}, seed="1")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert again.headers["location"] == first.headers["location"]
    assert count_jobs(harness) == 1 and len(harness.publisher.published) == 1


def test_idempotency_key_reused_with_other_body_is_refused(harness: ApiHarness) -> None:
    assert post_multipart(harness, headers={"Idempotency-Key": "k2"}, seed="1").status_code == 202
    response = post_multipart(harness, headers={"Idempotency-Key": "k2"}, seed="2")
    assert (response.status_code, response.json()["error"]["code"]) == (422, "idempotency_key_reused")
    assert count_jobs(harness) == 1


@pytest.mark.parametrize("key", ["", "k" * 256], ids=["empty", "256 characters"])
def test_an_unusable_idempotency_key_is_refused(harness: ApiHarness, key: str) -> None:
    response = post_multipart(harness, headers={"Idempotency-Key": key})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")
    assert "idempotency-key" in response.text.lower()
    assert count_jobs(harness) == 0 and stored_objects(harness) == []


def test_idempotency_key_in_flight_answers_409(harness: ApiHarness) -> None:
    image = image_bytes()
    # Another request holds the key: reserved with this request's fingerprint, not yet completed.
    from jobs.service import request_fingerprint

    fingerprint = request_fingerprint({"instruction": "make the sky purple", "priority": 0}, image)
    with session_scope(harness.sessions) as session:
        assert idempotency.reserve(session, "anonymous", "k3", fingerprint) is None
    response = post_multipart(harness, image, headers={"Idempotency-Key": "k3"})
    assert (response.status_code, response.json()["error"]["code"]) == (409, "idempotency_request_in_flight")
    assert count_jobs(harness) == 0 and stored_objects(harness) == []


def test_publish_failure_still_accepts_and_dispatcher_republishes(harness: ApiHarness) -> None:
    harness.publisher.fail = True
    response = post_multipart(harness)
    assert response.status_code == 202
    job_id = response.json()["id"]
    with harness.sessions() as session:
        job = session.get(Job, job_id)
        assert job.status is JobStatus.QUEUED
        later = job.dispatched_at + timedelta(seconds=301)
    with session_scope(harness.sessions) as session:
        assert [t.job_id for t in stranded_queued(session, 300, now=later)] == [job_id]


def test_a_redis_outage_does_not_stop_submissions(api_settings: Settings) -> None:
    with ApiHarness(api_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})) as harness:
        harness.publisher.fail = True  # the broker is down for the publish too
        response = post_multipart(harness)
        assert response.status_code == 202, response.text  # the rate limit fails open; the outbox holds it
        assert count_jobs(harness) == 1


def test_storage_failure_leaves_nothing_and_frees_the_key(harness: ApiHarness) -> None:
    real_put = harness.storage.put

    def broken_put(*args: Any) -> None:
        from jobs.errors import StorageError

        raise StorageError("disk full")

    harness.storage.put = broken_put
    response = post_multipart(harness, headers={"Idempotency-Key": "k4"})
    assert (response.status_code, response.json()["error"]["code"]) == (503, "storage_unavailable")
    assert count_jobs(harness) == 0 and harness.publisher.published == []
    with harness.sessions() as session:
        assert session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
    harness.storage.put = real_put
    assert post_multipart(harness, headers={"Idempotency-Key": "k4"}).status_code == 202


def test_prefer_wait_answers_with_the_finished_job(harness: ApiHarness) -> None:
    # the job does not finish here (no worker): after the wait the answer is 202 with the queued job
    waited = harness.client.post(
        "/v1/edits",
        data={"instruction": "make it blue"},
        files={"image": ("a.png", image_bytes(), "image/png")},
        headers={"Prefer": "wait=1"},
    )
    assert waited.status_code == 202 and waited.json()["status"] == "queued"
    assert waited.headers["preference-applied"] == "wait=1"


def test_prefer_wait_answers_200_once_the_job_has_ended(harness: ApiHarness) -> None:
    # a job that has ended when the wait looks (canceled by the publisher hook, as a worker could end it)
    def end_it(job_id: str, model: str) -> None:
        with session_scope(harness.sessions) as session:
            transitions.cancel(session, job_id)

    harness.publisher.on_publish = end_it
    answer = harness.client.post(
        "/v1/edits",
        data={"instruction": "make it blue"},
        files={"image": ("a.png", image_bytes(), "image/png")},
        headers={"Prefer": "wait=30"},
    )
    assert answer.status_code == 200 and answer.json()["status"] == "canceled", answer.text


def test_a_prefer_wait_too_long_for_int_is_the_longest_wait(harness: ApiHarness) -> None:
    # int() refuses more than 4300 digits: the header was a 500 after the job had been accepted.
    harness.publisher.on_publish = lambda job_id, model: harness.client.post(f"/v1/jobs/{job_id}/cancel")
    headers = {"Prefer": "wait=" + "9" * 5000}
    answer = post_multipart(harness, headers=headers)
    assert answer.status_code == 200 and answer.json()["status"] == "canceled", answer.text
    assert answer.headers["preference-applied"] == f"wait={harness.settings.max_wait_s}"
    assert count_jobs(harness) == 1


def test_json_nested_too_deep_to_parse_is_invalid_request(harness: ApiHarness) -> None:
    # Python's JSON parser raises RecursionError, not ValueError, on deep nesting: it was a 500.
    deep = "[" * 100_000 + "]" * 100_000
    for body in (deep, '{"instruction": ' + deep + "}"):
        headers = {"content-type": "application/json"}
        response = harness.client.post("/v1/edits", content=body, headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")
    assert count_jobs(harness) == 0 and stored_objects(harness) == [] and harness.publisher.published == []


@pytest.mark.parametrize("field", ["seed", "cfg", "tau", "priority", "resolution", "start_timeout_s"])
def test_a_json_boolean_is_not_a_number(harness: ApiHarness, field: str) -> None:
    # Pydantic's lax mode read true as 1: "priority": true was a priority-1 job (403 for a key without
    # the right), "seed": true seed 1.
    response = post_json(harness, **{field: True})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")
    assert response.json()["error"]["details"][0]["loc"] == ["body", field]
    assert count_jobs(harness) == 0 and stored_objects(harness) == [] and harness.publisher.published == []


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=B"])
def test_a_client_gone_before_its_body_ended_is_no_server_error(
    api_settings: Settings, content_type: str
) -> None:
    # Starlette raises ClientDisconnect where the body stops: it was logged as an unhandled error and
    # counted as a 500, so any client could fill the error log and the 5xx rate by hanging up.
    app = create_app(api_settings)
    with live_server(app) as port:
        record_tiny_facts(app.state.sessions)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            head = f"POST /v1/edits HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            conn.sendall(head.encode() + b"Content-Length: 9999\r\n\r\n--B\r\n" + b"x" * 100)
        labels = {"method": "POST", "route": "/v1/edits"}

        def counted(status: int) -> float | None:
            return app.state.metrics.registry.get_sample_value(
                "varedit_http_requests_total", {**labels, "status": str(status)}
            )

        assert wait_for(lambda: counted(400) or counted(500), "the request to be counted", 10) == 1
        assert counted(500) is None
        with app.state.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Job)) == 0
