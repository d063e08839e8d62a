"""Our rewrites of the ONNX Runtime graph, around onnxscript's ORT fusions (export/ort_graphs.py runs them).

fuse_masked_cross_attention: masked cross-attention -> com.microsoft.MultiHeadAttention (a rule onnxscript lacks);
split_packed_projections: MatMul + Split -> one MatMul per part; unfuse_skip_layer_norm: SkipLayerNormalization ->
Add + LayerNormalization where that is faster on the CPU. The attention rule in detail:

torch exports `scores.masked_fill(~mask[:, None, None, :], finfo.min).softmax(-1) @ v` as

    Reshape/Transpose q, k, v into heads -> MatMul -> Where(Not(Unsqueeze(mask)), fill, scores) -> Softmax
    -> MatMul -> Transpose -> Reshape

onnxscript's SDPA rule only knows an additive mask (Add), so this attention stays unfused: on perceiver-base at
8 x 256 x 512 x 512, with onnxscript's fusions alone, the full-size Where is 15% of the kernel time and the head
transposes another 7% (scripts/fusion_steps.py; docs/fusion-steps-perceiver-base.json). ONNX Runtime's
MultiHeadAttention takes the same boolean mask as a key padding mask (batch, kv_len) and applies it inside its
softmax, with no (batch, heads, q_len, kv_len) tensor for it.

Numerics: masked positions get mask_filter_value instead of finfo.min; both vanish in exp() (0 in float32). A row
with nothing to attend to comes out differently (uniform either way, but over different values): the model zeroes
such rows after the attention (`torch.where(mask.any(-1), out, 0)`), which stays in the graph. The parity gate,
which has a fully-masked-row case, decides whether the fused graph ships.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

# The largest negative fill ONNX Runtime's CPU kernel handles without overflow when it adds the mask to a score.
MASK_FILTER_VALUE = -10000.0


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None and value.producer() is not None and value.producer().op_type == "Constant":
        attr = value.producer().attributes.get("value")
        tensor = attr.value if attr is not None else None
    return None if tensor is None else tensor.numpy()


def _dims(value: ir.Value) -> list | None:
    return None if value.shape is None else list(value.shape)


class MaskedCrossAttention(pattern.RewriteRuleClassBase):
    """(B, S, H*Dh) query and (B, L, H*Dh) key/value with a bool (B, L) mask -> MultiHeadAttention."""

    def pattern(self, op, query, key, value, not_mask, fill, q_shape, k_shape, v_shape, out_shape):
        q_heads = op.Transpose(op.Reshape(query, q_shape, _outputs=["q_bshd"]), perm=[0, 2, 1, 3])
        k_heads_t = op.Transpose(op.Reshape(key, k_shape), perm=[0, 2, 3, 1])
        v_heads = op.Transpose(op.Reshape(value, v_shape), perm=[0, 2, 1, 3])
        scores = op.MatMul(q_heads, k_heads_t)
        probs = op.Softmax(op.Where(not_mask, fill, scores), axis=-1)
        out = op.Transpose(op.MatMul(probs, v_heads), perm=[0, 2, 1, 3])
        return op.Reshape(out, out_shape, _outputs=["out"])

    def check(self, context, query, key, value, not_mask, fill, q_bshd, out, **_):
        result = pattern.MatchResult()
        if self._mask_of(not_mask) is None:
            return result.fail("the mask is not Not(Unsqueeze(mask, [1, 2])) of a bool (batch, kv_len) tensor")
        fill_value = _const(fill)
        if fill_value is None or fill_value.size != 1 or not float(fill_value.reshape(())) <= MASK_FILTER_VALUE:
            return result.fail("the fill is not a constant at or below the mask filter value")
        heads = self._heads(q_bshd)
        if heads is None:
            return result.fail("the number of heads is not known")
        for name, v in (("query", query), ("key", key), ("value", value), ("output", out)):
            dims = _dims(v)
            if dims is None or len(dims) != 3 or not isinstance(dims[2], int) or dims[2] != heads[0] * heads[1]:
                return result.fail(f"{name} is not (batch, length, heads x head size)")
        return result

    def rewrite(self, op, query, key, value, not_mask, q_bshd, **_):
        heads, _head_size = self._heads(q_bshd)
        mask = op.Cast(self._mask_of(not_mask), to=ir.DataType.INT32)
        # The query arrives already scaled (the model multiplies it before the heads split): scale 1.
        return op.MultiHeadAttention(
            query, key, value, None, mask,
            num_heads=heads, scale=1.0, mask_filter_value=MASK_FILTER_VALUE, _domain="com.microsoft",
        )

    @staticmethod
    def _heads(q_bshd: ir.Value) -> tuple[int, int] | None:
        dims = _dims(q_bshd)
        if dims is None or len(dims) != 4 or not all(isinstance(d, int) for d in dims[2:]):
            return None
        return dims[2], dims[3]

    @staticmethod
    def _mask_of(not_mask: ir.Value) -> ir.Value | None:
        node = not_mask.producer()
        if node is None or node.op_type != "Not" or node.domain not in ("", "ai.onnx"):
            return None
        unsqueezed = node.inputs[0].producer()
        if unsqueezed is None or unsqueezed.op_type != "Unsqueeze":
            return None
        axes = _const(unsqueezed.inputs[1]) if len(unsqueezed.inputs) > 1 else None
        mask = unsqueezed.inputs[0]
        if axes is None or sorted(int(a) for a in axes.reshape(-1)) != [1, 2]:
            return None
        if mask.dtype != ir.DataType.BOOL or _dims(mask) is None or len(_dims(mask)) != 2:
            return None
        return mask


def split_packed_projections(model: ir.Model) -> int:
    """MatMul(x, W) -> Split(last axis, equal parts) becomes one MatMul per part with W's columns split.

    The model computes k and v with one Linear (to_kv) and chunks the result; in ONNX Runtime that Split copies the
    whole (batch, length, 2 x inner) product again (8% of the kernel time at 8 x 256 x 512 x 512 once the attention
is fused, docs/fusion-steps-perceiver-base.json). The same GEMM work in two calls, no copy.
    Only weights held as initializers are split, so the graph's numbers do not change.
    """
    graph = model.graph
    count = 0
    for split in [n for n in graph if n.op_type == "Split" and n.domain in ("", "ai.onnx")]:
        matmul = split.inputs[0].producer()
        if matmul is None or matmul.op_type != "MatMul" or len(split.inputs[0].uses()) != 1:
            continue
        weight = matmul.inputs[1]
        w = weight.const_value.numpy() if weight is not None and weight.const_value is not None else None
        if w is None or w.ndim != 2 or not weight.is_initializer():
            continue
        parts = len(split.outputs)
        axis = split.attributes.get_int("axis", 0)
        sizes = _const(split.inputs[1]) if len(split.inputs) > 1 and split.inputs[1] is not None else None
        rank = len(_dims(split.inputs[0]) or [])  # 0: unknown
        if not (axis == -1 or (rank >= 2 and axis == rank - 1)) or w.shape[1] % parts:
            continue
        if sizes is not None and len(set(int(x) for x in sizes.reshape(-1))) != 1:
            continue
        if any(out.is_graph_output() for out in split.outputs):
            continue  # the graph's outputs keep their producers' names: leave this one alone
        new_nodes = []
        for i, (out, columns) in enumerate(zip(split.outputs, np.split(w, parts, axis=1))):
            part = ir.Value(name=f"{weight.name}.part{i}", const_value=ir.tensor(np.ascontiguousarray(columns)))
            graph.register_initializer(part)
            node = ir.Node("", "MatMul", [matmul.inputs[0], part], name=f"{matmul.name}.part{i}")
            new_nodes.append(node)
            if out.type is not None:
                node.outputs[0].type, node.outputs[0].shape = out.type, out.shape
            out.replace_all_uses_with(node.outputs[0])
        graph.insert_before(matmul, new_nodes)
        graph.remove([split, matmul], safe=True)
        if not weight.uses():
            graph.initializers.pop(weight.name, None)
        count += 1
    return count


def unfuse_skip_layer_norm(model: ir.Model) -> int:
    """com.microsoft.SkipLayerNormalization back to Add(s) + LayerNormalization, where its statistics go unused.

    onnxscript fuses residual add + layer norm into SkipLayerNormalization, but ONNX Runtime's CPU kernel for it is
    slower than the two ops it replaces: undoing it takes perceiver-base's optimized graph at 8 x 256 x 512 x 512
    from 1.13x to 1.21x the plain graph (docs/fusion-steps-perceiver-base.json, scripts/fusion_steps.py).
    """
    graph = model.graph
    count = 0
    for node in [n for n in graph if n.op_type == "SkipLayerNormalization" and n.domain == "com.microsoft"]:
        outputs = list(node.outputs) + [None] * (4 - len(node.outputs))
        if any(o is not None and (o.uses() or o.is_graph_output()) for o in outputs[1:3]):
            continue  # mean / inverse std dev are used: keep the fused op
        inputs = list(node.inputs) + [None] * (5 - len(node.inputs))
        x, skip, gamma, beta, bias = inputs[:5]
        if x is None or skip is None or gamma is None:
            continue
        eps = node.attributes.get_float("epsilon", 1e-12)
        new_nodes = []
        total = x
        for term in (bias, skip):  # the kernel's sum: input + skip + bias
            if term is None:
                continue
            add = ir.Node("", "Add", [total, term], name=f"{node.name}.add{len(new_nodes)}")
            new_nodes.append(add)
            total = add.outputs[0]
            total.type, total.shape = x.type, x.shape
        norm = ir.Node("", "LayerNormalization", [total, gamma] + ([beta] if beta is not None else []),
                       attributes=[ir.AttrFloat32("epsilon", eps), ir.AttrInt64("axis", -1)], name=f"{node.name}.norm")
        new_nodes.append(norm)
        norm.outputs[0].type, norm.outputs[0].shape = x.type, x.shape
        graph.insert_before(node, new_nodes)
        if outputs[0] is not None:
            outputs[0].replace_all_uses_with(norm.outputs[0], replace_graph_outputs=True)
        if outputs[3] is not None:
            outputs[3].replace_all_uses_with(total, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        count += 1
    return count


def fuse_masked_cross_attention(model: ir.Model) -> int:
    """Rewrite every masked cross-attention in `model` in place; returns how many."""
    rules = pattern.RewriteRuleSet([MaskedCrossAttention.rule()])
    return rules.apply_to_model(model)
