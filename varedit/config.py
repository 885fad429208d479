"""Model configuration: one frozen dataclass, the named variants, and the scale schedules.

A variant fixes the transformer, the VAE and the output resolution. The transformer weights do not
depend on the resolution (scales only index `lvl_embed` rows and RoPE table entries), so one
checkpoint can serve any resolution whose schedule fits and whose latent its VAE can normalize
(`VAREditConfig.resolutions`); the released ones were trained at one.

Scale schedules come from the official aspect-ratio templates: each template lists 13
token grids (h, w); a resolution uses the first K of them, so that the last grid times the pixels per
token equals the image side. The time axis of the official `(t, h, w)` triples is always 1 and is
dropped here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .vae.config import PRESETS, VAEConfig

# h/w ratio -> the 13 (h, w) token grids of that template (official `ratio2hws`, as data).
_RATIO_TEMPLATES: dict[float, list[tuple[int, int]]] = {
    1.000: [
        (1, 1),
        (2, 2),
        (4, 4),
        (6, 6),
        (8, 8),
        (12, 12),
        (16, 16),
        (20, 20),
        (24, 24),
        (32, 32),
        (40, 40),
        (48, 48),
        (64, 64),
    ],
    1.250: [
        (1, 1),
        (2, 2),
        (3, 3),
        (5, 4),
        (10, 8),
        (15, 12),
        (20, 16),
        (25, 20),
        (30, 24),
        (35, 28),
        (45, 36),
        (55, 44),
        (70, 56),
    ],
    1.333: [
        (1, 1),
        (2, 2),
        (4, 3),
        (8, 6),
        (12, 9),
        (16, 12),
        (20, 15),
        (24, 18),
        (28, 21),
        (36, 27),
        (48, 36),
        (60, 45),
        (72, 54),
    ],
    1.500: [
        (1, 1),
        (2, 2),
        (3, 2),
        (6, 4),
        (9, 6),
        (15, 10),
        (21, 14),
        (27, 18),
        (33, 22),
        (39, 26),
        (48, 32),
        (63, 42),
        (78, 52),
    ],
    1.750: [
        (1, 1),
        (2, 2),
        (3, 3),
        (7, 4),
        (11, 6),
        (14, 8),
        (21, 12),
        (28, 16),
        (35, 20),
        (42, 24),
        (56, 32),
        (70, 40),
        (84, 48),
    ],
    2.000: [
        (1, 1),
        (2, 2),
        (4, 2),
        (6, 3),
        (10, 5),
        (16, 8),
        (22, 11),
        (30, 15),
        (38, 19),
        (46, 23),
        (60, 30),
        (74, 37),
        (90, 45),
    ],
    2.500: [
        (1, 1),
        (2, 2),
        (5, 2),
        (10, 4),
        (15, 6),
        (20, 8),
        (25, 10),
        (30, 12),
        (40, 16),
        (50, 20),
        (65, 26),
        (80, 32),
        (100, 40),
    ],
    3.000: [
        (1, 1),
        (2, 2),
        (6, 2),
        (9, 3),
        (15, 5),
        (21, 7),
        (27, 9),
        (36, 12),
        (45, 15),
        (54, 18),
        (72, 24),
        (90, 30),
        (111, 37),
    ],
}


def _with_transposes(table: dict[float, list[tuple[int, int]]]) -> dict[float, list[tuple[int, int]]]:
    """Register every ratio r != 1 also under int(1000/r)/1000 with h and w swapped (official keys)."""
    out = dict(table)
    for r, hws in table.items():
        if r != 1.0:
            out[int(1 / r * 1000) / 1000] = [(w, h) for h, w in hws]
    return out


TEMPLATES: dict[float, list[tuple[int, int]]] = _with_transposes(_RATIO_TEMPLATES)
# Official schedule names -> number of scales (the first K grids of a template).
PN_SCALES: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
REFERENCE_PN = "1M"  # RoPE positions of every schedule are laid out on the template's 1M grid


def scale_schedule(num_scales: int, ratio: float = 1.0) -> list[tuple[int, int]]:
    """The first `num_scales` token grids (h, w) of the template for h/w = `ratio`."""
    if ratio not in TEMPLATES:
        raise ValueError(f"no scale template for h/w={ratio}; known: {sorted(TEMPLATES)}")
    if not 1 <= num_scales <= len(TEMPLATES[ratio]):
        raise ValueError(f"num_scales must be in 1..{len(TEMPLATES[ratio])}, got {num_scales}")
    return TEMPLATES[ratio][:num_scales]


def reference_schedule(ratio: float = 1.0) -> list[tuple[int, int]]:
    """The template's 1M schedule, which fixes the RoPE positions of every resolution (varedit/NOTES.md)."""
    return scale_schedule(PN_SCALES[REFERENCE_PN], ratio)


@dataclass(frozen=True)
class VAREditConfig:
    name: str = "2B-512"  # variant name, also the official checkpoint file stem
    # transformer (Infinity backbone)
    depth: int = 32  # number of blocks
    width: int = 2048  # C: residual width; also D, the condition width
    num_heads: int = 16  # self- and cross-attention heads; head dim = width / num_heads
    mlp_ratio: float = 4.0  # FFN hidden = round(width * mlp_ratio / 256) * 256
    text_channels: int = 2048  # Ct5: width of the T5 features (flan-t5-xl: 2048)
    text_maxlen: int = 512  # T5 max length and rows of the learned null-text table
    num_levels: int = 15  # rows of the scale ("level") embedding: at most 15 scales
    norm_eps: float = 1e-6  # every LayerNorm and the text RMSNorm
    block_chunks: int = 8  # official key layout only: blocks are stored as block_chunks.{c}.module.{j}
    # tokenizer side
    vae: VAEConfig = field(default_factory=lambda: VAEConfig.preset("infinity_vae_d32reg"))
    # generation
    resolution: int = 512  # default (and trained) square image side in pixels
    text_encoder: str = "flan-t5-xl"  # folder name of the T5 encoder in the official release

    def __post_init__(self) -> None:
        if self.width % self.num_heads or self.head_dim % 4:
            raise ValueError(f"head dim {self.width}/{self.num_heads} must be a multiple of 4 (RoPE)")
        if self.depth % self.block_chunks:
            raise ValueError(f"depth {self.depth} must be a multiple of block_chunks {self.block_chunks}")
        if self.text_channels % self.text_pool_heads or self.width % self.text_pool_heads:
            raise ValueError("text pool heads must divide text_channels and width")
        if self.ffn_hidden <= 0:
            raise ValueError(f"FFN hidden width {self.ffn_hidden} <= 0; use width >= 64")
        self.num_scales(self.resolution)  # validates the default resolution

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        return round(self.width * self.mlp_ratio / 256) * 256

    @property
    def text_pool_heads(self) -> int:
        """Heads of the text attention pool: chosen from Ct5, not from the width (official rule)."""
        return self.text_channels // (64 if self.width > 4096 else 128)

    @property
    def d_vae(self) -> int:
        """d: feature width and bits per transformer token."""
        return self.vae.d_vae

    @property
    def vocab(self) -> int:
        """V: head outputs per token, two logits (bit = 0, bit = 1) per bit."""
        return 2 * self.d_vae

    @property
    def pixels_per_token(self) -> int:
        return self.vae.patch_size * self.vae.token_stride

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Every square side this model can generate: one per prefix of the square template, except those
        too small for its VAE (`_normalizable`)."""
        return tuple(side for side in self.template_sides() if self._normalizable(side))

    def template_sides(self) -> list[int]:
        """The square side of each prefix of the square template (scale k + 1 at index k)."""
        n = self.pixels_per_token
        return [h * n for h, _ in TEMPLATES[1.0][: self.num_levels]]

    def _normalizable(self, resolution: int) -> bool:
        """Whether the VAE's GroupNorms see more than one value per group at this side. The layers at the
        latent size have the last width; at a 1x1 latent, a width of 32 (or 24) leaves one channel per
        group (`vae.layers.Normalize`), which torch refuses to normalize (it would zero the features):
        the tiny variant's 16 px."""
        width = self.vae.widths[-1]
        per_group = width // (32 if width % 32 == 0 else 24)
        return (resolution // self.vae.patch_size) ** 2 * per_group > 1

    def num_scales(self, resolution: int) -> int:
        """K for a square image of side `resolution`."""
        if resolution not in self.resolutions:
            why = " (too small for its VAE)" if resolution in self.template_sides() else ""
            raise ValueError(f"resolution {resolution} is not one of {self.resolutions}{why}")
        return self.template_sides().index(resolution) + 1

    def schedule(self, resolution: int | None = None) -> list[tuple[int, int]]:
        """Square token grids (h, w) for `resolution` (default: the variant's own)."""
        return scale_schedule(self.num_scales(resolution or self.resolution))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAREditConfig:
        d = _typed(cls, d)
        if "vae" in d:
            if not isinstance(d["vae"], dict):
                raise ValueError(f"config field 'vae' must be an object, got {d['vae']!r}")
            d["vae"] = VAEConfig(**_typed(VAEConfig, d["vae"]))
        return cls(**d)

    @classmethod
    def from_official(cls, args: dict[str, Any], name: str = "official") -> VAREditConfig:
        """Translate an official record (a golden config.json or a manifest "_config") into a config.

        Reads the `load_infinity` constructor arguments (depth, embed_dim, num_heads, mlp_ratio,
        text_channels, text_maxlen, block_chunks, apply_spatial_patchify, pn) and the VAE arguments.
        Settings that VAREdit never changes are checked, so a record of another model is refused.
        """
        inf = args.get("infinity", args)
        kw = inf.get("load_infinity_constructor_kwargs") or inf.get("constructor_kwargs") or inf
        fixed = {
            "shared_aln": True,
            "add_lvl_embeding_only_first_block": 1,
            "use_bit_label": 1,
            "rope2d_each_sa_layer": 1,
            "rope2d_normalized_by_hw": 2,
        }
        bad = {k: kw[k] for k, v in fixed.items() if k in kw and kw[k] != v}
        if bad:
            raise ValueError(f"unsupported official transformer settings: {bad}")
        patchify = bool(kw.get("apply_spatial_patchify", 0))
        vae_file = args.get("infer_args", {}).get("vae_filename", "")
        vae_stem = vae_file.removesuffix(".pth")
        if vae_stem in PRESETS and not any(k in args for k in ("vae", "autoencoder_args")):
            vae = VAEConfig.preset(vae_stem).with_patchify(patchify)
        else:
            vae = VAEConfig.from_official(args, spatial_patchify=patchify)
        image_size = args.get("image_size")
        if image_size:
            resolution = int(image_size[0])
        else:
            pn = kw.get("pn", "0.25M")
            k = PN_SCALES.get(pn) or len(args["scale_schedule"])
            resolution = TEMPLATES[1.0][k - 1][0] * vae.patch_size * vae.token_stride
        return cls(
            name=name,
            depth=int(kw["depth"]),
            width=int(kw["embed_dim"]),
            num_heads=int(kw["num_heads"]),
            mlp_ratio=float(kw.get("mlp_ratio", 4.0)),
            text_channels=int(kw.get("text_channels", 2048)),
            text_maxlen=int(kw.get("text_maxlen", 512)),
            block_chunks=int(kw.get("block_chunks", 8)),
            vae=vae,
            resolution=resolution,
        )


_VAE_2B = VAEConfig.preset("infinity_vae_d32reg")
_VAE_8B = VAEConfig.preset("infinity_vae_d56_f8_14_patchify")
# Tiny VAEs as in the golden references: 16 pixels per token, GroupNorm-friendly widths.
_VAE_TINY = VAEConfig(codebook_dim=32, patch_size=16, base_ch=32, ch_mult=(1, 1, 1, 1, 1), num_res_blocks=2)
_VAE_TINY_PATCHIFY = VAEConfig(
    codebook_dim=14, patch_size=8, base_ch=32, ch_mult=(1, 2, 1, 1), num_res_blocks=1, spatial_patchify=True
)

VARIANTS: dict[str, VAREditConfig] = {
    "2B-512": VAREditConfig(name="2B-512", depth=32, width=2048, num_heads=16, vae=_VAE_2B),
    "8B-512": VAREditConfig(name="8B-512", depth=40, width=3584, num_heads=28, vae=_VAE_8B),
    "8B-1024": VAREditConfig(
        name="8B-1024", depth=40, width=3584, num_heads=28, vae=_VAE_8B, resolution=1024
    ),
    # CPU test variants: the golden T1 (2B recipe) and T2 (8B recipe, spatial patchify) shapes.
    "tiny": VAREditConfig(
        name="tiny",
        depth=2,
        width=128,
        num_heads=2,
        text_channels=256,
        block_chunks=2,
        vae=_VAE_TINY,
        resolution=128,
        text_encoder="t5-tiny",
    ),
    "tiny-patchify": VAREditConfig(
        name="tiny-patchify",
        depth=2,
        width=128,
        num_heads=2,
        text_channels=256,
        block_chunks=2,
        vae=_VAE_TINY_PATCHIFY,
        resolution=128,
        text_encoder="t5-tiny",
    ),
    # "S": the 2B recipe scaled down until a CPU edit is compute-bound but quick (the benchmark).
    "S": VAREditConfig(
        name="S",
        depth=8,
        width=512,
        num_heads=4,
        text_channels=256,
        block_chunks=8,
        vae=VAEConfig(codebook_dim=32, patch_size=16, base_ch=64, ch_mult=(1, 2, 4, 4, 4), num_res_blocks=2),
        resolution=256,
        text_encoder="t5-tiny",
    ),
}


def get_config(name: str) -> VAREditConfig:
    """The config of a named variant ("2B-512", "8B-512", "8B-1024", "tiny", "tiny-patchify", "S")."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}") from None


def _typed(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``d``, once each value is of its field's kind. A config read from JSON may hold "2" or 128.0
    where an int belongs, which would otherwise fail far from the file, or not at all."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = set(d) - set(kinds)
    if unknown:
        raise ValueError(f"unknown config fields {sorted(unknown)}")
    for name, value in d.items():
        if not _is_kind(kinds[name], value):
            raise ValueError(f"config field {name!r} must be {kinds[name]}, got {value!r}")
    return dict(d)


def _is_kind(kind: str, value: object) -> bool:
    if kind == "tuple[int, ...]":
        return isinstance(value, (list, tuple)) and all(_is_kind("int", v) for v in value)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    return True  # a nested config is checked on its own
