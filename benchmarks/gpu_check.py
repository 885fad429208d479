"""One check of a GPU machine in under 8 minutes, with a JSON report: `bash benchmarks/gpu_check.sh`.

    bash benchmarks/gpu_check.sh                          # CUDA: full-size 2B-512, 8B-512, 8B-1024
    bash benchmarks/gpu_check.sh --device cpu --out r.json # tiny configs, GPU-only parts skipped (~1 min)

Sections, each in its own subprocess with its own time budget (a failure or a timeout is recorded and
the next section runs; all of them share one overall deadline):

* environment: GPU name, driver, memory; torch, CUDA and cuDNN versions; host CPUs and memory.
* gpu_tests: `pytest -m gpu` (CUDA only), every test's outcome.
* e2e: the embedded platform (`varedit-serve`) with a tiny random model folder on the device: one job
  submitted through the client, waited for, its result checked.
* model:<variant>: random weights in the official precision map written to local disk in the official
  format (`write_random_official`), loaded onto the device (seconds per part, with a warm page cache
  unless --cold), then edits at batch 1, 4 and 8: seconds per stage, edits/s, peak device memory
  (`torch.cuda.max_memory_allocated`). Full sizes on CUDA; "tiny" and "tiny-patchify" on the CPU.
  The T5 encoder is a random two-layer stand-in of the real width, so text encoding is not timed at
  full size. An out-of-memory batch is recorded as such, not as a failure.
* compile: the same edit at batch 1 with `EditPipeline`'s `compile` option, when it has one (CUDA only),
  in torch.compile's default mode or `--compile-mode` ("reduce-overhead": CUDA graphs, with a count
  of the graphs inductor ran without one).

The report (--out; default gpu_check.json, under $OUT when that is set) holds every section's status
("passed", "failed" with an error, "skipped" with a reason), seconds, budget and results. Exit status 1
when a section failed.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import io
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from load import drop_page_cache  # benchmarks/load.py, beside this script

REPO = Path(__file__).resolve().parents[1]
GiB = 2**30
SCHEMA_VERSION = 1
BATCHES = (1, 4, 8)
FULL_SIZES = ("2B-512", "8B-512", "8B-1024")
TINY_SIZES = ("tiny", "tiny-patchify")
GPU_MARK = "pytest.mark.gpu"


class Skip(Exception):
    """A section that does not apply here; its message is the reason recorded."""


@dataclass
class Ctx:
    """What a section process knows: the device, a scratch folder, its budget, where to write."""

    device: str
    work: Path
    budget_s: float
    out: Path
    cold: bool
    started: float
    compile_mode: str = "default"

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def save(self, result: dict[str, Any], status: str = "running", **extra: str) -> None:
        """Write the section's result so far: a timeout still leaves what was measured."""
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"status": status, "result": result, **extra}, indent=1, default=str))
        tmp.replace(self.out)


# ---- helpers run inside section processes -------------------------------------------------------


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gpu_memory(device: str, peak: bool = True) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return (torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()) / GiB


def host_peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB


def official_folder(ctx: Ctx, variant: str) -> tuple[Path, float]:
    """An official-format folder holding `<variant>.pth`: written with random weights, or a hard link
    to an earlier section's file of the same layout (8B-1024 reuses 8B-512's). -> (folder, seconds)."""
    from varedit import checkpoints as ckpt
    from varedit.config import get_config

    cfg = get_config(variant)
    t0 = time.perf_counter()
    root = ctx.work / "models"
    for pth in sorted(root.glob("*/*.pth")):
        other = get_config(pth.stem) if pth.stem in FULL_SIZES + TINY_SIZES else None
        if other and other.vae == cfg.vae and ckpt.official_layout(other) == ckpt.official_layout(cfg):
            target = pth.parent / f"{variant}.pth"
            if not target.exists():
                os.link(pth, target)
            return pth.parent, time.perf_counter() - t0
    folder = root / variant
    ckpt.write_random_official(folder, cfg, device=ctx.device)
    return folder, time.perf_counter() - t0


def load_pipeline(ctx: Ctx, variant: str, folder: Path, **options: Any) -> tuple[Any, dict[str, float]]:
    """The pipeline from the official files, its parts timed; `options` go to `EditPipeline`
    (its constructor or `from_pretrained`, whichever takes them)."""
    import torch

    from varedit import checkpoints as ckpt
    from varedit.config import get_config
    from varedit.pipeline import EditPipeline
    from varedit.text import TextEncoder

    cfg = get_config(variant)
    tf_path, vae_path, t5_dir = ckpt.official_files(folder, cfg)
    if ctx.cold:
        drop_page_cache(folder)
    dtype = torch.bfloat16 if ctx.device.startswith("cuda") else torch.float32
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if options and not set(options) <= set(inspect.signature(EditPipeline.__init__).parameters):
        pipe = EditPipeline.from_pretrained(
            folder, variant=variant, device=ctx.device, dtype=dtype, **options
        )
        sync(ctx.device)
        return pipe, {"pipeline_s": time.perf_counter() - t0}
    transformer = ckpt.load_official_transformer(tf_path, cfg, ctx.device, dtype)
    sync(ctx.device)
    times["transformer_s"] = time.perf_counter() - t0
    vae = ckpt.load_vae(vae_path, cfg, ctx.device)
    sync(ctx.device)
    times["vae_s"] = time.perf_counter() - t0 - times["transformer_s"]
    text = TextEncoder.from_pretrained(t5_dir, device=ctx.device, max_length=cfg.text_maxlen)
    pipe = EditPipeline(cfg, transformer, vae, text, ctx.device, **options)
    sync(ctx.device)
    times["total_s"] = time.perf_counter() - t0
    return pipe, times


def edit_inputs(size: int, batch: int) -> tuple[list, list[str], list[int]]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (size * 3 // 4, size, 3), dtype=np.uint8)) for _ in range(batch)
    ]
    texts = ["make it snowy", "add a red hat", "remove the dog", "turn day into night"] * 2
    return images, texts[:batch], list(range(batch))


def timed_edit(pipe: Any, device: str, batch: int) -> dict[str, Any]:
    """One `pipe.edit` of `batch` images, split at the scale boundaries it reports."""
    images, texts, seeds = edit_inputs(pipe.resolution, batch)
    marks: list[float] = []

    def on_scale(k: int, K: int) -> bool:
        sync(device)
        marks.append(time.perf_counter())
        return True

    sync(device)
    t0 = time.perf_counter()
    out = pipe.edit(images, texts, seeds=seeds, on_scale=on_scale)
    sync(device)
    t1 = time.perf_counter()
    assert [o.size for o in out] == [im.size for im in images]
    return {
        "total_s": t1 - t0,
        "until_scale_1_s": marks[0] - t0,  # pre-processing, text, VAE encode, prefill, scale 1
        "scales_2_to_K_s": marks[-1] - marks[0],
        "decode_post_s": t1 - marks[-1],  # VAE decode, post-processing
        "per_scale_s": [b - a for a, b in zip([t0, *marks[:-1]], marks, strict=True)],
    }


def timed_parts(pipe: Any, device: str, batch: int) -> dict[str, float]:
    """The text encoder and the source VAE encode at this batch, on their own."""
    import torch

    images, texts, _ = edit_inputs(pipe.resolution, batch)
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        pipe.text_encoder.encode(texts)
        sync(device)
        t1 = time.perf_counter()
        pipe.encode_sources(images, pipe.config.schedule(pipe.resolution), pipe.resolution)
        sync(device)
    return {"text_encode_s": t1 - t0, "vae_encode_s": time.perf_counter() - t1}


def measure_batches(ctx: Ctx, pipe: Any, result: dict[str, Any], batches: tuple[int, ...]) -> None:
    """Edits at each batch size until the budget runs short; results go into result["batches"]."""
    import torch

    rows: dict[str, Any] = result.setdefault("batches", {})
    max_runs = 3 if ctx.device.startswith("cuda") else 1  # on the CPU the tiny runs check code, not speed
    last_edit_s, last_batch = 0.0, 1
    for i, batch in enumerate(batches):
        if i and last_edit_s * batch / last_batch * 1.5 > ctx.left() - 5:  # from the last one measured
            rows[str(batch)] = {"status": "skipped", "reason": "section time budget"}
            continue
        if ctx.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        try:
            if i == 0:
                timed_edit(pipe, ctx.device, batch)  # warm-up: kernels, allocator, caches
            runs = [timed_edit(pipe, ctx.device, batch)]
            while len(runs) < max_runs and runs[-1]["total_s"] * 1.5 < min(ctx.left() - 5, 10.0):
                runs.append(timed_edit(pipe, ctx.device, batch))
            parts = timed_parts(pipe, ctx.device, batch)
        except MemoryError as e:
            rows[str(batch)] = {"status": "oom", "error": str(e)[:300]}
            pipe.release_memory()
            for later in batches[i + 1 :]:
                rows[str(later)] = {"status": "skipped", "reason": f"out of memory at batch {batch}"}
            break
        best = min(runs, key=lambda r: r["total_s"])
        median_s = statistics.median(r["total_s"] for r in runs)
        last_edit_s, last_batch = median_s, batch
        rows[str(batch)] = {
            "status": "measured",
            "runs": len(runs),
            "median_s": median_s,
            "edits_per_s": batch / median_s,
            "stages_best_s": {k: v for k, v in best.items() if k != "per_scale_s"} | parts,
            "per_scale_best_s": best["per_scale_s"],
            "peak_gpu_gib": gpu_memory(ctx.device),
        }
        ctx.save(result)


# ---- sections -----------------------------------------------------------------------------------


def section_environment(ctx: Ctx) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "host_memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB,
        "git_commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
        or None,
    }
    if ctx.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"--device {ctx.device} but torch sees no CUDA device (torch {torch.__version__})"
            )
        props = torch.cuda.get_device_properties(ctx.device)
        env["gpu"] = {
            "name": props.name,
            "count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": props.total_memory / GiB,
            "driver": nvidia_smi("driver_version"),
        }
    return env


def nvidia_smi(field: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def section_gpu_tests(ctx: Ctx) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    if not ctx.device.startswith("cuda"):
        raise Skip("needs CUDA: without it pytest skips every gpu-marked test")
    junit = ctx.work / "gpu-tests.xml"
    # Only the files that hold gpu-marked tests: collecting the others would import the test-only
    # packages (moto, selenium, ...) that a GPU machine's image lacks.
    files = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py") if GPU_MARK in p.read_text()
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        *files,
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(10.0, ctx.left() - 5))
    outcomes: dict[str, str] = {}
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            tags = {child.tag for child in case}
            outcomes[name] = next((t for t in ("failure", "error", "skipped") if t in tags), "passed")
    result = {
        "returncode": proc.returncode,
        "counts": {
            k: sum(v == k for v in outcomes.values()) for k in ("passed", "failure", "error", "skipped")
        },
        "tests": outcomes,
        "output_tail": (proc.stdout + proc.stderr)[-3000:],
    }
    ctx.save(result)
    if proc.returncode != 0 or not result["counts"]["passed"]:
        raise RuntimeError(f"pytest -m gpu exited {proc.returncode}: {result['counts']}")
    return result


def section_model(ctx: Ctx, variant: str) -> dict[str, Any]:
    import torch

    result: dict[str, Any] = {
        "variant": variant,
        "device": ctx.device,
        "page_cache": "cold" if ctx.cold else "warm",
    }
    folder, write_s = official_folder(ctx, variant)
    result["write_s"] = write_s
    result["file_gib"] = (folder / f"{variant}.pth").stat().st_size / GiB
    ctx.save(result)
    if ctx.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    pipe, result["load"] = load_pipeline(ctx, variant, folder)
    result["gpu_after_load_gib"] = gpu_memory(ctx.device, peak=False)
    result["resolution"], result["scales"] = pipe.resolution, pipe.num_scales()
    result["blocks_dtype"] = str(pipe.transformer.blocks[0].ffn.fc1.weight.dtype)
    result["text_encoder"] = "random two-layer stand-in of the real width (not flan-t5-xl)"
    ctx.save(result)
    measure_batches(ctx, pipe, result, BATCHES)
    result["host_peak_rss_gib"] = host_peak_gib()
    return result


def section_compile(ctx: Ctx) -> dict[str, Any]:
    from varedit.pipeline import EditPipeline

    if not ctx.device.startswith("cuda"):
        raise Skip("GPU-only (compiling for a tiny CPU model says nothing)")
    takes = [
        f.__qualname__
        for f in (EditPipeline.__init__, EditPipeline.from_pretrained)
        if "compile" in inspect.signature(f).parameters
    ]
    if not takes:
        raise Skip("EditPipeline has no compile option")
    variant = FULL_SIZES[0]
    folder, _ = official_folder(ctx, variant)
    from torch._dynamo.utils import counters

    mode = ctx.compile_mode
    pipe, load = load_pipeline(ctx, variant, folder, compile=mode)  # "default" is torch.compile's
    result: dict[str, Any] = {"variant": variant, "mode": mode, "option_in": takes, "load": load}
    t0 = time.perf_counter()
    timed_edit(pipe, ctx.device, 1)
    result["first_edit_s"] = time.perf_counter() - t0  # includes compilation
    # graphs inductor ran without a CUDA graph under "reduce-overhead" (mutated inputs, CPU ops, ...)
    result["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"]
    result["graph_breaks"] = dict(counters["graph_break"])
    ctx.save(result)
    measure_batches(ctx, pipe, result, (1,))
    off = ctx.work / "sections" / f"model_{variant}.json"
    if off.is_file():
        row = json.loads(off.read_text()).get("result", {}).get("batches", {}).get("1", {})
        result["edits_per_s_without_compile"] = row.get("edits_per_s")
    return result


def section_e2e(ctx: Ctx) -> dict[str, Any]:
    from PIL import Image

    from varedit import write_random_checkpoint
    from varedit_client import Client

    model = write_random_checkpoint(ctx.work / "e2e-model", "tiny", seed=0)
    data, ready = ctx.work / "e2e-data", ctx.work / "e2e-ready.json"
    env = os.environ | {"VAREDIT_DEVICE": ctx.device}
    cmd = [sys.executable, "-m", "serve", "--port", "0", "--data-dir", str(data), "--model-path", str(model)]
    result: dict[str, Any] = {"device": ctx.device}
    t0 = time.perf_counter()
    with (ctx.work / "e2e-serve.log").open("w") as log:
        server = subprocess.Popen(
            [*cmd, "--ready-file", str(ready)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while not (ready.is_file() and ready.stat().st_size):
                if server.poll() is not None:
                    raise RuntimeError(f"varedit-serve exited {server.returncode} before it was ready")
                if ctx.left() < 15:
                    raise RuntimeError("varedit-serve was not ready within the section budget")
                time.sleep(0.2)
            result["ready_s"] = time.perf_counter() - t0
            url = json.loads(ready.read_text())["url"]
            image = Image.new("RGB", (48, 40), (200, 30, 30))
            with Client(url) as client:
                t1 = time.perf_counter()
                job = client.edit(image, "make it blue", seed=1).wait(timeout=max(5.0, ctx.left() - 10))
                png = job.result()
                result["job_s"] = time.perf_counter() - t1
            result["job_status"] = job.status.value
            with Image.open(io.BytesIO(png)) as out:
                result["result_size"] = list(out.size)
            if tuple(result["result_size"]) != image.size:
                raise RuntimeError(f"result is {out.size}, the input {image.size}")
        except Exception:
            # the report is all that comes back from a GPU machine: keep why the services failed
            log.flush()
            logs = [ctx.work / "e2e-serve.log", *sorted((data / "logs").glob("*.log"))]
            result["log_tails"] = {p.name: p.read_text(errors="replace").splitlines()[-15:] for p in logs}
            ctx.save(result)
            raise
        finally:
            server.terminate()  # varedit-serve stops its children itself
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    logs = (
        "".join(p.read_text(errors="replace") for p in (data / "logs").glob("*.log"))
        if (data / "logs").is_dir()
        else ""
    )
    result["worker_log_mentions_device"] = f"on {ctx.device}" in logs
    return result


SECTIONS: dict[str, tuple[float, Callable[..., dict[str, Any]]]] = {
    "environment": (20, section_environment),
    "gpu_tests": (60, section_gpu_tests),
    "e2e": (90, section_e2e),
    "model": (0, section_model),  # budgets per variant below
    "compile": (120, section_compile),  # last: it gets what the deadline leaves, up to this
}
MODEL_BUDGET_S = {"2B-512": 70, "8B-512": 90, "8B-1024": 120, "tiny": 25, "tiny-patchify": 25}


def plan(device: str) -> list[tuple[str, float]]:
    """(section name, budget seconds) in the order they run."""
    variants = FULL_SIZES if device.startswith("cuda") else TINY_SIZES
    names = ["environment", "gpu_tests", "e2e", *(f"model:{v}" for v in variants), "compile"]
    return [(n, MODEL_BUDGET_S[n.split(":")[1]] if n.startswith("model:") else SECTIONS[n][0]) for n in names]


def run_section_here(name: str, ctx: Ctx) -> None:
    """The body of a section process: run it and record passed / skipped / failed."""
    kind, _, arg = name.partition(":")
    fn = SECTIONS[kind][1]
    try:
        result = fn(ctx, arg) if arg else fn(ctx)
        ctx.save(result, "passed")
    except Skip as e:
        ctx.save({}, "skipped", reason=str(e))
    except BaseException as e:  # recorded for the report; the orchestrator carries on
        partial = json.loads(ctx.out.read_text()).get("result", {}) if ctx.out.is_file() else {}
        ctx.save(
            partial, "failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:]
        )


# ---- the orchestrator ---------------------------------------------------------------------------


def run_section(name: str, budget: float, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / "sections" / f"{name.replace(':', '_')}.json"
    cmd = [sys.executable, __file__, "--device", args.device, "--section", name, "--work", str(work)]
    cmd += ["--budget", str(budget), "--section-out", str(out), "--compile-mode", args.compile_mode]
    cmd += ["--cold"] if args.cold else []
    t0 = time.perf_counter()
    quiet = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=os.environ | quiet, start_new_session=True)
    try:
        proc.wait(timeout=budget + 15)  # the section watches its own budget; this is the backstop
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        timed_out = True
    record = json.loads(out.read_text()) if out.is_file() else {"status": "running", "result": {}}
    if record["status"] == "running":
        why = (
            f"timed out after {budget:.0f} s"
            if timed_out
            else f"the section process exited {proc.returncode}"
        )
        record = {"status": "failed", "error": why, "result": record["result"]}
    return record | {"seconds": round(time.perf_counter() - t0, 2), "budget_s": budget}


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")


def summary_line(name: str, rec: dict[str, Any]) -> str:
    head = f"{name:<22}{rec['status']:<8}{rec['seconds']:>7.1f}s/{rec['budget_s']:.0f}s  "
    if rec["status"] == "skipped":
        return head + rec.get("reason", "")
    if rec["status"] == "failed":
        return head + rec.get("error", "")
    r = rec["result"]
    if name.startswith("model:") or name == "compile":
        load = r.get("load", {})
        load_s = load.get("total_s", load.get("pipeline_s", float("nan")))
        rows = [
            f"b{b} {row['edits_per_s']:.2f}/s"
            + (f" {row['peak_gpu_gib']:.1f}GiB" if row["peak_gpu_gib"] else "")
            if row.get("status") == "measured"
            else f"b{b} {row.get('status')}"
            for b, row in r.get("batches", {}).items()
        ]
        return head + f"load {load_s:.1f}s  " + ", ".join(rows)
    if name == "environment":
        gpu = r.get("gpu", {})
        return (
            head
            + f"torch {r['torch']} cuda {r['cuda']} {gpu.get('name', 'no GPU')} driver {gpu.get('driver')}"
        )
    if name == "gpu_tests":
        return head + json.dumps(r["counts"])
    if name == "e2e":
        return head + f"ready {r.get('ready_s', 0):.1f}s, job {r.get('job_s', 0):.1f}s, {r.get('job_status')}"
    return head


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (full sizes) or cpu (tiny configs)")
    p.add_argument(
        "--out", type=Path, default=None, help="report path (default: gpu_check.json, under $OUT if set)"
    )
    p.add_argument("--total-s", type=float, default=450, help="overall deadline for all sections")
    p.add_argument("--only", help="comma-separated section names to run (others are not run)")
    p.add_argument("--cold", action="store_true", help="drop the checkpoints' page cache before each load")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (checkpoints, logs)")
    p.add_argument(
        "--compile-mode",
        default="default",
        help='the compile section\'s torch.compile mode: "reduce-overhead" measures CUDA graphs',
    )
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--section", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    p.add_argument("--section-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.section:
        ctx = Ctx(
            args.device,
            args.work,
            args.budget,
            args.section_out,
            args.cold,
            time.perf_counter(),
            args.compile_mode,
        )
        run_section_here(args.section, ctx)
        return 0

    out = args.out or default_out()
    work = Path(tempfile.mkdtemp(prefix="varedit-gpu-check-"))
    (work / "sections").mkdir()
    only = set(args.only.split(",")) if args.only else None
    deadline = time.perf_counter() + args.total_s
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": args.device,
        "sizes": "full" if args.device.startswith("cuda") else "tiny",
        "sections": {},
    }
    t0 = time.perf_counter()
    try:
        for name, budget in plan(args.device):
            if only is not None and name not in only:
                continue
            budget = min(budget, deadline - time.perf_counter())
            if budget < 10:
                rec = {
                    "status": "skipped",
                    "reason": "overall deadline reached",
                    "seconds": 0.0,
                    "budget_s": 0.0,
                }
            else:
                rec = run_section(name, budget, args, work)
            report["sections"][name] = rec
            print(summary_line(name, rec), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    statuses = [rec["status"] for rec in report["sections"].values()]
    report["summary"] = {s: statuses.count(s) for s in ("passed", "failed", "skipped")}
    report["total_s"] = round(time.perf_counter() - t0, 1)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"{report['summary']} in {report['total_s']} s; report: {out}")
    return 1 if report["summary"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
