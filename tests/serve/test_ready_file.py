"""`varedit-serve --ready-file PATH`: once ready, ``{"url", "job_metrics", "pid", "children"}``, where
``children`` are the pids of every process it started, its Redis server included, and not a broker it
was given with VAREDIT_BROKER_URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve.redis_server import RedisServer
from tests.serve.running import until_ready

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _ready_then_stopped(tmp_path: Path, **env: str) -> dict:
    """The ready file of `varedit-serve` on the instant fake model, read while every pid is alive."""
    ready = tmp_path / "ready.json"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VAREDIT_")}
    fake = {"VAREDIT_MODEL_PATH": "fake://?scales=2&scale_ms=5", "VAREDIT_MODELS": '["tiny"]'}
    cmd = [sys.executable, "-m", "serve", "--port", "0", "--data-dir", str(tmp_path / "data")]
    proc = subprocess.Popen(
        [*cmd, "--ready-file", str(ready)],
        env=clean | fake | env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    with until_ready(proc, ready) as info:
        info["programs"] = {pid: Path(f"/proc/{pid}/exe").resolve().name for pid in info["children"]}
    assert proc.returncode == 0 and "varedit-serve: stopped" in (proc.stdout.read() if proc.stdout else "")
    return info


def test_the_ready_file_names_the_redis_server_it_started(tmp_path: Path) -> None:
    # before: three children (edit worker, light worker, API), not the redis-server
    info = _ready_then_stopped(tmp_path)
    assert set(info) == {"url", "job_metrics", "pid", "children", "programs"}
    assert len(info["children"]) == 4
    assert sorted(info["programs"].values()).count("redis-server") == 1


def test_the_ready_file_leaves_out_a_broker_it_was_given(tmp_path: Path) -> None:
    with RedisServer() as broker:
        info = _ready_then_stopped(tmp_path, VAREDIT_BROKER_URL=broker.url)
        assert broker.process is not None and broker.process.pid not in info["children"]
        assert broker.alive()  # not stopped with the platform
    assert len(info["children"]) == 3 and "redis-server" not in info["programs"].values()
