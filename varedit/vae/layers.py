"""Convolutional building blocks of the VAE (Flux-style, no attention, no time embedding).

The official code wraps every Conv2d in a module holding it as `.conv` and every GroupNorm as
`.norm`; the wrappers are kept so parameter names match the released checkpoints
(`encoder.conv_in.conv.weight`, `...norm1.norm.weight`) without any renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv(nn.Module):
    """A Conv2d under the attribute `conv`, for the official key names."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(x_BCHW)


class Normalize(nn.Module):
    """GroupNorm (32 groups, or 24 when 32 does not divide the width) under the attribute `norm`."""

    def __init__(self, channels: int):
        super().__init__()
        groups = 32 if channels % 32 == 0 else 24
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.norm(x_BCHW)


def swish(x: torch.Tensor) -> torch.Tensor:
    # Written out rather than F.silu to keep the official op sequence (x * sigmoid(x)).
    return x * torch.sigmoid(x)


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
        h = self.conv1(swish(self.norm1(x_BCHW)))
        h = self.conv2(swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            x_BCHW = self.nin_shortcut(x_BCHW)
        return x_BCHW + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding only right and bottom by one (asymmetric, as in Flux)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv(channels, channels, 3, stride=2, padding=0)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))  # (B, C, H+1, W+1) -> (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv(channels, channels, 3, padding=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BCHW, scale_factor=2, mode="nearest"))  # (B, C, 2H, 2W)
