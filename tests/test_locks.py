"""The locked dependency sets (requirements/*.lock, scripts/lock.sh) agree with pyproject.toml: every
declared dependency is pinned to a version its specifier accepts, and no lock pins a CUDA package,
since CI installs dev.lock on top of the CPU torch wheel and the worker image picks its own CUDA build."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Each lock and the extras it is compiled for (scripts/lock.sh).
LOCKS = {"dev.lock": ["dev"], "platform.lock": ["platform"], "worker.lock": ["platform", "model"]}
CUDA_PACKAGE = re.compile(r"^(nvidia-|triton$|cuda)")


def declared(extras: list[str]) -> list[Requirement]:
    """The base dependencies and those of ``extras``, the project's self-references expanded."""
    found = [Requirement(r) for r in PROJECT["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in map(Requirement, PROJECT["optional-dependencies"][extra]):
            if canonicalize_name(requirement.name) == canonicalize_name(PROJECT["name"]):
                pending += requirement.extras
            else:
                found.append(requirement)
    return found


def pins(lock: str) -> dict[str, str]:
    """Package -> pinned version; every requirement line of a lock must be an exact pin."""
    result = {}
    for line in (ROOT / "requirements" / lock).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line.strip())
        assert match, f"{lock}: not an exact pin: {line!r}"
        result[canonicalize_name(match.group(1))] = match.group(2)
    return result


@pytest.mark.parametrize("lock", LOCKS)
def test_every_declared_dependency_is_pinned_within_its_specifier(lock: str) -> None:
    pinned = pins(lock)
    for requirement in declared(LOCKS[lock]):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{lock} lacks {requirement}: run bash scripts/lock.sh"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {name}=={pinned[name]}, outside {requirement}: run bash scripts/lock.sh"
        )


@pytest.mark.parametrize("lock", LOCKS)
def test_no_lock_pins_a_cuda_package(lock: str) -> None:
    assert [name for name in pins(lock) if CUDA_PACKAGE.match(name)] == []


def test_torch_is_pinned_without_a_build_label_where_it_belongs() -> None:
    # No "+cpu": the same line accepts the CPU wheel in CI and the CUDA build in the worker image.
    assert pins("dev.lock")["torch"] == pins("worker.lock")["torch"] == "2.13.0"
    assert "torch" not in pins("platform.lock")


@pytest.mark.parametrize("lock", ["platform.lock", "worker.lock"])
def test_the_images_ship_the_versions_ci_tests(lock: str) -> None:
    tested = pins("dev.lock")
    assert {k: v for k, v in pins(lock).items() if tested.get(k) != v} == {}
