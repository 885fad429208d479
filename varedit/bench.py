"""Latency and memory of one edit with random weights: `python -m varedit.bench --config S`.

Times an edit the way `EditPipeline.edit` runs it (pre-processing and VAE encode of the source, text
conditioning, source prefill, every scale, VAE decode and post-processing) on random weights and
random text features; the T5 encoder and image file I/O are left out. Prints per-stage and total
latency (best and median over the repeats) and the peak memory. Not a test: numbers depend on the
machine and its load. `--dtype bf16` runs the official GPU precision map (bfloat16 blocks, VAE
decode under bf16 autocast), which is also fast on CPUs with AVX512-BF16/AMX.

    python -m varedit.bench --config S --threads 2 --repeat 4          # CPU, compute-bound small model
    python -m varedit.bench --config 8B-512 --device cuda --batch 1    # full size, random weights
    python -m varedit.bench --config models/varedit-shapes-64 --previews 128   # a folder's architecture

`--previews N` also times the previews of scales 1..K-1 (`EditPipeline.preview_images`, longest side
N; the last preview is the result resized), all together and per scale, after the edit, so the other
stages are timed as without it.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoints import describe
from .config import VAREditConfig, get_config
from .pipeline import EditPipeline, postprocess, preview_dims
from .sampling import generate
from .text import TextFeatures
from .transformer import VAREditTransformer
from .vae import VAE


def config_of(name: str) -> VAREditConfig:
    """A variant's config, or the config of a model folder (its weights are not used)."""
    return describe(name)[0] if Path(name).is_dir() else get_config(name)


def build(name: str, device: torch.device, dtype: torch.dtype) -> tuple:
    """Random-weight transformer and VAE, materialised directly on the device."""
    cfg = config_of(name)
    with torch.device("meta"):
        model, vae = VAREditTransformer(cfg), VAE(cfg.vae)
    model.to_empty(device=device)
    vae.to_empty(device=device)
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for m in (model, vae):
            for p in m.parameters():
                p.normal_(0, 0.02, generator=gen) if p.dim() > 1 else p.zero_()
        for blk in model.blocks:
            blk.sa.scale_mul_1H11.fill_(1.386)  # log 4, the official init
            blk.ca_norm.weight.fill_(1.0)
        model.text_norm.weight.fill_(1.0)
        vae.quantizer.lfq.mask.copy_(2 ** torch.arange(cfg.vae.codebook_dim - 1, -1, -1, device=device))
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)
    model.blocks.to(dtype)
    return cfg, model.eval(), vae.eval()


def run_once(
    pipe: EditPipeline, batch: int, text_len: int, cfg_scale: float, tau: float, preview_size: int = 0
) -> dict:
    """One edit of random images with random text features; returns seconds per stage."""
    cfg, device = pipe.config, pipe.device
    schedule = cfg.schedule()
    images = [
        Image.fromarray(
            np.random.default_rng(b).integers(0, 256, (cfg.resolution, cfg.resolution, 3), dtype=np.uint8)
        )
        for b in range(batch)
    ]
    text = TextFeatures(
        torch.randn(batch, text_len, cfg.text_channels, device=device),
        torch.full((batch,), text_len, device=device),
    )
    marks: list[float] = []

    def tick(*_):
        sync(device)
        marks.append(time.perf_counter())

    with torch.inference_mode():
        tick()
        src = pipe.encode_sources(images, schedule, cfg.resolution)
        tick()
        gens = [torch.Generator().manual_seed(b) for b in range(batch)]
        out = generate(
            pipe.transformer, pipe.vae, text, src, schedule, gens, cfg=cfg_scale, tau=tau, on_scale=tick
        )
        tick()
        [postprocess(img, im.size) for img, im in zip(pipe.decode(out.f_hat), images, strict=True)]
        tick()
    # marks: start, encoded, scale 1 .. K done (scale 1 includes text + prefill), generate returned, decoded
    K = len(schedule)
    stages = {"vae_encode": marks[1] - marks[0], "scale_1+prefill": marks[2] - marks[1]}
    for k in range(2, K + 1):
        stages[f"scale_{k}"] = marks[k + 1] - marks[k]
    stages["vae_decode"] = marks[-1] - marks[-2]
    stages["total"] = marks[-1] - marks[0]
    if preview_size:
        stages["previews_1..K-1"] = previews = time_previews(pipe, out.bits, schedule, preview_size)
        stages["preview_mean"] = previews / (K - 1)
    return stages


def time_previews(
    pipe: EditPipeline, bits: list[torch.Tensor], schedule: list[tuple[int, int]], preview_size: int
) -> float:
    """Seconds of the previews of scales 1..K-1 together, each from the codes its scale had summed."""
    dims = [preview_dims((pipe.config.resolution,) * 2, preview_size)] * bits[0].shape[0]
    stride = pipe.config.vae.token_stride
    seconds = 0.0
    with torch.inference_mode():
        for k in range(1, len(schedule)):
            f_hat = pipe.vae.bits_to_f_hat(bits[:k], schedule)  # what generate held after scale k
            h, w = schedule[k - 1]
            sync(pipe.device)
            t0 = time.perf_counter()
            pipe.preview_images(f_hat, dims, (h * stride, w * stride))
            sync(pipe.device)
            seconds += time.perf_counter() - t0
    return seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="S")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], help="block dtype (default: bf16 on CUDA, else fp32)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text-len", type=int, default=20)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--tau", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--previews", type=int, default=0, help="also time a preview of this longest side")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, None: None}[args.dtype]
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    cfg, model, vae = build(args.config, device, dtype)
    pipe = EditPipeline(cfg, model, vae, text_encoder=None, device=device)  # text features are random
    runs = [
        run_once(pipe, args.batch, args.text_len, args.cfg, args.tau, args.previews)
        for _ in range(args.warmup + args.repeat)
    ][args.warmup :]

    print(
        f"config {cfg.name}: {cfg.resolution}px, K={len(cfg.schedule())}, depth {cfg.depth}, "
        f"width {cfg.width}, batch {args.batch}, cfg {args.cfg}, tau {args.tau}, "
        f"{args.text_len} text tokens, device {device}, blocks {dtype}, threads {torch.get_num_threads()}, "
        f"{args.repeat} runs after {args.warmup} warm-up"
    )
    print(f"{'stage':<18}{'best ms':>10}{'median ms':>11}")
    for stage in runs[0]:
        times = [r[stage] * 1e3 for r in runs]
        print(f"{stage:<18}{min(times):>10.1f}{statistics.median(times):>11.1f}")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    print(f"peak process RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
