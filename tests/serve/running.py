"""A `varedit-serve` process under test: its ready file awaited, then stopped as Ctrl-C would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

READY_S = 120.0


@contextmanager
def until_ready(proc: subprocess.Popen[str], ready_file: Path, ready_s: float = READY_S) -> Iterator[dict]:
    """The ready file's contents once ``proc`` (started with ``--ready-file``, in a session of its own)
    wrote it; on exit SIGTERM, and its whole group killed if it has not stopped within 60 s."""
    try:
        deadline = time.monotonic() + ready_s
        while not ready_file.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.1)  # polling the ready file under a deadline
        yield json.loads(ready_file.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
