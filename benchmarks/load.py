"""Time and peak host memory of loading a full-size model on the CPU, official `.pth` and our folder.

    python benchmarks/load.py                         # 2B-512: writes ~10 GB of random weights, removes them
    python benchmarks/load.py --variant 8B-512 --dry-run   # only the computed sizes, nothing written

Writes a random checkpoint of the variant in the official format (`write_random_official`: official
keys, bfloat16 blocks, float32 elsewhere) and converts it to our folder format (`convert_official`),
under a temporary directory on local disk. Then, one at a time, a fresh subprocess loads each format's
transformer and VAE on the CPU with bfloat16 blocks (the official precision map), with the checkpoint
loaders and then with `EditPipeline.from_pretrained`, reads every tensor once, and reports its peak
RSS (its own `ru_maxrss`). Weights are memory-mapped and adopted in place,
so the mapped file pages are the model: the read is what brings them into memory, and is timed apart
from the load itself. The page cache of the files is dropped before each load (a cold read from disk).
The T5 text encoder is a random two-layer stand-in of the real width: the flan-t5-xl weights
(loaded by Hugging Face) are not part of the measurement.

Prints the sizes of all three variants (computed on the meta device) and the measured rows against
the goal: peak RSS <= 1.2 x the bf16 size of the weights loaded (transformer + VAE). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GiB = 2**30
GOAL = 1.2


def sizes(variant: str) -> dict[str, int]:
    """Parameter counts and bytes of the transformer and VAE of a variant, without weights."""
    import torch

    from varedit import checkpoints as ckpt
    from varedit.config import get_config
    from varedit.vae import VAE

    cfg = get_config(variant)
    layout = ckpt.official_layout(cfg)
    with torch.device("meta"):
        vae = VAE(cfg.vae).state_dict()
    real = {k: v for k, v in layout.items() if not k.endswith("zero_k_bias")}
    n_tf = sum(torch.Size(shape).numel() for shape, _ in real.values())
    n_vae = sum(t.numel() for k, t in vae.items() if t.is_floating_point())
    tf_bytes = sum(torch.Size(s).numel() * torch.empty(0, dtype=dt).element_size() for s, dt in real.values())
    return {
        "transformer_params": n_tf,
        "vae_params": n_vae,
        "bf16_bytes": 2 * (n_tf + n_vae),
        "official_bytes": tf_bytes + 4 * n_vae,  # what stays in memory: bf16 blocks, fp32 elsewhere
    }


def rss_now() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process in bytes."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon", "RssFile")}


def child_load(fmt: str, folder: Path, variant: str, dtype_name: str, via_pipeline: bool) -> dict:
    """Runs in the measured subprocess: load (with the checkpoint loaders, or the whole
    `EditPipeline.from_pretrained`), read every tensor, report times and memory."""
    import torch

    from varedit import checkpoints as ckpt
    from varedit.config import get_config

    if via_pipeline:  # what the pipeline imports belongs to the bare process
        from transformers import AutoTokenizer, T5EncoderModel  # noqa: F401

        from varedit.pipeline import EditPipeline
    torch.set_num_threads(2)
    cfg = get_config(variant)
    dtype = getattr(torch, dtype_name)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if via_pipeline:
        pipe = EditPipeline.from_pretrained(folder, variant=variant, device="cpu", dtype=dtype)
        model, vae = pipe.transformer, pipe.vae
    elif fmt == "official":
        tf_path, vae_path, _ = ckpt.official_files(folder, cfg)
        model = ckpt.load_official_transformer(tf_path, cfg, "cpu", dtype)
        vae = ckpt.load_vae(vae_path, cfg, "cpu")
    else:
        model = ckpt.load_transformer_safetensors(folder / ckpt.TRANSFORMER_FILE, cfg, "cpu", dtype)
        vae = ckpt.load_vae(folder / ckpt.VAE_FILE, cfg, "cpu")
    t_load = time.perf_counter() - t0
    after_load = rss_now()
    for t in [*model.state_dict().values(), *vae.state_dict().values()]:
        t.sum()  # reads every page; no full-size temporary
    t_read = time.perf_counter() - t0 - t_load
    assert model.blocks[0].ffn.fc1.weight.dtype == dtype and model.head.weight.dtype == torch.float32
    return {
        "format": fmt,
        "load_s": t_load,
        "read_s": t_read,
        "baseline_rss": baseline,
        "rss_after_load": after_load["VmRSS"],
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "end": rss_now(),
    }


def child_write(root: Path, variant: str) -> dict:
    """Runs in a subprocess: the official folder, then ours converted from it."""
    import torch

    from varedit import checkpoints as ckpt

    t0 = time.perf_counter()
    ckpt.write_random_official(root / "official", variant)
    t1 = time.perf_counter()
    ckpt.convert_official(root / "official", root / "ours", variant, dtype=torch.bfloat16)
    return {
        "write_s": t1 - t0,
        "convert_s": time.perf_counter() - t1,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def drop_page_cache(folder: Path) -> None:
    """Evict the folder's files from the page cache (only these files), so the load reads the disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def print_sizes() -> None:
    print(f"{'variant':<9}{'transformer':>13}{'VAE':>11}{'bf16 GiB':>10}{'loaded GiB':>12}{'goal GiB':>10}")
    for variant in ("2B-512", "8B-512", "8B-1024"):
        s = sizes(variant)
        print(
            f"{variant:<9}{s['transformer_params'] / 1e9:>12.3f}B{s['vae_params'] / 1e6:>10.1f}M"
            f"{s['bf16_bytes'] / GiB:>10.2f}{s['official_bytes'] / GiB:>12.2f}"
            f"{GOAL * s['bf16_bytes'] / GiB:>10.2f}"
        )
    print(
        "loaded = bf16 blocks + fp32 rest + fp32 VAE, what a CPU load holds; a load's peak is that plus the\n"
        "bare process (Python, torch). On CUDA the device holds it instead and host RSS stays near the\n"
        "read file pages (reclaimable page cache)."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="2B-512", choices=["2B-512", "8B-512", "8B-1024"])
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="local disk for the files")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="the blocks' dtype")
    p.add_argument("--dry-run", action="store_true", help="print the computed sizes only")
    p.add_argument("--child", nargs=4, metavar=("ROLE", "FORMAT", "PATH", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        role, fmt, path, dtype = args.child
        if role == "write":
            result = child_write(Path(path), args.variant)
        else:
            result = child_load(fmt, Path(path), args.variant, dtype, via_pipeline=role == "pipeline")
        print(json.dumps(result))
        return 0

    print_sizes()
    if args.dry_run:
        return 0
    s = sizes(args.variant)
    need = 2 * s["official_bytes"] + GiB
    free = shutil.disk_usage(args.dir).free
    if free < need:
        print(f"not enough disk under {args.dir}: {free / GiB:.1f} GiB free, {need / GiB:.1f} GiB needed")
        return 1
    root = Path(tempfile.mkdtemp(prefix="varedit-load-", dir=args.dir))
    try:
        w = run_child("--variant", args.variant, "--child", "write", "-", str(root), args.dtype)
        official = du(root / "official") / GiB
        print(
            f"\n{args.variant}: wrote official {official:.2f} GiB in {w['write_s']:.0f} s, "
            f"converted to ours {du(root / 'ours') / GiB:.2f} GiB in {w['convert_s']:.0f} s "
            f"(writer peak RSS {w['peak_rss'] / GiB:.2f} GiB) under {root}"
        )
        print(
            f"loading on cpu, blocks {args.dtype}; bf16 weights {s['bf16_bytes'] / GiB:.2f} GiB, "
            f"goal peak <= {GOAL} x = {GOAL * s['bf16_bytes'] / GiB:.2f} GiB"
        )
        print(
            f"{'format, loaded by':<20}{'load s':>8}{'read s':>8}{'bare GiB':>10}{'peak GiB':>10}"
            f"{'peak/bf16':>11}{'anon GiB':>10}{'file GiB':>10}  goal"
        )
        for role, fmt in [(r, f) for r in ("load", "pipeline") for f in ("official", "ours")]:
            drop_page_cache(root / fmt)
            r = run_child("--variant", args.variant, "--child", role, fmt, str(root / fmt), args.dtype)
            ratio = r["peak_rss"] / s["bf16_bytes"]
            label = f"{fmt}, {'loaders' if role == 'load' else 'pipeline'}"
            print(
                f"{label:<20}{r['load_s']:>8.2f}{r['read_s']:>8.2f}{r['baseline_rss'] / GiB:>10.2f}"
                f"{r['peak_rss'] / GiB:>10.2f}{ratio:>11.2f}{r['end']['RssAnon'] / GiB:>10.2f}"
                f"{r['end']['RssFile'] / GiB:>10.2f}  {'met' if ratio <= GOAL else 'MISSED'}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
