"""Encoder and decoder of the BSQ VAE.

Shapes: B batch, H/W image size, p = patch_size, dq = codebook_dim; the latent is (B, dq, H/p, W/p).
Module names (`down.{i}.block.{j}`, `mid.block_1`, `up.{i}.upsample`, ...) are the official ones.

Both run channels-last inside: oneDNN convolutions then skip the layout conversions on either side
of every conv, and GroupNorm and the element-wise ops have channels-last kernels. Outputs come back
in the default layout, in which the quantizer's resizes round like the official ones.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import VAEConfig
from .layers import Conv, Downsample, Normalize, ResnetBlock, Upsample, swish_


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> raw continuous latent (B, dq, H/p, W/p); not quantized or normalised."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = cfg.widths
        self.conv_in = Conv(3, cfg.base_ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.base_ch
        for i, cout in enumerate(widths):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(cin, cout))
                cin = cout
            if i < len(widths) - 1:  # halve at every level but the last: log2(p) times
                level.downsample = Downsample(cout)
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(cin, cin)
        self.mid.block_2 = ResnetBlock(cin, cin)
        self.norm_out = Normalize(cin)
        self.conv_out = Conv(cin, cfg.codebook_dim, 3, padding=1)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_B3HW.contiguous(memory_format=torch.channels_last))
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.block_1(h))
        return self.conv_out(swish_(self.norm_out(h))).contiguous()  # (B, dq, H/p, W/p)


class Decoder(nn.Module):
    """Latent (B, dq, h, w) -> image (B, 3, h*p, w*p), unclamped."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = cfg.widths
        cin = widths[-1]
        self.conv_in = Conv(cfg.codebook_dim, cin, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(cin, cin)
        self.mid.block_2 = ResnetBlock(cin, cin)
        # `up` is indexed by level (up.0 = full resolution) but runs from the last level down.
        levels: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(cin, widths[i]))
                cin = widths[i]
            if i > 0:  # double at every level but the first: log2(p) times
                level.upsample = Upsample(cin)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(cin)
        self.conv_out = Conv(cin, 3, 3, padding=1)

    def forward(self, z_BdHW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z_BdHW.contiguous(memory_format=torch.channels_last))
        h = self.mid.block_2(self.mid.block_1(h))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish_(self.norm_out(h))).contiguous()  # (B, 3, H, W)
