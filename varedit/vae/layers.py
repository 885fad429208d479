"""Convolutional building blocks of the VAE (Flux-style, no attention, no time embedding).

The official code wraps every Conv2d in a module holding it as `.conv` and every GroupNorm as
`.norm`; the wrappers are kept so parameter names match the released checkpoints
(`encoder.conv_in.conv.weight`, `...norm1.norm.weight`) without any renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import linear


class Conv(nn.Module):
    """A Conv2d under the attribute `conv`, for the official key names."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if conv.kernel_size == (1, 1) and x_BCHW.is_contiguous(memory_format=torch.channels_last):
            # a 1x1 conv on channels-last input is a linear layer over channels; PyTorch would run it
            # as a matrix product outside oneDNN (`ops.linear` says why that matters)
            y_BHWC = linear(x_BCHW.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)
            return y_BHWC.permute(0, 3, 1, 2)
        return conv(x_BCHW)


class Normalize(nn.Module):
    """GroupNorm (32 groups, or 24 when 32 does not divide the width) under the attribute `norm`."""

    def __init__(self, channels: int):
        super().__init__()
        groups = 32 if channels % 32 == 0 else 24
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.norm(x_BCHW)


def swish_(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), written into x when no gradient is needed: x must be an intermediate nobody
    else reads. Computed by F.silu, which rounds x / (1 + exp(-x)) instead of the official
    x * sigmoid(x) (at most one float32 ulp apart) and needs no full-size temporary, whose fresh
    pages cost more than the arithmetic at the decoder's full resolution."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


class ResnetBlock(nn.Module):
    """norm-swish-conv twice, plus a 1x1 shortcut when the width changes."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = Normalize(cin)
        self.conv1 = Conv(cin, cout, 3, padding=1)
        self.norm2 = Normalize(cout)
        self.conv2 = Conv(cout, cout, 3, padding=1)
        self.nin_shortcut = Conv(cin, cout, 1) if cin != cout else None

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish_(self.norm1(x_BCHW)))
        h = self.conv2(swish_(self.norm2(h)))
        if self.nin_shortcut is not None:
            x_BCHW = self.nin_shortcut(x_BCHW)
        return h.add_(x_BCHW)  # = x + h, into the conv's fresh output (add's backward needs neither)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding only right and bottom by one (asymmetric, as in Flux)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv(channels, channels, 3, stride=2, padding=0)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))  # (B, C, H+1, W+1) -> (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv, computed as one 2x2 conv on the small map.

    Output pixel (2i + a, 2j + b) sees only 2x2 distinct input pixels, each under a sum of kernel
    taps, so the four phases (a, b) are four 2x2 kernels: 4 multiply-adds per output pixel and
    channel pair instead of 9, no enlarged input, and the same result up to float32 rounding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv(channels, channels, 3, padding=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x_BCHW.shape
        conv = self.conv.conv
        C = conv.out_channels
        w = _phase_kernels(_phase_kernels(conv.weight, 3), 3)  # columns, then rows: (a, b, C, C, 2, 2)
        w = w.flatten(0, 2)  # (4C, C, 2, 2), phase-major
        # phase (a, b) of output (i, j) sits at (i + a, j + b) of the padded 2x2 conv: (B, 4C, H+1, W+1)
        o = F.conv2d(x_BCHW, w, conv.bias.repeat(4), padding=1)
        o = o.permute(0, 2, 3, 1).unflatten(-1, (2, 2, C))  # (B, H+1, W+1, a, b, C)
        y = o.new_empty(B, H, 2, W, 2, C)
        for a in (0, 1):
            for b in (0, 1):
                y[:, :, a, :, b] = o[:, a : a + H, b : b + W, a, b]
        return y.view(B, 2 * H, 2 * W, C).permute(0, 3, 1, 2)  # (B, C, 2H, 2W), channels-last


def _phase_kernels(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum the taps of kernel axis `dim` (size 3) that "nearest x2" lands on the same input pixel.

    Output row 2i reads input rows i - 1 (tap 0) and i (taps 1 + 2); row 2i + 1 reads i (taps 0 + 1)
    and i + 1 (tap 2). Returns the two phases stacked in front: (2, ..., 2 at `dim`, ...)."""
    t0, t1, t2 = w.unbind(dim)
    even = torch.stack([t0, t1 + t2], dim)
    odd = torch.stack([t0 + t1, t2], dim)
    return torch.stack([even, odd])
