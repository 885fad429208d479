"""Per-stage times of one random-weight edit, for whichever `varedit` is first on PYTHONPATH.

    PYTHONPATH=/path/to/tree python benchmarks/stage_times.py --config S --threads 2 --runs 2

`benchmarks/compare.py` runs this script once per tree and round, so it only uses what every tree
since the benchmark's introduction has: `VAREditTransformer`, `VAE`, `EditPipeline(cfg, model, vae,
None, device)` with `encode_sources` and `decode`, `sampling.generate` with `on_scale`, and
`pipeline.postprocess`. Weights are drawn here, the same way in every tree, so both trees edit with
identical weights and inputs and their outputs can be compared (`--save`).

Stages: vae_encode (pre-processing + encoder), scale_1+prefill (text conditioning, source prefill and
the first scale), scale_k, vae_decode (decoder + post-processing), total. Prints one JSON line:
{"varedit": path, "torch": version, "threads": n, "stages": {"wall" | "cpu": {stage: [ms per run]}}},
"cpu" being the process's CPU time over all its threads (spin-waiting OpenMP threads included).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image

import varedit
from varedit.config import get_config
from varedit.pipeline import EditPipeline, postprocess
from varedit.sampling import generate
from varedit.text import TextFeatures
from varedit.transformer import VAREditTransformer
from varedit.vae import VAE


def build(name: str, dtype: torch.dtype) -> tuple:
    """Random-weight transformer and VAE on CPU (the draw of `varedit.bench.build`)."""
    cfg = get_config(name)
    with torch.device("meta"):
        model, vae = VAREditTransformer(cfg), VAE(cfg.vae)
    model.to_empty(device="cpu")
    vae.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in (model, vae):
            for p in m.parameters():
                p.normal_(0, 0.02, generator=gen) if p.dim() > 1 else p.zero_()
        for blk in model.blocks:
            blk.sa.scale_mul_1H11.fill_(1.386)
            blk.ca_norm.weight.fill_(1.0)
        model.text_norm.weight.fill_(1.0)
        vae.quantizer.lfq.mask.copy_(2 ** torch.arange(cfg.vae.codebook_dim - 1, -1, -1))
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)
    model.blocks.to(dtype)
    return cfg, model.eval(), vae.eval()


def edit_once(pipe: EditPipeline, text_len: int = 20) -> tuple[dict, dict[str, torch.Tensor]]:
    """One edit of a fixed random image with fixed random text features: ms per stage by wall clock
    and by process CPU time (all threads), and the outputs."""
    cfg = pipe.config
    schedule = cfg.schedule()
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (cfg.resolution, cfg.resolution, 3), dtype=np.uint8)
    )
    text = TextFeatures(
        torch.randn(1, text_len, cfg.text_channels, generator=torch.Generator().manual_seed(1)),
        torch.full((1,), text_len),
    )
    marks: list[float] = []
    cpu: list[float] = []

    def tick(*_) -> None:
        marks.append(time.perf_counter())
        cpu.append(time.process_time())

    with torch.inference_mode():
        tick()
        src = pipe.encode_sources([image], schedule, cfg.resolution)
        tick()
        gens = [torch.Generator().manual_seed(0)]
        out = generate(pipe.transformer, pipe.vae, text, src, schedule, gens, cfg=3.0, tau=0.5, on_scale=tick)
        tick()
        img = pipe.decode(out.f_hat)
        postprocess(img[0], image.size)
        tick()
    outputs = {"bits": torch.cat([b.flatten() for b in out.bits]), "image": img.float()}
    return {"wall": stage_ms(marks, len(schedule)), "cpu": stage_ms(cpu, len(schedule))}, outputs


def stage_ms(marks: list[float], K: int) -> dict[str, float]:
    """Clock readings at start, encoded, after scale 1 .. K, generate returned, decoded -> ms per stage."""
    ms = {"vae_encode": marks[1] - marks[0], "scale_1+prefill": marks[2] - marks[1]}
    for k in range(2, K + 1):
        ms[f"scale_{k}"] = marks[k + 1] - marks[k]
    ms["vae_decode"] = marks[-1] - marks[-2]
    ms["total"] = marks[-1] - marks[0]
    return {k: v * 1e3 for k, v in ms.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="S")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["float32", "bf16"], default="float32")
    p.add_argument("--runs", type=int, default=2, help="timed edits after the warm-up")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--save", help="write the last edit's bits and decoded image here (torch.save)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cfg, model, vae = build(args.config, dtype)
    pipe = EditPipeline(cfg, model, vae, None, torch.device("cpu"))
    for _ in range(args.warmup):
        edit_once(pipe)
    runs = [edit_once(pipe) for _ in range(args.runs)]
    if args.save:
        torch.save(runs[-1][1], args.save)
    stages = {
        clock: {k: [r[0][clock][k] for r in runs] for k in runs[0][0][clock]} for clock in ("wall", "cpu")
    }
    print(
        json.dumps(
            {
                "varedit": varedit.__file__,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "stages": stages,
            }
        )
    )


if __name__ == "__main__":
    main()
