"""End to end in production shape: PostgreSQL, Redis, an S3 server, the API under uvicorn, TWO Celery
edit worker processes and a light worker with beat, all real processes talking over the network.

The model is the fake pipeline (worker/fake.py): these tests are about the platform. Jobs whose
instruction holds ``gate:<token>`` block at scale 2 until the test creates ``open-<token>`` in the gate
folder, which is how a test catches a job mid-generation without sleeping.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import redis
from PIL import Image
from sqlalchemy import select

from jobs.db import make_engine, make_sessionmaker
from jobs.models import Job
from serve.embedded import EmbeddedPlatform
from tests.conftest import wait_for
from varedit_client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOBS = 20
DEADLINE_S = 60.0


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def _png(i: int, size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (i * 12 % 256, 80, 255 - i * 12 % 256)).save(buf, format="PNG")
    return buf.getvalue()


class Platform:
    def __init__(
        self, embedded: EmbeddedPlatform, gate: Path, database_url: str, bucket: str, s3_endpoint: str
    ) -> None:
        self.embedded = embedded
        self.gate = gate
        self.client = Client(embedded.url)
        self.engine = make_engine(database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        self.bucket = bucket

    def submit(self, instruction: str, i: int = 0, **params: Any) -> str:
        return self.client.submit(_png(i), instruction, seed=i, **params)["id"]

    def row(self, job_id: str) -> Job:
        with self.sessions() as session:
            job = session.scalar(select(Job).where(Job.id == job_id))
            assert job is not None
            return job

    def objects(self, job_id: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix="")
        return sorted(o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", []) if job_id in o["Key"])

    def wait_blocked(self, token: str) -> int:
        """The pid of the pool process blocked at the gate with `token`."""
        marker = self.gate / f"blocked-{token}"
        wait_for(marker.exists, f"a worker to reach gate {token}")
        return int(marker.read_text())

    def open_gate(self, token: str) -> None:
        (self.gate / f"open-{token}").touch()

    def log_events(self, child_name: str, event: str) -> list[dict[str, Any]]:
        path = self.embedded.child(child_name).log_path
        assert path is not None
        found = []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"{event}"' in line:
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
        return found

    def close(self) -> None:
        self.client.close()
        self.engine.dispose()


@pytest.fixture(scope="module")
def e2e_database(postgres_port: int, postgres_template: str) -> Iterator[str]:
    name = f"varedit_e2e_{secrets.token_hex(5)}"
    admin = {
        "host": "127.0.0.1",
        "port": postgres_port,
        "user": "postgres",
        "dbname": "postgres",
        "autocommit": True,
    }
    with psycopg.connect(**admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:{postgres_port}/{name}"
    with psycopg.connect(**admin) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def e2e_broker(redis_url: str) -> Iterator[str]:
    """A Redis logical database of its own (not the shared fixture's), flushed afterwards."""
    base, _, db = redis_url.rpartition("/")
    own = f"{base}/{(int(db or 0) % 15) + 1}"
    yield own
    with redis.Redis.from_url(own) as client:
        client.flushdb()


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory, e2e_database: str, e2e_broker: str, s3_endpoint: str
) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("e2e-platform")
    gate = root / "gate"
    gate.mkdir()
    bucket = f"varedit-e2e-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    env = {
        "VAREDIT_DATABASE_URL": e2e_database,
        "VAREDIT_BROKER_URL": e2e_broker,
        "VAREDIT_STORAGE_URL": f"s3://{bucket}/e2e",
        "VAREDIT_S3_ENDPOINT_URL": s3_endpoint,
        "VAREDIT_MODEL_PATH": f"fake://?scales=4&scale_ms=10&gate={gate}&gate_scale=2&gate_timeout_s=90",
        "VAREDIT_MODELS": '["tiny"]',
        "VAREDIT_LEASE_S": "4",
        "VAREDIT_HEARTBEAT_S": "1",
        "VAREDIT_MAX_BATCH": "2",
        "VAREDIT_LOG_JSON": "true",
    }
    embedded = EmbeddedPlatform(port=0, data_dir=root / "data", extra_env=env, edit_workers=2)
    with embedded:
        embedded.wait_ready(timeout_s=120)
        pgids = [c.process.pid for c in embedded.children if c.process]
        plat = Platform(embedded, gate, e2e_database, bucket, s3_endpoint)
        try:
            yield plat
        finally:
            plat.close()
    for pgid in pgids:  # teardown left nothing behind: every child's process group is gone
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)


def test_twenty_jobs_over_http_each_run_once_on_two_workers(platform: Platform) -> None:
    # given two ready workers, as the API reports them
    ready = platform.client.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    models = {m["id"]: m for m in platform.client.http.get("/v1/models").json()["data"]}
    assert models["tiny"]["ready_workers"] == 2
    # when 20 jobs are submitted over HTTP
    ids = [platform.submit(f"edit number {i}", i) for i in range(JOBS)]
    # then every one succeeds, once, and its result downloads and decodes
    for i, job_id in enumerate(ids):
        job = platform.client.wait(job_id, timeout_s=DEADLINE_S)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1
        assert job["progress"] == {"scale": 4, "scales": 4}
        image = Image.open(io.BytesIO(platform.client.result(job_id)))
        image.load()
        assert image.size == (48, 48)
        assert image.getpixel((0, 0)) != Image.open(io.BytesIO(_png(i))).getpixel((0, 0))  # it was edited
    # a worker logs edit_succeeded just after the commit the client saw: wait for the lines, then count
    children = platform.embedded.edit_children()
    wait_for(
        lambda: sum(len(platform.log_events(c.name, "edit_succeeded")) for c in children) >= JOBS,
        "every edit_succeeded log line",
    )
    succeeded = Counter()
    started = Counter()
    by_worker = Counter()
    for child in children:
        for record in platform.log_events(child.name, "edit_succeeded"):
            succeeded[record["job_id"]] += 1
            by_worker[child.name] += 1
        for record in platform.log_events(child.name, "edit_started"):
            started.update(record["job_ids"])
    assert {j: succeeded[j] for j in ids} == dict.fromkeys(ids, 1)
    assert {j: started[j] for j in ids} == dict.fromkeys(ids, 1)
    assert len(by_worker) == 2 and all(by_worker.values()), by_worker  # both workers did work
    rows = [platform.row(j) for j in ids]
    host = os.uname().nodename
    assert {r.worker_id for r in rows} == {f"edit0-tiny@{host}", f"edit1-tiny@{host}"}
    assert all(platform.objects(j) == ["result-1.png", "source.png"] for j in ids)


def test_cancel_queued_and_running_jobs_never_write_a_result(platform: Platform) -> None:
    # given both workers busy: A and B each blocked at scale 2 (submitted one by one, so no batching)
    a = platform.submit("hold A gate:cancel-a")
    platform.wait_blocked("cancel-a")
    b = platform.submit("hold B gate:cancel-b")
    platform.wait_blocked("cancel-b")
    # and C queued behind them
    c = platform.submit("never runs")
    assert platform.client.get(c)["status"] == "queued"
    # when C (queued) and A (running) are canceled
    assert platform.client.cancel(c)["status"] == "canceled"
    assert platform.client.get(a)["status"] == "running"
    platform.client.cancel(a)
    platform.open_gate("cancel-a")
    platform.open_gate("cancel-b")
    # then A stops at its next progress write (here its last scale's, 10 ms scales), before any upload;
    # C never ran, B is unaffected
    job_a = platform.client.wait(a, timeout_s=DEADLINE_S)
    assert job_a["status"] == "canceled"
    assert platform.client.wait(b, timeout_s=DEADLINE_S)["status"] == "succeeded"
    assert platform.client.get(c)["status"] == "canceled"
    for job_id in (a, c):
        assert platform.row(job_id).result_key is None
        assert platform.objects(job_id) == ["source.png"]
        assert platform.client.http.get(f"/v1/jobs/{job_id}/result").status_code == 409
    started = [
        j
        for child in platform.embedded.edit_children()
        for r in platform.log_events(child.name, "edit_started")
        for j in r["job_ids"]
    ]
    assert c not in started
    # C's message is still delivered later and dropped by the claim
    wait_for(
        lambda: any(
            r["job_id"] == c
            for child in platform.embedded.edit_children()
            for r in platform.log_events(child.name, "run_edit_dropped")
        ),
        "C's message to be dropped",
    )


# The pool child alone first (Celery's parent notices, rejects the message back to the queue and forks a
# new child), then the whole worker (parent and child, as when a machine dies): the job survives both.
@pytest.mark.parametrize("target", ["pool-child", "whole-worker"])
def test_kill_9_mid_job_still_completes_the_job_exactly_once(platform: Platform, target: str) -> None:
    # given a job blocked mid-generation in one worker
    token = f"kill-{target}"
    job_id = platform.submit(f"survive a crash gate:{token}")
    pid = platform.wait_blocked(token)
    edit_children = [c for c in platform.embedded.edit_children() if c.alive()]
    victim = next(c for c in edit_children if c.process and os.getpgid(pid) == c.process.pid)
    assert platform.client.get(job_id)["status"] == "running"
    # when it is killed with SIGKILL (no chance to clean up)
    if target == "pool-child":
        os.kill(pid, signal.SIGKILL)
    else:
        victim.signal_group(signal.SIGKILL)
        assert victim.wait(time.monotonic() + 10)
    wait_for(lambda: _dead(pid), "the killed process to die")
    platform.open_gate(token)
    # then the lease expires, the reaper requeues the job and a live worker completes it, once
    job = platform.client.wait(job_id, timeout_s=DEADLINE_S)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    row = platform.row(job_id)
    assert row.result_key and row.result_key.endswith("result-2.png")
    assert platform.objects(job_id) == ["result-2.png", "source.png"]  # the dead attempt wrote nothing

    def successes_of_job() -> list[tuple[str, int]]:
        return [
            (c.name, r["attempt"])
            for c in edit_children
            for r in platform.log_events(c.name, "edit_succeeded")
            if r["job_id"] == job_id
        ]

    successes = wait_for(successes_of_job, "the edit_succeeded log line")
    assert successes == [(successes[0][0], 2)]  # one run completed it: the second attempt
    if target == "whole-worker":
        assert successes[0][0] != victim.name and row.worker_id.startswith(successes[0][0] + "@")
    else:
        # task_reject_on_worker_lost put the message back at once and the reaper republished the job:
        # two messages for one job, so whichever comes second finds it claimed and is dropped
        wait_for(
            lambda: [
                r
                for c in edit_children
                for r in platform.log_events(c.name, "run_edit_dropped")
                if r["job_id"] == job_id
            ],
            "the duplicate message to be dropped",
        )
    Image.open(io.BytesIO(platform.client.result(job_id))).load()
