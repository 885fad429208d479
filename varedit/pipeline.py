"""EditPipeline: load a VAREdit model once, then edit batches of (image, instruction) pairs.

    from varedit import EditPipeline
    pipe = EditPipeline.from_pretrained("/models/VAREdit", variant="8B-512")   # or our folder format
    [out] = pipe.edit([Image.open("cat.png")], ["make the cat wear a hat"], seeds=[42])

Pre- and post-processing are the official ones: the image is padded to a square with white at the
bottom/right (the original sits top-left), resized with LANCZOS to the model resolution, mapped to
[-1, 1]; the output is resized back to the padded square (LANCZOS) and cropped to the input size.
Inputs are first normalised by `images.to_rgb` (first frame, EXIF orientation, 16-bit, alpha on white).
Above a longest side of `exact_bound(S)` both steps take a shortcut whose memory does not grow with the
padded square (a 20000x1 image would otherwise need a 20000x20000 one); see `preprocess`/`postprocess`.

Shapes: B images, S model resolution (pixels), d bits per token.
"""

from __future__ import annotations

import logging
import numbers
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError

from . import checkpoints as ckpt
from .compiled import compiled, many_graphs
from .config import VAREditConfig
from .images import to_rgb
from .ops import cpu_has_native_bf16
from .sampling import EditCancelled, OnCodes, OnScale, generate, per_scale
from .serving import SamplingDefaults, Serving, check_cut
from .text import TextEncoder, TextFeatures
from .transformer import VAREditTransformer
from .vae import VAE

log = logging.getLogger(__name__)

ImageInput = Image.Image | str | Path
# on_preview(k, K, previews) after scale k of K: one small RGB image per input, in input order.
OnPreview = Callable[[int, int, list[Image.Image]], None]
PREVIEW_SIZE = 128  # default longest side of a preview, in pixels
BLOCK_DTYPES = (torch.float32, torch.bfloat16)  # the transformer blocks: float32, or bfloat16 as released
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what `torch.Generator.manual_seed` takes


def load_image(image: ImageInput) -> Image.Image:
    """A PIL image (or a path to one) as 8-bit RGB via `images.to_rgb`; anything else raises ValueError."""
    if isinstance(image, str | Path):
        try:
            with Image.open(image) as im:
                im.load()
                image = im.copy()
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"not a readable image: {image} ({e})") from e
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image or an image path, got {type(image).__name__}")
    return to_rgb(image)


def _texts(texts: str | Sequence[str], name: str) -> list[str]:
    """One text, or a list of them, as a list; anything else (None, a number) is refused by name."""
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name} must be a string or a list of strings, got {texts!r}")
    return list(texts)


def check_device(device: torch.device) -> None:
    """Refuse a CUDA device this machine lacks up front: torch would fail later, deep in loading, with
    an AssertionError ("Torch not compiled with CUDA enabled") or an invalid device ordinal."""
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available on this machine (use the CPU)")
    if (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def exact_bound(size: int) -> int:
    """Longest input side up to which pre- and post-processing are exactly the official ones at model
    size `size`: the padded square they build is then at most (4S)^2 pixels (64 MB at S = 1024)."""
    return max(4 * size, 1024)


def shrink_to(image: Image.Image, bound: int) -> Image.Image:
    """`image` LANCZOS-resized, aspect kept, so that its longest side is `bound` (unchanged if it fits)."""
    w, h = image.size
    side = max(w, h)
    if side <= bound:
        return image
    return image.resize((max(1, round(w * bound / side)), max(1, round(h * bound / side))), Image.LANCZOS)


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """Official `infer.transform`: white top-left square pad, LANCZOS to size, [-1, 1]. (3, S, S).

    Exact for a longest side up to `exact_bound(size)`. A larger image is first shrunk to that longest
    side (LANCZOS, aspect kept), so memory is bounded by the model size, not the input; the result then
    differs from the official one by the second resampling and the rounding of the shrunk size (under
    half a pixel of the shrunk image), which is far below what the model resolves.
    """
    image = shrink_to(image, exact_bound(size))
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, (0, 0))
    square = square.resize((size, size), resample=Image.LANCZOS)
    x = torch.from_numpy(np.array(square)).permute(2, 0, 1).float().div(255)  # (3, S, S), like to_tensor
    return x + x - 1


def postprocess(img_3SS: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """[-1, 1] -> uint8 (truncated, as official), back to the padded square, cropped to `size` (w, h).

    Exact for a longest side up to `exact_bound(S)`. A larger one never builds the padded square: see
    `resize_top_left`.
    """
    u8 = ((img_3SS.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).mul(255).to(torch.uint8)
    out = Image.fromarray(u8.cpu().numpy())
    side = max(size)
    if side <= exact_bound(out.width):
        return out.resize((side, side), resample=Image.LANCZOS).crop((0, 0, *size))
    return resize_top_left(out, size)


def preview_dims(size: tuple[int, int], preview_size: int) -> tuple[int, int]:
    """The (w, h) of a preview of an image of `size`: longest side `preview_size`, aspect kept, never
    enlarged (a preview is a cheap look, not more pixels than the result)."""
    w, h = size
    side = max(w, h)
    if side <= preview_size:
        return w, h
    return max(1, round(w * preview_size / side)), max(1, round(h * preview_size / side))


def preview_of(image: Image.Image, preview_size: int) -> Image.Image:
    """`image` resized to its preview size: what the last preview of an edit is, made from its result."""
    dims = preview_dims(image.size, preview_size)
    return image.copy() if dims == image.size else image.resize(dims, resample=Image.BILINEAR)


def resize_top_left(square: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`square` resized to max(size) squared and cropped to `size`, in memory O(w * (S + h)).

    The official resize's two LANCZOS passes (horizontal, then vertical) run one at a time on the part
    of `square` that shows the image. Each pixel samples the same source positions with the same
    weights up to Pillow's float32 crop box, so a few pixels may differ from the official by 1 or 2.
    """
    w, h = size
    s, side = square.width, max(size)
    rows = square.resize((w, s), resample=Image.LANCZOS, box=(0, 0, s * w / side, s))
    return rows.resize((w, h), resample=Image.LANCZOS, box=(0, 0, w, s * h / side))


class EditPipeline:
    """A loaded model: transformer, VAE and T5 text encoder on one device."""

    def __init__(
        self,
        config: VAREditConfig,
        transformer: VAREditTransformer,
        vae: VAE,
        text_encoder: TextEncoder,
        device: torch.device | str = "cpu",
        serving: Serving | None = None,
        compile: bool | str = False,
        source: Path | None = None,
    ):
        """compile: run the transformer blocks' token-wise parts, the VAE encoder and the final decode
        under torch.compile (`varedit/compiled.py`; attention and previews stay eager): True, or one of
        torch.compile's modes ("reduce-overhead": as CUDA graphs too). For CUDA: the first edit of each
        batch size and resolution compiles, and on CPU the compiled VAE is slower.
        source: the folder in our format it was loaded from, which holds the images of the serving
        examples (`save_pretrained` copies them)."""
        self.config, self.transformer, self.vae, self.text_encoder = config, transformer, vae, text_encoder
        self.serving = serving or Serving.trained(config)
        self.source = source
        self.device = torch.device(device)
        # bfloat16 blocks mean the official GPU precision map, where the VAE also decodes under
        # bf16 autocast; float32 blocks keep the whole edit in float32.
        self.dtype = transformer.blocks[0].sa.mat_qkv.weight.dtype
        # the encoder and decoder run channels-last inside (vae/autoencoder.py): store their conv
        # weights so too, or every conv converts its weight on each call
        vae.encoder.to(memory_format=torch.channels_last)
        vae.decoder.to(memory_format=torch.channels_last)
        # compiled VAE passes of the edit path; None: the VAE's own, looked up at each call
        self._encode_features: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._decode: Callable[[torch.Tensor], torch.Tensor] | None = None
        if compile:
            mode = None if compile is True else compile
            transformer.compile_inference(mode)
            self._encode_features = many_graphs(compiled(vae.encode_features, mode))
            self._decode = many_graphs(compiled(vae.decode, mode))

    # ---- loading ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        variant: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        compile: bool | str = False,
    ) -> EditPipeline:
        """Load a model folder.

        path: our folder format (config.json + transformer.safetensors + vae.safetensors +
            text_encoder/), or an official release folder (2B-512.pth / 8B-512.pth / 8B-1024.pth,
            infinity_vae_*.pth, flan-t5-xl/), or one official `<variant>.pth` inside such a folder.
        variant: "2B-512", "8B-512" or "8B-1024"; needed when an official folder holds several.
            For our format it is optional and, if given, must match the folder's config.
        device: default CUDA when available, else CPU.
        dtype: the transformer blocks' dtype; default bfloat16 on CUDA, float32 on CPU. The rest of
            the transformer stays float32, the VAE float32, the T5 encoder float16 (official).
        compile: torch.compile the hot paths, True or a torch.compile mode (see `__init__`).
        Raises `CheckpointError` for a wrong folder, a missing or damaged file or a checkpoint of another
        variant, and ValueError for a CUDA device this machine does not have or another dtype.
        """
        path = Path(path)
        try:
            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError as e:  # torch's parse error of a device string such as "gpu"
            raise ValueError(f"not a device: {device!r} ({e})") from e
        check_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        if dtype not in BLOCK_DTYPES:  # else it loads, and the first edit fails on mixed dtypes
            raise ValueError(f"dtype must be one of {BLOCK_DTYPES}, got {dtype!r}")
        if device.type == "cpu" and dtype == torch.bfloat16 and cpu_has_native_bf16() is False:
            log.warning(
                "bfloat16 blocks on a CPU without bfloat16 instructions (no avx512_bf16, amx_bf16 "
                "or bf16 flag): edits run about twice as slow as in float32"
            )
        config, serving = ckpt.describe(path, variant)
        if path.is_file():
            path = path.parent
        if ckpt.is_our_folder(path):
            transformer = ckpt.load_transformer_safetensors(
                path / ckpt.TRANSFORMER_FILE, config, device, dtype
            )
            vae = ckpt.load_vae(path / ckpt.VAE_FILE, config, device)
            t5_dir = path / ckpt.TEXT_ENCODER_DIR
            source = path
        else:
            source = None
            tf_path, vae_path, t5_dir = ckpt.official_files(path, config)
            transformer = ckpt.load_official_transformer(tf_path, config, device, dtype)
            vae = ckpt.load_vae(vae_path, config, device)
        if not t5_dir.is_dir():
            raise ckpt.CheckpointError(f"missing text encoder folder {t5_dir}")
        try:
            text_encoder = TextEncoder.from_pretrained(t5_dir, device=device, max_length=config.text_maxlen)
        except torch.OutOfMemoryError:
            raise
        # what transformers raises for a broken folder (RuntimeError: weights that do not fit its config)
        except (OSError, ValueError, SafetensorError, RuntimeError) as e:
            raise ckpt.CheckpointError(f"{t5_dir}: not a loadable T5 encoder folder ({e})") from e
        width = text_encoder.model.config.d_model
        if width != config.text_channels:  # else the first edit fails deep in the transformer
            raise ckpt.CheckpointError(
                f"{t5_dir}: a T5 of width {width} does not fit config {config.name!r} "
                f"(text_channels {config.text_channels})"
            )
        log.info("loaded %s from %s on %s (blocks %s)", config.name, path, device, dtype)
        return cls(config, transformer, vae, text_encoder, device, serving, compile=compile, source=source)

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write this model in our folder format (dtype: optional dtype of the stored blocks). The
        serving examples come along when the model was loaded from a folder that holds their images."""
        t5_dir = Path(folder) / ckpt.TEXT_ENCODER_DIR
        self.text_encoder.model.save_pretrained(t5_dir)
        self.text_encoder.tokenizer.save_pretrained(t5_dir)
        return ckpt.save_pretrained(
            folder,
            self.config,
            self.transformer,
            self.vae,
            dtype=dtype,
            serving=self.serving,
            examples_from=self.source,
        )

    # ---- facts for a server ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """Variant name, e.g. "8B-512"."""
        return self.config.name

    @property
    def resolution(self) -> int:
        """The square side it edits at by default (the first it serves)."""
        return self.serving.resolutions[0]

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Resolutions to offer, as the folder states them (by default the trained one; others in
        `config.resolutions` run, untrained)."""
        return self.serving.resolutions

    @property
    def sampling(self) -> SamplingDefaults:
        """The sampler settings `edit` uses when not given, as the folder recommends them."""
        return self.serving.sampling

    @property
    def sampling_defaults(self) -> dict[str, float]:
        """`sampling` as plain data, for a server to report."""
        return self.sampling.to_dict()

    def release_memory(self) -> None:
        """Return cached accelerator memory to the device (after an out-of-memory error)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def num_scales(self, resolution: int | None = None) -> int:
        """K, the number of `on_scale` calls of one edit at this resolution."""
        return self.config.num_scales(self.resolution if resolution is None else resolution)

    # ---- editing ---------------------------------------------------------------------------

    @torch.inference_mode()
    def edit(
        self,
        images: ImageInput | Sequence[ImageInput],
        instructions: str | Sequence[str],
        seeds: int | Sequence[int] | None = None,
        cfg: float | Sequence[float] | None = None,
        tau: float | Sequence[float] | None = None,
        on_scale: OnScale | None = None,
        resolution: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        on_preview: OnPreview | None = None,
        preview_size: int = PREVIEW_SIZE,
        negative_instruction: str | Sequence[str] | None = "",
    ) -> list[Image.Image]:
        """Edit each image by its instruction; returns one RGB image per input, each of its input's size.

        images: PIL images or paths (any size and mode; one per instruction).
        instructions: one text per image, used verbatim.
        seeds: one per image (int), or None for random seeds. Same seed and inputs -> same output
            on the same device, dtype and CPU thread count (which change float rounding); with float32
            blocks also whatever else is in the batch, while with bfloat16 blocks the batch can move
            a few bits. The seed used is in `out.info["seed"]`.
        cfg: classifier-free guidance on logits (1 = off); a scalar or one per scale.
        tau: logit temperature, > 0 (lower is closer to greedy); a scalar or one per scale.
        on_scale: called as on_scale(k, K) after scale k (1-based) of K; returning False stops the
            edit by raising `EditCancelled`.
        resolution: square side to generate at (default: the model's own).
        cfg, tau, top_k, top_p left out take the model's recommended values (`self.sampling`).
        on_preview: called as on_preview(k, K, previews) after scale k of K with one small image per
            input (`preview_dims(input size, preview_size)`): scales k < K are a cheap decode of the
            codes so far (`preview_images`); the last one is each result resized (`preview_of`).
        negative_instruction: what to steer away from, one for all images or one per image, used
            verbatim: its T5 features replace the learned null text as the unconditional text of
            classifier-free guidance; "" (or None) keeps the null text (no effect when cfg is 1).
        Raises `MemoryError` when the device runs out of memory (its cache is released first).
        Example: pipe.edit([img], ["make it snowy"], seeds=[0], on_scale=lambda k, K: print(k, K))
        """
        # 1. check inputs
        # a list or tuple is a batch; anything else one image (a numpy array is no batch of its rows)
        images = list(images) if isinstance(images, list | tuple) else [images]
        instructions = _texts(instructions, "instructions")
        if len(images) != len(instructions) or not images:
            raise ValueError(
                f"need one instruction per image: {len(images)} images, {len(instructions)} instructions"
            )
        if negative_instruction is None:
            negative_instruction = ""
        negatives = _texts(negative_instruction, "negative_instruction")
        if isinstance(negative_instruction, str):  # one for all images
            negatives *= len(images)
        if len(negatives) != len(images):
            raise ValueError(
                f"need one negative instruction per image: {len(negatives)} for {len(images)} images"
            )
        if preview_size < 1:
            raise ValueError(f"preview_size must be at least 1, got {preview_size}")
        if seeds is None:
            seeds = [random.SystemRandom().randrange(2**31) for _ in images]
        seeds = [seeds] if isinstance(seeds, numbers.Integral) else list(seeds)
        if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
            raise ValueError(f"seeds must be integers, got {seeds!r}")  # 1.7 is not seed 1, True not 1
        seeds = [int(s) for s in seeds]
        bad_seeds = [s for s in seeds if not SEED_MIN <= s <= SEED_MAX]
        if bad_seeds:  # else torch.Generator refuses it after the encoding, saying "Overflow"
            raise ValueError(f"seed {bad_seeds[0]} is out of range: a seed is an int in [-2**63, 2**64 - 1]")
        if len(seeds) != len(images):
            raise ValueError(f"need one seed per image: {len(seeds)} seeds, {len(images)} images")
        pils = [load_image(im) for im in images]
        size = self.resolution if resolution is None else resolution
        K, d = self.num_scales(size), self.sampling
        sampling = dict(  # checked here, before any encoding
            cfg=per_scale(d.cfg if cfg is None else cfg, K, "cfg"),
            tau=per_scale(d.tau if tau is None else tau, K, "tau", positive=True),
            top_k=d.top_k if top_k is None else top_k,
            top_p=d.top_p if top_p is None else top_p,
        )
        check_cut(sampling["top_k"], sampling["top_p"])
        previews = None if on_preview is None else (on_preview, preview_size)
        try:
            return self._edit(
                pils,
                instructions,
                negatives,
                seeds,
                size,
                on_scale,
                previews,
                **sampling,
            )
        except torch.OutOfMemoryError as e:
            self.release_memory()
            raise MemoryError(f"out of memory on {self.device}: {e}") from e

    def _edit(
        self,
        pils: list[Image.Image],
        instructions: list[str],
        negatives: list[str],
        seeds: list[int],
        size: int,
        on_scale: OnScale | None,
        previews: tuple[OnPreview, int] | None,
        **sampling,
    ) -> list[Image.Image]:
        schedule = self.config.schedule(size)
        # 2. encode text
        text = self.text_encoder.encode(instructions).to(self.device)
        negative = self.encode_negatives(negatives)
        # 3. encode the sources
        source_BLd = self.encode_sources(pils, schedule, size)
        # 4-5. prefill and scale loop
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        sizes = [im.size for im in pils]
        on_codes = None if previews is None else self._preview_codes(previews, sizes, schedule)
        out = generate(
            self.transformer,
            self.vae,
            text,
            source_BLd,
            schedule,
            gens,
            on_scale=on_scale,
            on_codes=on_codes,
            negative=negative,
            **sampling,
        )
        # 6. decode and return
        results = []
        for b, im in enumerate(pils):
            res = postprocess(self.decode(out.f_hat[b : b + 1])[0], im.size)
            res.info.update(
                seed=seeds[b], instruction=instructions[b], negative_instruction=negatives[b], model=self.name
            )
            results.append(res)
        if previews is not None:  # the last preview is the result itself, so the two always agree
            on_preview, preview_size = previews
            on_preview(len(schedule), len(schedule), [preview_of(res, preview_size) for res in results])
        return results

    def _preview_codes(
        self, previews: tuple[OnPreview, int], sizes: list[tuple[int, int]], schedule: list[tuple[int, int]]
    ) -> OnCodes:
        """The `generate` callback that turns scales 1..K-1 into previews (scale K waits for the result)."""
        on_preview, preview_size = previews
        dims = [preview_dims(size, preview_size) for size in sizes]
        stride = self.config.vae.token_stride

        def on_codes(k: int, K: int, f_hat: torch.Tensor) -> None:
            if k < K:
                h, w = schedule[k - 1]
                on_preview(k, K, self.preview_images(f_hat, dims, (h * stride, w * stride)))

        return on_codes

    def preview_images(
        self, f_hat: torch.Tensor, dims: list[tuple[int, int]], detail: tuple[int, int] | None = None
    ) -> list[Image.Image]:
        """Summed codes (B, dq, 1, H, W) -> one image of (w, h) `dims[b]` each, cheaply.

        f_hat is area-shrunk to the smallest latent grid that still shows it at preview size: that of the
        largest preview, and at most `detail`, the latent grid of the last scale summed (its codes carry
        nothing finer), but at least 2x2 (the decoder's GroupNorm needs more than one value per group).
        The decoder runs there, on a few latent pixels instead of (S / p)^2: early scales cost next to
        nothing, later ones at most a decode at preview size. The square is then cropped and resized
        like `postprocess`."""
        p = self.config.vae.patch_size  # image pixels per latent pixel
        H, W = f_hat.shape[-2:]
        side = -(-max(max(d) for d in dims) // p)  # latent pixels covering the largest preview, ceil
        gh, gw = detail or (H, W)
        g = (min(H, max(2, min(side, gh))), min(W, max(2, min(side, gw))))
        small = f_hat if g == (H, W) else F.interpolate(f_hat, size=(1, *g), mode="area")  # (B, dq, 1, *g)
        # eager even with `compile`: a graph per preview grid would cost more than it saves
        images = self._decode_with(self.vae.decode, small)  # (B, 3, g*p, g*p)
        return [postprocess(img, d) for img, d in zip(images, dims, strict=True)]

    def encode_negatives(self, negatives: list[str]) -> TextFeatures | None:
        """T5 features of each negative instruction, a row without tokens for "" (the null text);
        None when all are "", which leaves generation exactly as without negatives."""
        if not any(negatives):
            return None
        empty = torch.zeros(0, self.config.text_channels, device=self.device)
        rows = [self.text_encoder.encode([n]).feats_BTC[0].to(self.device) if n else empty for n in negatives]
        return TextFeatures.from_list(rows)

    def encode_sources(
        self, images: list[Image.Image], schedule: list[tuple[int, int]], size: int
    ) -> torch.Tensor:
        """Source prefix tokens (B, l_K, d), each image on its own so it does not depend on the batch."""
        x = [preprocess(im, size)[None].to(self.device) for im in images]  # (1, 3, S, S) each
        encode = self._encode_features or self.vae.encode_features
        return torch.cat([self.vae.source_tokens(encode(x_13SS), schedule) for x_13SS in x])

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Summed codes (B, dq, 1, H, W) -> images (B, 3, S, S) in [-1, 1]."""
        return self._decode_with(self._decode or self.vae.decode, f_hat)

    def _decode_with(
        self, decode: Callable[[torch.Tensor], torch.Tensor], f_hat: torch.Tensor
    ) -> torch.Tensor:
        """`decode` (the VAE's, compiled or not) in the precision of the blocks: bfloat16 blocks mean
        the official GPU precision map, where the VAE decodes under bf16 autocast."""
        if self.dtype != torch.bfloat16:
            return decode(f_hat)
        with torch.autocast(self.device.type, torch.bfloat16):
            return decode(f_hat.squeeze(2).contiguous(memory_format=torch.channels_last)).float()


__all__ = [
    "EditCancelled",
    "EditPipeline",
    "OnPreview",
    "exact_bound",
    "load_image",
    "postprocess",
    "preprocess",
    "preview_dims",
    "preview_of",
]
