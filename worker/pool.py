"""The warm model pool: the models one worker process holds, loaded once and reused by every job.

A GPU worker process (one per GPU, Celery prefork with concurrency 1) loads its models in
`worker_process_init`, i.e. in the pool child after the fork, never in the parent: CUDA contexts do not
survive a fork, and a parent holding weights would double host memory. Loading ends with a warm-up
edit at every resolution the model serves, so the first real job does not pay for lazy initialisation
(kernel selection, allocator growth); only then does the worker report itself ready.

The model path decides what is loaded:

- ``fake://...``   `worker.fake.FakeEditPipeline`, an instant stand-in (benchmarks, platform tests);
- anything else    `varedit.EditPipeline.from_pretrained(path, variant=name, device=..., dtype=...,
                   compile=...)`.

torch and varedit are imported only when a real model is loaded.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from PIL import Image

from worker.fake import FakeEditPipeline, is_fake_path
from worker.model import EditModel

log = structlog.get_logger(__name__)

# Edge of the warm-up image. Small: it only has to walk every code path once.
WARMUP_SIZE = 64
WARMUP_INSTRUCTION = "make the square blue"
# Model folders shipped with the project (our folder format); searched when no model path is set. The
# repository's models/ in a checkout (and an editable install), or the copy a wheel carries inside this
# package (pyproject.toml maps models/ to worker/bundled/models).
_INSTALLED_MODELS = Path(__file__).resolve().parent / "bundled" / "models"
BUNDLED_MODELS_DIR = (
    _INSTALLED_MODELS if _INSTALLED_MODELS.is_dir() else Path(__file__).resolve().parent.parent / "models"
)


@dataclass
class LoadedModel:
    name: str
    path: str
    model: EditModel
    load_s: float
    warmup_s: float = 0.0
    device: str = "cpu"


@dataclass
class ModelPool:
    """Models of one process, keyed by served model name."""

    models: dict[str, LoadedModel] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(
        self,
        name: str,
        path: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        compile: bool | str = False,
        warmup: bool = True,
    ) -> LoadedModel:
        """Load (once) and warm up the model serving `name`; a folder holding another model is refused."""
        with self._lock:
            if name in self.models:
                return self.models[name]
            t0 = time.perf_counter()
            model, used_device = _build(name, path, device=device, dtype=dtype, compile=compile)
            loaded = LoadedModel(
                name=name, path=path, model=model, load_s=time.perf_counter() - t0, device=used_device
            )
            log.info(
                "model_loaded",
                model=name,
                path=_redact(path),
                device=used_device,
                load_s=round(loaded.load_s, 3),
            )
            if warmup:
                loaded.warmup_s = warm_up(model)
                log.info("model_warmed_up", model=name, warmup_s=round(loaded.warmup_s, 3))
            self.models[name] = loaded
            return loaded

    def get(self, name: str) -> EditModel:
        try:
            return self.models[name].model
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


def warm_up(model: EditModel) -> float:
    """Run one small edit per resolution the model serves; returns the seconds it took."""
    image = Image.new("RGB", (WARMUP_SIZE, WARMUP_SIZE), (200, 30, 30))
    t0 = time.perf_counter()
    for resolution in model.resolutions:
        model.edit([image], [WARMUP_INSTRUCTION], seeds=[0], resolution=resolution)
    return time.perf_counter() - t0


class ModelNotFound(LookupError):
    pass


def bundled_model(model: str) -> Path | None:
    """A shipped model folder (models/*/config.json) that holds `model`, if any."""
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


def _build(
    name: str, path: str, *, device: str | None, dtype: str | None, compile: bool | str
) -> tuple[EditModel, str]:
    if is_fake_path(path):
        return FakeEditPipeline.from_url(path, name), "none"
    import torch  # torch only in processes that run a real model

    from varedit import EditPipeline

    used_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype) if dtype else None
    return EditPipeline.from_pretrained(
        path, variant=name, device=used_device, dtype=torch_dtype, compile=compile
    ), used_device


def _redact(path: str) -> str:
    # A model path is a folder or a fake:// URL; never log query strings that might carry tokens.
    return path.split("?", 1)[0]
