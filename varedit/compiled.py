"""torch.compile for inference: the `compile` option of `EditPipeline`.

Shapes are static (`dynamic=False`): each scale of each batch size and resolution gets its own graphs,
compiled on first use, so the first edit of every (batch size, resolution) pays for compiling.
Meant for CUDA; on CPU the compiled VAE was slower than the eager one (varedit/NOTES.md, section 5).
A mode is torch.compile's: "reduce-overhead" replays each graph as a CUDA graph (inductor's
cudagraph trees), which removes the kernel launches that dominate the small early scales.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch
import torch._dynamo

P = ParamSpec("P")
R = TypeVar("R")

# Graphs one compiled function may hold: scales x batch sizes x resolutions (x pipelines in the
# process). Dynamo's default of 8 would send every later scale back to eager code.
RECOMPILE_LIMIT = 1024


def compiled(fn: Callable[P, R], mode: str | None = None) -> Callable[P, R]:
    """`fn` under torch.compile with static shapes, in torch.compile's ``mode`` (None: its default).
    Calls beyond dynamo's recompile limit of graphs run eagerly, unless made under `many_graphs`."""
    return torch.compile(fn, dynamic=False, mode=mode)


def many_graphs(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn` with dynamo allowed at least RECOMPILE_LIMIT graphs per compiled function during its calls
    (the limit is raised around them only: other compiled code in the process keeps its own). Wrap
    whole passes, not small functions: entering the setting costs ~40 us."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        config = torch._dynamo.config
        with config.patch(
            recompile_limit=max(config.recompile_limit, RECOMPILE_LIMIT),
            accumulated_recompile_limit=max(config.accumulated_recompile_limit, RECOMPILE_LIMIT),
        ):
            return fn(*args, **kwargs)

    return call
