"""A worker publishes its model folder's description and example edits: the images go to storage,
where the API serves them (the web page's one-click samples)."""

from __future__ import annotations

import io
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from jobs.settings import Settings
from varedit import write_random_checkpoint
from worker.process import publish_examples
from worker.runtime import Runtime

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "varedit-shapes-64"


def _runtime(settings: Settings) -> Runtime:
    return Runtime(settings=settings, worker_id="w", hostname=socket.gethostname(), pid=os.getpid())


def test_the_bundled_models_examples_are_published(make_settings: Callable[..., Settings]) -> None:
    rt = _runtime(make_settings())
    description, examples = publish_examples(rt, "shapes-64", BUNDLED)
    declared = json.loads((BUNDLED / "config.json").read_text())["serving"]["examples"]
    assert "six edit kinds" in description and len(examples) == len(declared) == 6
    for example, source in zip(examples, declared, strict=True):
        assert example["instruction"] == source["instruction"] and example["content_type"] == "image/png"
        stored = rt.storage.get(example["image_key"])
        assert stored == (BUNDLED / source["image"]).read_bytes()
        assert Image.open(io.BytesIO(stored)).size == (64, 64)


def test_a_folder_without_examples_publishes_none(make_settings, tmp_path: Path) -> None:
    folder = write_random_checkpoint(tmp_path / "tiny", "tiny")
    assert publish_examples(_runtime(make_settings()), "tiny", folder) == ("", [])
