"""FLOPs of one forward: the matrix products, 2 FLOPs per multiply-add.

PerceiverLayer's are counted analytically; a user's module's by torch's FLOP counter on the
eager model (it counts the same matrix products). LayerNorm, softmax, GELU, masking and
residual adds are left out (O(tokens x dim), under 1% at the reference sizes); so "achieved
FLOP/s" is GEMM work per second, comparable with a GEMM peak.
"""

from __future__ import annotations

from typing import Mapping


def attention_product_flops(batch: int, q_tokens: int, kv_tokens: int, inner: int) -> int:
    """q @ k^T and attn @ v over all heads: the products between activations, no weight in them."""
    return 2 * batch * 2 * q_tokens * kv_tokens * inner


def attention_flops(batch: int, q_tokens: int, kv_tokens: int, dim: int, inner: int) -> int:
    projections = q_tokens * dim * inner + kv_tokens * dim * 2 * inner + q_tokens * inner * dim  # to_q, to_kv, to_out
    return 2 * batch * projections + attention_product_flops(batch, q_tokens, kv_tokens, inner)


def perceiver_flops(config: Mapping, batch: int, q_len: int, k_len: int, v_len: int) -> int:
    dim, depth = int(config["dim"]), int(config["depth"])
    inner = int(config["heads"]) * int(config.get("dim_head", 64))
    hidden = dim * int(config.get("ff_mult", 4))
    per_block = (
        attention_flops(batch, q_len, q_len, dim, inner)  # self-attention over q
        + attention_flops(batch, q_len, k_len + v_len, dim, inner)  # cross-attention into concat(k, v)
        + 2 * batch * q_len * (dim * hidden + hidden * dim)  # feed-forward
    )
    return depth * per_block


def perceiver_attention_product_flops(config: Mapping, batch: int, q_len: int, k_len: int, v_len: int) -> dict[str, int]:
    """The part of `perceiver_flops` in attention products, self- and cross-attention apart (all blocks)."""
    depth, inner = int(config["depth"]), int(config["heads"]) * int(config.get("dim_head", 64))
    return {"self": depth * attention_product_flops(batch, q_len, q_len, inner),
            "cross": depth * attention_product_flops(batch, q_len, k_len + v_len, inner)}


def counted_flops(model, feeds: Mapping) -> int:
    """Matrix-product FLOPs of `model(*feeds.values())`, counted by torch.utils.flop_counter."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    args = [torch.from_numpy(x) if x.dtype == bool else torch.from_numpy(x.astype("float32")) for x in feeds.values()]
    counter = FlopCounterMode(display=False)
    # The counter has no formula for the CPU flash-attention kernel: scaled_dot_product_attention's
    # math backend runs the same products as bmm, which it counts. The count is the math's, whichever
    # kernel serves it later.
    with counter, torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        model(*args)
    return int(counter.get_total_flops())
