"""Our rewrites in the optimized graph: masked cross-attention -> MultiHeadAttention, packed projections split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir

from perceiver_export import runtime
from perceiver_export.export.ort_rewrites import fuse_masked_cross_attention, split_packed_projections


def test_optimized_graph_has_no_unfused_attention_left(tiny_fp32):
    depth = tiny_fp32.manifest.model_config["depth"]
    entry = tiny_fp32.manifest.graphs["optimized"]
    assert entry["fusions"]["masked_cross_attention"] == depth
    assert entry["fusions"]["split_projections"] == 2 * depth  # to_kv of the self- and the cross-attention
    ops = Counter(n.op_type for n in onnx.load(str(tiny_fp32.directory / entry["file"])).graph.node)
    assert ops["MultiHeadAttention"] == 2 * depth
    assert ops["Softmax"] == ops["Transpose"] == ops["Split"] == ops["Not"] == 0
    assert ops["Where"] == depth  # only the zeroing of rows with nothing to attend to, on (batch, q_len, dim)
    # SkipLayerNormalization is fused by onnxscript, then undone (its CPU kernel is slower than Add + LayerNorm).
    assert entry["fusions"]["skip_layer_normalization_unfused"] == entry["fusions"]["skip_layer_normalization"] > 0
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] >= 3 * depth


def test_fused_graph_matches_the_plain_one_on_masked_and_fully_masked_rows(tiny_fp32):
    plain = runtime.load(tiny_fp32.directory, graph="plain")
    fused = runtime.load(tiny_fp32.directory, graph="optimized")
    rng = np.random.default_rng(3)
    for b, q, k, v in [(1, 1, 1, 1), (4, 16, 24, 24), (3, 5, 7, 2)]:
        feeds = {"q": rng.standard_normal((b, q, 32), dtype=np.float32),
                 "k": rng.standard_normal((b, k, 32), dtype=np.float32),
                 "v": rng.standard_normal((b, v, 32), dtype=np.float32),
                 "mask": rng.random((b, k + v)) < 0.6}
        feeds["mask"][0] = False  # the first sequence attends to nothing
        ref, out = plain.infer(feeds), fused.infer(feeds)
        assert out.shape == ref.shape == (b, q, 32)
        assert np.abs(out - ref).max() < 1e-5, (b, q, k, v)


def test_rule_leaves_an_attention_it_cannot_prove_alone(tiny_fp32):
    """A positive fill (not a mask) must not become a key padding mask: the rewrite's checks refuse it."""
    model = onnx.load(str(tiny_fp32.directory / "model.onnx"))
    where = next(n for n in model.graph.node if n.op_type == "Where" and n.input[2].startswith("matmul"))
    fill = next(i for i in model.graph.initializer if i.name == where.input[1])
    fill.CopyFrom(onnx.numpy_helper.from_array(np.array(1.0, np.float32), fill.name))
    assert fuse_masked_cross_attention(ir.from_proto(model)) == 0
    untouched = ir.from_proto(onnx.load(str(tiny_fp32.directory / "model.onnx")))
    assert fuse_masked_cross_attention(untouched) == tiny_fp32.manifest.model_config["depth"]


def test_split_of_a_computed_weight_is_left_alone():
    """Only a constant weight can be cut in two; a MatMul of two activations followed by Split stays as it is."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Split", ["y"], ["a", "b"], axis=-1, num_outputs=2),
         helper.make_node("Relu", ["a"], ["ra"]), helper.make_node("Relu", ["b"], ["rb"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]), helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("ra", "rb")],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert split_packed_projections(model) == 0
    w = np.arange(24, dtype=np.float32).reshape(4, 6)
    graph.input.pop()
    graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert split_packed_projections(model) == 1
    proto = ir.to_proto(model)
    assert [n.op_type for n in proto.graph.node] == ["MatMul", "MatMul", "Relu", "Relu"]
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 4), dtype=np.float32)
    a, b = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(np.concatenate([a, b], axis=1), np.maximum(x @ w, 0), rtol=1e-6)
