"""``POST /v1/edits``: accept an edit job."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker

from api.deps import FactsDep, PublisherDep, SessionsDep, SettingsDep, StorageDep, WatcherDep
from api.errors import TooManyWaits
from api.limits import WriterDep
from api.schemas import EditCreate, JobPublic, error_responses, job_path, render_job
from api.validation import build_spec, inspect_image, read_edit_request
from api.waiting import held_until_done, preferred_wait_s, take_wait
from jobs.queue import Publisher
from jobs.service import Submitted, request_fingerprint, submit_edit
from jobs.settings import Settings
from jobs.storage import Storage
from jobs.transitions import EditSpec

router = APIRouter(prefix="/v1", tags=["edits"])

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["image", "instruction"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP"},
        **{
            name: field
            for name, field in EditCreate.model_json_schema()["properties"].items()
            if name not in ("image_base64", "image_url")
        },
    },
}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            "application/json": {
                "schema": {"$ref": "#/components/schemas/EditCreate"},
                "examples": {
                    "inline": {"value": EditCreate.model_config["json_schema_extra"]["examples"][0]}
                },
            },
        },
    }
}


@router.post(
    "/edits",
    status_code=202,
    response_model=JobPublic,
    openapi_extra=_REQUEST_BODY,
    responses={
        200: {"model": JobPublic, "description": "with `Prefer: wait=N`: the job, finished within N s"},
        202: {"headers": {"Location": {"schema": {"type": "string"}, "description": "the job's URL"}}},
        **error_responses(401, 403, 408, 409, 413, 415, 422, 429, 503),
    },
)
async def create_edit(
    request: Request,
    principal: WriterDep,
    settings: SettingsDep,
    sessions: SessionsDep,
    storage: StorageDep,
    publisher: PublisherDep,
    watcher: WatcherDep,
    facts: FactsDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
    prefer: Annotated[
        str | None,
        Header(description="`wait=N` (N <= 60): answer with the finished job if it ends within N s"),
    ] = None,
) -> JSONResponse:
    """Submit an edit: the image and instruction are stored and the job is queued for a GPU worker.
    With `Prefer: wait=N` the answer waits for the job: 200 with the finished job when it ends within
    N seconds, else 202 with the job as it is then (poll, stream or wait on it as usual)."""
    wait_s = preferred_wait_s(prefer, settings)  # before anything is stored: nothing after may fail
    served = facts.fresh() or await run_in_threadpool(facts.load)
    fields, image = await read_edit_request(request, settings, principal.id)
    spec = build_spec(
        fields, settings, served, signs_webhooks=principal.signs_webhooks, max_priority=principal.max_priority
    )
    submitted = await run_in_threadpool(
        _accept,
        image,
        settings,
        sessions,
        storage,
        publisher,
        spec,
        owner=principal.id,
        max_in_flight=principal.max_in_flight or settings.max_in_flight,
        idempotency_key=idempotency_key,
        fingerprint=request_fingerprint(
            fields.model_dump(exclude={"image_base64"}, exclude_none=True), image
        ),
    )
    headers = {"Location": job_path(submitted.job_id)}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    if wait_s is None:
        return JSONResponse(submitted.body, status_code=submitted.status_code, headers=headers)
    try:
        slot = take_wait(principal.id, settings)
    except TooManyWaits:  # the job is accepted all the same: answered now, the preference not applied
        return JSONResponse(submitted.body, status_code=submitted.status_code, headers=headers)
    latest = await held_until_done(request, sessions, watcher, submitted.job_id, principal.id, wait_s, slot)
    headers["Preference-Applied"] = f"wait={wait_s}"
    status = 200 if latest.status.terminal else submitted.status_code
    return JSONResponse(render_job(latest), status_code=status, headers=headers)


def _accept(
    image: bytes,
    settings: Settings,
    sessions: sessionmaker[Session],
    storage: Storage,
    publisher: Publisher,
    spec: EditSpec,
    **submit: Any,
) -> Submitted:
    """Check the image, then submit (`submit_edit`'s keyword arguments in ``submit``): both blocking
    steps in one trip to the thread pool, which costs about as much CPU as checking a small image."""
    content_type = inspect_image(image, settings)
    return submit_edit(
        sessions, storage, publisher, spec=spec, image=image, content_type=content_type, **submit
    )
