"""Configuration of the BSQ multi-scale VAE, its released presets, and the translation from the
official constructor arguments (the AutoEncoder Namespace built by `vae_model`).

Only the settings the released VAEs use are implemented; `from_official` refuses any other value
so a checkpoint can never be loaded into a silently different architecture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class VAEConfig:
    codebook_dim: int = 32  # dq: BSQ bits per latent pixel (= encoder output channels)
    patch_size: int = 16  # image pixels per latent pixel along each side (a power of two)
    base_ch: int = 128  # width of the first conv; level i has base_ch * ch_mult[i] channels
    ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)  # per-level width multipliers (encoder = decoder)
    num_res_blocks: int = 2  # ResnetBlocks per encoder level (the decoder uses one more)
    spatial_patchify: bool = False  # 8B: the transformer sees 2x2 latent pixels as one token

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        n_down = int(math.log2(self.patch_size))
        if 2**n_down != self.patch_size:
            raise ValueError(f"patch_size must be a power of two, got {self.patch_size}")
        # The encoder halves at every level but the last and the decoder doubles at every level but
        # the first, so they agree on the latent size only with log2(patch) + 1 levels.
        if len(self.ch_mult) != n_down + 1:
            raise ValueError(f"len(ch_mult)={len(self.ch_mult)} must equal log2(patch_size)+1={n_down + 1}")
        for c in self.widths:
            if c % 32 and c % 24:
                raise ValueError(f"GroupNorm needs widths divisible by 32 or 24, got {c}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width of each level."""
        return tuple(self.base_ch * m for m in self.ch_mult)

    @property
    def d_vae(self) -> int:
        """Feature width of one transformer token (and bits per token)."""
        return 4 * self.codebook_dim if self.spatial_patchify else self.codebook_dim

    @property
    def token_stride(self) -> int:
        """Latent pixels per transformer token along each side."""
        return 2 if self.spatial_patchify else 1

    @staticmethod
    def preset(name: str) -> VAEConfig:
        """A released VAE by its file stem, e.g. "infinity_vae_d32reg"."""
        try:
            return PRESETS[name]
        except KeyError:
            raise KeyError(f"unknown VAE preset {name!r}; known: {sorted(PRESETS)}") from None

    @classmethod
    def from_official(cls, args: Mapping[str, Any], *, spatial_patchify: bool | None = None) -> VAEConfig:
        """Translate official constructor arguments into a config.

        `args` may be the AutoEncoder Namespace as a dict, the `vae_model(...)` keyword arguments
        (base_ch / num_res_blocks then take vae_model's hard-coded 128 / 2), or a record holding
        either under "autoencoder_args" / "vae" (a golden config.json or a manifest "_config"),
        whose "infer_args" then also supply `apply_spatial_patchify`. Patchify is a transformer
        setting in the official code, so an explicit `spatial_patchify` argument wins.
        """
        infer_args = args.get("infer_args", {})
        ns = _find_namespace(args)
        _check_supported(ns)
        enc_mult = list(ns["encoder_ch_mult"])
        dec_mult = list(ns.get("decoder_ch_mult", enc_mult))
        if enc_mult != dec_mult:
            raise ValueError(f"encoder_ch_mult {enc_mult} != decoder_ch_mult {dec_mult} is not supported")
        if spatial_patchify is None:
            flag = ns.get("apply_spatial_patchify", infer_args.get("apply_spatial_patchify", 0))
            spatial_patchify = bool(flag)
        return cls(
            codebook_dim=int(ns["codebook_dim"]),
            patch_size=int(ns["patch_size"]),
            base_ch=int(ns.get("base_ch", 128)),
            ch_mult=tuple(int(m) for m in enc_mult),
            num_res_blocks=int(ns.get("num_res_blocks", 2)),
            spatial_patchify=spatial_patchify,
        )

    def with_patchify(self, on: bool) -> VAEConfig:
        return replace(self, spatial_patchify=on)


PRESETS: dict[str, VAEConfig] = {
    # 2B VAREdit: 16x downsampling, 32 bits per latent pixel, one token per latent pixel.
    "infinity_vae_d32reg": VAEConfig(codebook_dim=32, patch_size=16, ch_mult=(1, 2, 4, 4, 4)),
    # 8B VAREdit: 8x downsampling, 14 bits per latent pixel, 2x2 latent pixels per token (56 bits).
    "infinity_vae_d56_f8_14_patchify": VAEConfig(
        codebook_dim=14, patch_size=8, ch_mult=(1, 2, 4, 4), spatial_patchify=True
    ),
}

# Official settings this implementation reproduces, with the only value accepted for each.
_REQUIRED: dict[str, Any] = {
    "quantizer_type": "MultiScaleBSQ",
    "use_vae": False,
    "cnn_type": "2d",
    "cnn_attention": "no",
    "cnn_norm_axis": "spatial",
    "norm_type": "group",
    "use_pxsf": False,
    "new_quant": True,
    "ln_before_quant": False,
    "preserve_norm": False,
    "use_freq_dec": False,
    "use_out_phi": False,
    "use_out_phi_res": False,
    "use_decay_factor": False,
    "random_flip": False,
    "random_flip_1lvl": False,
    "drop_when_test": False,
}


def _find_namespace(args: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("autoencoder_args", "vae"):
        inner = args.get(key)
        if isinstance(inner, Mapping):
            return _find_namespace(inner)
    if "vae_model_call" in args:
        call = dict(args["vae_model_call"])
        call.update(args.get("overrides_of_vae_model_namespace", {}))
        return call
    if "codebook_dim" not in args:
        raise ValueError("no VAE constructor arguments found (expected codebook_dim, patch_size, ...)")
    return args


def _check_supported(ns: Mapping[str, Any]) -> None:
    bad = {k: ns[k] for k, v in _REQUIRED.items() if k in ns and ns[k] != v}
    if "codebook_size" in ns and ns["codebook_size"] != 2 ** int(ns["codebook_dim"]):
        bad["codebook_size"] = ns["codebook_size"]  # != 2**codebook_dim would add projections
    if bad:
        raise ValueError(f"unsupported official VAE settings (only {_REQUIRED} is implemented): {bad}")
