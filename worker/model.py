"""The seam between a worker and a model: what the worker needs, typed, and nothing else.

`varedit.EditPipeline` (the real model) and `worker.fake.FakeEditPipeline` (the instant stand-in)
both satisfy `EditModel`. The worker never imports torch through this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from PIL import Image

from jobs.workers import ModelFacts

# on_scale(k, K) after scale k of K; returning False stops the edit (the model raises).
OnScale = Callable[[int, int], bool | None]
# on_preview(k, K, previews) after scale k of K: one small RGB image per input, in input order.
OnPreview = Callable[[int, int, list[Image.Image]], None]
PREVIEW_SIZE = 128  # longest side of a preview (never larger than the result)


class EditModel(Protocol):
    """A loaded model that edits batches of images, reports its facts and frees memory on demand.

    ``edit`` raises `MemoryError` when the device runs out of memory (after releasing its cache) and
    raises when ``on_scale`` returns False; any other exception is a failed edit. With ``on_preview``
    it also calls on_preview(k, K, previews) once per scale, in order, after that scale's on_scale:
    each preview has the longest side ``preview_size`` (or its result's size, if smaller), and the
    last (k = K) is the result itself resized to that size, so the two always agree.
    ``negative_instruction`` (one for all images or one per image, "" for none) is what guidance
    steers away from: its text replaces the learned null text as the unconditional text of CFG.
    """

    @property
    def name(self) -> str: ...

    @property
    def resolutions(self) -> tuple[int, ...]: ...

    @property
    def sampling_defaults(self) -> dict[str, float]: ...

    def edit(
        self,
        images: Sequence[Image.Image],
        instructions: Sequence[str],
        seeds: Sequence[int] | None = None,
        cfg: float | None = None,
        tau: float | None = None,
        on_scale: OnScale | None = None,
        resolution: int | None = None,
        on_preview: OnPreview | None = None,
        preview_size: int = PREVIEW_SIZE,
        negative_instruction: str | Sequence[str] = "",
    ) -> list[Image.Image]: ...

    def release_memory(self) -> None: ...


def facts_of(model: EditModel) -> ModelFacts:
    """What a worker reports about its loaded model when it announces itself ready."""
    return ModelFacts(model.name, list(model.resolutions), dict(model.sampling_defaults))
