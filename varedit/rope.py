"""2D rotary position embedding as VAREdit lays it out (details: varedit/NOTES.md).

One table of angles is built per aspect template from its reference (1M) schedule; a token reads
the row of its global index in the sequence [source tokens, target scale 0, target scale 1, ...].
With the 1M schedule this puts the source on its own diagonal block (64+i, 64+j) and every target
scale on the shared 64x64 canvas; with a smaller schedule all indices fall inside the source block,
so every token sits at (64 + n // 64, 64 + n % 64). Both layouts are what the checkpoints saw.

Shapes: L table rows, c = head_dim / 2 angles per row (first half row angles, second half column).
"""

from __future__ import annotations

import torch

MAX_POSITIONS = 256  # positions per axis (twice the 128 of Infinity, as VAREdit uses)


def rope_inv_freq(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """head_dim/4 inverse frequencies, in the official float32 arithmetic (power, then reciprocal)."""
    half = head_dim // 2
    exponent = torch.arange(0, half, 2, dtype=torch.float32) / half
    return 1.0 / (base**exponent)


def rope_positions(ref_schedule: list[tuple[int, int]]) -> torch.Tensor:
    """(row, col) of every table row: the source block, then each reference scale on its canvas."""
    uph, upw = ref_schedule[-1]
    ii, jj = torch.meshgrid(torch.arange(uph), torch.arange(upw), indexing="ij")
    pos = [torch.stack([ii + uph, jj + upw], dim=-1).reshape(-1, 2)]  # source block, shifted off-canvas
    for ph, pw in ref_schedule:
        rows = torch.round(torch.arange(ph, dtype=torch.float32) * (uph / ph)).long()
        cols = torch.round(torch.arange(pw, dtype=torch.float32) * (upw / pw)).long()
        r, c = torch.meshgrid(rows, cols, indexing="ij")
        pos.append(torch.stack([r, c], dim=-1).reshape(-1, 2))
    return torch.cat(pos)  # (L, 2)


def rope_table(head_dim: int, ref_schedule: list[tuple[int, int]]) -> torch.Tensor:
    """cos and sin of every table row: (2, L, head_dim/2), float32."""
    freqs = torch.outer(torch.arange(MAX_POSITIONS, dtype=torch.float32), rope_inv_freq(head_dim))
    pos = rope_positions(ref_schedule)
    angles_Lc = torch.cat([freqs[pos[:, 0]], freqs[pos[:, 1]]], dim=-1)
    return torch.stack([angles_Lc.cos(), angles_Lc.sin()])


def apply_rope(x_BHLc: torch.Tensor, cos_sin_2Lc: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2m], x[2m+1]) by angle m of each token's row (float32 math)."""
    cos, sin = cos_sin_2Lc.unbind(0)  # (L, hd/2) each
    x = x_BHLc.float().unflatten(-1, (-1, 2))  # (B, H, L, hd/2, 2)
    x0, x1 = x.unbind(-1)
    out = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1)
    return out.flatten(-2)  # (B, H, L, hd)
