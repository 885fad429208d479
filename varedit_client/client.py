"""An HTTP client for the VAREdit Serve API: httpx only, no torch and no platform imports.

from varedit_client import Client
with Client("http://127.0.0.1:8000") as client:
    job = client.submit(open("photo.png", "rb").read(), "make the sky purple")
    job = client.wait(job["id"])
    png = client.result(job["id"])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = {"succeeded", "failed", "canceled", "expired"}
WAIT_CHUNK_S = 30  # `Prefer: wait=N` per request; the server holds the request until done or N s


class ApiError(Exception):
    """An error answer of the API: its HTTP ``status`` and ``body`` (the error envelope)."""

    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status} {error.get('code', '')}: {error.get('message', body)}")
        self.status = status
        self.body = body


class Client:
    """Submit edits, follow jobs and fetch results over HTTP (one connection pool; a context manager)."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, read=WAIT_CHUNK_S + timeout_s),
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _json(self, resp: httpx.Response) -> Any:
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, body)
        return body

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
        """POST /v1/edits (multipart); returns the queued job."""
        data = {"instruction": instruction, **{k: str(v) for k, v in params.items() if v is not None}}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        resp = self.http.post(
            "/v1/edits", data=data, files={"image": (filename, image, content_type)}, headers=headers
        )
        return self._json(resp)

    def get(self, job_id: str, wait_s: int = 0) -> dict[str, Any]:
        headers = {"Prefer": f"wait={wait_s}"} if wait_s else {}
        return self._json(self.http.get(f"/v1/jobs/{job_id}", headers=headers))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.post(f"/v1/jobs/{job_id}/cancel"))

    def result(self, job_id: str) -> bytes:
        """The result image (following the redirect to a presigned URL when storage is S3)."""
        resp = self.http.get(f"/v1/jobs/{job_id}/result", follow_redirects=True)
        if resp.status_code >= 400:
            self._json(resp)
        return resp.content

    def wait(
        self, job_id: str, timeout_s: float = 600.0, on_update: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Long-poll until the job is terminal (or `timeout_s` passes: TimeoutError)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} not finished after {timeout_s:.0f}s")
            job = self.get(job_id, wait_s=max(1, min(WAIT_CHUNK_S, int(left))))
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
