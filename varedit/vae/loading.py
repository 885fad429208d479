"""Load the released VAE files (`infinity_vae_d32reg.pth`, `infinity_vae_d56_f8_14_patchify.pth`).

The official loader reads `torch.load(path)["vae"]` and copies tensors by name without strictness,
accepting each key as is or without the inner `.conv.` / `.norm.` level (plain Flux spelling,
`encoder.conv_in.weight` for `encoder.conv_in.conv.weight`). Here both spellings are accepted too,
but every key must map to exactly one model tensor of the same shape and every model tensor must be
filled; anything else raises `VAECheckpointError` naming the keys.

Loading is lean: the file is memory-mapped and the model is built on the meta device, then takes a
copy of each tensor in its final dtype and device (`build_vae` says why a copy); the mapping goes
with the state dict.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import torch

from .config import PRESETS, VAEConfig
from .model import VAE
from .quantizer import BSQ

log = logging.getLogger(__name__)

# Constant buffers (integer-label bit weights). Official files list the same buffer under both
# quantizer names; they are optional here but must hold the expected values when present.
_MASK_KEYS = ("quantizer.lfq.mask", "quantize.lfq.mask")


class VAECheckpointError(ValueError):
    """A VAE state dict that does not match the model: unmapped, missing or mis-shaped keys."""


def load_official_vae(
    path: str | os.PathLike[str], config: VAEConfig | str | None = None, device: str | torch.device = "cpu"
) -> VAE:
    """Build a VAE and load an official checkpoint file into it (strictly).

    config: a VAEConfig, a preset name, or None to infer the architecture from the tensor shapes
    (spatial patchify, a transformer setting absent from the file, is taken from the preset whose
    architecture matches, else off).
    """
    raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = unwrap_state_dict(raw)
    if config is None:
        config = config_from_state_dict(state)
    elif isinstance(config, str):
        config = VAEConfig.preset(config)
    return build_vae(config, state, device)


def build_vae(
    config: VAEConfig, state: Mapping[str, torch.Tensor], device: str | torch.device = "cpu"
) -> VAE:
    """A VAE built on the meta device (no random initialisation) holding a copy of each tensor of
    `state` (either key spelling), floating ones as float32 on `device`.

    Copied, not adopted: a VAE is small, and its conv weights are re-laid out (channels-last) or moved
    right after loading; adopted tensors would keep the whole mapped file resident next to those new
    copies, while copies let the mapping go as soon as `state` does."""
    with torch.device("meta"):
        vae = VAE(config)
    state = remap_official_keys(state, vae)
    vae.load_state_dict(
        {
            k: v.to(device, torch.float32 if v.is_floating_point() else v.dtype, copy=True)
            for k, v in state.items()
        },
        strict=True,
        assign=True,
    )
    return vae.eval()


def unwrap_state_dict(raw: object) -> dict[str, torch.Tensor]:
    """The official file is {"vae": state_dict, ...}; only "vae" is read. A bare state dict is accepted."""
    if not isinstance(raw, Mapping):
        raise VAECheckpointError(f"not a VAE state dict: the file holds a {type(raw).__name__}")
    if "vae" in raw and isinstance(raw["vae"], Mapping):
        ignored = sorted(k for k in raw if k != "vae")
        if ignored:
            log.info("vae checkpoint: ignoring top-level entries %s (official reads only 'vae')", ignored)
        raw = raw["vae"]
    state = dict(raw)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise VAECheckpointError(f"not a VAE state dict: non-tensor entries {bad[:10]}")
    return state


def remap_official_keys(state: Mapping[str, torch.Tensor], vae: VAE) -> dict[str, torch.Tensor]:
    """Official keys (either spelling) -> this model's keys; raises on anything that does not fit."""
    target = vae.state_dict(keep_vars=True)
    out: dict[str, torch.Tensor] = {}
    source_of: dict[str, str] = {}
    unmapped, mismatched, duplicated = [], [], []
    for key, tensor in state.items():
        name = _match_key(key, target)
        if name is None:
            unmapped.append(key)
        elif name in out:
            duplicated.append(f"{key} and {source_of[name]} -> {name}")
        elif tuple(tensor.shape) != tuple(target[name].shape):
            mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(target[name].shape)}")
        elif tensor.is_floating_point() != target[name].is_floating_point():  # a cast would hide it
            mismatched.append(f"{key}: checkpoint {tensor.dtype} vs model {target[name].dtype}")
        else:
            out[name], source_of[name] = tensor, key
    expected = BSQ(vae.config.codebook_dim).mask  # real values, also when `vae` is on the meta device
    for name in _MASK_KEYS:
        if name in out and not torch.equal(out[name].to(expected.device), expected):
            mismatched.append(f"{source_of[name]}: values differ from 2**arange(dq-1, -1, -1)")
        out.setdefault(name, expected.detach().clone())
    missing = [k for k in target if k not in out]
    problems = [
        (unmapped, "keys that match no model tensor"),
        (missing, "model tensors missing from the checkpoint"),
        (mismatched, "shape/kind/value mismatches"),
        (duplicated, "keys given twice (both spellings)"),
    ]
    msg = "; ".join(f"{what}: {items}" for items, what in problems if items)
    if msg:
        raise VAECheckpointError(f"VAE checkpoint does not fit {vae.config}: {msg}")
    return out


def _match_key(key: str, target: Mapping[str, torch.Tensor]) -> str | None:
    """The model key for an official key: itself, or with the `.conv.`/`.norm.` level inserted."""
    if key in target:
        return key
    stem, dot, leaf = key.rpartition(".")
    if leaf in ("weight", "bias"):
        for wrapper in ("conv", "norm"):
            name = f"{stem}.{wrapper}{dot}{leaf}"
            if name in target:
                return name
    return None


def config_from_state_dict(state: Mapping[str, torch.Tensor]) -> VAEConfig:
    """Infer the architecture from tensor shapes (either key spelling)."""

    def weight(stem: str) -> torch.Tensor:
        for name in (f"{stem}.conv.weight", f"{stem}.weight"):
            if name in state:
                return state[name]
        raise VAECheckpointError(f"cannot infer the VAE architecture: no {stem}.weight in the checkpoint")

    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    if not levels or not blocks:
        raise VAECheckpointError("cannot infer the VAE architecture: no encoder.down.* keys")
    base_ch = weight("encoder.conv_in").shape[0]
    widths = [weight(f"encoder.down.{i}.block.0.conv1").shape[0] for i in levels]
    arch = VAEConfig(
        codebook_dim=weight("encoder.conv_out").shape[0],
        patch_size=2 ** (len(levels) - 1),
        base_ch=base_ch,
        ch_mult=tuple(w // base_ch for w in widths),
        num_res_blocks=len(blocks),
    )
    for name, preset in PRESETS.items():
        if preset.with_patchify(False) == arch:
            log.info("vae checkpoint matches preset %s (spatial_patchify=%s)", name, preset.spatial_patchify)
            return preset
    return arch
