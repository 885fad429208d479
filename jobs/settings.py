"""All configuration of the job platform, read once from ``VAREDIT_*`` variables (or ``.env``).

With nothing set, the defaults describe the embedded single-machine platform: SQLite and local-folder
storage under ``data_dir``, a Redis broker on localhost, the small bundled model.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import socket
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jobs.rates import check_rate_limit

CompileMode = Literal["default", "reduce-overhead", "max-autotune"]  # torch.compile's modes
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
STORAGE_SCHEMES = ("file", "s3")  # what jobs.storage.storage_from_url opens
Port = Annotated[int, Field(ge=1, le=65535)]  # one a socket can listen on or a URL can name
# What torch.device parses (TYPE or TYPE:INDEX), checked without importing torch: the API never does,
# and a worker reported a device it cannot parse only as its model failing to load. The index has two
# digits at most: torch reads a larger one modulo 256 (cuda:255 is cuda, cuda:1000 is cuda:-24).
TORCH_DEVICE_TYPES = (
    "cpu", "cuda", "ipu", "xpu", "mkldnn", "opengl", "opencl", "ideep", "hip", "ve", "fpga", "maia", "xla",
    "lazy", "vulkan", "mps", "meta", "hpu", "mtia", "privateuseone",
)  # fmt: skip
TORCH_DEVICE = re.compile(rf"(?:{'|'.join(TORCH_DEVICE_TYPES)})(?::(?:0|[1-9][0-9]?))?")
SEED_MAX = 2**31 - 1  # the jobs' seed column is a 32-bit integer
MAX_PRESIGNED_URL_S = 7 * 86400  # S3 (and MinIO) refuse a presigned URL that lives longer
# Every duration setting stays under ten years: far past any useful value, and well inside what
# `datetime + timedelta` (year 9999) and thread waits (about 292 years) can hold, so a typo of a few
# digits is refused at start instead of raising OverflowError in a worker's claim or a reaper pass.
MAX_DURATION_S = 10 * 366 * 86400
Seconds = Annotated[int, Field(gt=0, le=MAX_DURATION_S)]
SecondsF = Annotated[float, Field(gt=0, le=MAX_DURATION_S)]


class ModelOverride(BaseModel):
    """An operator's adjustment of what a model's workers report (its folder's facts): other default
    sampling settings, or fewer resolutions. Naming resolutions, cfg and tau lets the API accept jobs
    for a model before any of its workers has ever started (e.g. scaled from zero)."""

    model_config = {"extra": "forbid", "allow_inf_nan": False}

    resolutions: list[Annotated[int, Field(gt=0)]] | None = Field(None, min_length=1)
    cfg: float | None = None
    tau: float | None = None

    def sampling(self) -> dict[str, float]:
        return {k: v for k, v in (("cfg", self.cfg), ("tau", self.tau)) if v is not None}

    @property
    def complete(self) -> bool:
        return bool(self.resolutions) and self.cfg is not None and self.tau is not None


# Secrets that are public: old compose defaults, MinIO's own, the placeholders of .env.example and
# deploy/k8s/secrets.example.yaml. Production refuses them (compared case-insensitively).
KNOWN_DEFAULT_SECRETS = frozenset(
    {
        "varedit",
        "varedit-secret",
        "minioadmin",
        "postgres",
        "password",
        "secret",
        "changeme",
        "change-me",
        "dev-postgres-password",
        "dev-redis-password",
        "dev-minio-root-password",
        "dev-minio-app-password",
        "whsec_ZGV2LW9ubHktd2ViaG9vay1zZWNyZXQtbm90LWZvci1wcm9k",
    }
)


MAX_WEBHOOK_RETRY_S = 365 * 86400.0  # the longest delay between two attempts at a webhook message


def _signs(secret: str) -> bool:
    """Whether a webhook secret is whsec_ and a non-empty key in strict base64, what the Standard Webhooks
    library signs with (its own decoding drops characters outside the alphabet, so a typo would change
    the key silently)."""
    if not secret.startswith("whsec_"):
        return False
    try:
        return bool(base64.b64decode(secret.removeprefix("whsec_"), validate=True))
    except binascii.Error:
        return False


def _database_url_problem(url: str) -> str | None:
    """Refuse a URL SQLAlchemy cannot parse (a port that is no number) or has no dialect for (a typo in
    the scheme), which otherwise failed only at the first connection, with a traceback. The problem
    does not repeat the URL: it holds the password."""
    from sqlalchemy.engine import make_url  # what every process that reads the settings then uses

    try:
        make_url(url).get_dialect()  # the dialect class only: no driver is imported, nothing connects
    except Exception:
        return (
            "VAREDIT_DATABASE_URL: not a database URL SQLAlchemy can use "
            "(sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST[:PORT]/DATABASE)"
        )
    return None


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Every knob of the api, the workers and the periodic tasks; one instance per process."""

    # No setting means infinity or NaN: every bound compared with NaN is false, and an infinite delay
    # or timeout overflows the date or the socket call it reaches.
    model_config = SettingsConfigDict(
        env_prefix="VAREDIT_", env_file=".env", extra="ignore", allow_inf_nan=False
    )

    # "production" refuses unsafe defaults. Any other spelling is refused rather than read as
    # development, so a typo ("prod", "Production ") never switches the production checks off.
    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("data")
    database_url: str = ""  # empty: sqlite:///<data_dir>/varedit.db
    broker_url: str = "redis://127.0.0.1:6379/0"  # Celery broker; also carries job-change notifications
    storage_url: str = ""  # empty: file://<data_dir>/objects ; or s3://bucket/prefix
    s3_endpoint_url: str | None = None  # MinIO or any S3-compatible endpoint
    # Where clients reach that endpoint, when not at s3_endpoint_url (e.g. MinIO inside compose):
    # presigned result URLs are signed for this one; reads and writes keep using s3_endpoint_url.
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    model_path: str | None = None  # a folder, or fake:// for the instant test model; None: the bundled model
    device: str | None = None  # "cuda", "cuda:1", "cpu"; None (or empty): CUDA when available
    # The transformer blocks' dtype; None: the pipeline's default (bfloat16 on CUDA, float32 on CPU).
    # bfloat16 on a CPU with AMX halves an edit, with results that differ from float32 ones.
    dtype: Literal["bfloat16", "float32"] | None = None
    # torch.compile the model when loading (EditPipeline's `compile`): true, or a torch.compile mode
    # ("reduce-overhead" adds CUDA graphs); for CUDA workers; each new batch size or resolution
    # compiles on first use
    compile: bool | CompileMode = False
    # Model names served by this deployment (one Celery queue each). A model's resolutions and default
    # sampling settings come from its folder, reported by its workers; `model_overrides` adjusts them.
    models: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["shapes-64"])
    model_overrides: Annotated[dict[str, ModelOverride], NoDecode] = Field(default_factory=dict)
    worker_id: str = Field(default_factory=_default_worker_id)

    # Leases and retries.
    lease_s: Seconds = 60  # a running job whose lease is this old is presumed lost
    heartbeat_s: Seconds = 10  # must stay well under lease_s and worker_stale_s
    max_attempts: int = Field(3, ge=1)
    # On SIGTERM a worker takes no new job and lets the one in hand finish for this long, then hands it
    # back to the queue with its attempt undone (worker/drain.py). A pod's or container's grace period
    # must exceed it.
    drain_grace_s: float = Field(60.0, ge=0, le=MAX_DURATION_S)
    start_timeout_s: Seconds = 3600  # default start deadline: queued longer -> expired
    stranded_after_s: Seconds = 300  # queued with no publish for this long -> republish
    result_ttl_s: Seconds = 7 * 24 * 3600  # results and sources are deleted after this
    idempotency_ttl_s: Seconds = 24 * 3600
    max_batch: int = Field(1, ge=1)  # jobs of one model+resolution run as one batch; raise it on GPUs
    worker_stale_s: Seconds = 60  # a worker silent this long is not counted as ready
    presigned_url_s: int = Field(300, gt=0, le=MAX_PRESIGNED_URL_S)

    # Input limits.
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_pixels: int = Field(4096 * 4096, gt=0)  # decompression-bomb guard on the decoded image
    # The pipeline pads an image to a square of its longest side: these bound what that square costs.
    max_image_side: int = Field(8192, gt=0)  # longest side, pixels
    max_aspect_ratio: float = Field(8.0, ge=1.0)  # longest side / shortest side
    max_instruction_chars: int = Field(1000, gt=0)
    cfg_min: float = 1.0  # accepted ranges of the sampling parameters a caller may set
    cfg_max: float = 10.0
    tau_min: float = Field(0.01, gt=0)  # tau divides the logits
    tau_max: float = 2.0
    seed_max: int = Field(SEED_MAX, ge=0, le=SEED_MAX)
    max_wait_s: Seconds = 60  # upper bound of `Prefer: wait=N`
    wait_recheck_s: SecondsF = 2.0  # waiting requests re-read the job at least this often
    max_waits: int = Field(32, gt=0)  # waits (Prefer: wait, event streams) open per caller, per API process
    page_size_max: int = Field(100, gt=0, le=100)  # can only lower the API's documented maximum `limit`

    # Who may call. "none": every request is the same anonymous owner (the laptop default);
    # "api_key": `Authorization: Bearer <key>` from `varedit-serve keys create`, each key seeing its own jobs.
    auth: Literal["none", "api_key"] = "none"
    # write requests (submit, cancel, delete, redeliver) per caller, limits notation; a key may set its own
    rate_limit: str = "120/minute"
    max_in_flight: int = Field(100, gt=0)  # queued + running jobs per caller; a key may set its own

    # URLs chosen by clients (webhook_url, image_url) may reach loopback/private/link-local addresses
    # only when this is set (tests, LANs); see jobs/netguard.py.
    allow_private_urls: bool = False
    # Ports client-chosen URLs may use; empty: 80 and 443, or any port while private URLs are allowed.
    allowed_url_ports: Annotated[list[Port], NoDecode] = Field(default_factory=list)
    image_url_max_concurrent: int = Field(4, gt=0)  # image_url fetches in flight per caller, per API process
    image_url_timeout_s: SecondsF = 10.0
    image_url_max_redirects: int = Field(3, ge=0)

    # Webhooks (Standard Webhooks 1.0). Secrets are "whsec_" + base64; list a new one first and keep the
    # old one while receivers switch: every message is signed with each. Empty: webhook_url is refused (422).
    webhook_secrets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_timeout_s: SecondsF = 10.0
    # Delays between attempts after the first (the Standard Webhooks schedule: ~27 h in all), +-10% jitter.
    webhook_retry_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5, 300, 1800, 7200, 18000, 36000, 36000]
    )
    webhook_dispatch_s: SecondsF = 1.0  # how often due deliveries are handed to the webhook worker
    max_redeliveries: int = Field(5, ge=0)  # POST .../webhooks/redeliver per job

    # Operator surfaces. /metrics answers only with `Authorization: Bearer <metrics_token>` when set
    # (with VAREDIT_AUTH=api_key it must be set, or /metrics is off).
    metrics_token: str | None = None
    # The database-derived gauges (queue depth, oldest queued age, open jobs, ready workers) are
    # exported once, by the beat process, on this port (worker/job_gauges.py); unset: not exported.
    job_metrics_port: Port | None = None
    job_metrics_host: str = "0.0.0.0"  # the address it listens on (varedit-serve: loopback only)
    # A worker's pool processes serve their own metrics from this port up, pool process i on this port
    # + i (worker/metrics.py); unset: not served.
    worker_metrics_port: Port | None = None

    # Logging.
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("environment", mode="before")
    @classmethod
    def _environment_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "models", "model_overrides", "allowed_url_ports", "webhook_secrets", "webhook_retry_s", mode="before"
    )
    @classmethod
    def _json(cls, value: object) -> object:
        """List and dict variables are JSON. Decoded here (`NoDecode` keeps pydantic-settings from it),
        so one that is not JSON is a problem line beside the others instead of ending the reading."""
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e})") from None

    @field_validator("device", "worker_metrics_port", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # as these read before they were checked

    @field_validator("device")
    @classmethod
    def _torch_device(cls, value: str | None) -> str | None:
        if value is not None and not TORCH_DEVICE.fullmatch(value):
            raise ValueError("a torch device: cpu, cuda, cuda:N, mps, ... (a type, then optionally :N)")
        return value

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_switch_or_mode(cls, value: object) -> object:
        """One problem line for a value that is neither a switch nor a mode, instead of pydantic's one
        per member of the union (`(bool): ...` and `(literal[...]): ...`)."""
        if not isinstance(value, str) or value in COMPILE_MODES:
            return value
        try:
            return TypeAdapter(bool).validate_python(value)
        except ValidationError:
            raise ValueError(f"true, false or a torch.compile mode ({', '.join(COMPILE_MODES)})") from None

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_name(cls, value: object) -> object:
        """A level the logging module knows, in any case; another one stopped every process at its
        logging setup, after the settings had been accepted."""
        if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
            return value.strip().upper()
        raise ValueError(f"one of {', '.join(LOG_LEVELS)} (any case)")

    @model_validator(mode="after")
    def _fill_and_check(self) -> Settings:
        """Derive defaults from data_dir and refuse configurations that cannot work, naming every
        problem at once (one line each), so a deployment is not fixed one restart per mistake."""
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'varedit.db').resolve()}"
        if self.database_url.startswith(("postgres://", "postgresql://")):
            # One driver everywhere: psycopg 3.
            self.database_url = "postgresql+psycopg://" + self.database_url.split("://", 1)[1]
        if not self.storage_url:
            self.storage_url = f"file://{(self.data_dir / 'objects').resolve()}"
        if problems := self._problems():
            raise ValueError("\n".join(problems))
        return self

    def _problems(self) -> list[str]:
        problems = [problem] if (problem := _database_url_problem(self.database_url)) else []
        storage = urlsplit(self.storage_url)
        # a file URL's path is absolute: file://data/objects names the folder /objects on host "data"
        on_this_host = storage.scheme != "file" or storage.netloc in ("", "localhost")
        if storage.scheme not in STORAGE_SCHEMES or not on_this_host:
            problems.append("VAREDIT_STORAGE_URL: not a storage URL (file:///PATH or s3://BUCKET/PREFIX)")
        if not self.models:
            problems.append("VAREDIT_MODELS must name at least one model")
        if unknown := sorted(set(self.model_overrides) - set(self.models)):
            problems.append(f"VAREDIT_MODEL_OVERRIDES names models not in VAREDIT_MODELS: {unknown}")
        if self.heartbeat_s >= self.lease_s:
            problems.append("VAREDIT_HEARTBEAT_S must be smaller than VAREDIT_LEASE_S")
        if self.heartbeat_s >= self.worker_stale_s:  # a worker would count as gone between its beats
            problems.append("VAREDIT_HEARTBEAT_S must be smaller than VAREDIT_WORKER_STALE_S")
        for low, high in (("cfg_min", "cfg_max"), ("tau_min", "tau_max")):
            if getattr(self, low) > getattr(self, high):  # no value would be accepted
                problems.append(f"VAREDIT_{low.upper()} must not be larger than VAREDIT_{high.upper()}")
        for name, override in self.model_overrides.items():
            if override.cfg is not None and not self.cfg_min <= override.cfg <= self.cfg_max:
                problems.append(
                    f"VAREDIT_MODEL_OVERRIDES: {name}'s cfg must lie in [VAREDIT_CFG_MIN, VAREDIT_CFG_MAX]"
                )
            if override.tau is not None and not self.tau_min <= override.tau <= self.tau_max:
                problems.append(
                    f"VAREDIT_MODEL_OVERRIDES: {name}'s tau must lie in [VAREDIT_TAU_MIN, VAREDIT_TAU_MAX]"
                )
        if any(not _signs(secret) for secret in self.webhook_secrets):
            # one that cannot sign failed every attempt before its POST: the message was never sent,
            # never failed, and handed to the webhook worker again after every reservation
            problems.append("VAREDIT_WEBHOOK_SECRETS: secrets look like whsec_<base64>, with some bytes")
        if any(not 0 <= delay <= MAX_WEBHOOK_RETRY_S for delay in self.webhook_retry_s):  # NaN too
            # a delay no timestamp can hold broke recording the attempt, which then repeated forever
            problems.append(
                f"VAREDIT_WEBHOOK_RETRY_S: delays lie within [0, {MAX_WEBHOOK_RETRY_S:.0f}] seconds"
            )
        try:
            check_rate_limit(self.rate_limit)
        except ValueError as e:  # its message says what is wrong, not where
            problems.append(f"VAREDIT_RATE_LIMIT: {e}")
        if self.environment == "production":
            if self.auth == "none":
                problems.append("production needs VAREDIT_AUTH=api_key")
            if self.database_url.startswith("sqlite"):
                problems.append("production needs VAREDIT_DATABASE_URL pointing at PostgreSQL")
            if defaults := self._default_secrets():
                problems.append(f"production refuses the published default secrets of {', '.join(defaults)}")
        return problems

    def _default_secrets(self) -> list[str]:
        """The settings (and the S3 secret boto3 reads) whose value is a well-known default."""
        candidates = {
            "VAREDIT_DATABASE_URL": [urlsplit(self.database_url).password],
            "VAREDIT_BROKER_URL": [urlsplit(self.broker_url).password],
            "VAREDIT_WEBHOOK_SECRETS": self.webhook_secrets,
            "VAREDIT_METRICS_TOKEN": [self.metrics_token],
            "AWS_SECRET_ACCESS_KEY": [os.environ.get("AWS_SECRET_ACCESS_KEY")],
        }
        known = {secret.lower() for secret in KNOWN_DEFAULT_SECRETS}
        return [
            name
            for name, values in candidates.items()
            if any(v is not None and v.lower() in known for v in values)
        ]

    @property
    def default_model(self) -> str:
        return self.models[0]

    def defaults_outside_ranges(self, sampling: dict[str, float]) -> dict[str, float]:
        """A model's default cfg and tau that VAREDIT_CFG_MIN/MAX or VAREDIT_TAU_MIN/MAX exclude: every
        job leaving them out is refused. Known only once a worker has loaded the model."""
        ranges = {"cfg": (self.cfg_min, self.cfg_max), "tau": (self.tau_min, self.tau_max)}
        return {
            name: value
            for name, (low, high) in ranges.items()
            if (value := sampling.get(name)) is not None and not low <= value <= high
        }


class InvalidSettings(ValueError):
    """Settings a process cannot run with. ``problems``: one line per invalid setting, its variable and
    what is wrong (pydantic's own report is a paragraph per field, under a traceback)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _problem(error: ErrorDetails) -> str:
    """``VAREDIT_MAX_BATCH: Input should be a valid integer ...``; no input is repeated (it may be a
    secret). A check across settings (no field) names the variables in its message."""
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return message
    field, *inner = error["loc"]
    where = f" ({'.'.join(map(str, inner))})" if inner else ""
    return f"VAREDIT_{str(field).upper()}{where}: {message}"


def read_settings() -> Settings:
    """The settings from the environment (and ``.env``), or `InvalidSettings`."""
    try:
        return Settings()
    except ValidationError as e:
        # a check across settings reports its problems as the lines of one message
        problems = [line for error in e.errors() for line in _problem(error).splitlines()]
        invalid = {str(error["loc"][0]) for error in e.errors() if error["loc"]}
        raise InvalidSettings(problems + _problems_across(invalid)) from None


def _problems_across(invalid: set[str]) -> list[str]:
    """The checks across settings, which pydantic skips while a value is invalid, run with defaults in
    place of the ``invalid`` fields; a problem naming one of them is left out (a default made it)."""
    if not invalid:
        return []
    defaults = {name: Settings.model_fields[name].get_default(call_default_factory=True) for name in invalid}
    try:
        Settings(**defaults)
    except ValidationError as e:
        named = re.compile(rf"\bVAREDIT_(?:{'|'.join(name.upper() for name in invalid)})\b")
        lines = (line for error in e.errors() if not error["loc"] for line in _problem(error).splitlines())
        return [line for line in lines if not named.search(line)]
    return []


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read on first use (tests build their own ``Settings`` instead).
    Invalid ones end the process with status 2 and one line per problem on stderr: the API and the
    workers are started by uvicorn and celery, which import a module that calls this."""
    try:
        return read_settings()
    except InvalidSettings as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
