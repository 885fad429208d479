"""Conversions between VAE-layout maps and transformer tokens.

With spatial patchify (8B) a transformer token covers 2x2 latent pixels: token channel
j = 4*c + 2*dy + dx holds latent channel c at sub-pixel (dy, dx) (PyTorch pixel_unshuffle order),
for input features and for bits alike. Without patchify a token is one latent pixel.
Tokens are flattened row-major: (B, h*w, d_vae).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def map_to_tokens(f_BdHW: torch.Tensor, patchify: bool) -> torch.Tensor:
    """Feature map (B, dq, H, W) -> tokens (B, L, d_vae), L = H*W or H*W/4."""
    if patchify:
        f_BdHW = F.pixel_unshuffle(f_BdHW, 2)  # (B, 4dq, H/2, W/2)
    return f_BdHW.reshape(*f_BdHW.shape[:2], -1).permute(0, 2, 1)  # (B, L, d_vae)


def vae_bits_to_tokens(bits_B1hwd: torch.Tensor, patchify: bool) -> torch.Tensor:
    """Bits in VAE layout (B, 1, gh, gw, dq) -> token bits (B, L, d_vae)."""
    B = bits_B1hwd.shape[0]
    if not patchify:
        return bits_B1hwd.reshape(B, -1, bits_B1hwd.shape[-1])
    bits_BdHW = bits_B1hwd.squeeze(1).permute(0, 3, 1, 2)  # (B, dq, gh, gw)
    bits_BDhw = F.pixel_unshuffle(bits_BdHW, 2)  # (B, 4dq, gh/2, gw/2)
    return bits_BDhw.permute(0, 2, 3, 1).reshape(B, -1, bits_BDhw.shape[1])  # (B, L, 4dq)


def tokens_to_vae_bits(bits_Bld: torch.Tensor, h: int, w: int, patchify: bool) -> torch.Tensor:
    """Token bits (B, h*w, d_vae) of an h x w token grid -> VAE layout (B, 1, gh, gw, dq)."""
    B = bits_Bld.shape[0]
    bits_Bhwd = bits_Bld.reshape(B, h, w, -1)
    if patchify:
        bits_BDhw = bits_Bhwd.permute(0, 3, 1, 2)  # (B, 4dq, h, w)
        bits_Bhwd = F.pixel_shuffle(bits_BDhw, 2).permute(0, 2, 3, 1)  # (B, 2h, 2w, dq)
    return bits_Bhwd.unsqueeze(1)
