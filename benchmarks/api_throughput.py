"""Submits per second of the API tier, by number of API processes (uvicorn workers).

    python benchmarks/api_throughput.py                    # 1, 2 and 4 processes, the local PostgreSQL
    python benchmarks/api_throughput.py --processes 2 --requests 4000 --concurrency 64

For each process count it starts `uvicorn api.main:app --workers N` against a fresh PostgreSQL
database, a Redis of its own (the broker the jobs are published to) and local storage, then fires
``POST /v1/edits`` (multipart, a 64x64 PNG, instruction and seed) with ApacheBench (`ab`, Debian's
apache2-utils): a C client, so the load generator takes little of the CPU it measures. No edit worker
runs: each accepted job is stored, committed and published, which is the whole of a submit.

Prints requests/s, latency percentiles and failed requests per row. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scaling import drop_database, fresh_database  # noqa: E402  (the folder of this script)

from jobs.db import migrate  # noqa: E402
from serve.redis_server import RedisServer, free_port  # noqa: E402

BOUNDARY = "varedit-bench-boundary"


def multipart_body() -> bytes:
    """One edit request: a 64x64 PNG, an instruction and a seed."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (180, 40, 40)).save(buf, format="PNG")
    parts = [
        (b'Content-Disposition: form-data; name="instruction"', b"make the square blue"),
        (b'Content-Disposition: form-data; name="seed"', b"7"),
        (
            b'Content-Disposition: form-data; name="image"; filename="in.png"\r\nContent-Type: image/png',
            buf.getvalue(),
        ),
    ]
    sep = f"--{BOUNDARY}".encode()
    body = b"".join(sep + b"\r\n" + head + b"\r\n\r\n" + value + b"\r\n" for head, value in parts)
    return body + sep + b"--\r\n"


def wait_up(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API at {url} was not ready within {timeout_s:.0f} s")
        time.sleep(0.2)  # polling readiness under a deadline


def ab(url: str, body: Path, requests: int, concurrency: int) -> dict[str, float]:
    out = subprocess.run(
        ["ab", "-q", "-k", "-n", str(requests), "-c", str(concurrency), "-p", str(body),
         "-T", f"multipart/form-data; boundary={BOUNDARY}", f"{url}/v1/edits"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    numbers = {
        "rps": r"Requests per second:\s+([\d.]+)",
        "failed": r"Failed requests:\s+(\d+)",
        "non2xx": r"Non-2xx responses:\s+(\d+)",
        "p50": r"\s50%\s+(\d+)",
        "p99": r"\s99%\s+(\d+)",
    }
    found = {k: re.search(p, out) for k, p in numbers.items()}
    return {k: float(m.group(1)) if m else 0.0 for k, m in found.items()}


def run(processes: int, args: argparse.Namespace, body: Path) -> dict[str, float]:
    url = fresh_database(args.admin_url)
    migrate(url)
    data_dir = Path(tempfile.mkdtemp(prefix="varedit-api-bench-"))
    port = free_port()
    try:
        with RedisServer(workdir=data_dir) as redis:
            env = {
                **os.environ,
                "VAREDIT_DATABASE_URL": url,
                "VAREDIT_BROKER_URL": redis.url,
                "VAREDIT_DATA_DIR": str(data_dir),
                "VAREDIT_MODELS": '["tiny"]',
                # the model's facts without a worker, as when scaling from zero
                "VAREDIT_MODEL_OVERRIDES": '{"tiny": {"resolutions": [64], "cfg": 3, "tau": 0.1}}',
                "VAREDIT_RATE_LIMIT": "100000000/minute",
                "VAREDIT_MAX_IN_FLIGHT": "100000000",
                "VAREDIT_LOG_LEVEL": "WARNING",
            }
            api = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", str(processes), "--no-access-log", "--log-level", "warning"],
                cwd=ROOT, env=env,
            )  # fmt: skip
            try:
                base = f"http://127.0.0.1:{port}"
                wait_up(base)
                ab(base, body, min(200, args.requests), args.concurrency)  # warm every process
                return ab(base, body, args.requests, args.concurrency)
            finally:
                api.terminate()
                api.wait(timeout=30)
    finally:
        drop_database(args.admin_url, url)
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a database to connect to while creating and dropping the benchmark's own",
    )
    args = parser.parse_args()
    if shutil.which("ab") is None:
        parser.error("needs ApacheBench: apt-get install apache2-utils")
    with tempfile.NamedTemporaryFile(suffix=".body") as body:
        body.write(multipart_body())
        body.flush()
        print(
            f"{platform.node()}: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"{args.requests} submits of a 64x64 PNG, {args.concurrency} concurrent, PostgreSQL"
        )
        print(f"{'processes':>9} {'submits/s':>10} {'p50':>7} {'p99':>7} {'failed':>7}")
        for n in args.processes:
            r = run(n, args, Path(body.name))
            failed = int(r["failed"] + r["non2xx"])
            print(f"{n:>9} {r['rps']:>10.1f} {r['p50']:>5.0f}ms {r['p99']:>5.0f}ms {failed:>7}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
