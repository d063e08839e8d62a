"""Example user modules with the Perceiver call contract, written the way third-party layers are.

They are not ours to shape: their constructors and outputs differ from PerceiverLayer's, and
`python -m perceiver_export onnx --model models.custom_layers:LatentCrossAttention` exports them
all the same (README "Exporting your own module"; tests/test_user_modules.py).
"""

from __future__ import annotations

import torch
from torch import nn


class LatentCrossAttention(nn.Module):
    """Latents attend to concat(k, v); k and v may be wider than the latents (context_dim).

    Output (batch, q_len, query_dim). A masked position gets the most negative finite score,
    so a fully-masked row averages the context instead of producing NaN.
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 4, dim_head: int = 16):
        super().__init__()
        context_dim = context_dim or query_dim
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head**-0.5
        self.norm_q, self.norm_ctx = nn.LayerNorm(query_dim), nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)

    def forward(self, latents, first, second, context_mask=None):
        context = self.norm_ctx(torch.cat([first, second], dim=1))
        b, n, h = latents.shape[0], latents.shape[1], self.heads
        q = self.to_q(self.norm_q(latents)).view(b, n, h, -1).transpose(1, 2)
        k, v = (t.view(b, context.shape[1], h, -1).transpose(1, 2) for t in self.to_kv(context).chunk(2, dim=-1))
        scores = (q @ k.transpose(-1, -2)) * self.scale
        if context_mask is not None:
            scores = scores.masked_fill(~context_mask[:, None, None, :], -torch.finfo(scores.dtype).max)
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return latents + self.to_out(out)


class ContextEncoder(nn.Module):
    """Updates the context, not the latents: output (batch, k_len + v_len, dim).

    It takes a mask and ignores it, as many encoders do: the graph keeps `mask` as an input
    that changes nothing.
    """

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, latents, k, v, mask=None):
        context = torch.cat([k, v], dim=1)
        context = context + self.attn(context, latents, latents, need_weights=False)[0]
        return context + self.ff(context)
