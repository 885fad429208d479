"""`varedit-serve` refuses to start, in one line and before starting anything, when it could not run:
its port is taken, a variable it reads to name the model is not what the settings accept, its broker or
database cannot be reached (with the URL's password masked), its data folder cannot be made. Nothing
having started, it does not say "stopped"."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "models" / "varedit-shapes-64"


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return _run("--data-dir", str(tmp_path / "data"), *args, **env)


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VAREDIT_")}
    return subprocess.run(
        [sys.executable, "-m", "serve", *args],
        env=clean | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    # before: the API child failed to bind, was restarted five times over ~40 s, and meanwhile
    # "ready" was printed because whatever held the port answered /healthz
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(tmp_path, "--port", str(port))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"varedit-serve: error: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "--port 0 picks a free one" in done.stderr
    assert "ready" not in done.stdout and not (tmp_path / "data" / "logs").exists()
    assert done.stdout == ""  # before: "varedit-serve: stopped", though nothing had started


def test_a_port_no_socket_has_is_a_usage_error(tmp_path: Path) -> None:
    # before: --port 70000 printed http://127.0.0.1:70000 and the API listened on 4464 (70000 - 65536)
    for port in ("70000", "-1"):
        done = _serve(tmp_path, "--port", port)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"argument --port: a TCP port, 0 to 65535 (0 picks a free one), got {port}" in done.stderr
        assert not (tmp_path / "data" / "logs").exists()


def test_varedit_models_that_is_not_json_is_a_settings_error_with_a_model_path(tmp_path: Path) -> None:
    # before: a JSONDecodeError traceback from naming the folder's model
    done = _serve(tmp_path, "--port", "0", "--model-path", str(BUNDLED), VAREDIT_MODELS="shapes-64")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "varedit-serve: error: VAREDIT_MODELS: not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""  # before: "varedit-serve: stopped"


def test_an_unreachable_broker_is_named_without_its_password(tmp_path: Path) -> None:
    # before: "VAREDIT_BROKER_URL=redis://:supersecret2@127.0.0.1:1/0 is not reachable", then "stopped"
    done = _serve(tmp_path, "--port", "0", VAREDIT_BROKER_URL="redis://:supersecret2@127.0.0.1:1/0")
    assert done.returncode == 1, done.stdout + done.stderr
    masked = "redis://:***@127.0.0.1:1/0"
    assert done.stderr == f"varedit-serve: error: VAREDIT_BROKER_URL={masked} is not reachable\n"
    assert done.stdout == ""


@pytest.mark.parametrize("where", ["missing database", "nothing listening"])
def test_a_database_that_cannot_be_opened_is_one_line_without_its_password(
    tmp_path: Path, postgres_port: int, where: str
) -> None:
    # before: a 130-line sqlalchemy OperationalError traceback, exit status 1, then "stopped"
    name = f"varedit_missing_{secrets.token_hex(4)}"
    port = postgres_port if where == "missing database" else 1
    url = f"postgresql+psycopg://postgres:supersecret3@127.0.0.1:{port}/{name}"
    done = _serve(tmp_path, "--port", "0", VAREDIT_DATABASE_URL=url)
    assert done.returncode == 1, done.stdout + done.stderr  # as an unreachable broker
    masked = f"postgresql+psycopg://postgres:***@127.0.0.1:{port}/{name}"
    assert done.stderr.startswith(f"varedit-serve: error: cannot open the database {masked}: "), done.stderr
    assert done.stderr.count("\n") == 1 and "supersecret3" not in done.stderr
    reason = "Connection refused" if port == 1 else f'database "{name}" does not exist'
    assert reason in done.stderr
    assert done.stdout == "" and not (tmp_path / "data" / "redis").exists()


@pytest.mark.parametrize("given", ["--data-dir", "VAREDIT_DATA_DIR"])
@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("a-file", "not a folder"),
        ("a-file/below", "cannot make the folder (Not a directory)"),
        ("/proc/varedit-data", "cannot make the folder (No such file or directory)"),
    ],
)
def test_a_data_dir_that_cannot_hold_the_data_is_a_usage_error(
    tmp_path: Path, given: str, path: str, problem: str
) -> None:
    # before: a FileExistsError, NotADirectoryError or FileNotFoundError traceback, exit status 1
    (tmp_path / "a-file").write_text("")
    data_dir = tmp_path / path
    if given == "--data-dir":
        done = _run("--port", "0", "--data-dir", str(data_dir))
    else:
        done = _run("--port", "0", VAREDIT_DATA_DIR=str(data_dir))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == f"varedit-serve: error: {given} {data_dir}: {problem}\n"
    assert done.stdout == ""
