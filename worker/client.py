"""A small HTTP client for the VAREdit Serve API (httpx only; no torch, no platform imports).

    varedit-serve submit photo.png "make the sky purple" --wait -o edited.png
    varedit-serve get JOB_ID
    varedit-serve wait JOB_ID -o edited.png
    varedit-serve cancel JOB_ID

``--url`` (or ``VAREDIT_URL``, default http://127.0.0.1:8000) and ``--api-key`` (or ``VAREDIT_API_KEY``,
sent as ``Authorization: Bearer``). Exit status: 0 when the job succeeded (or was submitted, without
``--wait``), 1 when it ended otherwise, 2 on a usage or HTTP error.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = {"succeeded", "failed", "canceled", "expired"}
WAIT_CHUNK_S = 30  # `Prefer: wait=N` per request; the server holds the request until done or N s


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status} {error.get('code', '')}: {error.get('message', body)}")
        self.status = status
        self.body = body


class Client:
    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers,
                                 timeout=httpx.Timeout(timeout_s, read=WAIT_CHUNK_S + timeout_s))

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

    def submit(self, image: bytes, instruction: str, *, filename: str = "image.png",
               content_type: str = "image/png", idempotency_key: str | None = None,
               **params: Any) -> dict[str, Any]:
        """POST /v1/edits (multipart); returns the queued job."""
        data = {"instruction": instruction, **{k: str(v) for k, v in params.items() if v is not None}}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        resp = self.http.post("/v1/edits", data=data, files={"image": (filename, image, content_type)},
                              headers=headers)
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

    def wait(self, job_id: str, timeout_s: float = 600.0,
             on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
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


# -- command line ---------------------------------------------------------------------------------


def _print_update(job: dict[str, Any]) -> None:
    progress = job.get("progress") or {}
    scale = f" scale {progress.get('scale')}/{progress.get('scales')}" if progress.get("scales") else ""
    print(f"{job['id']}: {job['status']}{scale}", file=sys.stderr, flush=True)


def _finish(client: Client, job: dict[str, Any], out: Path | None) -> int:
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        print(f"{job['id']}: {job['status']} {error.get('code', '')} {error.get('message', '')}".rstrip(),
              file=sys.stderr)
        return 1
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(client.result(job["id"]))
        print(str(out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("VAREDIT_URL", DEFAULT_URL),
                        help="API base URL (VAREDIT_URL)")
    common.add_argument("--api-key", default=os.environ.get("VAREDIT_API_KEY"), help="(VAREDIT_API_KEY)")
    parser = argparse.ArgumentParser(prog="varedit-serve", description="VAREdit Serve HTTP client")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", help="submit an edit", parents=[common])
    p.add_argument("image", type=Path)
    p.add_argument("instruction")
    p.add_argument("--model")
    p.add_argument("--resolution", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--cfg", type=float)
    p.add_argument("--tau", type=float)
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="wait until the job ends")
    p.add_argument("-o", "--output", type=Path, help="save the result here (implies --wait)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")

    for name in ("get", "cancel"):
        q = sub.add_parser(name, help=f"{name} a job", parents=[common])
        q.add_argument("job_id")
    w = sub.add_parser("wait", help="wait for a job to end", parents=[common])
    w.add_argument("job_id")
    w.add_argument("-o", "--output", type=Path)
    w.add_argument("--timeout", type=float, default=600.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with Client(args.url, args.api_key) as client:
            return _run(client, args)
    except (ApiError, httpx.HTTPError, TimeoutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(client: Client, args: argparse.Namespace) -> int:
    if args.command == "submit":
        content_type = mimetypes.guess_type(args.image.name)[0] or "application/octet-stream"
        job = client.submit(args.image.read_bytes(), args.instruction, filename=args.image.name,
                            content_type=content_type, idempotency_key=args.idempotency_key,
                            model=args.model, resolution=args.resolution, seed=args.seed, cfg=args.cfg,
                            tau=args.tau)
        _print_update(job)
        if not (args.wait or args.output):
            print(job["id"])
            return 0
        return _finish(client, client.wait(job["id"], args.timeout, on_update=_print_update), args.output)
    if args.command == "wait":
        return _finish(client, client.wait(args.job_id, args.timeout, on_update=_print_update), args.output)
    if args.command == "get":
        print(json.dumps(client.get(args.job_id), indent=2))
        return 0
    if args.command == "cancel":
        print(json.dumps(client.cancel(args.job_id), indent=2))
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
