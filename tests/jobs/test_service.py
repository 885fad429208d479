"""Submission as one unit (object + row + idempotency record), idempotency records, settings, migrations,
and the local Redis helper."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from alembic import command
from alembic.config import Config
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from jobs import idempotency, reapers, service
from jobs.db import MIGRATIONS_DIR, make_engine, make_sessionmaker, session_scope
from jobs.errors import IdempotencyConflict, IdempotencyInFlight
from jobs.models import IdempotencyRecord, Job, utcnow
from jobs.queue import RUN_EDIT_TASK, CeleryPublisher, make_celery, publish_quietly, queue_name
from jobs.service import Submitted, request_fingerprint, submit_edit
from jobs.settings import MAX_DURATION_S, InvalidSettings, Settings, read_settings
from jobs.storage import LocalStorage
from jobs.transitions import EditSpec
from serve.redis_server import free_port
from tests.conftest import lose_next_commit_reply

Sessions = sessionmaker[Session]
SPEC = EditSpec(instruction="x", model="tiny", resolution=32, seed=1, cfg=3.0, tau=0.1, start_timeout_s=60)


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []

    def publish_run_edit(self, job_id: str, model: str, delay_s: float = 0) -> None:
        self.published.append((job_id, model))


def _submit(sessions: Sessions, storage: LocalStorage, publisher: RecordingPublisher, **kw: Any) -> Submitted:
    args: dict[str, Any] = {
        "owner": "alice",
        "spec": SPEC,
        "image": b"png-bytes",
        "content_type": "image/png",
        **kw,
    }
    return submit_edit(sessions, storage, publisher, **args)


def _rows(sessions: Sessions, model: type) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_submit_edit_stores_commits_and_publishes(sessions: Sessions, tmp_path: Path) -> None:
    storage, publisher = LocalStorage(tmp_path / "objects"), RecordingPublisher()
    submitted = _submit(sessions, storage, publisher, idempotency_key="k", fingerprint="f")
    assert (submitted.body["id"], submitted.body["status"]) == (submitted.job_id, "queued")
    assert not submitted.replayed
    assert storage.get(f"jobs/{submitted.job_id}/source.png") == b"png-bytes"
    assert publisher.published == [(submitted.job_id, "tiny")]
    replay = _submit(sessions, storage, publisher, idempotency_key="k", fingerprint="f")
    assert (replay.job_id, replay.body, replay.replayed) == (submitted.job_id, submitted.body, True)
    assert _rows(sessions, Job) == 1 and len(publisher.published) == 1


def test_a_submit_whose_publish_fails_is_republished_at_the_next_pass(
    sessions: Sessions, tmp_path: Path
) -> None:
    """Before, such a job waited `stranded_after_s` (300 s), and since workers claim the oldest queued
    job whatever message woke them, the newest queued job of any owner was the one left without a
    message, with workers idle."""

    class DeadBroker:
        def publish_run_edit(self, job_id: str, model: str, delay_s: float = 0) -> None:
            raise ConnectionError("broker down")

    submitted = _submit(sessions, LocalStorage(tmp_path / "objects"), DeadBroker())
    with session_scope(sessions) as session:
        assert reapers.stranded_queued(session, 300) == [reapers.ToPublish(submitted.job_id, "tiny")]


def test_submit_edit_failing_in_the_transaction_leaves_nothing(
    sessions: Sessions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, publisher = LocalStorage(tmp_path / "objects"), RecordingPublisher()

    def broken_render(job: Job) -> dict[str, Any]:
        raise RuntimeError("render failed after the insert")

    monkeypatch.setattr(service, "render_job", broken_render)
    with pytest.raises(RuntimeError):
        _submit(sessions, storage, publisher, idempotency_key="k", fingerprint="f")
    assert _rows(sessions, Job) == 0 and _rows(sessions, IdempotencyRecord) == 0
    assert [p for p in storage.root.rglob("*") if p.is_file()] == []
    assert publisher.published == []


def test_a_rolled_back_submit_removes_the_folder_it_made_and_nothing_else(
    sessions: Sessions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, publisher = LocalStorage(tmp_path / "objects"), RecordingPublisher()
    _submit(sessions, storage, publisher)  # a job whose folder, and the jobs/ folder, must stay
    before = sorted(storage.root.rglob("*"))

    def failing_insert(session: Session, **fields: Any) -> Job:
        raise RuntimeError("the insert failed after the image was stored")

    monkeypatch.setattr(service.transitions, "submit", failing_insert)
    with pytest.raises(RuntimeError):
        _submit(sessions, storage, publisher)
    assert sorted(storage.root.rglob("*")) == before  # no empty jobs/<id>/ left behind
    assert _rows(sessions, Job) == 1


def test_a_lost_commit_reply_on_submit_keeps_the_job_and_its_source(
    sessions: Sessions, tmp_path: Path
) -> None:
    # given a submit whose COMMIT succeeds but whose reply is lost
    storage, publisher = LocalStorage(tmp_path / "objects"), RecordingPublisher()
    fired = lose_next_commit_reply(sessions, lambda sql: sql.startswith("INSERT INTO jobs"))
    # when
    submitted = _submit(sessions, storage, publisher, idempotency_key="k", fingerprint="f")
    # then the database said the job exists: it is accepted, its source kept and its message sent
    assert fired and submitted.body["status"] == "queued"
    assert storage.get(f"jobs/{submitted.job_id}/source.png") == b"png-bytes"
    assert publisher.published == [(submitted.job_id, "tiny")]
    replay = _submit(sessions, storage, publisher, idempotency_key="k", fingerprint="f")
    assert replay.replayed and replay.job_id == submitted.job_id


def test_a_submit_failing_before_its_commit_leaves_nothing_when_the_database_cannot_be_asked(
    tmp_path: Path,
) -> None:
    # given a database that cannot be reached at all (the outcome of the submit cannot be read back)
    unreachable = make_sessionmaker(make_engine(f"sqlite:///{tmp_path}/no-such-folder/varedit.db"))
    storage, publisher = LocalStorage(tmp_path / "objects"), RecordingPublisher()
    # when a submit stores its source and then fails at its first statement, long before any COMMIT
    with pytest.raises(OperationalError):
        _submit(unreachable, storage, publisher)
    # then the source is removed: the job cannot exist, so the object would be an orphan for good (before:
    # kept because the database could not be asked, though no COMMIT had been sent)
    assert [p for p in storage.root.rglob("*") if p.is_file()] == []
    assert publisher.published == []


def test_idempotency_reserve_conflict_in_flight_and_stale_takeover(sessions: Sessions) -> None:
    now = utcnow()
    with session_scope(sessions) as session:
        assert idempotency.reserve(session, "alice", "k", "h1", now=now) is None
        assert idempotency.reserve(session, "bob", "k", "h1", now=now) is None  # keys are per owner
    with session_scope(sessions) as session:
        with pytest.raises(IdempotencyConflict):
            idempotency.reserve(session, "alice", "k", "h2", now=now)
        with pytest.raises(IdempotencyInFlight):
            idempotency.reserve(session, "alice", "k", "h1", now=now)
        stale = now + timedelta(seconds=idempotency.IN_FLIGHT_STALE_S + 1)
        assert idempotency.reserve(session, "alice", "k", "h1", now=stale) is None  # the first request died
        idempotency.complete(session, "alice", "k", "job-1", 202, {"id": "job-1"})
    with session_scope(sessions) as session:
        record = idempotency.reserve(session, "alice", "k", "h1")
        assert (record.job_id, record.response_status, record.response_body) == (
            "job-1",
            202,
            {"id": "job-1"},
        )
        assert idempotency.prune(session, ttl_s=60, now=now + timedelta(seconds=3600)) == 2


def test_fingerprint_depends_on_fields_and_image() -> None:
    base = request_fingerprint({"instruction": "a", "seed": 1}, b"img")
    assert base == request_fingerprint({"seed": 1, "instruction": "a"}, b"img")
    assert base != request_fingerprint({"instruction": "a", "seed": 2}, b"img")
    assert base != request_fingerprint({"instruction": "a", "seed": 1}, b"other")


def test_settings_defaults_and_normalisation(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'varedit.db'}"
    assert settings.storage_url == f"file://{tmp_path / 'data' / 'objects'}"
    assert settings.default_model == "tiny" and settings.model_overrides == {}
    pg = make_settings(database_url="postgresql://u@h/db")
    assert pg.database_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    "overrides",
    [
        {"models": []},
        {"model_overrides": {"unknown": {"cfg": 2.0}}},
        {"model_overrides": {"tiny": {"cfg": 50.0}}},
        {"model_overrides": {"tiny": {"resolutions": []}}},
        {"heartbeat_s": 60, "lease_s": 60},
        {"page_size_max": 150},  # above the API's `limit` maximum: it would never take effect
        {"environment": "production"},
        # another spelling of production is production, and a typo is refused: neither may leave the
        # production checks silently off
        {"environment": "Production "},
        {"environment": "prod"},
        {"dtype": "bf16"},
        # webhook settings no message could be sent or scheduled with
        {"webhook_secrets": ["whsec_!!!notbase64"]},
        {"webhook_secrets": ["whsec_"]},
        {"webhook_secrets": ["whsec_S3CRET!!!"]},  # decodable only by dropping the !s
        {"webhook_retry_s": [5, float("inf")]},
        {"webhook_retry_s": [3.6e12]},
        {"webhook_retry_s": [-5]},
        # ports no socket has: beat failed to start its gauges, a URL's port never matched
        {"job_metrics_port": 70000},
        {"job_metrics_port": 0},
        {"allowed_url_ports": [0, 443]},
        {"allowed_url_ports": [99999]},
        # sampling bounds the model cannot run with (tau divides the logits), min above max, a seed
        # no draw can make (randbelow(0)) or the jobs' 32-bit seed column cannot hold
        {"tau_min": 0},
        {"tau_min": 0, "model_overrides": {"tiny": {"tau": 0}}},
        {"tau_min": 1.0, "tau_max": 0.5},
        {"cfg_min": 5, "cfg_max": 2},
        {"cfg_max": float("inf")},
        {"cfg_min": float("nan")},
        {"seed_max": -1},
        {"seed_max": 2**31},
        {"drain_grace_s": float("inf")},
        {"model_overrides": {"tiny": {"resolutions": [-64]}}},
        {"model_overrides": {"tiny": {"resolutions": [0]}}},
        {"heartbeat_s": 30, "worker_stale_s": 30},  # a worker would count as gone between its beats
        {"presigned_url_s": 8 * 86400},  # S3 signs a URL for 7 days at most
        # rates the Redis limiter cannot hold (every request let through) or that limits misreads
        {"rate_limit": "99999999999999999999999/second"},
        {"rate_limit": "1/0 second"},
        {"rate_limit": "1/second;100/day"},
        {"rate_limit": "1/ 1000000000000 years"},
        {"device": "gpu"},
        {"device": "cuda:"},
        {"device": "CUDA"},
        {"device": "cuda:255"},  # torch reads it as cuda, the current device
    ],
    ids=str,
)
def test_settings_refuse_unworkable_values(make_settings: Callable[..., Settings], overrides: dict) -> None:
    with pytest.raises(ValueError):
        make_settings(**overrides)


DURATION_SETTINGS = [
    "lease_s", "heartbeat_s", "drain_grace_s", "start_timeout_s", "stranded_after_s", "result_ttl_s",
    "idempotency_ttl_s", "worker_stale_s", "max_wait_s", "wait_recheck_s", "image_url_timeout_s",
    "webhook_timeout_s", "webhook_dispatch_s",
]  # fmt: skip


@pytest.mark.parametrize("name", DURATION_SETTINGS)
def test_durations_are_bounded(make_settings: Callable[..., Settings], name: str) -> None:
    # before, VAREDIT_LEASE_S=10**15 was accepted and every claim raised OverflowError in the worker
    with pytest.raises(ValidationError, match=f"(?i){name}"):
        make_settings(**{name: 10**12})
    assert utcnow() + timedelta(seconds=MAX_DURATION_S) < utcnow().replace(year=9999)  # the cap is usable


@pytest.mark.parametrize(
    "device",
    ["cpu", "cuda", "cuda:0", "cuda:12", "mps", "xpu:1", "gpu", "CUDA", "cuda:", "cuda:01", "cuda:-1",
     " cuda", "cuda:0:1", "npu", "cuda:1x"],
)  # fmt: skip
def test_a_device_is_what_torch_parses(make_settings: Callable[..., Settings], device: str) -> None:
    # checked without torch (the API never imports it): before, "gpu" failed only in the edit worker
    torch = pytest.importorskip("torch")
    try:
        torch.device(device)
    except RuntimeError:
        with pytest.raises(ValidationError, match="a torch device"):
            make_settings(device=device)
    else:
        assert make_settings(device=device).device == device


def test_an_empty_device_is_the_default(make_settings: Callable[..., Settings]) -> None:
    assert make_settings(device="").device is None and make_settings().device is None


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VAREDIT_MODELS", '["8B-512", "tiny"]')
    monkeypatch.setenv("VAREDIT_LEASE_S", "120")
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.models == ["8B-512", "tiny"] and settings.lease_s == 120


@pytest.mark.parametrize(
    ("value", "compile"), [("true", True), ("0", False), ("reduce-overhead", "reduce-overhead")]
)
def test_compile_is_a_switch_or_a_torch_compile_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str, compile: bool | str
) -> None:
    monkeypatch.setenv("VAREDIT_COMPILE", value)
    assert Settings(_env_file=None, data_dir=tmp_path).compile == compile  # type: ignore[call-arg]
    monkeypatch.setenv("VAREDIT_COMPILE", "fast")
    with pytest.raises(ValidationError):
        Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]


DATABASE_URL_PROBLEM = (
    "VAREDIT_DATABASE_URL: not a database URL SQLAlchemy can use "
    "(sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST[:PORT]/DATABASE)"
)


@pytest.mark.parametrize(
    ("env", "problems"),
    [
        (
            {"VAREDIT_MAX_BATCH": "abc", "VAREDIT_ENVIRONMENT": "prod"},
            [
                "VAREDIT_ENVIRONMENT: Input should be 'development' or 'production'",
                "VAREDIT_MAX_BATCH: Input should be a valid integer, unable to parse string as an integer",
            ],
        ),
        (
            {"VAREDIT_MODEL_OVERRIDES": '{"shapes-64": {"resolutions": []}}'},
            [
                "VAREDIT_MODEL_OVERRIDES (shapes-64.resolutions): "
                "List should have at least 1 item after validation, not 0"
            ],
        ),
        (
            {"VAREDIT_MODELS": "tiny"},
            ["VAREDIT_MODELS: not valid JSON (Expecting value: line 1 column 1 (char 0))"],
        ),
        (  # every variable that is not JSON, beside the other invalid values
            {"VAREDIT_MODELS": "tiny", "VAREDIT_WEBHOOK_RETRY_S": "5,300", "VAREDIT_MAX_BATCH": "abc"},
            [
                "VAREDIT_MODELS: not valid JSON (Expecting value: line 1 column 1 (char 0))",
                "VAREDIT_MAX_BATCH: Input should be a valid integer, unable to parse string as an integer",
                "VAREDIT_WEBHOOK_RETRY_S: not valid JSON (Extra data: line 1 column 2 (char 1))",
            ],
        ),
        (
            {"VAREDIT_HEARTBEAT_S": "60"},
            [
                "VAREDIT_HEARTBEAT_S must be smaller than VAREDIT_LEASE_S",
                "VAREDIT_HEARTBEAT_S must be smaller than VAREDIT_WORKER_STALE_S",
            ],
        ),
        # before: accepted; beat failed at start_http_server, the URL ports never matched a URL, every
        # submit without a seed was a 500 (randbelow(0)), jobs defaulting to tau 0 failed on the worker,
        # and a device torch cannot parse failed only in the edit worker, after the API took jobs
        (
            {
                "VAREDIT_JOB_METRICS_PORT": "70000",
                "VAREDIT_ALLOWED_URL_PORTS": "[0, 99999]",
                "VAREDIT_TAU_MIN": "0",
                "VAREDIT_SEED_MAX": "-1",
                "VAREDIT_MODEL_OVERRIDES": '{"shapes-64": {"resolutions": [-64]}}',
                "VAREDIT_DEVICE": "gpu",
            },
            [
                "VAREDIT_DEVICE: a torch device: cpu, cuda, cuda:N, mps, ... (a type, then optionally :N)",
                "VAREDIT_MODEL_OVERRIDES (shapes-64.resolutions.0): Input should be greater than 0",
                "VAREDIT_TAU_MIN: Input should be greater than 0",
                "VAREDIT_SEED_MAX: Input should be greater than or equal to 0",
                "VAREDIT_ALLOWED_URL_PORTS (0): Input should be greater than or equal to 1",
                "VAREDIT_ALLOWED_URL_PORTS (1): Input should be less than or equal to 65535",
                "VAREDIT_JOB_METRICS_PORT: Input should be less than or equal to 65535",
            ],
        ),
        (
            {
                "VAREDIT_CFG_MIN": "5",
                "VAREDIT_CFG_MAX": "2",
                "VAREDIT_TAU_MIN": "1",
                "VAREDIT_TAU_MAX": "0.5",
            },
            [
                "VAREDIT_CFG_MIN must not be larger than VAREDIT_CFG_MAX",
                "VAREDIT_TAU_MIN must not be larger than VAREDIT_TAU_MAX",
            ],
        ),
        ({"VAREDIT_CFG_MAX": "inf"}, ["VAREDIT_CFG_MAX: Input should be a finite number"]),
        (  # the checks across settings beside invalid values, except those that involve one of them
            {
                "VAREDIT_MAX_BATCH": "abc",
                "VAREDIT_TAU_MIN": "0",
                "VAREDIT_TAU_MAX": "-1",
                "VAREDIT_CFG_MIN": "5",
                "VAREDIT_CFG_MAX": "2",
                "VAREDIT_HEARTBEAT_S": "60",
                "VAREDIT_MODELS": "tiny",
                "VAREDIT_MODEL_OVERRIDES": '{"tiny": {"resolutions": [32]}}',
            },
            [
                "VAREDIT_MODELS: not valid JSON (Expecting value: line 1 column 1 (char 0))",
                "VAREDIT_MAX_BATCH: Input should be a valid integer, unable to parse string as an integer",
                "VAREDIT_TAU_MIN: Input should be greater than 0",
                "VAREDIT_HEARTBEAT_S must be smaller than VAREDIT_LEASE_S",
                "VAREDIT_HEARTBEAT_S must be smaller than VAREDIT_WORKER_STALE_S",
                "VAREDIT_CFG_MIN must not be larger than VAREDIT_CFG_MAX",
            ],
        ),
        # before: read by the worker alone, where a port past 65535 or no number failed each pool
        # process's start (OverflowError, ValueError)
        (
            {"VAREDIT_WORKER_METRICS_PORT": "70000"},
            ["VAREDIT_WORKER_METRICS_PORT: Input should be less than or equal to 65535"],
        ),
        (  # every check across settings at once, not the first of them
            {
                "VAREDIT_HEARTBEAT_S": "60",
                "VAREDIT_RATE_LIMIT": "often",
                "VAREDIT_ENVIRONMENT": "production",
                "VAREDIT_DATABASE_URL": "postgress://u:s3cret@127.0.0.1/db",
            },
            [
                DATABASE_URL_PROBLEM,
                "VAREDIT_HEARTBEAT_S must be smaller than VAREDIT_LEASE_S",
                "VAREDIT_HEARTBEAT_S must be smaller than VAREDIT_WORKER_STALE_S",
                "VAREDIT_RATE_LIMIT: rate limit 'often' is not a rate such as 60/minute or 1000 per day",
                "production needs VAREDIT_AUTH=api_key",
            ],
        ),
        (
            {"VAREDIT_RATE_LIMIT": "often"},
            ["VAREDIT_RATE_LIMIT: rate limit 'often' is not a rate such as 60/minute or 1000 per day"],
        ),
        (  # one line for one variable, not one per member of its union type
            {"VAREDIT_COMPILE": "fast"},
            ["VAREDIT_COMPILE: true, false or a torch.compile mode (default, reduce-overhead, max-autotune)"],
        ),
        # before: accepted, then every child died with a traceback and was restarted until it gave up
        (
            {"VAREDIT_LOG_LEVEL": "verbose"},
            ["VAREDIT_LOG_LEVEL: one of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case)"],
        ),
        # before: accepted, then the edit worker reported the first as its model failing to load, and
        # the second stored every object under /objects ("data" read as the host)
        *(
            (
                {"VAREDIT_STORAGE_URL": url},
                ["VAREDIT_STORAGE_URL: not a storage URL (file:///PATH or s3://BUCKET/PREFIX)"],
            )
            for url in ("ftp://host/objects", "file://data/objects")
        ),
        # a URL SQLAlchemy cannot parse or has no dialect for: named here, not a traceback at the first
        # connection (the worker kept running); its password is never repeated
        *(
            ({"VAREDIT_DATABASE_URL": url}, [DATABASE_URL_PROBLEM])
            for url in (
                "postgresql://u:s3cret@127.0.0.1:port/db",
                "postgress://u:s3cret@127.0.0.1/db",
                "s3cret",
            )
        ),
    ],
)
def test_invalid_settings_are_one_line_each_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], problems: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("VAREDIT_DATA_DIR", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidSettings) as invalid:
        read_settings()
    assert invalid.value.problems == problems


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "serve", "--port", "0"],
        ["-m", "uvicorn", "api.main:app"],
        ["-m", "celery", "-A", "worker.celery_app", "worker"],
    ],
    ids=["varedit-serve", "api", "worker"],
)
def test_the_commands_exit_2_naming_each_invalid_setting(tmp_path: Path, command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAREDIT_")}
    env |= {"VAREDIT_DATA_DIR": str(tmp_path), "VAREDIT_MAX_BATCH": "abc", "VAREDIT_ENVIRONMENT": "prod"}
    done = subprocess.run(
        [sys.executable, *command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    said = done.stderr  # errors on stderr, stdout free for what a command prints on success
    assert done.returncode == 2, done.stdout + said
    assert "error: VAREDIT_MAX_BATCH: Input should be a valid integer" in said
    assert "error: VAREDIT_ENVIRONMENT: Input should be 'development' or 'production'" in said
    assert "Traceback" not in said


def test_bad_settings_stop_uvicorn_with_workers_instead_of_restarting_them(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAREDIT_")}
    env |= {"VAREDIT_DATA_DIR": str(tmp_path), "VAREDIT_MAX_BATCH": "abc"}
    command = ["-m", "uvicorn", "api.main:app", "--workers", "2", "--host", "127.0.0.1", "--port", "0"]
    # before: every child that exited was started again, and this ran until the timeout
    done = subprocess.run(
        [sys.executable, *command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90
    )
    assert "error: VAREDIT_MAX_BATCH: Input should be a valid integer" in done.stderr
    assert "failed to start, stopping the parent process" in done.stderr
    assert "Traceback" not in done.stderr


def test_migrations_downgrade_and_upgrade_again(db_url: str) -> None:
    config = Config(str(MIGRATIONS_DIR.parent / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", db_url)
    config.attributes["configure_logging"] = False
    command.downgrade(config, "base")
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert not engine.dialect.has_table(conn, "jobs")
    command.upgrade(config, "head")
    with engine.connect() as conn:
        assert engine.dialect.has_table(conn, "jobs")
    engine.dispose()


def test_celery_publisher_sends_run_edit_by_name_to_the_model_queue(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    model = f"probe-{secrets.token_hex(4)}"
    publisher = CeleryPublisher(make_celery(make_settings(broker_url=redis_url)))
    assert publish_quietly(publisher, "job-1", model)
    with redis.Redis.from_url(redis_url) as client:
        [raw] = client.lrange(queue_name(model), 0, -1)
        client.delete(queue_name(model))
    message = json.loads(raw)
    assert message["headers"]["task"] == RUN_EDIT_TASK == "worker.run_edit"
    assert json.loads(base64.b64decode(message["body"]))[0] == ["job-1"]


def test_publish_to_a_dead_broker_reports_failure(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    assert not publish_quietly(CeleryPublisher(make_celery(settings)), "job-1", "tiny")
