"""Kernel choices for CPU inference that PyTorch does not make by default.

PyTorch hands float32 matrix products on CPU to MKL, whose kernels stop at AVX2 on non-Intel CPUs,
while oneDNN (which already runs every convolution) uses AVX-512 wherever the CPU has it: on the AMD
benchmark machine a float32 linear layer runs 2.2x faster through oneDNN. The sums run in another
order, so results move by float32 rounding only (the golden tolerances cover that).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")

# CPU flags (as /proc/cpuinfo names them) of bfloat16 arithmetic in hardware: x86's AVX512-BF16 and
# AMX, Arm's BF16 extension. Without one, oneDNN widens every bfloat16 operand to float32 and back,
# and a bf16-block S edit took 2.2x the time of a float32 one on an AVX-512 Xeon without them.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether this CPU computes in bfloat16 natively; None where its flags cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            return not NATIVE_BF16_FLAGS.isdisjoint(value.split())
    return None


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Eager float32 CPU inference outside autocast (which would cast `F.linear`'s inputs); under
    torch.compile the compiler picks the kernels itself."""
    return (
        _ONEDNN_LINEAR
        and x.dtype == weight.dtype == torch.float32
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, through oneDNN for float32 on CPU when no gradient is needed.

    Training (grad enabled), other dtypes (bfloat16 already goes to oneDNN) and other devices keep
    `F.linear`."""
    if _use_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.gelu(F.linear(x, weight, bias), approximate="tanh")`, the GELU fused into oneDNN's product
    where `linear` uses oneDNN (one pass less over the FFN's widest activation)."""
    if _use_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "tanh")
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


class Linear(nn.Linear):
    """`nn.Linear` computed by `linear` (same parameters, same state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
