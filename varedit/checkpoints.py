"""Checkpoints: the official release files, our folder format, and conversion between them.

Official transformer file (`2B-512.pth`, ...): a plain state dict. Key mapping to this model:
  block_chunks.{c}.module.{j}.<rest>  ->  blocks.{c * depth/block_chunks + j}.<rest>
  *.zero_k_bias                       ->  dropped (constant zero buffers; refused unless all zero)
  lvl_1L, attn_bias_for_masking, Infinity_visible_kvlen, Infinity_invisible_qlen -> dropped (legacy)
  cfg_uncond                          ->  cut to text_maxlen rows, or padded with the model's own
                                          initial rows (as the official load_state_dict does)
  every other key                     ->  itself
Anything else (an unknown key, a missing tensor, a shape mismatch such as a checkpoint of another
variant) raises `CheckpointError` naming the keys. Official VAE files go through `varedit.vae`.

Loading never holds the weights twice: files are memory-mapped (`torch.load(mmap=True)`, safetensors),
the model is built on the meta device and adopts each tensor cast once to its final device and dtype;
a tensor already there (bf16 blocks on the CPU) is the mapped file itself, read from disk on first use.
The small VAE takes copies instead and lets its file go (`vae.loading.build_vae` says why).

Our folder format (written by `save_pretrained`, read by `EditPipeline.from_pretrained`):
  config.json              {"format": "varedit", "format_version": 1, "config": VAREditConfig fields,
                            "serving": {"resolutions": [...], "sampling": {"cfg", "tau", "top_k", "top_p"},
                                        "description", "examples": [{"instruction", "image"}]}}
  <example images>         the files the serving examples name, relative to the folder
  transformer.safetensors  this model's keys (blocks.{i}.*), float32 or bfloat16
  vae.safetensors          the VAE's keys (official spelling)
  text_encoder/            Hugging Face folder: T5EncoderModel weights and its tokenizer
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError

from .config import VAREditConfig, get_config
from .serving import SamplingDefaults, Serving
from .transformer import VAREditTransformer, null_text_init
from .vae import VAE, VAECheckpointError
from .vae.loading import build_vae, unwrap_state_dict

log = logging.getLogger(__name__)

FORMAT = "varedit"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
TRANSFORMER_FILE = "transformer.safetensors"
VAE_FILE = "vae.safetensors"
TEXT_ENCODER_DIR = "text_encoder"
OFFICIAL_VAE_FILES = {False: "infinity_vae_d32reg.pth", True: "infinity_vae_d56_f8_14_patchify.pth"}
Device = torch.device | str
_LEGACY_KEYS = {"lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen"}


class CheckpointError(ValueError):
    """A checkpoint or folder that does not fit: wrong layout, missing or damaged file, unmapped or
    mis-shaped keys."""


def _load_pth(path: Path) -> object:
    """`torch.load` memory-mapped; a damaged file (truncated, not a checkpoint) raises CheckpointError
    naming it instead of torch's error, which does not. A file in torch's legacy (pre-zip) format
    cannot be mapped: it is read whole, with a warning, since it then briefly takes twice its size."""
    mmap = zipfile.is_zipfile(path)
    if not mmap:
        log.warning("%s is not in torch's zip format (legacy torch.save?): reading it without mmap", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from e


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file` (memory-mapped); a damaged file raises CheckpointError naming it
    instead of safetensors' error, which does not."""
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def _official_state(path: Path) -> Mapping[str, torch.Tensor]:
    """The transformer state of an official file: a plain state dict or {'trainer': {'gpt_fsdp': ...}}."""
    raw = _load_pth(path)
    if isinstance(raw, Mapping) and "trainer" in raw:
        trainer = raw["trainer"]
        if not isinstance(trainer, Mapping) or "gpt_fsdp" not in trainer:
            raise CheckpointError(f"{path}: a training checkpoint without the model state (trainer.gpt_fsdp)")
        raw = trainer["gpt_fsdp"]
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path} is not a transformer state dict")
    return raw


# ---- official transformer state dict ----------------------------------------------------------


def official_to_ours(state: Mapping[str, torch.Tensor], cfg: VAREditConfig) -> dict[str, torch.Tensor]:
    """Rename an official transformer state dict to this model's keys (mapping in the module doc)."""
    per_chunk = cfg.depth // cfg.block_chunks
    out: dict[str, torch.Tensor] = {}
    unmapped, nonzero = [], []
    for key, t in state.items():
        if key in _LEGACY_KEYS:
            log.info("official checkpoint: dropping legacy buffer %s (the official loader drops it too)", key)
            continue
        if key.endswith("zero_k_bias"):
            if torch.count_nonzero(t):
                nonzero.append(key)
            continue
        m = re.fullmatch(r"block_chunks\.(\d+)\.module\.(\d+)\.(.+)", key)
        if m:
            c, j, rest = int(m[1]), int(m[2]), m[3]
            if j >= per_chunk or c >= cfg.block_chunks:
                unmapped.append(key)
                continue
            key = f"blocks.{c * per_chunk + j}.{rest}"
        elif key.startswith("blocks."):
            unmapped.append(key)  # a flat layout is ours, not official
            continue
        out[key] = t
    if unmapped or nonzero:
        raise CheckpointError(
            f"official transformer keys that do not map: {unmapped[:20]}; "
            f"non-zero zero_k_bias buffers: {nonzero[:20]}"
        )
    if "cfg_uncond" in out:
        out["cfg_uncond"] = _fit_null_text(out["cfg_uncond"], cfg)
    return out


def _fit_null_text(t: torch.Tensor, cfg: VAREditConfig) -> torch.Tensor:
    rows, ch = t.shape
    if ch != cfg.text_channels:
        raise CheckpointError(
            f"checkpoint does not fit config {cfg.name!r} (another variant?): cfg_uncond "
            f"{tuple(t.shape)} vs text_channels {cfg.text_channels}"
        )
    if rows >= cfg.text_maxlen:
        return t[: cfg.text_maxlen]
    pad = null_text_init(cfg.text_maxlen, ch)[rows:].to(t.dtype)
    return torch.cat([t, pad])


def check_state_dict(model: VAREditTransformer, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse missing keys, unexpected keys, shape mismatches and non-float weights, naming them."""
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in target.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{what} does not fit config {model.cfg.name!r} (another variant?): "
            f"missing {missing[:20]}, unexpected {unexpected[:20]}, shape mismatches {shapes[:20]}"
        )
    # Weights are cast to their final dtype on load, which would turn a damaged integer tensor into
    # plausible-looking numbers.
    not_float = [
        f"{k}: {state[k].dtype}"
        for k, v in target.items()
        if state[k].is_floating_point() != v.is_floating_point()
    ]
    if not_float:
        raise CheckpointError(f"{what} holds tensors of the wrong kind: {not_float[:20]}")


def build_transformer(
    cfg: VAREditConfig,
    state: Mapping[str, torch.Tensor],
    device: Device = "cpu",
    dtype: torch.dtype | None = None,
    what: str = "transformer checkpoint",
) -> VAREditTransformer:
    """Build on the meta device and adopt the checkpoint tensors, each cast once to its final
    device and dtype. dtype: the blocks' dtype (float32, or bfloat16 on CUDA); everything outside
    the blocks stays float32, as in the official model."""
    with torch.device("meta"):
        model = VAREditTransformer(cfg)
    check_state_dict(model, state, what)
    block_dtype = dtype or torch.float32
    model.load_state_dict(
        {
            k: v.to(device, block_dtype if k.startswith("blocks.") else torch.float32)
            for k, v in state.items()
        },
        strict=True,
        assign=True,
    )
    return model.eval().requires_grad_(False)


def load_official_transformer(
    path: str | Path, cfg: VAREditConfig, device: Device = "cpu", dtype: torch.dtype | None = None
) -> VAREditTransformer:
    """Load an official transformer `.pth` (plain state dict, or the {'trainer': {'gpt_fsdp': ...}} form)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"transformer checkpoint not found: {path}")
    return build_transformer(cfg, official_to_ours(_official_state(path), cfg), device, dtype, what=str(path))


def load_vae(path: str | Path, cfg: VAREditConfig, device: Device = "cpu") -> VAE:
    """Load a VAE file: official `.pth` ({'vae': state dict}) or our `vae.safetensors`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"VAE checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = _load_safetensors(path)
        else:
            state = unwrap_state_dict(_load_pth(path))
        return build_vae(cfg.vae, state, device).requires_grad_(False)
    except VAECheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e


def load_official_golden(
    folder: str | Path, device: Device = "cpu"
) -> tuple[VAREditConfig, VAREditTransformer, VAE]:
    """Load an official-format test folder: config.json with the official constructor arguments,
    infinity_*.pth and vae_*.pth (the layout of tests/data/golden/T1, T2)."""
    folder = Path(folder)
    cfg = VAREditConfig.from_official(json.loads((folder / CONFIG_FILE).read_text()), name=folder.name)
    model = load_official_transformer(_one(folder, "infinity_*.pth"), cfg, device)
    return cfg, model, load_vae(_one(folder, "vae_*.pth"), cfg, device)


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise CheckpointError(f"expected one {pattern} in {folder}, found {[p.name for p in found]}")
    return found[0]


# ---- our folder format ------------------------------------------------------------------------


def is_our_folder(path: Path) -> bool:
    """Whether ``path`` holds a config.json of our format (official test folders hold one of theirs);
    one that is not JSON at all is reported as such, not as a folder of neither kind."""
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        return False
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from e
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not a {FORMAT} config")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"unsupported format_version {meta.get('format_version')} in {folder}")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f'{folder / CONFIG_FILE} has no "config" section (the model\'s settings)')
    return meta


def read_config(folder: Path) -> VAREditConfig:
    return read_folder(folder)[0]


def read_folder(folder: Path) -> tuple[VAREditConfig, Serving]:
    """The model config and the serving facts of a folder in our format. A folder written before
    config.json had a ``"serving"`` section serves its trained resolution with the official sampling
    settings (its top_k and top_p, if stored in ``"config"``, are kept)."""
    meta = _read_meta(folder)
    config_dict = dict(meta["config"])
    legacy_sampling = {k: config_dict.pop(k) for k in ("top_k", "top_p") if k in config_dict}
    try:
        config = VAREditConfig.from_dict(config_dict)
        if "serving" in meta:
            serving = Serving.from_dict(meta["serving"])
        else:
            serving = Serving.trained(config, SamplingDefaults(**legacy_sampling))
        serving.check(config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: {e}") from e
    missing = [e.image for e in serving.examples if not (folder / e.image).is_file()]
    if missing:
        raise CheckpointError(f"{folder / CONFIG_FILE}: example images not found: {missing}")
    return config, serving


def write_config(folder: Path, cfg: VAREditConfig, serving: Serving | None = None) -> None:
    """config.json; ``serving`` defaults to the trained resolution with the official sampling settings."""
    serving = serving or Serving.trained(cfg)
    serving.check(cfg)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "serving": serving.to_dict(),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=1))


def _serving_for(folder: Path, serving: Serving, examples_from: Path) -> Serving:
    """`serving` as `folder` can state it: with its example images copied in from `examples_from`, or
    without examples where that folder lacks one (a folder must hold the images it names, or it does
    not load)."""
    if not serving.examples:
        return serving
    sources = [examples_from / e.image for e in serving.examples]
    if not all(src.is_file() for src in sources):
        log.warning("%s: writing no serving examples (their images are not available)", folder)
        return dataclasses.replace(serving, examples=())
    for e, src in zip(serving.examples, sources, strict=True):
        dst = folder / e.image
        if src.resolve() != dst.resolve():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    return serving


def _normal_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0o666 less the process umask. Reading the
    umask means setting it; meanwhile it is 0o077, so a file another thread creates then is private."""
    umask = os.umask(0o077)
    os.umask(umask)
    return 0o666 & ~umask


def _give_normal_modes(folder: Path) -> None:
    """safetensors (ours, and the T5's through transformers) writes a private temporary file (0600)
    and renames it into place; give the weight files the mode any other write gets, so that a model
    folder is readable by the users the umask allows (e.g. a container running as another user)."""
    mode = _normal_mode()
    weights = [folder / TRANSFORMER_FILE, folder / VAE_FILE]
    for path in [*weights, *(folder / TEXT_ENCODER_DIR).rglob("*.safetensors")]:
        path.chmod(mode)


def save_transformer_state(
    path: Path, state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None
) -> None:
    """Write this model's keys; dtype (e.g. bfloat16) applies to the blocks only."""
    from safetensors.torch import save_file

    out = {}
    for k, v in state.items():
        v = v.detach()
        if dtype is not None and k.startswith("blocks.") and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous().cpu()
    save_file(out, path)


def save_vae_state(path: Path, vae: VAE) -> None:
    """The VAE's tensors without the constant bit-mask buffers (registered twice, restored on load)."""
    from safetensors.torch import save_file

    state = {
        k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items() if not k.endswith("lfq.mask")
    }
    save_file(state, path)


def save_pretrained(
    folder: str | Path,
    cfg: VAREditConfig,
    transformer: VAREditTransformer,
    vae: VAE,
    text_encoder: str | Path | None = None,
    dtype: torch.dtype | None = None,
    serving: Serving | None = None,
    examples_from: str | Path | None = None,
) -> Path:
    """Write our folder format. text_encoder: an HF folder (T5 encoder + tokenizer) to copy in.

    dtype: store the transformer's blocks in this dtype (bfloat16 halves the file).
    serving: the resolutions and sampling defaults to state (default: trained resolution, official).
    examples_from: the folder holding the images of serving's examples, which are copied in (default:
    `folder` itself, whose images stay); if one is missing there, the folder states no examples."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    serving = _serving_for(folder, serving or Serving.trained(cfg), Path(examples_from or folder))
    write_config(folder, cfg, serving)
    save_transformer_state(folder / TRANSFORMER_FILE, transformer.state_dict(), dtype)
    save_vae_state(folder / VAE_FILE, vae)
    if text_encoder is not None and Path(text_encoder).resolve() != (folder / TEXT_ENCODER_DIR).resolve():
        shutil.copytree(text_encoder, folder / TEXT_ENCODER_DIR, dirs_exist_ok=True)
    _give_normal_modes(folder)
    return folder


def load_transformer_safetensors(
    path: Path, cfg: VAREditConfig, device: Device = "cpu", dtype: torch.dtype | None = None
) -> VAREditTransformer:
    """Our transformer file, memory-mapped (safetensors maps the file; on the CPU a tensor already
    in its final dtype is adopted without a copy)."""
    if not path.is_file():
        raise CheckpointError(f"transformer checkpoint not found: {path}")
    return build_transformer(cfg, _load_safetensors(path), device, dtype, what=str(path))


# ---- the official release folder -------------------------------------------------------------

OFFICIAL_VARIANTS = ("2B-512", "8B-512", "8B-1024")


def official_variant(folder: Path, variant: str | None) -> str:
    """The variant to load from an official release folder: the one named, or the only one present."""
    present = [v for v in OFFICIAL_VARIANTS if (folder / f"{v}.pth").is_file()]
    if variant is not None:
        if variant not in OFFICIAL_VARIANTS:
            raise CheckpointError(f"unknown official variant {variant!r}; known: {list(OFFICIAL_VARIANTS)}")
        if variant not in present:
            raise CheckpointError(f"{folder} has no {variant}.pth (found {[f'{v}.pth' for v in present]})")
        return variant
    if len(present) == 1:
        return present[0]
    if not present:
        raise CheckpointError(
            f"{folder} is neither a varedit folder (config.json) nor an official release "
            f"(one of {[f'{v}.pth' for v in OFFICIAL_VARIANTS]})"
        )
    raise CheckpointError(f"{folder} holds several variants {present}: pass variant=")


def describe(path: str | Path, variant: str | None = None) -> tuple[VAREditConfig, Serving]:
    """The config and serving facts of a model folder (ours or an official release, or one official
    `<variant>.pth` inside one), read without loading any weights. For our format `variant`, if given,
    must match the folder's."""
    path = Path(path)
    if path.is_file() and path.suffix == ".pth":
        path, variant = path.parent, variant or path.stem
    if not path.is_dir():
        raise CheckpointError(f"model folder not found: {path}")
    if is_our_folder(path):
        config, serving = read_folder(path)
        if variant is not None and variant != config.name:
            raise CheckpointError(f"{path} holds variant {config.name!r}, not {variant!r}")
        return config, serving
    config = get_config(official_variant(path, variant))
    return config, Serving.trained(config)


def official_files(folder: Path, cfg: VAREditConfig) -> tuple[Path, Path, Path]:
    """(transformer .pth, VAE .pth, text encoder folder) of a variant in an official release folder."""
    files = (
        folder / f"{cfg.name}.pth",
        folder / OFFICIAL_VAE_FILES[cfg.vae.spatial_patchify],
        folder / cfg.text_encoder,
    )
    for f in files:
        if not f.exists():
            raise CheckpointError(f"missing {f.name} in the official release folder {folder}")
    return files


def convert_official(
    src: str | Path, dst: str | Path, variant: str | None = None, dtype: torch.dtype | None = None
) -> Path:
    """Official release folder -> our folder format (optionally bfloat16 blocks).

    Streams the tensors (memory-mapped) without building the model; keys and shapes are checked
    against a meta-device model of the variant."""
    src, dst = Path(src), Path(dst)
    cfg = get_config(official_variant(src, variant))
    tf_path, vae_path, t5_dir = official_files(src, cfg)
    state = official_to_ours(_official_state(tf_path), cfg)
    with torch.device("meta"):
        check_state_dict(VAREditTransformer(cfg), state, str(tf_path))
    vae = load_vae(vae_path, cfg)
    dst.mkdir(parents=True, exist_ok=True)
    write_config(dst, cfg)
    save_transformer_state(
        dst / TRANSFORMER_FILE, {k: v.float() if k == "cfg_uncond" else v for k, v in state.items()}, dtype
    )
    save_vae_state(dst / VAE_FILE, vae)
    shutil.copytree(t5_dir, dst / TEXT_ENCODER_DIR, dirs_exist_ok=True)
    _give_normal_modes(dst)
    return dst


# ---- tiny random checkpoints ------------------------------------------------------------------


def write_random_checkpoint(
    folder: str | Path, config_name: str | VAREditConfig = "tiny", seed: int = 0
) -> Path:
    """Write a randomly initialised model in our folder format, with a random tiny T5 and a
    character-level tokenizer, built offline. For tests and demos of the serving stack: edits run
    in well under a second on a CPU with "tiny" and produce noise-like images."""
    cfg = config_name if isinstance(config_name, VAREditConfig) else get_config(config_name)
    torch.manual_seed(seed)
    transformer, vae = VAREditTransformer(cfg), VAE(cfg.vae)
    _write_random_t5(Path(folder) / TEXT_ENCODER_DIR, cfg.text_channels, cfg.text_maxlen, seed)
    return save_pretrained(folder, cfg, transformer, vae, serving=Serving.trained(cfg))


def official_layout(cfg: VAREditConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key -> (shape, dtype) of an official transformer file of `cfg`: the chunked block keys in
    bfloat16, the other tensors in float32, the all-zero `zero_k_bias` buffers included (the layout
    the official manifests record), derived from this model on the meta device."""
    with torch.device("meta"):
        model = VAREditTransformer(cfg)
    per_chunk = cfg.depth // cfg.block_chunks
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for key, t in model.state_dict().items():
        if m := re.fullmatch(r"blocks\.(\d+)\.(.+)", key):
            i, rest = int(m[1]), m[2]
            layout[f"block_chunks.{i // per_chunk}.module.{i % per_chunk}.{rest}"] = (
                tuple(t.shape),
                torch.bfloat16,
            )
        else:
            layout[key] = (tuple(t.shape), torch.float32)
    layout["text_proj_for_sos.ca.zero_k_bias"] = ((cfg.width,), torch.float32)
    for i in range(cfg.depth):
        for attn in ("sa", "ca"):
            key = f"block_chunks.{i // per_chunk}.module.{i % per_chunk}.{attn}.zero_k_bias"
            layout[key] = ((cfg.width,), torch.bfloat16)
    return layout


def random_tensor(
    key: str, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator, device: Device = "cpu"
) -> torch.Tensor:
    """A stand-in weight that keeps a random model's activations finite at any size: normal(0, 0.02)
    matrices, unit norm weights, zero biases, the official attention-scale init and bit masks."""
    if key.endswith("mask"):
        return 2 ** torch.arange(shape[0] - 1, -1, -1, device=device)
    if key.endswith("scale_mul_1H11"):
        return torch.full(shape, math.log(4.0), dtype=dtype, device=device)
    if len(shape) == 1:
        fill = 1.0 if key.endswith(".weight") else 0.0
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device).normal_(0, 0.02, generator=gen)


def write_random_official(
    folder: str | Path, config_name: str | VAREditConfig = "2B-512", seed: int = 0, device: Device = "cpu"
) -> Path:
    """Write an official-format release folder with random weights: `<name>.pth` (`official_layout`),
    the VAE `.pth` ({'vae': float32 state dict}) and a random tiny T5 under the text encoder's folder
    name (real width, two layers). For load and speed checks at full size without the released files.
    `device` only generates the values (a GPU does it fast); the files hold CPU tensors. Returns the
    transformer file."""
    cfg = config_name if isinstance(config_name, VAREditConfig) else get_config(config_name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device).manual_seed(seed)
    state = {
        k: random_tensor(k, shape, dt, gen, device).cpu() for k, (shape, dt) in official_layout(cfg).items()
    }
    tf_path = folder / f"{cfg.name}.pth"
    torch.save(state, tf_path)
    del state
    with torch.device("meta"):
        vae_layout = VAE(cfg.vae).state_dict()
    vae_state = {
        k: random_tensor(k, tuple(t.shape), t.dtype, gen, device).cpu() for k, t in vae_layout.items()
    }
    torch.save({"vae": vae_state}, folder / OFFICIAL_VAE_FILES[cfg.vae.spatial_patchify])
    _write_random_t5(folder / cfg.text_encoder, cfg.text_channels, cfg.text_maxlen, seed)
    return tf_path


def _write_random_t5(folder: Path, d_model: int, max_length: int, seed: int) -> None:
    """A random 2-layer T5 encoder over a character vocabulary, and its tokenizer."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = _char_tokenizer(max_length)
    torch.manual_seed(seed)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=32,
            d_ff=64,
            num_layers=2,
            num_heads=2,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    t5.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _char_tokenizer(max_length: int):
    """A T5-style tokenizer over printable ASCII (pad 0, </s> 1, unk 2), built without the network."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in map(chr, range(32, 127)):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )
