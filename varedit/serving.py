"""What a server needs to know about a model besides its weights: the resolutions it serves and the
sampling settings it recommends. A folder in our format states them in ``config.json`` under
``"serving"``; an official release folder gets the official ones.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from .config import VAREditConfig


@dataclass(frozen=True)
class SamplingDefaults:
    """Sampler settings used when a caller does not choose them.

    The defaults are the official inference settings: cfg 3 and tau 0.1 are what the official README's
    configuration and its web demo's sliders use (its other entry points disagree among themselves);
    top-k 900 and top-p 0.97 are the official sampler's. With two logits per bit, top-k never cuts.
    """

    cfg: float = 3.0  # classifier-free guidance on logits (1 = off)
    tau: float = 0.1  # logit temperature (lower is closer to greedy)
    top_k: int = 900
    top_p: float = 0.97

    def __post_init__(self) -> None:
        """A folder stating unusable defaults is refused when it loads, not at its first edit (top-k
        and top-p of 0 turn the cut off)."""
        try:
            if not all(_is_number(v) and math.isfinite(v) for v in (self.cfg, self.tau)) or self.tau <= 0:
                raise ValueError(
                    f"cfg must be a finite number and tau one > 0, got {self.cfg!r}, {self.tau!r}"
                )
            check_cut(self.top_k, self.top_p)
        except ValueError as e:
            raise ValueError(f"sampling defaults need a usable cfg, tau, top_k and top_p: {e}") from None

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def check_cut(top_k: int, top_p: float) -> None:
    """Refuse a top-k or top-p the sampler would misread: a negative top-k or a top-p outside [0, 1]
    would not fail but silently sample without the cut (top-p > 1, NaN) or greedily (top-p < 0). 0 turns
    either cut off."""
    if not _is_integer(top_k) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0: no cut), got {top_k!r}")
    if not _is_number(top_p) or not 0 <= top_p <= 1:
        raise ValueError(f"top_p must be a number in [0, 1] (0: no cut), got {top_p!r}")


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class Example:
    """An edit the model does well: an instruction and its source image (a file in the model folder)."""

    instruction: str
    image: str  # path relative to the folder

    def __post_init__(self) -> None:
        path = PurePosixPath(self.image)
        if not self.image or path.is_absolute() or ".." in path.parts:
            raise ValueError(f"an example's image must be a path inside the model folder, not {self.image!r}")


@dataclass(frozen=True)
class Serving:
    """The resolutions a model serves (the first is its default), its sampling defaults, and for people
    trying it: what it understands and example edits it does well (none for a converted release)."""

    resolutions: tuple[int, ...]
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    description: str = ""
    examples: tuple[Example, ...] = ()

    def __post_init__(self) -> None:
        if not self.resolutions:
            raise ValueError("a model serves at least one resolution")

    def check(self, config: VAREditConfig) -> None:
        """Refuse resolutions the model cannot run: `VAREditConfig.resolutions` (a side its scale
        schedule produces and its VAE can normalize)."""
        bad = [r for r in self.resolutions if r not in config.resolutions]
        if bad:
            small = [r for r in bad if r in config.template_sides()]
            why = f" ({small} too small for its VAE)" if small else ""
            raise ValueError(
                f"{config.name} cannot serve resolutions {bad}{why}; it can serve {config.resolutions}"
            )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"resolutions": list(self.resolutions), "sampling": self.sampling.to_dict()}
        if self.description:
            out["description"] = self.description
        if self.examples:
            out["examples"] = [dataclasses.asdict(e) for e in self.examples]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Serving:
        if not isinstance(d, dict):
            raise ValueError(f"serving must be an object, got {d!r}")
        unknown = set(d) - {"resolutions", "sampling", "description", "examples"}
        if unknown:
            raise ValueError(f"unknown serving fields {sorted(unknown)}")
        sampling = d.get("sampling", {})
        if not isinstance(sampling, dict):
            raise ValueError(f"serving sampling must be an object, got {sampling!r}")
        known = {f.name for f in dataclasses.fields(SamplingDefaults)}
        if set(sampling) - known:
            raise ValueError(f"unknown sampling fields {sorted(set(sampling) - known)}")
        examples = d.get("examples", [])
        if not isinstance(examples, list) or not all(
            isinstance(e, dict) and set(e) == {"instruction", "image"} for e in examples
        ):
            wanted = '{"instruction": ..., "image": ...}'
            raise ValueError(f"serving examples must be a list of {wanted}, got {examples!r}")
        if "resolutions" not in d:
            raise ValueError("serving has no resolutions (the image sides it serves)")
        resolutions = d["resolutions"]
        if not isinstance(resolutions, list) or not all(_is_integer(r) for r in resolutions):
            raise ValueError(f"serving resolutions must be a list of integers, got {resolutions!r}")
        return cls(
            tuple(resolutions),
            SamplingDefaults(**sampling),
            str(d.get("description", "")),
            tuple(Example(str(e["instruction"]), str(e["image"])) for e in examples),
        )

    @classmethod
    def trained(cls, config: VAREditConfig, sampling: SamplingDefaults | None = None) -> Serving:
        """Serve the resolution the model was trained at (others run, but were never trained)."""
        return cls((config.resolution,), sampling or SamplingDefaults())
