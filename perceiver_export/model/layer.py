"""The Perceiver layer itself: pre-norm self-attention, cross-attention over concat(k, v), feed-forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm whose statistics are computed in float32 whatever the tensor's dtype.

    In a float16/bfloat16 export this becomes Cast -> LayerNormalization(float32) -> Cast,
    so strongly typed backends (TensorRT 11, TensorRT-RTX) keep the reduction in float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention (heads x dim_head); keys and values come from `context`."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q = self._split_heads(self.to_q(x) * self.scale)
        k, v = (self._split_heads(t) for t in self.to_kv(context).chunk(2, dim=-1))
        # Scores and softmax in float32: the softmax statistics never run in half precision.
        sim = (q @ k.transpose(-1, -2)).float()
        if mask is not None:
            # A finite fill (not -inf) keeps a fully-masked row finite; it is zeroed below.
            sim = sim.masked_fill(~mask[:, None, None, :], torch.finfo(torch.float32).min)
        attn = self.dropout(sim.softmax(dim=-1).to(v.dtype))
        out = (attn @ v).transpose(1, 2).flatten(2)
        out = self.to_out(out)
        if mask is not None:
            # A row with nothing to attend to contributes exactly zero, on every backend,
            # instead of whatever the kernel makes of an all-masked softmax.
            out = torch.where(mask.any(dim=-1)[:, None, None], out, torch.zeros_like(out))
        return out


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__(
            nn.Linear(dim, dim * mult),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim * mult, dim),
            nn.Dropout(dropout),
        )


class PerceiverBlock(nn.Module):
    """One residual block: self-attention over q, cross-attention into concat(k, v), feed-forward."""

    def __init__(self, dim, heads, dim_head, dropout, ff_dropout, ff_mult):
        super().__init__()
        self.self_norm = LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dim_head, dropout)
        self.cross_norm = LayerNorm(dim)
        self.context_norm = LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, dim_head, dropout)
        self.ff_norm = LayerNorm(dim)
        self.ff = FeedForward(dim, ff_mult, ff_dropout)

    def forward(self, q, context, mask=None):
        x = self.self_norm(q)
        q = q + self.self_attn(x, x)
        q = q + self.cross_attn(self.cross_norm(q), self.context_norm(context), mask)
        return q + self.ff(self.ff_norm(q))


class PerceiverLayer(nn.Module):
    """`depth` Perceiver blocks applied to latents q, attending to the context concat(k, v).

    q: (batch, q_len, dim); k: (batch, k_len, dim); v: (batch, v_len, dim);
    mask: optional bool (batch, k_len + v_len), True = attend. Returns q's shape.
    """

    def __init__(self, dim, heads, depth, dim_head=64, dropout=0.1, ff_dropout=0.1, ff_mult=4):
        super().__init__()
        self.blocks = nn.ModuleList(
            PerceiverBlock(dim, heads, dim_head, dropout, ff_dropout, ff_mult) for _ in range(depth)
        )

    def forward(self, q, k, v, mask=None):
        context = torch.cat((k, v), dim=1)
        for block in self.blocks:
            q = block(q, context, mask)
        return q
