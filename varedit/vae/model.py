"""The BSQ multi-scale VAE and the operations VAREdit's transformer needs from it.

Shape legend: B batch, H/W image or latent size, dq = codebook_dim (bits per latent pixel),
d = d_vae (bits / features per transformer token: dq, or 4*dq with spatial patchify),
K scales, (h_k, w_k) token grid of scale k, l = h_k*w_k tokens of one scale, L tokens of several.

Schedules: every `scale_schedule` argument is the transformer's list of token grids, (1, h, w) as in
the official `scale_schedule` or plain (h, w). The VAE works on `vae_schedule(scale_schedule)`: the
same grids, doubled with spatial patchify. The last grid is the latent size of the image.

f_hat (the running sum of codes, official `summed_codes`) is kept as (B, dq, 1, H, W) and in the
memory layout the official op sequence produces, so every resize rounds like the official one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import Decoder, Encoder
from .config import VAEConfig
from .patchify import map_to_tokens, tokens_to_vae_bits, vae_bits_to_tokens
from .quantizer import DOWN_MODE, UP_MODE, Grid, MultiScaleBSQ

# A bit-flip hook for bitwise self-correction: (scale index, clean bits (B, 1, h, w, dq)) ->
# the corrupted bits to feed forward, or None to leave that scale alone. See teacher.SelfCorrection.
BitFlip = Callable[[int, torch.Tensor], torch.Tensor | None]


@dataclass
class VAEEncoding:
    """What the official `AutoEncoder.encode` returns (minus its unused outputs)."""

    h_BdHW: torch.Tensor  # raw encoder output
    z_BdHW: torch.Tensor  # multi-scale quantized latent (input of `decode`)
    bits: list[torch.Tensor]  # per scale, VAE layout (B, 1, h, w, dq), int64
    var_inputs: list[torch.Tensor]  # per scale k < K-1: area-shrunk running sum at grid k+1, (B, dq, 1, h, w)


@dataclass
class TeacherForcing:
    """Training inputs and labels for one batch of target images (official `flip_requant`)."""

    x_BLd: torch.Tensor  # transformer inputs of scales 1..K-1, concatenated: (B, sum_{k>=1} l_k, d)
    labels: list[torch.Tensor]  # per scale: (B, l_k, d) int64 0/1, token layout
    input_bits: list[torch.Tensor]  # per scale, VAE layout: the bits after self-correction flips


class VAE(nn.Module):
    """Encoder + decoder + multi-scale BSQ, with the official state-dict key names."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantizer = MultiScaleBSQ(config.codebook_dim)
        # The official model registers the quantizer twice; keep the alias so the state dict lists
        # `quantize.lfq.mask` as well and official files load with strict=True.
        self.quantize = self.quantizer

    # ----- schedules and layouts -----

    @property
    def d_vae(self) -> int:
        return self.config.d_vae

    def vae_schedule(self, scale_schedule: Sequence[Sequence[int]]) -> list[Grid]:
        """Transformer token grids -> VAE latent grids, (1, h, w) each."""
        s = self.config.token_stride
        return [(1, g[-2] * s, g[-1] * s) for g in scale_schedule]

    def tokens_to_bits(self, bits_Bld: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """Token bits (B, h*w, d) of token grid (1, h, w) -> VAE layout (B, 1, gh, gw, dq)."""
        return tokens_to_vae_bits(bits_Bld, grid[-2], grid[-1], self.config.spatial_patchify)

    def bits_to_tokens(self, bits_B1hwd: torch.Tensor) -> torch.Tensor:
        """VAE-layout bits (B, 1, gh, gw, dq) -> token bits (B, l, d)."""
        return vae_bits_to_tokens(bits_B1hwd, self.config.spatial_patchify)

    # ----- encode -----

    def encode_features(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> raw encoder output (B, dq, H/p, W/p), float32.

        Not quantized, not normalised: this is what VAREdit feeds as the source reference and
        what training quantizes into labels. Runs in float32 even under autocast (as official)."""
        param = self.encoder.conv_in.conv.weight
        with torch.autocast(x_B3HW.device.type, enabled=False):
            return self.encoder(x_B3HW.to(param.dtype)).float()

    def encode(self, x_B3HW: torch.Tensor, scale_schedule: Sequence[Sequence[int]]) -> VAEEncoding:
        """The VAE's own multi-scale encoding (official `AutoEncoder.encode`): raw features,
        quantized latent, per-scale bits (VAE layout) and the area-based `var_inputs`."""
        h = self.encode_features(x_B3HW)
        enc = self.quantizer(h, self.vae_schedule(scale_schedule))
        return VAEEncoding(h, enc.z_BdHW, enc.bits, enc.var_inputs)

    def source_tokens(
        self, f_BdHW: torch.Tensor, scale_schedule: Sequence[Sequence[int]] | None = None
    ) -> torch.Tensor:
        """Raw features of the source image -> VAREdit's source prefix (B, h_{K-1}*w_{K-1}, d).

        The source is given at the finest scale, unquantized: area-resized to the last VAE grid
        (a no-op when the image matches the schedule), patchified for 8B, flattened row-major."""
        f_Bd1HW = f_BdHW.unsqueeze(2)
        if scale_schedule is not None:
            f_Bd1HW = F.interpolate(f_Bd1HW, size=self.vae_schedule(scale_schedule)[-1], mode=DOWN_MODE)
        return map_to_tokens(f_Bd1HW.squeeze(2), self.config.spatial_patchify)

    def img_to_source_tokens(
        self, x_B3HW: torch.Tensor, scale_schedule: Sequence[Sequence[int]] | None = None
    ) -> torch.Tensor:
        """Source image in [-1, 1] -> source prefix tokens (B, l_{K-1}, d), float32."""
        return self.source_tokens(self.encode_features(x_B3HW), scale_schedule)

    # ----- training: teacher forcing -----

    def teacher_forcing(
        self,
        f_BdHW: torch.Tensor,
        scale_schedule: Sequence[Sequence[int]],
        flip: BitFlip | None = None,
        requant: bool = True,
    ) -> TeacherForcing:
        """Raw target features -> per-scale labels and the transformer inputs of scales 1..K-1.

        Per scale k: shrink the residual f - acc (area), quantize it (its bits are label k),
        optionally corrupt the bits (`flip`, bitwise self-correction; with `requant` the corrupted
        bits' codes replace the quantized value), add the codes enlarged to full size to acc, and
        resize acc (trilinear) to grid k+1 as the next input. Labels stay the clean bits of each
        step, computed against the corrupted accumulation, so the model learns to correct.
        Without flips the accumulated values are BSQ's straight-through output, which differs
        from `next_scale_input`'s codes by ~1e-7, as in the official code (varedit/NOTES.md)."""
        vae_sched = self.vae_schedule(scale_schedule)
        f_Bd1HW = f_BdHW.unsqueeze(2)
        full = vae_sched[-1]
        lfq = self.quantizer.lfq
        acc: torch.Tensor | float = 0.0
        inputs, labels, input_bits = [], [], []
        with torch.autocast(f_BdHW.device.type, enabled=False):
            for k, grid in enumerate(vae_sched):
                r = f_Bd1HW - acc
                if k < len(vae_sched) - 1:
                    r = F.interpolate(r, size=grid, mode=DOWN_MODE).contiguous()
                q, bits = lfq(r)
                labels.append(self.bits_to_tokens(bits))
                flipped = flip(k, bits) if flip is not None else None
                if flipped is not None and requant:
                    q = lfq.bits_to_codes(flipped)
                input_bits.append(bits if flipped is None else flipped)
                acc = acc + F.interpolate(q, size=full, mode=UP_MODE).contiguous()
                if k < len(vae_sched) - 1:
                    nxt = F.interpolate(acc, size=vae_sched[k + 1], mode=UP_MODE).contiguous()
                    inputs.append(map_to_tokens(nxt.squeeze(2), self.config.spatial_patchify))
        return TeacherForcing(torch.cat(inputs, dim=1), labels, input_bits)

    def img_to_labels(
        self, x_B3HW: torch.Tensor, scale_schedule: Sequence[Sequence[int]]
    ) -> list[torch.Tensor]:
        """Target image in [-1, 1] -> clean per-scale bit labels [(B, l_k, d) int64], no flips."""
        return self.teacher_forcing(self.encode_features(x_B3HW), scale_schedule).labels

    # ----- inference: next-scale input -----

    def next_scale_input(
        self,
        si: int,
        bits_Bld: torch.Tensor,
        f_hat: torch.Tensor | None,
        scale_schedule: Sequence[Sequence[int]],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add scale `si`'s sampled bits to f_hat; return (f_hat, transformer input of scale si+1).

        bits_Bld: (B, h_si*w_si, d) 0/1, column j of a token is bit j (the head's j-th logit pair).
        f_hat: (B, dq, 1, H, W) running sum, None before scale 0. The next input is
        (B, h_{si+1}*w_{si+1}, d) float32 (before word_embed), None after the last scale.
        Codes are enlarged to the full grid (trilinear) and summed; the sum is resized (trilinear,
        i.e. bilinear without antialias, also when shrinking) to grid si+1 and patchified."""
        vae_sched = self.vae_schedule(scale_schedule)
        with torch.autocast(bits_Bld.device.type, enabled=False):
            codes = self.quantizer.lfq.bits_to_codes(self.tokens_to_bits(bits_Bld, scale_schedule[si]))
            if si == len(vae_sched) - 1:
                return (codes if f_hat is None else f_hat + codes), None
            up = F.interpolate(codes, size=vae_sched[-1], mode=UP_MODE)
            f_hat = up if f_hat is None else f_hat + up
            nxt = F.interpolate(f_hat, size=vae_sched[si + 1], mode=UP_MODE).squeeze(2)
        return f_hat, map_to_tokens(nxt, self.config.spatial_patchify)

    def bits_to_f_hat(
        self, bits: Sequence[torch.Tensor], scale_schedule: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """Per-scale token bits (B, l_k, d) -> f_hat (B, dq, 1, H, W) (official `decode_from_indices`)."""
        f_hat = None
        for si, bits_Bld in enumerate(bits):
            f_hat, _ = self.next_scale_input(si, bits_Bld, f_hat, scale_schedule)
        assert f_hat is not None
        return f_hat

    # ----- decode -----

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent (B, dq, 1, H, W) or (B, dq, H, W) -> image (B, 3, H*p, W*p) clamped to [-1, 1].

        Runs in the caller's autocast context: the official GPU path decodes under bf16 autocast."""
        if f_hat.dim() == 5:
            f_hat = f_hat.squeeze(2)
        return self.decoder(f_hat).clamp(-1, 1)
