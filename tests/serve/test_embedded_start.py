"""`varedit-serve` refuses to start, in one line and before starting anything, when it could not run:
its port is taken, or a variable it reads to name the model is not what the settings accept."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "models" / "varedit-shapes-64"


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VAREDIT_")}
    return subprocess.run(
        [sys.executable, "-m", "serve", "--data-dir", str(tmp_path / "data"), *args],
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
