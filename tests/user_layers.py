"""Small user modules for tests/test_user_modules.py: each breaks the call contract in one known way
(importable as `user_layers` because pytest puts tests/ on sys.path; subprocesses get PYTHONPATH)."""

from __future__ import annotations

import torch
from torch import nn


class _Attend(nn.Module):
    def __init__(self, dim: int = 32):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)


class NoMask(_Attend):
    """forward(q, k, v): the contract gets no mask input."""

    def forward(self, q, k, v):
        context = torch.cat([k, v], 1)
        return q + self.attn(q, context, context, need_weights=False)[0]


class FixedLatents(_Attend):
    """Learned positions for exactly 8 latents: q_len is specialised to 8."""

    def __init__(self, dim: int = 32, latents: int = 8):
        super().__init__(dim)
        self.pos = nn.Parameter(torch.randn(latents, dim))

    def forward(self, q, k, v, mask=None):
        context = torch.cat([k, v], 1)
        return self.attn(q + self.pos, context, context, need_weights=False)[0]


class ShortContext(_Attend):
    """Positions for at most 12 k tokens: k_len narrowed to [1, 12]."""

    def __init__(self, dim: int = 32, max_k: int = 12):
        super().__init__(dim)
        self.pos = nn.Parameter(torch.randn(max_k, dim))

    def forward(self, q, k, v, mask=None):
        context = torch.cat([k + self.pos[: k.shape[1]], v], 1)
        return self.attn(q, context, context, need_weights=False)[0]


class PairedKV(_Attend):
    """Uses k as keys and v as values: v_len tied to k_len."""

    def forward(self, q, k, v, mask=None):
        return self.attn(q, k, v, need_weights=False)[0]


class TwoOutputs(_Attend):
    def forward(self, q, k, v, mask=None):
        context = torch.cat([k, v], 1)
        return self.attn(q, context, context)


class TwoArguments(nn.Module):
    def forward(self, q, context):
        return q


class Exploding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        raise ValueError(f"dim {dim} is not a multiple of 7")


class Unsized(nn.Module):
    """Its constructor does not say the feature size: --dim must."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.proj = nn.Linear(width, width)

    def forward(self, q, k, v, mask=None):
        return self.proj(q)
