"""What "the same numbers" means when comparing float stages behind VAREdit's cross-attention.

The official code rounds q, k, v and the output of every cross-attention to bfloat16, even in float32
(varedit/NOTES.md). A 1-ulp float32 difference upstream (another SIMD kernel, another summation order,
another batch shape) can cross a bf16 rounding boundary and move values by one bf16 step (~4e-3
relative); through the KV cache such a step spreads ~5e-5 over the later tokens. The official code
shows exactly this against itself when merely rerun with 2 threads instead of 1 (up to ~8e-5, isolated
~1e-3 outliers after a cross-attention), and the references ran on another CPU than the one running
the tests. So the bulk must agree to 1e-4 (the median token row) and every value to 1e-2, while a
real bug (a wrong RoPE layout, scale or mask) moves logits by 0.1-1.
"""

from __future__ import annotations

import torch

# Summed codes: sums of +-1/sqrt(d) codes upsampled in kernel order; exact on SIMD builds, 1 ulp off
# on builds without (ATEN_CPU_CAPABILITY=default, some ARM machines).
CODES_TOL = {"atol": 1e-6, "rtol": 0.0}


def assert_matches_reference(
    actual: torch.Tensor, expected: torch.Tensor, bulk_atol: float = 1e-4, atol: float = 1e-2
) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err_rows = (actual - expected).abs().flatten(0, -2).amax(-1)  # per token row
    assert float(err_rows.median()) <= bulk_atol, f"median row error {float(err_rows.median()):.2e}"
    assert float(err_rows.max()) <= atol, f"max error {float(err_rows.max()):.2e}"


def assert_images_match(img_B3HW: torch.Tensor, expected_u8_bgr: torch.Tensor) -> None:
    """A decoded image in [-1, 1] against the official uint8 BGR output: at most one step apart, and
    only on a sliver of the pixels."""
    u8 = ((img_B3HW + 1) / 2).permute(0, 2, 3, 1).mul(255).to(torch.uint8).flip(-1)
    diff = (u8.int() - expected_u8_bgr.int()).abs()
    assert int(diff.max()) <= 1 and int((diff > 0).sum()) <= diff.numel() // 1000, int((diff > 0).sum())
