"""The client's commands as a person and a script run them, against the real embedded platform: progress
as a bar at a terminal (a pseudo-terminal here) and as plain lines in a pipe, listing, results, events,
and errors that say what is wrong."""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from serve.redis_server import free_port
from tests.conftest import run_with_stdout_closed
from tests.varedit_client.conftest import DEADLINE_S, GATE_SCALE, ROOT, SCALES, Platform, png, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLIENT = [sys.executable, "-m", "varedit_client"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("VAREDIT_URL", "VAREDIT_API_KEY")}


def _run(*args: str, cmd: list[str] = CLIENT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=DEADLINE_S
    )


def _run_in_terminal(
    args: list[str], when: Callable[[str], bool], then: Callable[[], None], columns: int = 100
) -> tuple[int, str]:
    """Run the command with a pseudo-terminal (``columns`` wide; 0: never sized) as stdin, stdout and
    stderr; call ``then`` once the output satisfies ``when``. The exit status and everything the terminal
    showed."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24 if columns else 0, columns, 0, 0))
    proc = subprocess.Popen(
        [*CLIENT, *args], stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT, env=_env()
    )
    os.close(terminal)
    shown, pending = b"", True
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the command exited and its end of the terminal is closed
                break
            if not chunk:
                break
            shown += chunk
            if pending and when(shown.decode(errors="replace")):
                pending = False
                then()
        return proc.wait(timeout=DEADLINE_S), shown.decode(errors="replace")
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_submit_wait_at_a_terminal_draws_a_bar_that_moves_with_the_scales(platform: Platform) -> None:
    token = uuid.uuid4().hex[:10]
    image = ROOT / "assets" / "sample.png"
    held_scale = f"scale {GATE_SCALE - 1}/{SCALES}"
    code, shown = _run_in_terminal(
        ["submit", str(image), f"terminal gate:{token}", "--wait", "--url", platform.url],
        when=lambda out: held_scale in out,  # the bar shows a scale while the job is still held
        then=lambda: platform.open_gate(token),
    )
    assert code == 0, shown
    assert held_scale in shown and f"scale {SCALES}/{SCALES}" in shown
    assert "\r" in shown.replace("\r\n", "\n")  # redrawn in place, not one line per scale
    lines = [line for line in shown.replace("\r\n", "\n").split("\n") if line]
    job_id = lines[-1].strip()
    assert f"{job_id}: queued" in shown and f"{job_id}: succeeded" in shown


def test_submit_wait_at_a_terminal_of_no_width_prints_plain_lines(platform: Platform) -> None:
    """A pseudo-terminal never sized (0x0, as `script` run without a terminal gives): a bar would draw
    nothing there, so the scales are shown as lines."""
    image = ROOT / "assets" / "sample.png"
    code, shown = _run_in_terminal(
        ["submit", str(image), "unsized terminal", "--wait", "--url", platform.url],
        when=lambda _: False,
        then=lambda: None,
        columns=0,
    )
    assert code == 0, shown
    job_id = shown.split(":", 1)[0]
    assert all(f"{job_id}: scale {k}/{SCALES}" in shown for k in range(1, SCALES + 1)), shown


def test_submit_wait_in_a_pipe_prints_plain_lines_and_saves_the_result(
    platform: Platform, tmp_path: Path
) -> None:
    out = tmp_path / "edited.png"
    source = tmp_path / "photo.png"
    source.write_bytes(png(11))
    done = _run(
        "submit", str(source), "piped", "--wait", "-o", str(out), "--seed", "5", "--url", platform.url
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{out}\n"  # stdout carries only what a script reads
    assert "\r" not in done.stderr
    lines = done.stderr.splitlines()
    job_id = lines[0].split(":")[0]
    assert lines[0] == f"{job_id}: queued" and lines[-1] == f"{job_id}: succeeded"
    scales = [int(line.rsplit(" ", 1)[1].split("/")[0]) for line in lines[1:-1]]
    assert scales == list(range(1, SCALES + 1)), lines  # each scale once, in order
    assert Image.open(out).size == (40, 40)
    # the same job through the other commands
    got = json.loads(_run("get", job_id, "--url", platform.url).stdout)
    assert (got["id"], got["status"], got["params"]["seed"]) == (job_id, "succeeded", 5)
    again = tmp_path / "again.png"
    assert _run("result", job_id, "-o", str(again), "--url", platform.url).returncode == 0
    assert again.read_bytes() == out.read_bytes()
    events = _run("events", job_id, "--url", platform.url)
    assert events.returncode == 0
    *scales, event = [
        json.loads(line) for line in events.stdout.splitlines()
    ]  # an ended job: its run, its state
    assert [(e["type"], e["scale"]) for e in scales] == [("progress", k) for k in range(1, SCALES + 1)]
    assert event["type"] == "status" and event["job"]["status"] == "succeeded"


def test_events_prints_each_event_as_a_json_line_until_the_job_ends(platform: Platform) -> None:
    token = uuid.uuid4().hex[:10]
    submitted = _run(
        "submit", str(ROOT / "assets" / "sample.png"), f"events gate:{token}", "--url", platform.url
    )
    job_id = submitted.stdout.strip()
    wait_for(lambda: platform.blocked(token), "the job to be held")
    proc = subprocess.Popen(
        [*CLIENT, "events", job_id, "--url", platform.url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(),
    )
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())  # the stream's first event, while the job is held
    assert first["type"] == "status" and first["job"]["status"] == "running"
    platform.open_gate(token)
    rest = [json.loads(line) for line in proc.stdout]
    assert proc.wait(timeout=DEADLINE_S) == 0
    assert rest[-1]["type"] == "status" and rest[-1]["job"]["status"] == "succeeded"
    assert all(e["type"] == "progress" and e["id"] == job_id for e in rest[:-1])


def test_wait_on_a_canceled_job_exits_1_and_cancel_prints_the_job(platform: Platform) -> None:
    token = uuid.uuid4().hex[:10]
    job_id = _run("submit", str(ROOT / "assets" / "sample.png"), f"cli gate:{token}", "--url", platform.url)
    job_id = job_id.stdout.strip()
    wait_for(lambda: platform.blocked(token), "the job to be held")
    canceled = _run("cancel", job_id, "--url", platform.url)
    assert canceled.returncode == 0 and json.loads(canceled.stdout)["cancel_requested"] is True
    platform.open_gate(token)
    waited = _run("wait", job_id, "--url", platform.url)
    assert waited.returncode == 1 and f"{job_id}: canceled" in waited.stderr


def test_list_shows_the_newest_jobs_through_both_command_names(platform: Platform) -> None:
    table = _run("list", "--limit", "3", "--url", platform.url)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert len(rows) == 3 and all(len(row.split()) >= 5 for row in rows)
    listed = _run(
        "list",
        "--limit",
        "25",
        "--json",
        "--status",
        "succeeded",
        "--url",
        platform.url,
        cmd=[sys.executable, "-m", "serve"],
    )
    jobs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert listed.returncode == 0 and jobs and all(j["status"] == "succeeded" for j in jobs)
    assert [j["created_at"] for j in jobs] == sorted((j["created_at"] for j in jobs), reverse=True)


@pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])
def test_a_closed_stdout_ends_a_command_quietly_with_141(platform: Platform, unbuffered: bool) -> None:
    submitted = _run("submit", str(ROOT / "assets" / "sample.png"), "recolour", "--url", platform.url)
    job_id = submitted.stdout.strip()
    serve = [sys.executable, "-m", "serve"]
    for command in (
        [*CLIENT, "get", job_id, "--url", platform.url],
        [*CLIENT, "list", "--json", "--url", platform.url],
        [*serve, "get", job_id, "--url", platform.url],
    ):
        done = run_with_stdout_closed(command, _env(), unbuffered, cwd=ROOT)
        # before: "error: [Errno 32] Broken pipe" and 2, or "Exception ignored ... BrokenPipeError" and
        # 120; now what a shell reports for a command SIGPIPE ended, as `cat | head` does
        assert (done.returncode, done.stderr) == (141, ""), command


def test_a_limit_below_one_is_a_usage_error() -> None:
    for limit in ("-5", "0"):
        listed = _run("list", "--limit", limit, "--url", f"http://127.0.0.1:{free_port()}")
        # before: 0, listing nothing
        assert listed.returncode == 2 and listed.stdout == "", limit
        assert f"argument --limit: must be at least 1, got {limit}" in listed.stderr
    # before: --max-attempts 0 was read as 1 and --timeout -1 gave up at once, both silently
    for args, message in (
        (["list", "--max-attempts", "0"], "argument --max-attempts: must be at least 1, got 0"),
        (["wait", "some-job", "--timeout", "-1"], "argument --timeout: must be a number of seconds above 0"),
        (["wait", "some-job", "--timeout", "nan"], "argument --timeout: must be a number of seconds above 0"),
    ):
        done = _run(*args, "--url", f"http://127.0.0.1:{free_port()}")
        assert done.returncode == 2 and done.stdout == "" and message in done.stderr, args


def test_errors_name_the_url_or_the_field_and_exit_2(platform: Platform) -> None:
    wrong = f"http://127.0.0.1:{free_port()}"
    unreachable = _run("get", "some-job", "--url", wrong, "--max-attempts", "1")
    assert unreachable.returncode == 2 and f"cannot reach the API at {wrong}" in unreachable.stderr
    sample = str(ROOT / "assets" / "sample.png")
    empty = _run("submit", sample, "", "--url", platform.url)
    assert empty.returncode == 2 and "invalid_request (HTTP 422)" in empty.stderr
    assert "body.instruction" in empty.stderr, empty.stderr
    unknown = _run("submit", sample, "recolour", "--model", "nope", "--url", platform.url)
    assert unknown.returncode == 2 and "body.model: one of ['tiny']" in unknown.stderr, unknown.stderr
    missing = _run("get", "no-such-job", "--url", platform.url)
    assert missing.returncode == 2 and "job_not_found (HTTP 404)" in missing.stderr
    no_file = _run("submit", "/nonexistent.png", "x", "--url", platform.url)
    assert no_file.returncode == 2 and "/nonexistent.png" in no_file.stderr


def test_help_shows_the_defaults_and_the_exit_codes() -> None:
    for command in ("submit", "get", "wait", "cancel", "list", "result", "events"):
        shown = _run(command, "--help")
        assert shown.returncode == 0
        text = " ".join(shown.stdout.split())
        assert "env VAREDIT_URL; default: http://127.0.0.1:8000" in text, command
        assert "env VAREDIT_API_KEY; default: none" in text, command
        assert "1 the job ended otherwise" in text and "2 a usage, HTTP or connection error" in text


class _AlwaysLimited(http.server.BaseHTTPRequestHandler):
    """An API that answers every request 429 with a Retry-After (the class's ``retry_after_s``)."""

    retry_after_s = 1

    def _limited(self) -> None:
        body = json.dumps({"error": {"code": "rate_limited", "message": "more than 3 per 1 minute"}}).encode()
        self.send_response(429)
        self.send_header("Retry-After", str(self.retry_after_s))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._limited()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._limited()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def limited_api() -> Iterator[tuple[str, type[_AlwaysLimited]]]:
    handler = type("Limited", (_AlwaysLimited,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_retry_after_is_announced_and_named_when_retries_run_out(limited_api) -> None:
    # Before, the wait for a Retry-After was silent (a minute, for a 429 under a rate limit), and the
    # final error did not say when to try again.
    url, _ = limited_api
    done = _run("get", "some-job", "--url", url, "--max-attempts", "2")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == (
        "note: HTTP 429 rate_limited: more than 3 per 1 minute; trying again in 1 s (try 2 of 2)"
    ), lines
    assert lines[1] == (
        "error: rate_limited (HTTP 429): more than 3 per 1 minute (the server says: try again in 1 s)"
    ), lines


def test_ctrl_c_during_a_submit_says_nothing_was_accepted(limited_api) -> None:
    # Before: "a submitted job keeps running on the server", with no job submitted.
    url, handler = limited_api
    handler.retry_after_s = 30
    sample = str(ROOT / "assets" / "sample.png")
    proc = subprocess.Popen(
        [*CLIENT, "submit", sample, "x", "--url", url],
        cwd=ROOT,
        env=_env(),
        text=True,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        note = proc.stderr.readline()  # the client is now waiting out the Retry-After
        assert "trying again in 30 s" in note, note
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=DEADLINE_S) == 130
        assert proc.stderr.read().strip() == "interrupted before the server answered the submit"
    finally:
        proc.kill()
