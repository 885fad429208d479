"""The embedded runner's child logs stay bounded across runs: rotated at a child's start."""

from __future__ import annotations

from pathlib import Path

from serve.embedded import rotate


def test_a_log_past_its_size_is_rotated_and_old_ones_are_dropped(tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    for run in range(5):
        rotate(log, max_bytes=10, keep=3)
        log.write_text(f"run {run} " * 5)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["api.log", "api.log.1", "api.log.2", "api.log.3"]
    assert log.read_text().startswith("run 4") and (tmp_path / "api.log.3").read_text().startswith("run 1")


def test_a_small_log_is_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    log.write_text("short")
    rotate(log, max_bytes=1000)
    assert [p.name for p in tmp_path.iterdir()] == ["api.log"]
