"""Pieces shared by the VAE and transformer trainers: batches, checkpoints, the loss log.

Resume is exact: the batch of step s is a pure function of (seed, s), and a checkpoint stores
the model, optimizer, step and torch RNG state, so a stopped run continued from its last
checkpoint reproduces the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from .data import EDIT_KINDS, Record, make_record


def to_tensor(images_BHW3: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1] (divide by 255 like the official transform)."""
    x = torch.from_numpy(np.ascontiguousarray(images_BHW3)).permute(0, 3, 1, 2).float() / 255
    return x + x - 1


def to_uint8(x_B3HW: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) (clamp, truncate like the official output)."""
    x = ((x_B3HW.detach().float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def records_for_step(seed: int, step: int, batch: int, kinds: list[str] = EDIT_KINDS) -> list[Record]:
    """The training records of one step (deterministic). Record j is an edit of kind
    `kinds[j % len(kinds)]`; the default cycle is the generator's own (every kind equally often)."""
    first = step * batch
    return [make_record(seed, j, "train", kinds[j % len(kinds)]) for j in range(first, first + batch)]


def kind_cycle(mix: str) -> list[str]:
    """ "recolor=3,add=3,remove=1,..." -> the cycle of edit kinds training records follow, each kind
    repeated by its weight (kinds left out are not trained); "" -> every kind once."""
    if not mix:
        return list(EDIT_KINDS)
    weights = {}
    for part in mix.split(","):
        kind, _, w = part.partition("=")
        if kind.strip() not in EDIT_KINDS or not w.strip().isdigit():
            raise ValueError(f"kind mix wants kind=weight with kinds from {EDIT_KINDS}, got {part!r}")
        weights[kind.strip()] = int(w)
    cycle = [k for k in EDIT_KINDS for _ in range(weights.get(k, 0))]
    if not cycle:
        raise ValueError(f"kind mix {mix!r} trains no kind")
    return cycle


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def save_checkpoint(
    path: str | Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    opt: torch.optim.Optimizer,
    extra: dict | None = None,
) -> None:
    """Atomic write (tmp + rename), so an abrupt stop never leaves a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "opt": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "extra": extra or {},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: str | Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer | None = None
) -> dict:
    """Restore modules (+ optimizer and RNG state); returns the raw state (step, extra)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    for k, m in modules.items():
        m.load_state_dict(state["modules"][k])
    if opt is not None:
        opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state


class LossLog:
    """Append-only JSON-lines log: one line per logged step."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()

    def write(self, step: int, **values: float) -> None:
        row = {"step": step, "t": round(time.time() - self.t0, 1)}
        row.update({k: round(float(v), 6) for k, v in values.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t)))
