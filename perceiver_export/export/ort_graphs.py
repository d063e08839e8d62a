"""Graphs derived from model.onnx for ONNX Runtime: an optimized one (fusions) and an int8 one (int8_routes.py).

model.onnx stays the portable graph (TensorRT, C++, other runtimes). These variants are written
into the artifact only after they pass the same parity grid (see export/artifact_builder.py).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Callable

import onnx

from .ort_rewrites import fuse_masked_cross_attention, split_packed_projections, unfuse_skip_layer_norm
from .onnx_graph import save_onnx

OPTIMIZED = "optimized"
INT8 = "int8"
GRAPH_FILES = {OPTIMIZED: "model.ort.onnx", INT8: "model.int8.onnx"}


@contextlib.contextmanager
def _quiet():
    """onnxscript's rewriter warns and logs about every pattern it tries; an export prints none of it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("onnxscript").setLevel(logging.ERROR)
        yield


def onnxscript_fusions(model):
    """onnxscript's ORT fusions alone (MultiHeadAttention, SkipLayerNormalization, BiasGelu, ...): (fused model, counts)."""
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    with _quiet():
        return optimize_for_ort(model, clear_metadata=True)


def rewrite_for_ort(model, after_step: Callable[[str, object], None] = lambda name, model: None):
    """The optimized graph's steps, in order, on an onnx_ir model: (rewritten model, counts of what each did).

    Ours (export/ort_rewrites.py) around onnxscript's fusions: the masked cross-attention becomes
    MultiHeadAttention with a key padding mask before onnxscript's fusions run (they only know additive masks);
    after them, packed projections followed by a Split become one MatMul per part, and SkipLayerNormalization goes
    back to Add + LayerNormalization (its CPU kernel is slower than the two). after_step(name, model) sees the model
    after each step (scripts/fusion_steps.py times them).
    """
    with _quiet():
        masked = fuse_masked_cross_attention(model)
        model, counts = onnxscript_fusions(model)
        after_step("+ masked cross-attention", model)
        split = split_packed_projections(model)
        after_step("+ split projections", model)
        unfused = unfuse_skip_layer_norm(model)
        after_step("+ SkipLayerNorm undone", model)
    return model, {**counts, "masked_cross_attention": masked, "split_projections": split,
                   "skip_layer_normalization_unfused": unfused}


def write_optimized_graph(src: Path, dst: Path) -> dict:
    """model.onnx through rewrite_for_ort, written beside it. Returns the manifest entry (fusions applied). The graph
    uses com.microsoft ops: onnxruntime only.
    """
    import onnx_ir as ir

    optimized, counts = rewrite_for_ort(ir.load(str(src)))
    # Same layout as model.onnx: one file, or the graph plus dst.data (onnx_ir streams external tensors itself).
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in onnx.load(str(src), load_external_data=False).graph.initializer):
        data = dst.name + ".data"
        ir.save(optimized, dst, external_data=data, size_threshold_bytes=1024)
        files = [dst, dst.parent / data]
    else:
        files = save_onnx(ir.to_proto(optimized), dst, "never")
    return {
        "file": dst.name,
        "files": [f.name for f in files],
        "producer": "onnxscript.rewriter.ort_fusions.optimize_for_ort + perceiver_export.export.ort_rewrites",
        "fusions": {k: v for k, v in sorted(counts.items()) if v},
    }
