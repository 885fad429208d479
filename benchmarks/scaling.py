"""Horizontal scaling of edit workers: do N workers give N times the throughput?

    python benchmarks/scaling.py                          # N = 1, 2, 4, 8 against the local PostgreSQL
    python benchmarks/scaling.py --workers 1 2 --jobs-per-worker 10 --device-ms 100

Each worker runs a simulated GPU model: the fake model spends ``--device-ms`` per job waiting, as a
GPU-bound edit does from the CPU's point of view, so eight workers fit on a small machine while the
platform's own costs (claims, broker, database, uploads) stay real. For each N it starts the platform
as `varedit-serve` does (its own Redis, the API, N Celery edit workers, the light worker and beat)
against a fresh PostgreSQL database, then:

- throughput: with the workers told to stop consuming (Celery's cancel_consumer), submits
  ``N x jobs-per-worker`` jobs, lets the workers consume again, and measures completed jobs/s between
  the first claim and the last finish (database timestamps). Submitting first keeps the API's CPU out
  of the workers' window: this measures the worker tier (benchmarks/api_throughput.py the API's);
- claim latency: one job at a time on the idle platform, accepted -> claimed (``started_at -
  created_at``: commit, publish, broker, Celery delivery, the claim UPDATE).

Prints a table with efficiency = jobs/s(N) / (N x jobs/s(1)). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
from celery import Celery
from PIL import Image
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.db import make_engine, make_sessionmaker  # noqa: E402
from jobs.models import Job, JobStatus  # noqa: E402
from serve.embedded import EmbeddedPlatform  # noqa: E402

SCALES = 10
QUEUE = "edits.tiny"


def source_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (180, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def fresh_database(admin_url: str) -> str:
    """A new empty PostgreSQL database next to the one `admin_url` names; its SQLAlchemy URL."""
    name = f"varedit_scaling_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://{admin_url.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"


def drop_database(admin_url: str, url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def submit(client: httpx.Client, image: bytes, n: int) -> str:
    files = {"image": ("in.png", image, "image/png")}
    answer = client.post("/v1/edits", data={"instruction": f"edit {n}", "seed": str(n)}, files=files)
    answer.raise_for_status()
    return answer.json()["id"]


def wait_all_done(sessions, ids: list[str], timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        with sessions() as session:
            done = session.scalar(
                select(func.count()).where(Job.id.in_(ids), Job.status == JobStatus.SUCCEEDED)
            )
        if done == len(ids):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done}/{len(ids)} jobs done after {timeout_s} s")
        time.sleep(0.05)  # polling the database for the end of the run, bounded by the deadline


def run(n_workers: int, args: argparse.Namespace, image: bytes) -> tuple[float, list[float]]:
    url = fresh_database(args.admin_url)
    env = {
        "VAREDIT_MODEL_PATH": f"fake://?scales={SCALES}&scale_ms={args.device_ms / SCALES}",
        "VAREDIT_MODELS": '["tiny"]',
        "VAREDIT_DATABASE_URL": url,
        "VAREDIT_MAX_BATCH": "1",
        "VAREDIT_RATE_LIMIT": "1000000/minute",
        "VAREDIT_MAX_IN_FLIGHT": "1000000",
        "VAREDIT_LOG_JSON": "true",
    }
    data_dir = Path(tempfile.mkdtemp(prefix="varedit-scaling-"))
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    try:
        with EmbeddedPlatform(port=0, data_dir=data_dir, extra_env=env, edit_workers=n_workers) as p:
            p.wait_ready()
            with httpx.Client(base_url=p.url, timeout=30) as client:
                latencies = []
                for i in range(args.latency_jobs):  # one at a time: no queueing in the number
                    job_id = submit(client, image, i)
                    wait_all_done(sessions, [job_id], 60)
                    with sessions() as session:
                        job = session.get(Job, job_id)
                        latencies.append((job.started_at - job.created_at).total_seconds() * 1000)
                total = n_workers * args.jobs_per_worker
                control = Celery(broker=p.env["VAREDIT_BROKER_URL"]).control
                edit_workers = [f"{c.name}@{platform.node()}" for c in p.edit_children()]
                paused = control.cancel_consumer(QUEUE, destination=edit_workers, reply=True, timeout=10)
                assert len(paused) == n_workers, paused
                with ThreadPoolExecutor(8) as pool:
                    ids = list(pool.map(lambda i: submit(client, image, i), range(total)))
                control.add_consumer(QUEUE, destination=edit_workers, reply=True, timeout=10)
                wait_all_done(sessions, ids, 600)
            with sessions() as session:
                first, last = session.execute(
                    select(func.min(Job.started_at), func.max(Job.finished_at)).where(Job.id.in_(ids))
                ).one()
        return total / (last - first).total_seconds(), latencies
    finally:
        engine.dispose()
        drop_database(args.admin_url, url)
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--jobs-per-worker", type=int, default=25)
    parser.add_argument("--device-ms", type=float, default=200.0, help="simulated GPU time per job")
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a database to connect to while creating and dropping the benchmark's own",
    )
    args = parser.parse_args()
    image = source_png()
    print(
        f"{platform.node()}: {platform.processor() or platform.machine()}, "
        f"simulated device time {args.device_ms:.0f} ms per job, {args.jobs_per_worker} jobs per worker"
    )
    print(f"{'workers':>7} {'jobs/s':>8} {'ideal':>8} {'efficiency':>10} {'claim p50':>10} {'claim p99':>10}")
    base = None
    for n in args.workers:
        rate, latencies = run(n, args, image)
        base = base or rate / n
        ordered = sorted(latencies)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)]
        print(
            f"{n:>7} {rate:>8.2f} {n * base:>8.2f} {rate / (n * base):>10.2f} "
            f"{statistics.median(latencies):>8.1f}ms {p99:>8.1f}ms",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
