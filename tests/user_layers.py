"""Small user modules for tests/test_user_modules.py (each breaks the call contract in one known way) and for
tests/test_serve.py (a slow, sometimes failing backend); importable as `tests.user_layers` from the repository root."""

from __future__ import annotations

import time

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


class Sleepy(nn.Module):
    """A slow backend for the server's overload, timeout and shutdown tests: each eager call sleeps `ms`, and a
    batch whose q starts with 999 fails, as a backend error would (both only outside export's tracing)."""

    def __init__(self, dim: int = 32, ms: int = 100):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.ms = ms

    def forward(self, q, k, v, mask=None):
        if not torch.compiler.is_exporting():
            if bool((q[:, 0, 0] == 999).any()):
                raise RuntimeError("simulated backend failure on this batch")
            time.sleep(self.ms / 1e3)
        return self.proj(q) + k.mean(1, keepdim=True) - v.mean(1, keepdim=True)
