"""The API's requests and answers without IO: both clients build the same `Call` and parse the same way,
and differ only in how they send it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from varedit_client.images import RemoteImage, Upload
from varedit_client.types import JobPublic

MAX_WAIT_S = 60  # the server's cap on `Prefer: wait=N`
MAX_PAGE_SIZE = 100  # the largest `limit` a list request may ask for
TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})


@dataclass(frozen=True)
class Call:
    """One request. ``hold_s``: how long the server may hold the answer (a long poll); the read timeout is
    extended by that much. ``read_timeout``: the read timeout itself (an event stream's silence limit).
    ``anonymous``: sent without the API key (a presigned storage URL must not see it)."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    data: dict[str, Any] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    hold_s: float = 0.0
    read_timeout: float | None = None
    anonymous: bool = False

    def request(self, http: httpx.Client | httpx.AsyncClient, timeout: httpx.Timeout) -> httpx.Request:
        if self.hold_s or self.read_timeout is not None:
            read = self.read_timeout if self.read_timeout is not None else (timeout.read or 0.0) + self.hold_s
            timeout = httpx.Timeout(
                connect=timeout.connect, read=read, write=timeout.write, pool=timeout.pool
            )
        request = http.build_request(
            self.method,
            self.path,
            params=self.params,
            headers=self.headers,
            json=self.json,
            data=self.data,
            files=self.files,
            timeout=timeout,
        )
        if self.anonymous:
            request.headers.pop("Authorization", None)
        return request


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}"


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def edit(
    image: Upload | RemoteImage, instruction: str, fields: Mapping[str, Any], idempotency_key: str
) -> Call:
    """``POST /v1/edits``: JSON with ``image_url`` for a remote image, else multipart. Fields left as None
    are not sent, so the server applies the model's recommended values."""
    fields = {k: v for k, v in fields.items() if v is not None}
    headers = {"Idempotency-Key": idempotency_key}
    if isinstance(image, RemoteImage):
        body = {"instruction": instruction, "image_url": image.url, **fields}
        return Call("POST", "/v1/edits", headers=headers, json=body)
    data: dict[str, Any] = {"instruction": instruction}
    for name, value in fields.items():
        if isinstance(value, list | tuple):
            data[name] = [_form_value(v) for v in value]
        else:
            data[name] = _form_value(value)
    files = {"image": (image.filename, image.content, image.content_type)}
    return Call("POST", "/v1/edits", headers=headers, data=data, files=files)


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def get_job(job_id: str, wait_s: float = 0) -> Call:
    """``GET /v1/jobs/{id}``; ``wait_s`` > 0 asks the server to hold the answer until the job ends."""
    wait = int(min(max(wait_s, 0), MAX_WAIT_S))
    if wait <= 0:
        return Call("GET", job_path(job_id))
    return Call("GET", job_path(job_id), headers={"Prefer": f"wait={wait}"}, hold_s=wait)


def list_jobs(status: str | None, page_size: int, cursor: str | None) -> Call:
    params: dict[str, Any] = {"limit": page_size}
    if status is not None:
        params["status"] = str(status)
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/v1/jobs", params=params)


def cancel(job_id: str) -> Call:
    return Call("POST", f"{job_path(job_id)}/cancel")


def result(job_id: str) -> Call:
    return Call("GET", f"{job_path(job_id)}/result")


def preview(job_id: str, scale: int) -> Call:
    return Call("GET", f"{job_path(job_id)}/previews/{scale}")


def events(job_id: str, read_timeout: float) -> Call:
    """The event stream; the server pings every 15 s, so a longer silence means the stream is dead."""
    headers = {"Accept": "text/event-stream"}
    return Call("GET", f"{job_path(job_id)}/events", headers=headers, read_timeout=read_timeout)


def job(response: httpx.Response) -> JobPublic:
    return JobPublic.model_validate_json(response.content)


def page(response: httpx.Response) -> tuple[list[JobPublic], str | None]:
    body = response.json()
    return [JobPublic.model_validate(j) for j in body["data"]], body.get("next_cursor")


def presigned(response: httpx.Response) -> Call | None:
    """For a result kept in S3 the API answers 307 to a short-lived presigned URL: the call that fetches
    it (without the API key), or None when the answer is the image itself."""
    if response.is_redirect and "location" in response.headers:
        return Call("GET", str(response.url.join(response.headers["location"])), anonymous=True)
    return None
