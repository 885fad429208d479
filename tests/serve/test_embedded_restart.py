"""The embedded runner restarts a child that dies instead of stopping the platform: the light worker
killed with SIGKILL comes back (new pid) and webhooks flow again; a killed Redis comes back on its port
and the jobs whose messages it lost run. It still stops, with the one-line
cause, when restarting cannot help: a model that does not load, or a child that keeps dying."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from serve import embedded
from serve.embedded import Child, EmbeddedPlatform
from varedit_client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "assets" / "sample.png"
DEADLINE_S = 60.0


def _supervise_until(platform: EmbeddedPlatform, done: Callable[[], bool], what: str) -> None:
    """Run the runner's supervision loop (as `varedit-serve` does) until `done()`."""
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        platform.check_children()
        time.sleep(0.1)  # the runner's polling loop, bounded by the deadline


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No VAREDIT_* from the caller's environment: the platform starts its own Redis and SQLite."""
    for name in [k for k in os.environ if k.startswith("VAREDIT_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def platform(tmp_path: Path, clean_env: None) -> Iterator[EmbeddedPlatform]:
    env = {
        "VAREDIT_MODEL_PATH": "fake://?scales=3&scale_ms=5",
        "VAREDIT_MODELS": '["tiny"]',
        "VAREDIT_LOG_JSON": "true",
        "VAREDIT_ALLOW_PRIVATE_URLS": "true",  # the test's webhook receiver is on 127.0.0.1
        "VAREDIT_WEBHOOK_DISPATCH_S": "1",
    }
    with EmbeddedPlatform(port=0, data_dir=tmp_path / "data", extra_env=env) as plat:
        plat.wait_ready(timeout_s=120)
        yield plat


def test_a_killed_light_worker_is_restarted_and_webhooks_resume(
    platform: EmbeddedPlatform, webhook_receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    # given the platform serving, and its light worker (webhooks, maintenance, beat)
    light = platform.child("light-worker")
    assert light.process is not None
    old_pid = light.process.pid
    # when its whole process group is killed with SIGKILL
    light.signal_group(signal.SIGKILL)
    assert light.wait(time.monotonic() + 10)
    # then the runner restarts it (a new process) and says so
    _supervise_until(platform, lambda: light.alive() and light.process.pid != old_pid, "the restart")
    out = capsys.readouterr().out
    assert f"light-worker exited with code {-signal.SIGKILL}" in out
    assert f"light-worker restarted (pid {light.process.pid})" in out
    # and the platform still serves a job end to end, its webhooks delivered by the new light worker
    with Client(platform.url) as client:
        job = client.submit(
            SAMPLE.read_bytes(), "remove the red circle", seed=1, webhook_url=webhook_receiver.url
        )
        deadline = time.monotonic() + DEADLINE_S
        while (status := client.get(job["id"])["status"]) not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, "the job did not finish"
            platform.check_children()
            time.sleep(0.1)  # polling the job while supervising, bounded by the deadline
        assert status == "succeeded"
    events = [json.loads(body)["type"] for _, _, body in webhook_receiver.wait_for(2, DEADLINE_S)]
    assert events == ["job.running", "job.succeeded"]
    assert all(child.alive() for child in platform.children)


def _bare_platform(tmp_path: Path, child: Child) -> EmbeddedPlatform:
    """A runner supervising one hand-made child (no Redis, no workers)."""
    plat = EmbeddedPlatform(port=0, data_dir=tmp_path)
    plat.env = dict(os.environ)
    plat.log_dir = tmp_path
    plat.children = [child]
    child.start(plat.env, plat.log_dir)
    return plat


def test_a_child_that_keeps_dying_stops_the_platform_after_the_restart_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(embedded, "RESTART_BACKOFF_S", 0.01)  # the cap, not the backoff, is under test
    crashy = Child("crashy", [sys.executable, "-c", "raise SystemExit(3)"])
    plat = _bare_platform(tmp_path, crashy)
    try:
        with pytest.raises(RuntimeError) as raised:
            _supervise_until(plat, lambda: False, "the runner to give up")
    finally:
        plat.stop()
    message = str(raised.value)
    assert message.startswith("crashy exited with code 3 (log: ")
    assert f"restarted {embedded.RESTART_LIMIT} times within 60s, giving up" in message
    assert capsys.readouterr().out.count("crashy restarted (pid ") == embedded.RESTART_LIMIT


def test_a_model_that_cannot_load_is_not_restarted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failing = json.dumps({"event": "model_load_failed", "error": "FileNotFoundError: no weights"})
    child = Child("edit0-tiny", [sys.executable, "-c", f"print({failing!r})"])
    plat = _bare_platform(tmp_path, child)
    try:
        with pytest.raises(RuntimeError) as raised:
            _supervise_until(plat, lambda: False, "the runner to stop")
    finally:
        plat.stop()
    assert str(raised.value).startswith("edit0-tiny could not load its model: FileNotFoundError: no weights")
    assert "restarted" not in capsys.readouterr().out
    assert child.restarts == []


def test_an_old_runs_load_failure_does_not_block_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(embedded, "RESTART_BACKOFF_S", 0.01)
    (tmp_path / "api.log").write_text(json.dumps({"event": "model_load_failed", "error": "old"}) + "\n")
    child = Child("api", [sys.executable, "-c", "raise SystemExit(1)"])
    plat = _bare_platform(tmp_path, child)
    try:
        _supervise_until(plat, lambda: len(child.restarts) == 1, "one restart")
    finally:
        plat.stop()
    assert "api restarted (pid " in capsys.readouterr().out


def test_a_killed_redis_is_restarted_and_jobs_it_lost_still_run(
    platform: EmbeddedPlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    # given the platform's own Redis killed, and a job accepted while it was down (its publish failed)
    redis = platform.redis
    assert redis is not None and redis.process is not None
    old_pid = redis.process.pid
    redis.process.kill()
    redis.process.wait()
    with Client(platform.url) as client:
        lost = client.submit(SAMPLE.read_bytes(), "remove the red circle", seed=1)
        assert client.get(lost["id"])["status"] == "queued"
        # when the runner supervises
        _supervise_until(platform, lambda: redis.alive() and redis.process.pid != old_pid, "Redis back")
        out = capsys.readouterr().out
        assert (
            f"redis-server exited with code {-signal.SIGKILL}; restarted; queued jobs published again: 1"
            in out
        )
        # then the lost job and one submitted afterwards both run, without waiting for the
        # maintenance task's stranded_after_s (300 s)
        later = client.submit(SAMPLE.read_bytes(), "remove the blue square", seed=2)
        for job in (lost, later):
            deadline = time.monotonic() + DEADLINE_S
            while (status := client.get(job["id"])["status"]) not in ("succeeded", "failed"):
                assert time.monotonic() < deadline, f"job {job['id']} did not finish"
                platform.check_children()
                time.sleep(0.1)  # polling the job while supervising, bounded by the deadline
            assert status == "succeeded"
    assert all(child.alive() for child in platform.children)
