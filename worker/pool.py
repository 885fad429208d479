"""The warm model pool: the pipelines one worker process holds, loaded once and reused by every job.

A GPU worker process (one per GPU, Celery prefork with concurrency 1) loads its pipelines in
`worker_process_init`, i.e. in the pool child after the fork, never in the parent: CUDA contexts do not
survive a fork, and a parent holding weights would double host memory. Loading ends with a warm-up
edit so the first real job does not pay for lazy initialisation (kernel selection, allocator growth);
only then does the worker report itself ready.

The model path decides what is loaded:

- ``fake://...``   `worker.fake.FakeEditPipeline`, an instant stand-in (benchmarks, platform tests);
- anything else    `varedit.EditPipeline.from_pretrained(path, variant=..., device=..., dtype=...)`.

torch and varedit are imported only when a real pipeline is loaded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
from PIL import Image

from worker.fake import FakeEditPipeline, is_fake_path

log = structlog.get_logger(__name__)

# Edge of the warm-up image. Small: it only has to walk every code path once.
WARMUP_SIZE = 64
WARMUP_INSTRUCTION = "make the square blue"
# Model folders shipped with the project (our folder format); searched when no model path is set.
BUNDLED_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class Pipeline(Protocol):
    def edit(
        self,
        images: list[Image.Image],
        instructions: list[str],
        seeds: list[int] | None = None,
        cfg: Any = ...,
        tau: Any = ...,
        on_scale: Callable[[int, int], bool | None] | None = None,
        resolution: int | None = None,
    ) -> Any: ...


@dataclass
class LoadedModel:
    name: str
    path: str
    pipeline: Any
    load_s: float
    warmup_s: float = 0.0
    device: str = "cpu"


@dataclass
class ModelPool:
    """Pipelines of one process, keyed by served model name."""

    models: dict[str, LoadedModel] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(
        self,
        name: str,
        path: str,
        *,
        variant: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        warmup: bool = True,
        warmup_resolutions: list[int] | None = None,
    ) -> LoadedModel:
        """Load (once) and warm up the pipeline serving `name`."""
        with self._lock:
            if name in self.models:
                return self.models[name]
            t0 = time.perf_counter()
            pipeline, used_device = _build_pipeline(path, variant=variant, device=device, dtype=dtype)
            loaded = LoadedModel(name=name, path=path, pipeline=pipeline, load_s=time.perf_counter() - t0,
                                 device=used_device)
            log.info("model_loaded", model=name, path=_redact(path), device=used_device,
                     load_s=round(loaded.load_s, 3))
            if warmup:
                loaded.warmup_s = warm_up(pipeline, warmup_resolutions)
                log.info("model_warmed_up", model=name, warmup_s=round(loaded.warmup_s, 3))
            self.models[name] = loaded
            return loaded

    def get(self, name: str) -> Any:
        try:
            return self.models[name].pipeline
        except KeyError:
            raise ModelNotLoaded(name) from None

    def names(self) -> list[str]:
        return sorted(self.models)

    def clear(self) -> None:
        with self._lock:
            self.models.clear()


class ModelNotLoaded(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r} is not loaded in this worker process")
        self.name = name


def warm_up(pipeline: Any, resolutions: list[int] | None = None) -> float:
    """Run one small edit through `pipeline` per served resolution; returns the seconds it took."""
    image = Image.new("RGB", (WARMUP_SIZE, WARMUP_SIZE), (200, 30, 30))
    t0 = time.perf_counter()
    for resolution in resolutions or [None]:
        kwargs = {} if resolution is None else {"resolution": resolution}
        pipeline.edit([image], [WARMUP_INSTRUCTION], seeds=[0], **kwargs)
    return time.perf_counter() - t0


class ModelNotFound(LookupError):
    pass


def bundled_model(model: str) -> Path | None:
    """A shipped model folder (models/*/config.json) whose variant is `model`, if any."""
    for config in sorted(BUNDLED_MODELS_DIR.glob("*/config.json")):
        try:
            name = json.loads(config.read_text()).get("config", {}).get("name")
        except (OSError, ValueError):
            continue
        if name == model:
            return config.parent
    return None


def resolve_model_path(configured: str | Path | None, model: str) -> str:
    """VAREDIT_MODEL_PATH when set, else the bundled folder for `model`."""
    if configured is not None and str(configured):
        return str(configured)
    bundled = bundled_model(model)
    if bundled is None:
        raise ModelNotFound(
            f"no model for {model!r}: set VAREDIT_MODEL_PATH to a model folder (or fake:// for the "
            f"instant stand-in); nothing for it is bundled in {BUNDLED_MODELS_DIR}"
        )
    return str(bundled)


def _build_pipeline(
    path: str, *, variant: str | None, device: str | None, dtype: str | None
) -> tuple[Any, str]:
    if is_fake_path(path):
        return FakeEditPipeline.from_pretrained(path), "none"
    import torch  # noqa: PLC0415 - torch only in processes that run a real model

    from varedit import EditPipeline  # noqa: PLC0415

    used_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype) if dtype else None
    pipeline = EditPipeline.from_pretrained(path, variant=variant, device=used_device, dtype=torch_dtype)
    return pipeline, used_device


def _redact(path: str) -> str:
    # A model path is a folder or a fake:// URL; never log query strings that might carry tokens.
    return path.split("?", 1)[0]


# The process-wide pool. Filled in the worker's pool child (see worker.process).
POOL = ModelPool()
