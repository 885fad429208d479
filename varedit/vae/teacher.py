"""Bitwise self-correction: random bit flips for the teacher-forcing builder (`VAE.teacher_forcing`).

Official recipe (`BitwiseSelfCorrection.flip_requant`): for each of the first `num_layers` scales,
draw a strength s uniformly from {0, 0.01, ..., strength} and flip every bit independently with
probability s. Randomness comes from an explicit generator instead of the global RNGs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SelfCorrection:
    num_layers: int  # scales 0..num_layers-1 are corrupted (official noise_apply_layers; <= 0: off)
    strength: float  # maximum flip probability (official noise_apply_strength, e.g. 0.3)
    generator: torch.Generator | None = None  # None: torch's global RNG

    def __call__(self, si: int, bits_B1hwd: torch.Tensor) -> torch.Tensor | None:
        """Corrupted copy of scale si's bits, or None when si is past the corrupted scales."""
        if si >= self.num_layers:
            return None
        g = self.generator
        steps = torch.randint(0, round(100 * self.strength) + 1, (), generator=g).item()
        flip = torch.rand(bits_B1hwd.shape, generator=g, device=g.device if g else "cpu")
        flip = flip.to(bits_B1hwd.device) < steps * 0.01
        return torch.where(flip, 1 - bits_B1hwd, bits_B1hwd)
