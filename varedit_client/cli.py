"""The client's commands, also reachable as ``varedit-serve submit|get|wait|cancel``.

    varedit-client submit photo.png "make the sky purple" --wait -o edited.png
    varedit-client get JOB_ID
    varedit-client wait JOB_ID -o edited.png
    varedit-client cancel JOB_ID

``--url`` (or ``VAREDIT_URL``, default http://127.0.0.1:8000) and ``--api-key`` (or ``VAREDIT_API_KEY``,
sent as ``Authorization: Bearer``). Parameters left out (cfg, tau, resolution) take the model's
recommended values on the server. Exit status: 0 when the job succeeded (or was submitted, without
``--wait``), 1 when it ended otherwise, 2 on a usage or HTTP error.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from varedit_client.client import DEFAULT_URL, ApiError, Client

COMMANDS = ("submit", "get", "wait", "cancel")


def _print_update(job: dict[str, Any]) -> None:
    progress = job.get("progress") or {}
    scale = f" scale {progress.get('scale')}/{progress.get('scales')}" if progress.get("scales") else ""
    print(f"{job['id']}: {job['status']}{scale}", file=sys.stderr, flush=True)


def _finish(client: Client, job: dict[str, Any], out: Path | None) -> int:
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        print(
            f"{job['id']}: {job['status']} {error.get('code', '')} {error.get('message', '')}".rstrip(),
            file=sys.stderr,
        )
        return 1
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(client.result(job["id"]))
        print(str(out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=os.environ.get("VAREDIT_URL", DEFAULT_URL), help="API base URL (VAREDIT_URL)"
    )
    common.add_argument("--api-key", default=os.environ.get("VAREDIT_API_KEY"), help="(VAREDIT_API_KEY)")
    parser = argparse.ArgumentParser(prog="varedit-client", description="VAREdit Serve HTTP client")
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
    except httpx.TransportError as exc:
        print(f"error: cannot reach the API at {args.url} ({exc}); set --url or VAREDIT_URL", file=sys.stderr)
        return 2
    except (ApiError, httpx.HTTPError, TimeoutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(client: Client, args: argparse.Namespace) -> int:
    if args.command == "submit":
        content_type = mimetypes.guess_type(args.image.name)[0] or "application/octet-stream"
        job = client.submit(
            args.image.read_bytes(),
            args.instruction,
            filename=args.image.name,
            content_type=content_type,
            idempotency_key=args.idempotency_key,
            model=args.model,
            resolution=args.resolution,
            seed=args.seed,
            cfg=args.cfg,
            tau=args.tau,
        )
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
