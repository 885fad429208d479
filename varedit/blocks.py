"""Building blocks of the Infinity transformer as VAREdit uses it.

Module and parameter names follow the official checkpoint inside a block (`sa.mat_qkv`, `ca.mat_kv`,
`ffn.fc1`, `ada_gss`, ...), so loading only has to flatten `block_chunks.{c}.module.{j}`.

Precision: the residual stream, every LayerNorm/AdaLN and RoPE are float32; the linear layers run in
the block's weight dtype (float32 on CPU, bfloat16 on CUDA), inputs are cast to it on entry.
Cross-attention rounds q, k, v and its output to bfloat16 even in a float32 model, because the
official code always ran flash-attn there, which takes half precision only; in a bfloat16 model
the rounding is a no-op (varedit/NOTES.md says what this means for comparisons).

Shapes: B batch, L tokens, C width, H heads, c head dim, T text tokens, D condition width (= C).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .compiled import compiled
from .config import VAREditConfig
from .ops import Linear, linear, linear_gelu
from .rope import apply_rope

# attend(q_BHLc, k_BHLc, v_BHLc) -> o_BHLc: the self-attention pattern, chosen by the caller
# (teacher forcing, source prefill or a cached scale step).
AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
MAX_SCALE_MUL = math.log(100)  # cap of the learned cosine-attention temperature


def ada_layer_norm(x_BLC: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine, then x * (1 + scale) + shift, all in float32."""
    x = F.layer_norm(x_BLC.float(), x_BLC.shape[-1:], eps=eps)
    return x * (scale + 1) + shift


def _bf16_round(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype)


class FFN(nn.Module):
    def __init__(self, cfg: VAREditConfig):
        super().__init__()
        self.fc1 = Linear(cfg.width, cfg.ffn_hidden)
        self.fc2 = Linear(cfg.ffn_hidden, cfg.width)

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        x = x_BLC.to(self.fc1.weight.dtype)
        return self.fc2(linear_gelu(x, self.fc1.weight, self.fc1.bias))


class SelfAttention(nn.Module):
    """Cosine attention with a learned per-head temperature and 2D RoPE; the pattern is external."""

    def __init__(self, cfg: VAREditConfig):
        super().__init__()
        C, H = cfg.width, cfg.num_heads
        self.num_heads, self.head_dim = H, cfg.head_dim
        self.mat_qkv = Linear(C, 3 * C, bias=False)  # rows: Q, K, V; head h owns rows h*c:(h+1)*c
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))  # K has no bias
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), math.log(4.0)))
        self.proj = Linear(C, C)

    def qkv(self, x_BLC: torch.Tensor, rope_2Lc: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Project, normalise q and k (q times the temperature), rotate them. Returns (B, H, L, c) x3."""
        B, L, _ = x_BLC.shape
        w = self.mat_qkv.weight
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = linear(x_BLC.to(w.dtype), w, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, c) each
        scale_mul = self.scale_mul_1H11.float().clamp_max(MAX_SCALE_MUL).exp()
        q = F.normalize(q.float(), dim=-1) * scale_mul
        k = F.normalize(k.float(), dim=-1)
        q, k = apply_rope(q, rope_2Lc), apply_rope(k, rope_2Lc)
        return q.to(v.dtype), k.to(v.dtype), v

    def out(self, o_BHLc: torch.Tensor) -> torch.Tensor:
        B, H, L, c = o_BHLc.shape
        return self.proj(o_BHLc.transpose(1, 2).reshape(B, L, H * c))  # (B, L, C)


class CrossAttention(nn.Module):
    """Attention from image tokens (or one learned query per head, `pool=True`) to text tokens."""

    def __init__(self, cfg: VAREditConfig, kv_dim: int, num_heads: int, pool: bool = False):
        super().__init__()
        C = cfg.width
        self.num_heads, self.head_dim = num_heads, C // num_heads
        if pool:
            self.mat_q = nn.Parameter(torch.randn(1, num_heads, self.head_dim) * 0.02)
        else:
            self.mat_q = Linear(C, C)
        self.mat_kv = Linear(kv_dim, 2 * C, bias=False)  # rows: K, V
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.proj = Linear(C, C)

    def kv(self, text_BTC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text keys and values, (B, H, T, c) each, rounded to bfloat16 precision."""
        B, T, _ = text_BTC.shape
        w = self.mat_kv.weight
        bias = torch.cat([torch.zeros_like(self.v_bias), self.v_bias])
        kv = linear(text_BTC.to(w.dtype), w, bias).view(B, T, 2, self.num_heads, self.head_dim)
        k, v = _bf16_round(kv).permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def query(self, x_BLC: torch.Tensor) -> torch.Tensor:
        """Queries of image tokens, (B, H, L, c), rounded to bfloat16 precision."""
        w = self.mat_q.weight
        q = self.mat_q(x_BLC.to(w.dtype)).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        return _bf16_round(q)

    def out(self, o_BHLc: torch.Tensor) -> torch.Tensor:
        """Attention output rounded to bfloat16 precision, heads merged, projected: (B, L, C)."""
        return self.proj(_bf16_round(o_BHLc).transpose(1, 2).flatten(2))

    def forward(
        self, x_BLC: torch.Tensor | None, k_BHTc: torch.Tensor, v_BHTc: torch.Tensor, mask_B11T: torch.Tensor
    ) -> torch.Tensor:
        """Attend to each sample's own text (mask_B11T: True = real token). x None: pooling."""
        if x_BLC is None:
            q = self.mat_q.to(k_BHTc.dtype).expand(k_BHTc.shape[0], -1, -1).unsqueeze(2)  # (B, H, 1, c)
            q = _bf16_round(q)
        else:
            q = self.query(x_BLC)
        return self.out(F.scaled_dot_product_attention(q, k_BHTc, v_BHTc, attn_mask=mask_B11T))


class Block(nn.Module):
    """AdaLN self-attention, plain cross-attention to the text, AdaLN FFN.

    The two attentions run between three token-wise parts (`attn_qkv`, `attn_residual`,
    `ffn_residual`): the caller's self-attention pattern reads and writes a KV cache, and the text
    length varies per batch, so under torch.compile (`compile_inference`) only those parts are
    compiled, each graph shared by every block and fixed by the token count alone.
    """

    def __init__(self, cfg: VAREditConfig):
        super().__init__()
        self.eps = cfg.norm_eps
        # per-block offset of the shared AdaLN output
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, cfg.width) / cfg.width**0.5)
        self.sa = SelfAttention(cfg)
        self.ca = CrossAttention(cfg, kv_dim=cfg.width, num_heads=cfg.num_heads)
        self.ca_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.ffn = FFN(cfg)

    def compile_inference(self, mode: str | None = None) -> None:
        """Run the token-wise parts under torch.compile (`compiled.compiled`) from now on."""
        self.attn_qkv = compiled(self.attn_qkv, mode)  # type: ignore[method-assign]
        self.attn_residual = compiled(self.attn_residual, mode)  # type: ignore[method-assign]
        self.ffn_residual = compiled(self.ffn_residual, mode)  # type: ignore[method-assign]

    def qkv(
        self, x_BLC: torch.Tensor, gss_B16C: torch.Tensor, rope_2Lc: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Self-attention q, k, v of the stream: all a source token contributes to the last block."""
        _, _, scale1, _, shift1, _ = (self.ada_gss + gss_B16C).unbind(2)
        return self.attn_qkv(x_BLC, scale1, shift1, rope_2Lc)

    def attn_qkv(
        self, x_BLC: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, rope_2Lc: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """AdaLN, then self-attention q, k, v: (B, H, L, c) each."""
        return self.sa.qkv(ada_layer_norm(x_BLC, scale, shift, self.eps), rope_2Lc)

    def attn_residual(
        self, x_BLC: torch.Tensor, o_BHLc: torch.Tensor, gamma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The self-attention output added to the stream, and the cross-attention queries of the result."""
        x = x_BLC + self.sa.out(o_BHLc).float() * gamma
        ln = self.ca_norm
        return x, self.ca.query(
            F.layer_norm(x, ln.normalized_shape, ln.weight.float(), ln.bias.float(), ln.eps)
        )

    def ffn_residual(
        self,
        x_BLC: torch.Tensor,
        o_BHLc: torch.Tensor,
        gamma: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor,
    ) -> torch.Tensor:
        """The cross-attention output added to the stream, then the AdaLN FFN's."""
        x = x_BLC + self.ca.out(o_BHLc).float()
        return x + self.ffn(ada_layer_norm(x, scale, shift, self.eps)).float() * gamma

    def forward(
        self,
        x_BLC: torch.Tensor,
        gss_B16C: torch.Tensor,
        text_kv: tuple[torch.Tensor, ...],
        rope_2Lc: torch.Tensor,
        attend: AttendFn,
    ) -> torch.Tensor:
        """x_BLC: float32 stream; gss_B16C: shared AdaLN output; text_kv: (k, v, mask) of this block."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + gss_B16C).unbind(2)  # (B, 1, C)
        x, q_BHLc = self.attn_residual(x_BLC, attend(*self.attn_qkv(x_BLC, scale1, shift1, rope_2Lc)), gamma1)
        k_BHTc, v_BHTc, mask_B11T = text_kv
        o_BHLc = F.scaled_dot_product_attention(q_BHLc, k_BHTc, v_BHTc, attn_mask=mask_B11T)
        return self.ffn_residual(x, o_BHLc, gamma2, scale2, shift2)
