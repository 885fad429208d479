"""This tree against another commit, side by side on this machine: per-stage medians and ratios.

    python benchmarks/compare.py BASE_REF                          # config S, float32, 2 threads, 7 rounds
    python benchmarks/compare.py BASE_REF --dtype bf16 --rounds 9
    python benchmarks/compare.py HEAD --ours-dtype bf16              # bf16 mode against float32
    python benchmarks/compare.py HEAD --ours-env MALLOC_TRIM_THRESHOLD_=4294967296   # a deployment setting

BASE_REF is checked out once into a git worktree (reused by later calls). Each round runs
`benchmarks/stage_times.py` (of this tree) once with PYTHONPATH at this tree and once at the base
worktree, in a fresh process each, alternating which goes first, so both sides see the same
machine load drift. Each process warms up once, then times `--runs` edits with the same random
weights and inputs. Printed per stage: the median over all timed edits of each side, their ratio
ours/base, and the median and range of the per-round ratios (the range shows the noise). Also
printed: the CPU model, its SIMD flags, the thread count, the load average before and after, and
whether both trees sampled the same bits and how far apart their decoded images are.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "stage_times.py"
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def base_worktree(ref: str, folder: str | None) -> tuple[Path, str]:
    """A detached worktree of `ref` (created once, reused), and its commit."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    path = Path(folder or Path(tempfile.gettempdir()) / f"varedit-compare-{sha[:12]}")
    if not (path / ".git").exists():
        git("worktree", "add", "--detach", str(path), sha)
    elif git("rev-parse", "HEAD", cwd=path) != sha:
        git("checkout", "--detach", sha, cwd=path)
    return path, sha


def cpu_info() -> tuple[str, list[str]]:
    """CPU model name and which of FLAGS it has (from /proc/cpuinfo)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return model, [f for f in FLAGS if f in flags]


def run_tree(
    tree: Path, args: argparse.Namespace, save: Path, dtype: str, env_extra: dict[str, str]
) -> dict[str, list[float]]:
    cmd = [sys.executable, str(SCRIPT), "--config", args.config, "--threads", str(args.threads)]
    cmd += [
        "--dtype",
        dtype,
        "--runs",
        str(args.runs),
        "--warmup",
        str(args.warmup),
        "--save",
        str(save),
    ]
    env = {**os.environ, **env_extra, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, env=env, cwd=save.parent, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if not Path(result["varedit"]).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"imported {result['varedit']}, not the tree {tree}")
    return result["stages"][args.clock]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base_ref", help="commit, branch or tag to compare against")
    p.add_argument("--config", default="S")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["float32", "bf16"], default="float32")
    p.add_argument(
        "--ours-dtype", choices=["float32", "bf16"], help="dtype of this tree only (default: --dtype)"
    )
    p.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable set for this tree's processes only (repeatable), to time a setting",
    )
    p.add_argument("--rounds", type=int, default=7, help="processes per side, alternating")
    p.add_argument("--runs", type=int, default=2, help="timed edits per process")
    p.add_argument("--warmup", type=int, default=1, help="untimed edits per process")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or the process's CPU time (less disturbed by other load; best with --threads 1)",
    )
    p.add_argument("--worktree", help="where to check out the base (default: a folder in the temp dir)")
    args = p.parse_args()

    base, sha = base_worktree(args.base_ref, args.worktree)
    trees = {"base": base, "ours": ROOT}
    dtypes = {"base": args.dtype, "ours": args.ours_dtype or args.dtype}
    ours_env = dict(kv.split("=", 1) for kv in args.ours_env)
    envs: dict[str, dict[str, str]] = {"base": {}, "ours": ours_env}
    model, flags = cpu_info()
    load_before = os.getloadavg()
    per_round: dict[str, list[dict[str, list[float]]]] = {"base": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        saves = {side: Path(tmp) / f"{side}.pt" for side in trees}
        for r in range(args.rounds):
            order = ["base", "ours"] if r % 2 == 0 else ["ours", "base"]
            for side in order:
                per_round[side].append(run_tree(trees[side], args, saves[side], dtypes[side], envs[side]))
            print(
                f"round {r + 1}/{args.rounds}: total ms "
                + ", ".join(f"{s} {statistics.median(per_round[s][-1]['total']):.0f}" for s in trees),
                file=sys.stderr,
            )
        outs = {side: torch.load(saves[side]) for side in trees}
    load_after = os.getloadavg()

    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    print(f"ours: {ROOT} at {git('rev-parse', '--short=12', 'HEAD')}{dirty}")
    print(f"base: {args.base_ref} = {sha[:12]} (worktree {base})")
    print(
        f"cpu: {model}, {os.cpu_count()} logical CPUs, "
        f"flags: {' '.join(flags) or 'none of ' + ' '.join(FLAGS)}"
    )
    if dtypes["ours"] != dtypes["base"] or ours_env:
        print(f"ours only: {dtypes['ours']}" + "".join(f" {k}={v}" for k, v in ours_env.items()))
    print(
        f"config {args.config}, {args.dtype}, {args.threads} threads, torch {torch.__version__}; "
        f"{args.rounds} rounds x {args.runs} edits per side (after {args.warmup} warm-up each), interleaved; "
        f"{args.clock} clock"
    )
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(
        f"{'stage':<18}{'base ms':>10}{'ours ms':>10}{'ours/base':>11}   per-round ratio: median [min, max]"
    )
    for stage in per_round["base"][0]:
        med = {side: statistics.median([t for rr in per_round[side] for t in rr[stage]]) for side in trees}
        rounds = [
            statistics.median(o[stage]) / statistics.median(b[stage])
            for b, o in zip(per_round["base"], per_round["ours"], strict=True)
        ]
        print(
            f"{stage:<18}{med['base']:>10.1f}{med['ours']:>10.1f}{med['ours'] / med['base']:>11.3f}"
            f"   {statistics.median(rounds):.3f} [{min(rounds):.3f}, {max(rounds):.3f}]"
        )
    bits_b, bits_o = outs["base"]["bits"], outs["ours"]["bits"]
    bits_off = int((bits_b != bits_o).sum())
    img_diff = float((outs["base"]["image"] - outs["ours"]["image"]).abs().max())
    print(
        f"outputs: {bits_off} of {bits_b.numel()} sampled bits differ, "
        f"decoded images differ by at most {img_diff:.2e} (values in [-1, 1])"
    )


if __name__ == "__main__":
    main()
