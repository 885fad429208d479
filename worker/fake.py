"""A stand-in for `varedit.EditPipeline` that returns at once.

It has the same `edit(images, instructions, seeds, cfg, tau, on_scale, resolution, on_preview,
preview_size, negative_instruction)` contract as the real pipeline and no torch import, so it serves
two purposes:

- the platform-overhead benchmark (every millisecond measured is the platform's, not the model's);
- platform tests that need a worker but not a model (cancellation, crash recovery, batching).

It is selected by a model path of the form ``fake://?scales=4&scale_ms=0&gate=/dir&gate_scale=2``:

``name``        the model name it reports, default: the served model it is loaded for.
``resolutions`` comma-separated square sides it serves, default ``32``.
``cfg``, ``tau``    the sampling defaults it reports, default 3 and 0.5.
``scales``      scales per edit (on_scale is called after each one), default 4.
``scale_ms``    time spent "generating" each scale, default 0.
``gate``        a folder used as a synchronisation point by tests. An instruction containing
                ``gate:<token>`` blocks on reaching scale ``gate_scale``: the pipeline writes
                ``<gate>/blocked-<token>`` (its content is the pid of the process running it) and waits
                until ``<gate>/open-<token>`` exists. A test can therefore catch a job in the middle of
                generation without sleeping: it waits for the ``blocked-`` file, acts (cancel, kill -9),
                then creates the ``open-`` file. Instructions without a token never block.
``gate_timeout_s``  give up waiting after this long (default 120) and raise, so a broken test never
                hangs a worker forever.

The edited image is a deterministic function of the source, the instruction, the negative instruction
and the seed (the source with inverted colours, tinted by a hash of the texts and the seed), so tests
can check that results belong to their job. Its preview of scale k is that result at preview size,
pixelated to k/K of it (sharper at every scale); the last one is the result resized, as the real
pipeline's is.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageOps

from worker.model import PREVIEW_SIZE, OnPreview, OnScale

FAKE_SCHEME = "fake:"  # `fake://?...` (also accepted: `fake:/?...`, `fake:?...`)


def is_fake_path(path: str | None) -> bool:
    return bool(path) and str(path).startswith(FAKE_SCHEME)


@dataclass(frozen=True)
class FakeOptions:
    name: str = "fake"
    resolutions: tuple[int, ...] = (32,)
    cfg: float = 3.0
    tau: float = 0.5
    scales: int = 4
    scale_ms: float = 0.0
    gate: str | None = None
    gate_scale: int = 2
    gate_timeout_s: float = 120.0

    @classmethod
    def from_url(cls, url: str, name: str | None = None) -> FakeOptions:
        query = parse_qs(urlsplit(url).query)

        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        opts = cls()
        resolutions = one("resolutions")
        return cls(
            name=one("name") or name or opts.name,
            resolutions=tuple(int(r) for r in resolutions.split(",")) if resolutions else opts.resolutions,
            cfg=float(one("cfg") or opts.cfg),
            tau=float(one("tau") or opts.tau),
            scales=int(one("scales") or opts.scales),
            scale_ms=float(one("scale_ms") or opts.scale_ms),
            gate=one("gate") or None,
            gate_scale=int(one("gate_scale") or opts.gate_scale),
            gate_timeout_s=float(one("gate_timeout_s") or opts.gate_timeout_s),
        )


class FakeEditPipeline:
    """Instant edit model satisfying `worker.model.EditModel`."""

    def __init__(self, options: FakeOptions | None = None) -> None:
        self.options = options or FakeOptions()

    @classmethod
    def from_url(cls, path: str, name: str | None = None) -> FakeEditPipeline:
        return cls(FakeOptions.from_url(path, name))

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def resolutions(self) -> tuple[int, ...]:
        return self.options.resolutions

    @property
    def sampling_defaults(self) -> dict[str, float]:
        return {"cfg": self.options.cfg, "tau": self.options.tau}

    def release_memory(self) -> None:
        """Nothing to release: it holds no device memory."""

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
    ) -> list[Image.Image]:
        if len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images but {len(instructions)} instructions")
        seeds = list(seeds) if seeds is not None else [0] * len(images)
        negatives = (
            [negative_instruction] * len(images)
            if isinstance(negative_instruction, str)
            else list(negative_instruction)
        )
        if len(negatives) != len(images):
            raise ValueError(f"got {len(images)} images but {len(negatives)} negative instructions")
        results = [
            _edited(img, instr, seed, neg)
            for img, instr, seed, neg in zip(images, instructions, seeds, negatives, strict=True)
        ]
        finals = [preview_of(r, preview_size) for r in results] if on_preview is not None else []
        n_scales = self.options.scales
        for k in range(1, n_scales + 1):
            if self.options.scale_ms:
                time.sleep(self.options.scale_ms / 1000.0)  # simulated GPU work, not synchronisation
            if self.options.gate and k == self.options.gate_scale:
                for token in gate_tokens(instructions):
                    self._wait_at_gate(token)
            if on_scale is not None and on_scale(k, n_scales) is False:
                raise EditStopped(k, n_scales)
            if on_preview is not None:
                on_preview(k, n_scales, [_pixelated(f, k / n_scales) for f in finals])
        return results

    def _wait_at_gate(self, token: str) -> None:
        gate = Path(self.options.gate or "")
        gate.mkdir(parents=True, exist_ok=True)
        blocked = gate / f"blocked-{token}"
        tmp = gate / f".blocked-{token}.tmp"
        tmp.write_text(str(os.getpid()))
        tmp.replace(blocked)  # atomic: a reader never sees an empty file
        deadline = time.monotonic() + self.options.gate_timeout_s
        while not (gate / f"open-{token}").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake pipeline gate {gate}/open-{token} was never created")
            time.sleep(0.01)  # polling the sync point; the gate file is the synchronisation


def gate_tokens(instructions: Sequence[str]) -> list[str]:
    """The ``gate:<token>`` words of the instructions, in order."""
    return [w.split(":", 1)[1] for text in instructions for w in text.split() if w.startswith("gate:")]


def preview_of(image: Image.Image, preview_size: int) -> Image.Image:
    """`image` at preview size: longest side `preview_size`, never enlarged (as `varedit.pipeline`)."""
    w, h = image.size
    side = max(w, h)
    if side <= preview_size:
        return image.copy()
    dims = (max(1, round(w * preview_size / side)), max(1, round(h * preview_size / side)))
    return image.resize(dims, Image.BILINEAR)


def _pixelated(image: Image.Image, detail: float) -> Image.Image:
    """`image` shrunk to `detail` of its size and blown up again: a coarser look, the same size."""
    if detail >= 1:
        return image
    w, h = image.size
    small = image.resize((max(1, round(w * detail)), max(1, round(h * detail))), Image.BOX)
    return small.resize((w, h), Image.NEAREST)


class EditStopped(Exception):
    """Raised by the fake pipeline when on_scale returns False (the real one stops the same way)."""

    def __init__(self, k: int, n_scales: int) -> None:
        super().__init__(f"edit stopped by on_scale at scale {k}/{n_scales}")
        self.scale = k
        self.scales = n_scales


def _edited(image: Image.Image, instruction: str, seed: int, negative: str = "") -> Image.Image:
    # no negative: the same digest as before negatives existed, so earlier results stay reproducible
    text = f"{instruction}\0{seed}" + (f"\0{negative}" if negative else "")
    digest = hashlib.sha256(text.encode()).digest()
    tint = Image.new("RGB", image.size, tuple(digest[:3]))
    return Image.blend(ImageOps.invert(image.convert("RGB")), tint, 0.25)
