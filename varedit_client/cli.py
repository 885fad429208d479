"""The client's commands, also reachable as ``varedit-serve submit|get|wait|cancel|list|result|events``.

    varedit-client submit photo.png "make the sky purple" --wait -o edited.png
    varedit-client submit https://example.com/cat.jpg "give the cat a hat"   # the server fetches it
    varedit-client get JOB_ID                  # the job as JSON
    varedit-client wait JOB_ID -o edited.png   # until it ends, with progress; save the result
    varedit-client cancel JOB_ID
    varedit-client list --status running --limit 50
    varedit-client result JOB_ID -o edited.png   # -o -: the image to stdout
    varedit-client events JOB_ID               # each server-sent event as a JSON line

``--url`` (or ``VAREDIT_URL``, default http://127.0.0.1:8000) and ``--api-key`` (or ``VAREDIT_API_KEY``,
sent as ``Authorization: Bearer``). Parameters left out (cfg, tau, resolution) take the model's
recommended values on the server. Progress goes to stderr: a per-scale bar at a terminal, plain lines
otherwise; stdout carries only what a script reads (a job id, JSON, a saved path, image bytes).

Exit status: 0 success (the job succeeded, or the command did what it says); 1 the job ended otherwise
(failed, canceled, expired); 2 a usage, HTTP or connection error, or a wait that timed out; 130
interrupted (Ctrl-C; a job already accepted keeps running on the server, and the message says which);
141 stdout was closed before all was written (``| head``), silently.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from varedit_client.client import Client, Job
from varedit_client.config import API_KEY_ENV, DEFAULT_URL, URL_ENV
from varedit_client.errors import ApiError, ConnectionFailed, JobFailed
from varedit_client.progress import describe, view_for
from varedit_client.types import JobStatus

COMMANDS = ("submit", "get", "wait", "cancel", "list", "result", "events")
STDOUT = "-"  # `-o -`: the image goes to stdout (binary), as the convention is; `-o ./-` is a file
EXIT_CODES = """exit status:
  0  success (the job succeeded, or the command did what it says)
  1  the job ended otherwise (failed, canceled, expired)
  2  a usage, HTTP or connection error, or a wait that timed out
  130  interrupted (Ctrl-C; a submitted job keeps running)
  141  stdout was closed before all was written (| head)"""
# What a shell reports for a command that SIGPIPE ended (128 + 13), as `cat` in `cat | head` ends. Not 1,
# which says a job ended otherwise; and not signal.SIGPIPE, which Windows lacks.
EXIT_STDOUT_CLOSED = 141


def quiet_when_stdout_closes(run: Callable[[], int]) -> int:
    """``run()``, or `EXIT_STDOUT_CLOSED` without a word once the reader of stdout has gone. Python
    ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError: in the command, in the flush
    below, or else in the flush at exit as "Exception ignored"; that last one goes to /dev/null."""
    try:
        try:
            return run()
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_STDOUT_CLOSED


def _above_0(kind: Callable[[str], float], what: str, need: str) -> Callable[[str], float]:
    """An argparse type: a finite number of ``kind`` above 0 (a count of 0 or less listed nothing with
    status 0, and a negative time gave up at once); ``need`` says what is wanted when it is not."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{need}, got {text}")
        return value

    return parse


AT_LEAST_1 = _above_0(int, "a whole number", "must be at least 1")
SECONDS = _above_0(float, "a number of seconds", "must be a number of seconds above 0")


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    url = os.environ.get(URL_ENV) or DEFAULT_URL
    common.add_argument(
        "--url", default=url, help=f"the API's base URL (env {URL_ENV}; default: %(default)s)"
    )
    key_default = f"${API_KEY_ENV}, which is set" if os.environ.get(API_KEY_ENV) else "none"
    common.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"sent as Authorization: Bearer (env {API_KEY_ENV}; default: {key_default})",
    )
    common.add_argument(
        "--max-attempts",
        type=AT_LEAST_1,
        default=3,
        help="tries per request on connection errors, 429, 503 and a submit in flight (default: %(default)s)",
    )
    return common


def _timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", type=SECONDS, default=600.0, help="seconds to wait (default: %(default)s)"
    )


def build_parser(prog: str = "varedit-client") -> argparse.ArgumentParser:
    common = [_common_options()]
    parser = argparse.ArgumentParser(
        prog=prog,
        description="VAREdit Serve HTTP client",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=text,
            description=text,
            parents=common,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = command("submit", "submit an edit")
    p.add_argument("image", help="a PNG, JPEG or WebP file, or an http(s) URL the server fetches")
    p.add_argument("instruction")
    p.add_argument("--negative", dest="negative_instruction", help="what guidance steers away from")
    p.add_argument("--model", help="default: the server's first model")
    p.add_argument("--resolution", type=int, help="default: the model's first")
    p.add_argument("--seed", type=int, help="default: random (reported in the job)")
    p.add_argument("--cfg", type=float, help="default: the model's recommended value")
    p.add_argument("--tau", type=float, help="default: the model's recommended value")
    p.add_argument("--priority", type=int, help="higher runs first (above 0 needs a key allowed to)")
    p.add_argument("--start-timeout", type=int, dest="start_timeout_s", help="expire if not started by then")
    p.add_argument("--webhook-url")
    p.add_argument("--webhook-event", action="append", dest="webhook_events", help="repeat for several")
    p.add_argument("--idempotency-key", help="default: a new one, reused on this command's retries")
    p.add_argument("--wait", action="store_true", help="wait until the job ends, showing its progress")
    p.add_argument("-o", "--output", help="save the result here, - for stdout (implies --wait)")
    _timeout(p)

    for name, text in (("get", "print a job as JSON"), ("cancel", "cancel a job; print it as JSON")):
        command(name, text).add_argument("job_id")

    w = command("wait", "wait until a job ends, showing its progress")
    w.add_argument("job_id")
    w.add_argument("-o", "--output", help="save the result here, - for stdout")
    _timeout(w)

    ls = command("list", "list your jobs, newest first")
    ls.add_argument("--status", choices=[s.value for s in JobStatus])
    ls.add_argument("--limit", type=AT_LEAST_1, default=20, help="at most this many (default: %(default)s)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")

    r = command("result", "save a job's result (waiting for it to end)")
    r.add_argument("job_id")
    r.add_argument("-o", "--output", default=STDOUT, help="the file, or - for stdout (the default)")
    _timeout(r)

    e = command("events", "print a job's server-sent events as JSON lines until it ends")
    e.add_argument("job_id")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "varedit-client") -> int:
    """Run one client command; ``prog`` is the name its help shows (``varedit-serve`` reaches it too)."""
    return quiet_when_stdout_closes(lambda: _main(argv, prog))


def _main(argv: Sequence[str] | None, prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    if getattr(args, "output", None) == STDOUT and sys.stdout.isatty():  # before anything is submitted
        print("error: the result is an image; pass -o FILE or redirect stdout", file=sys.stderr)
        return 2
    _print_retry_notes()
    try:
        with Client(args.url, args.api_key, max_attempts=max(1, args.max_attempts)) as client:
            return HANDLERS[args.command](client, args)
    except ConnectionFailed as exc:
        hint = "" if exc.unanswered else f"; set --url or {URL_ENV}"
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    except JobFailed as exc:
        print(describe(exc.job), file=sys.stderr)
        return 1
    except ApiError as exc:
        print(api_error_text(exc), file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout's reader has gone: not a failure of the command (see main)
        raise
    except (TimeoutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return 130


def _interrupted(args: argparse.Namespace) -> str:
    job_id = getattr(args, "submitted", None)
    if job_id is not None:
        return f"interrupted (job {job_id} keeps running on the server; `cancel {job_id}` stops it)"
    if args.command == "submit":
        return "interrupted before the server answered the submit"
    return "interrupted"


def _print_retry_notes() -> None:
    """The client logs each wait before a retry (`varedit_client.retry`): shown on stderr, so a wait
    of a minute for a Retry-After is not a silent minute."""
    logger = logging.getLogger("varedit_client")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("note: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def api_error_text(error: ApiError) -> str:
    """``error: code (HTTP n): message`` and one indented line per detail (the field and what is wrong)."""
    retry_after = getattr(error, "retry_after", None)  # 429 and 503
    again = "" if retry_after is None else f" (the server says: try again in {retry_after:.0f} s)"
    lines = [f"error: {error.code} (HTTP {error.status}): {error.message}{again}"]
    details = error.details
    if isinstance(details, list):
        lines += [f"  {_detail(d)}" for d in details]
    elif isinstance(details, dict):
        lines += [f"  {k}: {json.dumps(v)}" for k, v in details.items()]
    elif details is not None:
        lines.append(f"  {details}")
    return "\n".join(lines)


def _detail(detail: Any) -> str:
    if not isinstance(detail, dict):
        return str(detail)
    where = ".".join(str(part) for part in detail.get("loc", []))
    text = detail.get("msg") or detail.get("type") or ""
    given = f"(got {json.dumps(detail['input'])})" if "input" in detail else ""
    said = " ".join(part for part in (text, given) if part)
    return f"{where}: {said}" if where and said else where or said


# -- commands ---------------------------------------------------------------------------------------


def _follow(job: Job, args: argparse.Namespace) -> int:
    """Wait with progress on stderr, then save the result when asked."""
    view = view_for(sys.stderr)
    if not job.done:
        view.started(job.data)
    try:
        job.wait(progress=view.progress, timeout=args.timeout)
    except JobFailed:
        view.ended(job.data)
        return 1
    view.ended(job.data)
    if args.output is not None:
        _save(job.result(), args.output)
    return 0


def _save(content: bytes, output: str) -> None:
    if output == STDOUT:
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    print(str(path))


def _submit(client: Client, args: argparse.Namespace) -> int:
    job = client.edit(
        args.image,
        args.instruction,
        negative_instruction=args.negative_instruction,
        model=args.model,
        resolution=args.resolution,
        seed=args.seed,
        cfg=args.cfg,
        tau=args.tau,
        priority=args.priority,
        start_timeout_s=args.start_timeout_s,
        webhook_url=args.webhook_url,
        webhook_events=args.webhook_events,
        idempotency_key=args.idempotency_key,
    )
    args.submitted = job.id
    if not (args.wait or args.output):
        print(describe(job.data), file=sys.stderr)
        print(job.id)
        return 0
    code = _follow(job, args)
    if code == 0 and args.output is None:
        print(job.id)
    return code


def _wait(client: Client, args: argparse.Namespace) -> int:
    return _follow(client.jobs.get(args.job_id), args)


def _get(client: Client, args: argparse.Namespace) -> int:
    print(client.jobs.get(args.job_id).data.model_dump_json(indent=2))
    return 0


def _cancel(client: Client, args: argparse.Namespace) -> int:
    print(client.jobs.cancel(args.job_id).data.model_dump_json(indent=2))
    return 0


def _list(client: Client, args: argparse.Namespace) -> int:
    for job in client.jobs.list(status=args.status, limit=args.limit):
        data = job.data
        if args.json:
            print(data.model_dump_json())
            continue
        progress = f"{data.progress.scale}/{data.progress.scales}" if data.progress else "-"
        created = data.created_at.isoformat(timespec="seconds")
        print(f"{data.id}  {data.status.value:<9}  {progress:>5}  {created}  {data.instruction}")
    return 0


def _result(client: Client, args: argparse.Namespace) -> int:
    _save(client.jobs.get(args.job_id).result(timeout=args.timeout), args.output)
    return 0


def _events(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.get(args.job_id)
    for event in job.events():
        print(event.model_dump_json(), flush=True)
    return 0 if job.status is JobStatus.SUCCEEDED else 1


HANDLERS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "submit": _submit,
    "get": _get,
    "wait": _wait,
    "cancel": _cancel,
    "list": _list,
    "result": _result,
    "events": _events,
}


if __name__ == "__main__":
    sys.exit(main())
