"""Binary Spherical Quantization, one scale (`BSQ`) and the VAE's own multi-scale residual
quantizer (`MultiScaleBSQ`, what the official `AutoEncoder.encode` runs).

Shapes: B batch, dq bits per latent pixel, (1, h, w) one scale's grid with a unit time axis,
(1, H, W) the full latent grid. Feature maps are (B, dq, 1, h, w); bits are (B, 1, h, w, dq) ("VAE
layout"), int64 0/1.

Resizes act on 5-D tensors like the official code: "area" (adaptive average pooling) shrinks a
residual, "trilinear" on a unit time axis (= bilinear, align_corners=False, no antialias) enlarges
codes to the full grid. The official code also keeps the channels-last memory layout that its
channel permutes leave behind; the same ops are used here so resampling kernels see the same
layout and round identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

UP_MODE = "trilinear"  # enlarge codes / the running sum (official z_interplote_up)
DOWN_MODE = "area"  # shrink residuals (official z_interplote_down)

Grid = tuple[int, int, int]  # (t, h, w) with t = 1


class BSQ(nn.Module):
    """Quantize each latent pixel to the sign pattern of its L2-normalised vector, scaled onto the
    unit sphere: every code entry is +-1/sqrt(dq)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.codebook_scale = 1 / np.sqrt(dim)  # float64 like the official constant
        # Integer-label bit weights (MSB first). VAREdit only uses bit labels; the buffer is part of
        # the released state dict and converts bits to integer codebook indices.
        self.register_buffer("mask", 2 ** torch.arange(dim - 1, -1, -1))

    def forward(self, z_Bd1hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (straight-through quantized (B, dq, 1, h, w), bits (B, 1, h, w, dq)).

        Bit c is 1 exactly where z_c > 0 (normalising keeps signs; ties give 0)."""
        z_B1hwd = F.normalize(z_Bd1hw.movedim(1, -1).contiguous(), dim=-1)
        sign = torch.where(z_B1hwd > 0, 1.0, -1.0).to(z_B1hwd.dtype)
        zhat = sign * (1.0 / self.dim**0.5)
        q_B1hwd = z_B1hwd + (zhat - z_B1hwd).detach()  # straight-through, ~= zhat
        bits_B1hwd = (q_B1hwd > 0).long()
        return q_B1hwd.movedim(-1, 1), bits_B1hwd

    def bits_to_codes(self, bits_B1hwd: torch.Tensor) -> torch.Tensor:
        """Bits (B, 1, h, w, dq) -> codes (B, dq, 1, h, w).

        Codes are re-normalised like the official `indices_to_codes`: in float32 that lands one
        ulp above 1/sqrt(dq) (e.g. 0.1767767 for dq=32), not exactly on it."""
        s = self.codebook_scale
        codes_B1hwd = bits_B1hwd.to(torch.float32) * s * 2 - s
        return F.normalize(codes_B1hwd, dim=-1).movedim(-1, 1)

    def bits_to_index(self, bits_B1hwd: torch.Tensor) -> torch.Tensor:
        """Bits -> integer codebook index, first bit most significant: (B, 1, h, w)."""
        return (bits_B1hwd.long() * self.mask).sum(-1)


@dataclass
class MultiScaleEncoding:
    """Output of the VAE's own multi-scale quantizer."""

    z_BdHW: torch.Tensor  # sum of the per-scale (straight-through) codes, enlarged to full size
    bits: list[torch.Tensor]  # per scale: (B, 1, h_k, w_k, dq)
    var_inputs: list[torch.Tensor]  # per scale k < K-1: area-shrunk running sum at grid k+1, (B, dq, 1, h, w)


class MultiScaleBSQ(nn.Module):
    """Residual quantization over a coarse-to-fine schedule (no projections, no layer norm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.lfq = BSQ(dim)

    def forward(self, f_BdHW: torch.Tensor, vae_schedule: Sequence[Grid]) -> MultiScaleEncoding:
        """Quantize the full latent `f` over `vae_schedule`, whose last grid must be f's size.

        Per scale: area-shrink the residual, quantize, enlarge the codes (trilinear) to full size,
        subtract them from the residual and add them to the sum. `var_inputs` shrink the running
        sum with "area"; VAREdit's transformer inputs use trilinear instead (see `scales.py`)."""
        residual = f_BdHW.unsqueeze(2).contiguous()  # (B, dq, 1, H, W)
        full = tuple(residual.shape[-3:])
        _check_last_grid(vae_schedule, full)
        z_Bd1HW: torch.Tensor | float = 0.0  # a scalar start keeps the first codes' memory layout
        bits, var_inputs = [], []
        with torch.autocast(residual.device.type, enabled=False):
            for k, grid in enumerate(vae_schedule):
                r = F.interpolate(residual, size=grid, mode=DOWN_MODE) if tuple(grid) != full else residual
                q, bits_k = self.lfq(r)
                if tuple(grid) != full:
                    q = F.interpolate(q, size=full, mode=UP_MODE).contiguous()
                residual = residual - q.detach()
                z_Bd1HW = z_Bd1HW + q
                bits.append(bits_k)
                if k < len(vae_schedule) - 1:
                    var_inputs.append(F.interpolate(z_Bd1HW, size=vae_schedule[k + 1], mode=DOWN_MODE))
        assert isinstance(z_Bd1HW, torch.Tensor)
        return MultiScaleEncoding(z_Bd1HW.squeeze(2).contiguous(), bits, var_inputs)


def _check_last_grid(vae_schedule: Sequence[Grid], full: tuple[int, ...]) -> None:
    if tuple(vae_schedule[-1]) != full:
        raise ValueError(f"the last scale {tuple(vae_schedule[-1])} must equal the latent grid {full}")
