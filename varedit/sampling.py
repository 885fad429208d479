"""Next-scale generation: source prefill, then one transformer step per scale.

Per scale k: hidden states -> logits x (1/tau) -> CFG on logits -> top-k / top-p on each bit's two
logits -> one categorical draw per bit from that sample's own generator -> the bits' codes are added
to the running latent, which resized to grid k+1 is the next input.

Randomness: one CPU `torch.Generator` per sample, consumed only by one `torch.multinomial` call per
scale over that sample's (l_k * d, 2) probability rows, in the official order. So a sample's bits
depend on its seed and inputs, not on the batch it runs in or on the device. For one sample this
is the stream of the official code run on CPU; on GPU the official code draws from a CUDA generator,
whose stream differs. varedit/NOTES.md gives the exact rules.

Shapes: B samples, bs = 2B with CFG ([cond; uncond]) else B, l tokens of scale k, d bits per token,
V = 2d logits per token, dq latent channels, H/W latent size.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from .text import TextFeatures
from .transformer import VAREditTransformer
from .vae import VAE

# on_scale(k, K) after scale k (1-based) of K; returning False stops the generation.
OnScale = Callable[[int, int], "bool | None"]
# on_codes(k, K, f_hat) after scale k's on_scale: the summed codes so far, (B, dq, 1, H, W), to read only.
OnCodes = Callable[[int, int, torch.Tensor], None]


class EditCancelled(Exception):
    """Raised when `on_scale` returns False: the edit stopped after `done` of `total` scales."""

    def __init__(self, done: int, total: int):
        super().__init__(f"edit cancelled after scale {done} of {total}")
        self.done, self.total = done, total


@dataclass
class Generation:
    f_hat: torch.Tensor | None = None  # (B, dq, 1, H, W) summed codes: the decoder input
    bits: list[torch.Tensor] = field(default_factory=list)  # per scale (B, l, d) int64
    logits: list[torch.Tensor] = field(default_factory=list)  # per scale raw head output (bs, l, V), if kept


def per_scale(value: float | Sequence[float], K: int, name: str, positive: bool = False) -> list[float]:
    """A scalar or a per-scale list -> a list of K finite floats, each > 0 if `positive` (tau divides
    the logits): anything else would fail deep in sampling, with an error that does not say why."""
    if isinstance(value, numbers.Real):  # numpy scalars too (np.float32 is no Python float)
        value = [value] * K
    elif isinstance(value, str | bytes) or not isinstance(value, Iterable):  # "3" is no list of 3.0
        raise ValueError(f"{name} must be a number or one number per scale, got {value!r}")
    values = [_number(v, name) for v in value]
    if len(values) != K:
        raise ValueError(f"{name} needs {K} values (one per scale), got {len(values)}")
    bad = [v for v in values if not math.isfinite(v) or (positive and v <= 0)]
    if bad:
        allowed = "a finite number greater than 0" if positive else "a finite number"
        raise ValueError(f"{name} must be {allowed} at every scale, got {bad[0]}")
    return values


def _number(value: object, name: str) -> float:
    """``value`` as a float: a real number (numpy's and 0-d tensors too), not True or "3"."""
    if isinstance(value, bool | str | bytes):
        raise ValueError(f"{name} values must be numbers, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} values must be numbers, got {value!r}") from None


def unconditional_text(
    text: TextFeatures, negative: TextFeatures | None
) -> tuple[TextFeatures, torch.Tensor]:
    """The unconditional half of the CFG batch, and which of its rows take the null text (bool, B).

    A sample's negative prompt (a row of `negative` with tokens) is its unconditional text, at its own
    length. A sample without one (a row without tokens, or no `negative`) keeps its prompt, which
    `condition` replaces by the learned null text of the prompt's length."""
    B = text.lens_B.shape[0]
    if negative is None:
        return text, torch.ones(B, dtype=torch.bool)
    if negative.lens_B.shape[0] != B:
        raise ValueError(f"need one negative prompt per sample: {negative.lens_B.shape[0]} for {B}")
    neg_lens, lens = negative.lens_B.tolist(), text.lens_B.tolist()
    rows = [
        negative.feats_BTC[b, : neg_lens[b]] if neg_lens[b] else text.feats_BTC[b, : lens[b]]
        for b in range(B)
    ]
    return TextFeatures.from_list(rows), torch.tensor([n == 0 for n in neg_lens])


def top_k_top_p_(logits_BNV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf, in place, the logits outside the top-k and the low tail of mass <= 1 - top_p.

    The official rule: sort ascending, softmax, cut the entries whose cumulative probability is
    <= 1 - top_p, never the largest. With two logits per bit, top-k (k >= 2) never cuts and top-p
    cuts the minority value when its probability is <= 1 - top_p (see varedit/NOTES.md)."""
    V = logits_BNV.shape[-1]
    if 0 < top_k < V:
        kth = logits_BNV.topk(top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        logits_BNV.masked_fill_(logits_BNV < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BNV.sort(dim=-1, descending=False)
        cut = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        cut[..., -1:] = False
        logits_BNV.masked_fill_(cut.scatter(-1, sorted_idx, cut), -torch.inf)
    return logits_BNV


def sample_bits(
    logits_BlV: torch.Tensor, generators: Sequence[torch.Generator], top_k: int, top_p: float
) -> torch.Tensor:
    """One draw per bit from softmax of its two logits (after top-k/top-p): (B, l, d) int64."""
    B, n, V = logits_BlV.shape
    logits = top_k_top_p_(logits_BlV.float().reshape(B, n * V // 2, 2), top_k, top_p)
    probs = logits.softmax(dim=-1).cpu()  # (B, l*d, 2)
    bits = torch.stack(
        [
            torch.multinomial(probs[b], 1, replacement=True, generator=g)[:, 0]
            for b, g in enumerate(generators)
        ]
    )  # (B, l*d)
    return bits.view(B, n, V // 2).to(logits_BlV.device)


@torch.inference_mode()
def generate(
    model: VAREditTransformer,
    vae: VAE,
    text: TextFeatures,
    source_BLd: torch.Tensor,
    schedule: list[tuple[int, int]],
    generators: Sequence[torch.Generator],
    cfg: float | Sequence[float] = 3.0,
    tau: float | Sequence[float] = 0.5,
    top_k: int = 900,
    top_p: float = 0.97,
    on_scale: OnScale | None = None,
    forced_bits: Sequence[torch.Tensor] | None = None,
    keep_logits: bool = False,
    on_codes: OnCodes | None = None,
    negative: TextFeatures | None = None,
) -> Generation:
    """Sample the target's bits scale by scale; returns the summed codes and every scale's bits.

    text: one prompt per sample; source_BLd: the source prefix (B, h_K*w_K, d).
    cfg, tau: scalars or per-scale lists; a scale with cfg 1 uses the conditional logits only, and
    with cfg 1 everywhere the unconditional half is never computed.
    forced_bits: (B, l, d) bits of the first len(forced_bits) scales, used instead of sampling (all
    scales: teacher forcing through the cached path, for tests; a prefix: the benchmark's question of
    how much the later scales lose); keep_logits: also return every scale's raw head output.
    on_codes: called after each scale (after `on_scale`) with the running f_hat, e.g. to decode a
    preview; it must not modify f_hat, which the next scales keep adding to.
    negative: one negative prompt per sample, the unconditional text of CFG instead of the null text; a
    sample whose row has no tokens keeps the null text (`unconditional_text`).
    """
    K, B = len(schedule), source_BLd.shape[0]
    cfg_k, tau_k = per_scale(cfg, K, "cfg"), per_scale(tau, K, "tau", positive=True)
    if len(generators) != B:
        raise ValueError(f"need one generator per sample: {len(generators)} for {B}")
    use_cfg = any(c != 1 for c in cfg_k)
    if use_cfg:  # rows [cond; uncond]: the uncond text is the negative prompt or the null text
        uncond, null_uncond_B = unconditional_text(text, negative)
        text = TextFeatures.cat([text, uncond])
        null_B = torch.cat([torch.zeros(B, dtype=torch.bool), null_uncond_B])
    else:
        null_B = None
    cond = model.condition(text, null_B)
    cache = model.prefill(cond, source_BLd, schedule)

    out = Generation()
    x_BlC = model.sos(cond)
    for k in range(K):
        h_BlC = model.step(cond, x_BlC, k, schedule, cache)
        rows = slice(None) if cfg_k[k] != 1 else slice(0, B)  # cfg 1: the cond half suffices
        raw = model.logits(h_BlC[rows], cond.cond_BD[rows])
        if keep_logits:
            out.logits.append(raw)
        logits = raw * (1 / tau_k[k])
        if cfg_k[k] != 1:
            logits = cfg_k[k] * logits[:B] + (1 - cfg_k[k]) * logits[B:]
        if forced_bits is not None and k < len(forced_bits):
            bits = forced_bits[k].to(logits.device, torch.int64)
        else:
            bits = sample_bits(logits, generators, top_k, top_p)
        out.bits.append(bits)
        out.f_hat, nxt_Bld = vae.next_scale_input(k, bits, out.f_hat, schedule)
        if nxt_Bld is not None:
            x_BlC = model.embed_scale(nxt_Bld, k + 1)
            x_BlC = x_BlC.repeat(2 if use_cfg else 1, 1, 1)  # (bs, l, C)
        if on_scale is not None and on_scale(k + 1, K) is False:
            raise EditCancelled(k + 1, K)
        if on_codes is not None:
            on_codes(k + 1, K, out.f_hat)
    return out
