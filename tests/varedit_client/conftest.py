"""The real platform the client's end-to-end tests talk to, started once for this folder.

`platform`: the embedded platform (SQLite, local storage, its own Redis, one edit worker, the light
worker, the API) with the fake model: 4 scales of 150 ms (the worker records progress at most every
quarter second, so scale 2 is recorded before scale 3 starts), and a gate folder so a test can hold a job
before scale 3 (an instruction with ``gate:<token>``) until it opens ``open-<token>``. Client-chosen URLs
may reach 127.0.0.1 (the tests' webhook receiver and image server).

`keyed_api`: a second API process on the same database and broker with API keys on, keys with rates of
their own (one write request an hour; one every two seconds; the default) and a second served model that
no worker has loaded, for 401, 429 and 503 answers without touching the first API's limits.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from jobs import keys
from jobs.db import make_engine, make_sessionmaker, session_scope
from serve.embedded import EmbeddedPlatform
from serve.redis_server import free_port
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
SCALES = 4
GATE_SCALE = 3
# The end of the event stream's progress event for scale 2 (sse-starlette ends lines with CRLF).
SECOND_SCALE = f'"status": "running", "scale": 2, "scales": {SCALES}}}\r\n\r\n'.encode()
READY_S = 120.0
DEADLINE_S = 60.0


def png(i: int = 0, size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (i * 37 % 256, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Platform:
    embedded: EmbeddedPlatform
    gate: Path
    data_dir: Path

    @property
    def url(self) -> str:
        return self.embedded.url

    @property
    def port(self) -> int:
        return self.embedded.port

    @property
    def webhook_secret(self) -> str:
        return (self.data_dir / "webhook-secret").read_text().strip()

    def blocked(self, token: str) -> bool:
        """The job with ``gate:<token>`` is held before scale 3."""
        return (self.gate / f"blocked-{token}").exists()

    def open_gate(self, token: str) -> None:
        (self.gate / f"open-{token}").touch()


@pytest.fixture(scope="package")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("client-platform")
    gate = root / "gate"
    gate.mkdir()
    data_dir = root / "data"
    env = {
        "VAREDIT_MODEL_PATH": (
            f"fake://?scales={SCALES}&scale_ms=150&gate={gate}&gate_scale={GATE_SCALE}&gate_timeout_s=60"
        ),
        "VAREDIT_MODELS": '["tiny"]',
        "VAREDIT_ALLOW_PRIVATE_URLS": "true",
        "VAREDIT_LOG_JSON": "true",
    }
    with EmbeddedPlatform(port=0, data_dir=data_dir, extra_env=env) as embedded:
        embedded.wait_ready(timeout_s=READY_S)
        yield Platform(embedded, gate, data_dir)


@dataclass
class KeyedApi:
    url: str
    hourly_key: str  # one write request an hour
    two_second_key: str  # one write request every two seconds
    key: str  # the deployment's default rate
    unloaded_model: str


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="package")
def keyed_api(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedApi]:
    engine = make_engine(platform.embedded.env["VAREDIT_DATABASE_URL"])
    with session_scope(make_sessionmaker(engine)) as session:
        hourly = keys.create(session, "hourly", rate_limit="1/hour").token
        two_second = keys.create(session, "two-second", rate_limit="1 per 2 seconds").token
        default = keys.create(session, "default").token
    engine.dispose()
    port = free_port()
    env = {
        **platform.embedded.env,
        "VAREDIT_AUTH": "api_key",
        "VAREDIT_MODELS": '["tiny", "unloaded"]',
        "VAREDIT_LOG_JSON": "true",
    }
    log = open(tmp_path_factory.mktemp("keyed-api") / "api.log", "wb")  # noqa: SIM115
    cmd = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: proc.poll() is not None or _http_ok(f"{url}/healthz"), "the keyed API to answer")
        assert proc.poll() is None, Path(log.name).read_text()
        yield KeyedApi(url, hourly, two_second, default, "unloaded")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
