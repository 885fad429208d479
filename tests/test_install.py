"""A non-editable install (``pip install '.[all]'``, a wheel) runs on its own: it carries the Alembic
migrations and the bundled model, which stay at the repository's top level (migrations/, models/) and
travel inside the wheel as jobs/migrations and worker/bundled/models (pyproject.toml). Before, the
wheel held neither: `varedit-serve` found no bundled model, and with --model-path (or `keys list`)
ended in Alembic's "Path doesn't exist: .../site-packages/migrations"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from setuptools import find_namespace_packages

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ["api", "jobs", "serve", "varedit", "varedit_client", "worker"]
CARRIED = {"jobs.migrations", "jobs.migrations.versions", "worker.bundled"}  # package-dir mappings
BUNDLED = ROOT / "models" / "varedit-shapes-64"


def test_the_listed_packages_are_every_package_of_the_source_tree() -> None:
    # the wheel ships the packages pyproject.toml lists: a new subpackage must be listed there too
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(find_namespace_packages(str(ROOT), include=[f"{p}*" for p in TOP_LEVEL]))
    assert listed - CARRIED == found, (sorted(found - listed), sorted(listed - CARRIED - found))


def _wheel(tmp_path: Path) -> Path:
    """A wheel of the working tree, built from a copy (the build leaves build/ and *.egg-info behind)."""
    source = tmp_path / "source"
    junk = shutil.ignore_patterns(
        ".git", ".venv", "data", "out", "runs", "build", "tests", "*.egg-info", "__pycache__"
    )
    shutil.copytree(ROOT, source, ignore=junk)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source)]
        + ["-w", str(dist)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    [wheel] = dist.glob("varedit_serve-*.whl")
    return wheel


def _venv_with(wheel: Path, venv: Path) -> Path:
    """A new venv holding `wheel` alone; its dependencies come from this interpreter's site-packages,
    listed after the venv's own (a .pth file), so the project itself is only the installed copy."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
        + [str(wheel)],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(site) / "zz_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    return python


@pytest.mark.slow
def test_a_wheel_carries_the_migrations_and_the_bundled_model_and_its_server_starts_from_them(
    tmp_path: Path,
) -> None:
    # given a wheel of the project
    wheel = _wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    # then its only top-level packages are the project's (no generic "migrations" or "models")
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == set(TOP_LEVEL), sorted(tops)
    # and it carries every migration, Alembic's template and the bundled model folder whole
    shipped = {
        n.removeprefix("jobs/migrations/")
        for n in names
        if n.startswith("jobs/migrations/") and "__pycache__" not in n
    }
    in_repo = {str(p.relative_to(ROOT / "migrations")) for p in (ROOT / "migrations").rglob("*.py")}
    assert shipped == in_repo | {"script.py.mako"}, sorted(shipped ^ (in_repo | {"script.py.mako"}))
    model = {n.removeprefix("worker/bundled/models/") for n in names if n.startswith("worker/bundled/")}
    in_repo = {str(p.relative_to(ROOT / "models")) for p in (ROOT / "models").rglob("*") if p.is_file()}
    assert model == in_repo and "varedit-shapes-64/transformer.safetensors" in model, sorted(model ^ in_repo)

    # when it is installed (not editable) in a new venv and run from outside the repository
    python = _venv_with(wheel, tmp_path / "venv")
    bin_dir = python.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAREDIT_", "PYTHON"))}
    env["VAREDIT_DATA_DIR"] = str(tmp_path / "data")
    away = tmp_path / "elsewhere"
    away.mkdir()
    probe = (
        "import json, jobs.db, worker.pool; m = jobs.db.MIGRATIONS_DIR; "
        "print(json.dumps({'db': jobs.db.__file__, 'migrations': str(m), "
        "'versions': len(list(m.glob('versions/*.py'))), 'env': (m / 'env.py').is_file(), "
        "'model': str(worker.pool.bundled_model('shapes-64'))}))"
    )
    run = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=away, env=env)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    # then the project, its migrations and its bundled model are the installed copies
    venv = str(tmp_path / "venv")
    assert found["db"].startswith(venv) and found["migrations"].startswith(venv), found
    assert found["env"] and found["versions"] == len(list((ROOT / "migrations/versions").glob("*.py")))
    assert found["model"].startswith(venv) and Path(found["model"]).name == BUNDLED.name, found
    # and `varedit-serve keys list` migrates a fresh database from them
    keys = subprocess.run(
        [str(bin_dir / "varedit-serve"), "keys", "list"], capture_output=True, text=True, cwd=away, env=env
    )
    assert keys.returncode == 0 and json.loads(keys.stdout) == [], keys.stderr
    assert (tmp_path / "data" / "varedit.db").is_file()
    # and the model's command reads the bundled folder
    info = subprocess.run(
        [str(bin_dir / "varedit"), "info", found["model"], "--json"],
        capture_output=True,
        text=True,
        cwd=away,
        env=env,
    )
    assert info.returncode == 0 and json.loads(info.stdout)["name"] == "shapes-64", info.stderr
