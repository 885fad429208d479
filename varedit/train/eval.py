"""Quality benchmark of a model on the held-out split of the synthetic shape-editing task.

    python -m varedit.train.eval --model models/varedit-shapes-64 --n 300

Each held-out record (phrasings and attribute combinations never seen in training) goes through
`EditPipeline.edit` one at a time. Per record:

* edit PSNR: PSNR between output and target inside the record's mask (the pixels the edit changes,
  grown by 2 px);
* success: edit PSNR >= SUCCESS_DB and the output inside the mask is closer to the target than to
  the source. Why 20 dB: a right edit decoded by the small VAE scores ~30 dB in the mask, while every
  wrong outcome is far below -- an unchanged object (no-op) measures 5-12 dB against the target, the
  wrong colour 5-10 dB, the right colour at the wrong place or size 8-15 dB. 20 dB is an RMS error of
  26/255, i.e. the region is visibly the target's, and the "closer to target" rule rejects partial
  edits that merely blur the region;
* closer: the weaker criterion alone (output closer to the target than to the source in the mask:
  the edit went the right way, whatever the VAE's fidelity);
* preservation: PSNR between output and source outside the mask (what must not change);
* latency: wall time of one `edit` call (batch 1), after one warm-up call.

`--oracle` scores the VAE's reconstruction of each target instead (its bits at every scale: the
ceiling of any transformer on this VAE); `--oracle-scales N` takes only the first N scales' bits from
the target and lets the model sample the rest, which shows which scales lose the most.

Prints a table; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

from .data import EDIT_KINDS, HELD_OUT_COMBOS, TEMPLATES, Record, edit_combo, make_record

SUCCESS_DB = 20.0
PSNR_CAP = 60.0  # identical regions count as 60 dB so averages stay finite


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB, peak 255) of uint8 images a, b over the pixels where mask (H, W) is True."""
    if not mask.any():
        return PSNR_CAP
    d = a[mask].astype(np.float64) - b[mask].astype(np.float64)
    mse = float(np.mean(d * d))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(255.0**2 / mse))


def score(rec: Record, out: np.ndarray) -> dict:
    """Metrics of one output (uint8 (H, W, 3)) against its record."""
    edit = masked_psnr(out, rec.target, rec.mask)
    to_src = masked_psnr(out, rec.source, rec.mask)
    return {
        "kind": rec.kind,
        "novelty": novelty(rec),
        "edit_psnr": edit,
        "success": bool(edit >= SUCCESS_DB and edit > to_src),
        "closer": bool(edit > to_src),
        "preservation": masked_psnr(out, rec.source, ~rec.mask),
    }


def novelty(rec: Record) -> str:
    """What is new about a held-out record: its phrasing, its attribute combination, or both."""
    train_templates = {t for tr, _ in TEMPLATES.values() for t in tr}
    new_t = rec.meta["template"] not in train_templates
    new_c = (rec.kind, edit_combo(rec.kind, rec.meta)) in HELD_OUT_COMBOS
    names = {(True, False): "phrasing", (False, True): "combination", (True, True): "both"}
    return names.get((new_t, new_c), "none")


def summarize(rows: list[dict], latencies: list[float]) -> str:
    lines = [f"{'group':<16}{'n':>5}{'success':>10}{'closer':>9}{'edit dB':>10}{'preserve dB':>13}"]

    def line(name: str, rs: list[dict]) -> None:
        if rs:
            succ, edit = np.mean([r["success"] for r in rs]), np.mean([r["edit_psnr"] for r in rs])
            closer, keep = np.mean([r["closer"] for r in rs]), np.mean([r["preservation"] for r in rs])
            lines.append(
                f"{name:<16}{len(rs):>5}{100 * succ:>9.1f}%{100 * closer:>8.1f}%{edit:>10.2f}{keep:>13.2f}"
            )

    by_kind, by_nov = defaultdict(list), defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r)
        by_nov[r["novelty"]].append(r)
    for k in EDIT_KINDS:
        line(k, by_kind[k])
    lines.append("-" * 63)
    for k in ("phrasing", "combination", "both"):
        line(f"new {k}", by_nov[k])
    lines.append("-" * 63)
    line("overall", rows)
    if latencies:
        lat = np.array(latencies) * 1000
        lines.append(
            f"latency per edit: mean {lat.mean():.0f} ms, median {np.median(lat):.0f} ms, "
            f"p95 {np.percentile(lat, 95):.0f} ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/varedit-shapes-64")
    p.add_argument("--n", type=int, default=300, help="held-out records (edit kinds cycle)")
    p.add_argument("--seed", type=int, default=0, help="data seed of the held-out split")
    p.add_argument("--cfg", type=float, help="default: the model's recommended value (config.json)")
    p.add_argument("--tau", type=float, help="default: the model's recommended value (config.json)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument(
        "--oracle",
        action="store_true",
        help="every scale's bits from the target itself: the VAE's ceiling, no transformer",
    )
    p.add_argument(
        "--oracle-scales",
        type=int,
        default=0,
        metavar="N",
        help="the first N scales' bits from the target, the rest sampled (what later scales lose)",
    )
    a = p.parse_args(argv)

    import torch
    from PIL import Image

    from ..pipeline import EditPipeline

    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = EditPipeline.from_pretrained(a.model)
    a.cfg = pipe.sampling.cfg if a.cfg is None else a.cfg
    a.tau = pipe.sampling.tau if a.tau is None else a.tau
    n_oracle = pipe.num_scales() if a.oracle else a.oracle_scales
    recs = [make_record(a.seed, i, "test") for i in range(a.n)]
    rows, latencies = [], []
    if not n_oracle:
        pipe.edit(Image.fromarray(recs[0].source), recs[0].instruction, seeds=0, cfg=a.cfg, tau=a.tau)
    for i, rec in enumerate(recs):
        if n_oracle:
            out = edit_with_oracle(pipe, rec, i, a.cfg, a.tau, n_oracle)
        else:
            t0 = time.perf_counter()
            out = edit_record(pipe, rec, i, a.cfg, a.tau)
            latencies.append(time.perf_counter() - t0)
        rows.append(score(rec, out))
    oracle = f"  (bits of the target's first {n_oracle} of {pipe.num_scales()} scales)" if n_oracle else ""
    print(f"model {a.model}  held-out records {a.n}  cfg {a.cfg}  tau {a.tau}{oracle}")
    print(summarize(rows, latencies))


def edit_record(pipe, rec: Record, seed: int, cfg: float, tau: float) -> np.ndarray:
    """One benchmark edit: the record's source and instruction through `EditPipeline.edit`."""
    from PIL import Image

    [img] = pipe.edit([Image.fromarray(rec.source)], [rec.instruction], seeds=[seed], cfg=cfg, tau=tau)
    return np.asarray(img)


def edit_with_oracle(pipe, rec: Record, seed: int, cfg: float, tau: float, n_scales: int) -> np.ndarray:
    """Edit a record with its first `n_scales` scales' bits taken from the target (VAE-encoded),
    the rest sampled as `EditPipeline.edit` does. With every scale taken: the VAE reconstruction of
    the target, the best any transformer can do with this VAE."""
    import torch
    from PIL import Image

    from ..pipeline import postprocess, preprocess
    from ..sampling import generate

    with torch.inference_mode():
        size, schedule = pipe.resolution, pipe.config.schedule(pipe.resolution)
        target = preprocess(Image.fromarray(rec.target), size)[None].to(pipe.device)
        sched = [(1, h, w) for h, w in schedule]
        labels = pipe.vae.teacher_forcing(pipe.vae.encode_features(target), sched).labels
        text = pipe.text_encoder.encode([rec.instruction]).to(pipe.device)
        source = pipe.encode_sources([Image.fromarray(rec.source)], schedule, size)
        gens = [torch.Generator().manual_seed(seed)]
        out = generate(
            pipe.transformer,
            pipe.vae,
            text,
            source,
            schedule,
            gens,
            cfg=cfg,
            tau=tau,
            top_k=pipe.sampling.top_k,
            top_p=pipe.sampling.top_p,
            forced_bits=labels[:n_scales],
        )
        return np.asarray(postprocess(pipe.decode(out.f_hat)[0], rec.target.shape[1::-1]))


if __name__ == "__main__":
    main()
