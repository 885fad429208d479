"""Platform overhead per job, measured with the instant fake model (every millisecond is ours).

    python benchmarks/platform_overhead.py                     # embedded default: SQLite, local folder
    python benchmarks/platform_overhead.py --database-url postgresql+psycopg://postgres@127.0.0.1/bench

It starts the platform exactly as `varedit-serve` does (its own Redis, the API under uvicorn, Celery
edit workers with the fake pipeline: 10 scales, no work per scale, max_batch 1), then measures:

1. latency, one job at a time (no queueing): accepted -> claimed (``started_at - created_at`` in the
   database: commit, publish, broker, Celery delivery, the claim UPDATE),
   the worker's bookkeeping after generation (``deliver_ms``: PNG encode, upload, fenced finish) and the
   whole round trip as a client sees it (POST until a long-poll GET returns succeeded);
2. throughput: submits/s from concurrent HTTP clients, then jobs completed/s while the workers drain;
3. webhook latency: the job's commit as succeeded (``finished_at``) until a local receiver has the
   signed ``job.succeeded`` POST (outbox row, beat dispatch every VAREDIT_WEBHOOK_DISPATCH_S, the
   webhook worker's send).

Prints one block of numbers. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import atexit
import http.server
import io
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from sqlalchemy import select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.db import make_engine, make_sessionmaker  # noqa: E402
from jobs.models import Job  # noqa: E402
from serve.embedded import EmbeddedPlatform  # noqa: E402
from varedit_client import Client  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(name: str, values_ms: list[float]) -> str:
    return (
        f"{name:<34} p50 {pct(values_ms, 50):7.1f} ms   p99 {pct(values_ms, 99):7.1f} ms   "
        f"mean {statistics.fmean(values_ms):7.1f} ms   (n={len(values_ms)})"
    )


def source_png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (180, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def deliver_ms(log_paths: list[Path], job_ids: set[str]) -> list[float]:
    found = []
    for path in log_paths:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"edit_succeeded"' in line:
                record = json.loads(line)
                if record.get("job_id") in job_ids:
                    found.append(float(record["deliver_ms"]))
    return found


class WebhookArrivals:
    """A local endpoint noting when each job's webhook arrived (wall clock, like ``finished_at``)."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.changed = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.changed:
                    receiver.arrived[json.loads(body)["data"]["id"]] = time.time()
                    receiver.changed.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, job_id: str, timeout_s: float) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: job_id in self.arrived, timeout_s):
                raise TimeoutError(f"no webhook for {job_id}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--throughput-jobs", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP submitters")
    parser.add_argument("--webhook-jobs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="edit worker processes")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--database-url", help="default: SQLite in a temporary data folder")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="varedit-bench-"))
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)  # the database, logs and images
    env = {
        "VAREDIT_MODEL_PATH": "fake://?scales=10",
        "VAREDIT_MAX_BATCH": "1",
        "VAREDIT_LOG_JSON": "true",
        "VAREDIT_LOG_LEVEL": "INFO",
        # no caller limits (the bursts are the point); webhooks go to 127.0.0.1
        "VAREDIT_RATE_LIMIT": "1000000/minute",
        "VAREDIT_MAX_IN_FLIGHT": "1000000",
        "VAREDIT_ALLOW_PRIVATE_URLS": "true",
    }
    if args.database_url:
        env["VAREDIT_DATABASE_URL"] = args.database_url
    image = source_png(args.image_size)
    with EmbeddedPlatform(port=0, data_dir=data_dir, extra_env=env, edit_workers=args.workers) as platform:
        platform.wait_ready()
        database_url = platform.env["VAREDIT_DATABASE_URL"]
        sessions = make_sessionmaker(make_engine(database_url))
        logs = [c.log_path for c in platform.edit_children() if c.log_path]
        client = Client(platform.url)

        for _ in range(5):  # warm the API, the DB connections and the worker's code paths
            client.wait(client.submit(image, "warm up")["id"], timeout_s=30)

        # 1. latency, one job at a time
        round_trip, ids = [], []
        for i in range(args.latency_jobs):
            t0 = time.perf_counter()
            job_id = client.submit(image, f"latency {i}", seed=i)["id"]
            job = client.wait(job_id, timeout_s=30)
            round_trip.append((time.perf_counter() - t0) * 1000)
            assert job["status"] == "succeeded", job
            ids.append(job_id)
        with sessions() as session:
            rows = session.execute(
                select(Job.created_at, Job.started_at, Job.finished_at).where(Job.id.in_(ids))
            ).all()
        to_claim = [(s - c).total_seconds() * 1000 for c, s, _ in rows]
        claim_to_finish = [(f - s).total_seconds() * 1000 for _, s, f in rows]
        bookkeeping = deliver_ms(logs, set(ids))

        # 2. throughput: one keep-alive connection per submitting thread, as a real client would
        local = threading.local()

        def submit_one(i: int) -> str:
            if not hasattr(local, "client"):
                local.client = Client(platform.url)
            return local.client.submit(image, f"throughput {i}", seed=i)["id"]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            burst = list(pool.map(submit_one, range(args.throughput_jobs)))
        submit_s = time.perf_counter() - t0
        for job_id in burst:
            client.wait(job_id, timeout_s=300)
        drain_s = time.perf_counter() - t0

        # 3. webhook latency, one job at a time
        receiver = WebhookArrivals()
        hook_ids = []
        for i in range(args.webhook_jobs):
            job_id = client.submit(
                image, f"webhook {i}", seed=i, webhook_url=receiver.url, webhook_events="job.succeeded"
            )["id"]
            client.wait(job_id, timeout_s=30)
            receiver.wait_for(job_id, timeout_s=30)
            hook_ids.append(job_id)
        receiver.close()
        client.close()
        with sessions() as session:
            rows = session.execute(select(Job.id, Job.finished_at).where(Job.id.in_(hook_ids))).all()
        finished = dict(rows)
        webhook_ms = [(receiver.arrived[j] - finished[j].timestamp()) * 1000 for j in hook_ids]

    print(
        f"platform overhead, fake instant model (10 scales), {args.workers} edit worker(s), "
        f"{'PostgreSQL' if args.database_url else 'SQLite'}, {args.image_size}x{args.image_size} PNG"
    )
    print(summary("accepted -> claimed", to_claim))
    print(summary("claimed -> succeeded (run + finish)", claim_to_finish))
    print(summary("finish bookkeeping (deliver_ms)", bookkeeping))
    print(summary("client round trip (POST..succeeded)", round_trip))
    print(
        f"{'submits/s':<34} {args.throughput_jobs / submit_s:7.1f}   ({args.throughput_jobs} jobs, "
        f"{args.clients} concurrent clients)"
    )
    print(f"{'jobs completed/s':<34} {args.throughput_jobs / drain_s:7.1f}   (burst until all succeeded)")
    print(summary("succeeded -> webhook received", webhook_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
