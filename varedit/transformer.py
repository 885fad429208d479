"""The VAREdit transformer: Infinity's bitwise next-scale predictor with the source image in front.

Sequence: [source tokens | SOS | inputs of scales 1..K-1]. Source tokens are the raw VAE
features of the source image at the finest grid; SOS is the pooled text plus `pos_start`; the input of
scale k is the running sum of the codes of scales < k resized to grid k. Every token gets the level
embedding of its scale before block 0 (the source gets the finest scale's, K-1).

Attention pattern: the source attends only to itself; scale k attends to the source and to scales
<= k, except in block 0, where scale k sees the source area-pooled to its own grid instead of the
full source (Scale-Aligned Reference, SAR). The same math runs two ways here: `forward` (teacher
forcing, the training path) and `prefill` + `step` (inference with a KV cache).

Shapes: B batch, L all tokens, l one scale, C width, D condition width (= C), H heads, c head dim,
K scales, h/w grid, T text tokens, d bits per token, V = 2d logits per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AttendFn, Block, CrossAttention
from .compiled import many_graphs
from .config import VAREditConfig, reference_schedule
from .rope import rope_table
from .text import TextFeatures

Schedule = list[tuple[int, int]]


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, in float32 (the official fallback formula)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)) * self.weight


class TextAttentivePool(nn.Module):
    """One learned query per head attends over the text: the SOS content and the global condition."""

    def __init__(self, cfg: VAREditConfig):
        super().__init__()
        self.ca = CrossAttention(cfg, kv_dim=cfg.text_channels, num_heads=cfg.text_pool_heads, pool=True)

    def forward(self, text_BTC: torch.Tensor, mask_B11T: torch.Tensor) -> torch.Tensor:
        return self.ca(None, *self.ca.kv(text_BTC), mask_B11T).squeeze(1)  # (B, D)


class AdaLNHead(nn.Module):
    """Head condition: (scale, shift) from SiLU -> Linear(D, 2C) of the pooled text."""

    def __init__(self, cfg: VAREditConfig):
        super().__init__()
        self.eps = cfg.norm_eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))

    def forward(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD.float()).unflatten(-1, (1, 2, -1)).unbind(2)  # (B, 1, C) each
        return F.layer_norm(h_BLC.float(), h_BLC.shape[-1:], eps=self.eps) * (scale + 1) + shift


@dataclass
class Condition:
    """Text conditioning of one batch, computed once per edit (or per training step)."""

    cond_BD: torch.Tensor  # pooled text: SOS content and head condition
    gss_B16C: torch.Tensor  # shared AdaLN output, added to every block's ada_gss
    text_kv: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # per block: text k, v, mask_B11T


class KVCache:
    """Keys and values of every block for one generation: the source, then each target scale.

    Block 0 keeps the full-resolution source in the same buffer but only ever reads it pooled (SAR).
    The last scale is never cached, since nothing attends to it afterwards.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, n_src: int):
        self.k, self.v = k, v  # (depth, B, H, L_cache, c)
        self.n_src = n_src
        self.len = 0  # filled positions


def _area_pool(t_BHLc: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """Area-resize per-head tokens laid out on a grid (the SAR reference of one scale)."""
    if src_hw == dst_hw:
        return t_BHLc
    B, H, _, c = t_BHLc.shape
    img = t_BHLc.permute(0, 1, 3, 2).reshape(B, H * c, *src_hw)  # (B, H*c, h, w)
    img = F.adaptive_avg_pool2d(img, dst_hw)
    return img.reshape(B, H, c, -1).permute(0, 1, 3, 2)  # (B, H, h'*w', c)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Cosine attention has its temperature inside q already: softmax scale 1."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)


class VAREditTransformer(nn.Module):
    """Infinity with the source in front. `forward` trains (teacher forcing); `condition`, `prefill`,
    `step` and `logits` are the inference steps `sampling.generate` strings together. Module names
    are the official ones, except that blocks are a flat list (see checkpoints.py for the key map)."""

    def __init__(self, cfg: VAREditConfig):
        super().__init__()
        self.cfg = cfg
        C, Ct5 = cfg.width, cfg.text_channels
        # text conditioning
        self.cfg_uncond = nn.Parameter(null_text_init(cfg.text_maxlen, Ct5))  # learned null text
        self.text_norm = RMSNorm(Ct5, eps=cfg.norm_eps)
        self.text_proj_for_sos = TextAttentivePool(cfg)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct5, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        # tokens
        self.pos_start = nn.Parameter(torch.randn(1, 1, C) * math.sqrt(1 / C / 3))
        self.lvl_embed = nn.Embedding(cfg.num_levels, C)
        self.word_embed = nn.Linear(cfg.d_vae, C)
        # backbone and head
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.head_nm = AdaLNHead(cfg)
        self.head = nn.Linear(C, cfg.vocab)
        self._rope: dict[torch.device, torch.Tensor] = {}

    # ---- pieces shared by training and inference -------------------------------------------

    def check_schedule(self, schedule: Schedule) -> None:
        """Refuse a schedule whose RoPE layout `rope` lacks. The table is the square template's, so
        only its prefixes read the positions the checkpoints were trained with; any other schedule
        would run, with wrong source and target positions."""
        square = reference_schedule()[: self.cfg.num_levels]
        grids = [tuple(hw) for hw in schedule]
        if not grids or grids != square[: len(grids)]:
            raise ValueError(
                f"scale schedule {grids} is not supported: RoPE positions exist only for the square "
                f"template's first K grids, K = 1..{len(square)}, i.e. prefixes of {square}"
            )

    def rope(self, start: int, length: int) -> torch.Tensor:
        """cos/sin rows of global token indices start..start+length-1 of the square template's table
        (`check_schedule` says which schedules it fits): (2, length, c/2)."""
        dev = self.pos_start.device
        if dev not in self._rope:
            self._rope[dev] = rope_table(self.cfg.head_dim, reference_schedule()).to(dev)
        return self._rope[dev][:, start : start + length]

    def condition(self, text: TextFeatures, null_B: torch.Tensor | None = None) -> Condition:
        """Text -> pooled condition, shared AdaLN and every block's text keys/values.

        null_B (bool, optional): samples whose text is replaced by the learned null text
        `cfg_uncond[:len]` (same length as the prompt), for CFG and training-time text dropout.
        """
        feats = text.feats_BTC.to(self.cfg_uncond.device, torch.float32)
        n_text = feats.shape[1]
        if n_text > self.cfg.text_maxlen:
            raise ValueError(f"text has {n_text} tokens, more than text_maxlen={self.cfg.text_maxlen}")
        mask_BT = text.mask_BT.to(feats.device)
        if null_B is not None and bool(null_B.any()):
            null = self.cfg_uncond[:n_text].unsqueeze(0).expand_as(feats)
            feats = torch.where((null_B.to(feats.device)[:, None] & mask_BT)[..., None], null, feats)
        feats = self.text_norm(feats)
        mask_B11T = mask_BT[:, None, None, :]
        cond_BD = self.text_proj_for_sos(feats, mask_B11T)
        memory_BTD = self.text_proj_for_ca(feats)
        gss_B16C = self.shared_ada_lin(cond_BD.float()).unflatten(-1, (1, 6, -1))  # (B, 1, 6, C)
        text_kv = [(*blk.ca.kv(memory_BTD), mask_B11T) for blk in self.blocks]
        return Condition(cond_BD, gss_B16C, text_kv)

    def logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Bit logits (B, L, V), float32: logit 2j is bit j = 0, logit 2j+1 is bit j = 1."""
        return self.head(self.head_nm(h_BLC, cond_BD))

    def embed_source(self, source_BLd: torch.Tensor, num_scales: int) -> torch.Tensor:
        return self.word_embed(source_BLd.float()) + self.lvl_embed.weight[num_scales - 1]

    def embed_scale(self, x_Bld: torch.Tensor, k: int) -> torch.Tensor:
        """Input tokens of scale k >= 1 (codes resized to grid k) -> (B, l, C)."""
        return self.word_embed(x_Bld.float()) + self.lvl_embed.weight[k]

    def sos(self, cond: Condition) -> torch.Tensor:
        return (cond.cond_BD.unsqueeze(1) + self.pos_start) + self.lvl_embed.weight[0]  # (B, 1, C)

    def _run_blocks(
        self, x_BLC: torch.Tensor, cond: Condition, rope_2Lc: torch.Tensor, attend: list[AttendFn]
    ) -> torch.Tensor:
        for blk, text_kv, att in zip(self.blocks, cond.text_kv, attend, strict=True):
            x_BLC = blk(x_BLC, cond.gss_B16C, text_kv, rope_2Lc, att)
        return x_BLC

    # ---- training: teacher forcing ---------------------------------------------------------

    def forward(
        self,
        text: TextFeatures,
        source_BLd: torch.Tensor,
        target_BLd: torch.Tensor,
        schedule: Schedule,
        null_text_B: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced bit logits of every target token, (B, sum_k l_k, V).

        source_BLd: raw VAE features of the source at the finest grid (B, h_K*w_K, d).
        target_BLd: inputs of scales 1..K-1 concatenated (B, sum_{k>=1} l_k, d); scale 0 is SOS.
        null_text_B: samples whose text is dropped (replaced by the null text), for CFG training.
        """
        self.check_schedule(schedule)
        K = len(schedule)
        n = [h * w for h, w in schedule]
        n_src = n[-1]
        assert source_BLd.shape[1] == n_src and target_BLd.shape[1] == sum(n) - 1, "token counts"
        cond = self.condition(text, null_text_B)
        tgt_lvl = torch.repeat_interleave(
            torch.arange(1, K, device=target_BLd.device), torch.tensor(n[1:], device=target_BLd.device)
        )
        x_BLC = torch.cat(
            [
                self.embed_source(source_BLd, K),
                self.sos(cond),
                self.word_embed(target_BLd.float()) + self.lvl_embed(tgt_lvl),
            ],
            dim=1,
        )
        # block index of every token: source 0, scale k -> k + 1
        blk_L = torch.repeat_interleave(
            torch.arange(K + 1, device=x_BLC.device), torch.tensor([n_src, *n], device=x_BLC.device)
        )
        causal_LL = blk_L[None, :] <= blk_L[:, None]

        def attend_sar(q, k, v):
            outs = [_sdpa(q[:, :, :n_src], k[:, :, :n_src], v[:, :, :n_src])]
            start = n_src
            for hw, n_k in zip(schedule, n, strict=True):
                k_ref = _area_pool(k[:, :, :n_src], schedule[-1], hw)
                v_ref = _area_pool(v[:, :, :n_src], schedule[-1], hw)
                keys = torch.cat([k_ref, k[:, :, n_src : start + n_k]], dim=2)
                vals = torch.cat([v_ref, v[:, :, n_src : start + n_k]], dim=2)
                outs.append(_sdpa(q[:, :, start : start + n_k], keys, vals))
                start += n_k
            return torch.cat(outs, dim=2)

        attend = [attend_sar] + [lambda q, k, v: _sdpa(q, k, v, causal_LL)] * (self.cfg.depth - 1)
        h_BLC = self._run_blocks(x_BLC, cond, self.rope(0, x_BLC.shape[1]), attend)
        return self.logits(h_BLC[:, n_src:], cond.cond_BD)

    # ---- inference: KV cache ---------------------------------------------------------------

    def compile_inference(self, mode: str | None = None) -> None:
        """Run every block's token-wise parts under torch.compile (in its ``mode``) from now on
        (`Block`, static shapes: graphs per token count, shared by the blocks), in `prefill` and `step`
        with room for a graph per scale, batch size and resolution (`compiled.many_graphs`)."""
        for blk in self.blocks:
            blk.compile_inference(mode)
        self.prefill = many_graphs(self.prefill)  # type: ignore[method-assign]
        self.step = many_graphs(self.step)  # type: ignore[method-assign]

    def new_cache(self, batch: int, schedule: Schedule) -> KVCache:
        n = [h * w for h, w in schedule]
        length = n[-1] + sum(n[:-1])  # source + every scale but the last
        blk = self.blocks[0].sa
        shape = (self.cfg.depth, batch, self.cfg.num_heads, length, self.cfg.head_dim)
        k = torch.empty(shape, dtype=blk.mat_qkv.weight.dtype, device=self.pos_start.device)
        return KVCache(k, torch.empty_like(k), n[-1])

    def prefill(self, cond: Condition, source_BLd: torch.Tensor, schedule: Schedule) -> KVCache:
        """Run the source through every block to fill the cache. Rows of `cond` may be 2x the
        source batch ([cond; uncond] for CFG): the source is repeated to match."""
        self.check_schedule(schedule)
        bs = cond.cond_BD.shape[0]
        x_BLC = self.embed_source(source_BLd, len(schedule))
        x_BLC = x_BLC.repeat(bs // x_BLC.shape[0], 1, 1)  # (bs, n_src, C)
        cache = self.new_cache(bs, schedule)
        n_src = cache.n_src

        def attend(layer: int) -> AttendFn:
            def fn(q, k, v):
                cache.k[layer, :, :, :n_src] = k
                cache.v[layer, :, :, :n_src] = v
                return _sdpa(q, k, v)

            return fn

        rope = self.rope(0, n_src)
        for i, (blk, text_kv) in enumerate(zip(self.blocks[:-1], cond.text_kv, strict=False)):
            x_BLC = blk(x_BLC, cond.gss_B16C, text_kv, rope, attend(i))
        # the source's output of the last block is never used: only its keys and values are needed
        _, k, v = self.blocks[-1].qkv(x_BLC, cond.gss_B16C, rope)
        cache.k[-1, :, :, :n_src], cache.v[-1, :, :, :n_src] = k, v
        cache.len = n_src
        return cache

    def step(
        self, cond: Condition, x_BlC: torch.Tensor, k: int, schedule: Schedule, cache: KVCache
    ) -> torch.Tensor:
        """Hidden states of scale k, (B, l_k, C), given its embedded input (SOS for k = 0)."""
        n_src, pos = cache.n_src, cache.len
        last = k == len(schedule) - 1
        hw = schedule[k]

        def attend(layer: int) -> AttendFn:
            def fn(q, kk, vv):
                K_, V_ = cache.k[layer], cache.v[layer]
                if last:  # nothing reads the last scale later: attend without storing it
                    keys, vals = torch.cat([K_[:, :, :pos], kk], 2), torch.cat([V_[:, :, :pos], vv], 2)
                else:
                    K_[:, :, pos : pos + kk.shape[2]] = kk
                    V_[:, :, pos : pos + vv.shape[2]] = vv
                    keys, vals = K_[:, :, : pos + kk.shape[2]], V_[:, :, : pos + vv.shape[2]]
                if layer == 0:  # SAR: the source pooled to this scale's grid, then the targets
                    ref_k = _area_pool(keys[:, :, :n_src], schedule[-1], hw)
                    ref_v = _area_pool(vals[:, :, :n_src], schedule[-1], hw)
                    keys = torch.cat([ref_k, keys[:, :, n_src:]], 2)
                    vals = torch.cat([ref_v, vals[:, :, n_src:]], 2)
                return _sdpa(q, keys, vals)

            return fn

        h_BlC = self._run_blocks(
            x_BlC, cond, self.rope(pos, x_BlC.shape[1]), [attend(i) for i in range(self.cfg.depth)]
        )
        cache.len = pos + x_BlC.shape[1]
        return h_BlC


def null_text_init(rows: int, channels: int) -> torch.Tensor:
    """The official initial null-text table: a truncated normal (std 1.2, cut at +-2) from a CPU
    generator seeded 0, divided by sqrt(channels). Its rows also complete a checkpoint's shorter
    table, as in the official loader (not zeros)."""
    t = torch.empty(rows, channels)
    nn.init.trunc_normal_(t, std=1.2, a=-2.0, b=2.0, generator=torch.Generator().manual_seed(0))
    return t / channels**0.5
