"""Graphs derived from model.onnx for ONNX Runtime: an optimized one (fusions) and an int8 one (int8_routes.py).

model.onnx stays the portable graph (TensorRT, C++, other runtimes). These variants are written
into the artifact only after they pass the same parity grid (see export/artifact_builder.py).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx

from .ort_rewrites import fuse_masked_cross_attention, split_packed_projections, unfuse_skip_layer_norm
from .onnx_graph import save_onnx

OPTIMIZED = "optimized"
INT8 = "int8"
GRAPH_FILES = {OPTIMIZED: "model.ort.onnx", INT8: "model.int8.onnx"}


def write_optimized_graph(src: Path, dst: Path) -> dict:
    """onnxscript's ORT fusions (MultiHeadAttention, SkipLayerNormalization, BiasGelu, ...) and two of ours.

    Ours (export/ort_rewrites.py): the masked cross-attention becomes MultiHeadAttention with a key padding
    mask before onnxscript's fusions run (they only know additive masks); after them, packed projections followed
    by a Split become one MatMul per part, and SkipLayerNormalization goes back to Add + LayerNormalization (its
    CPU kernel is several times slower than the two). Returns the manifest entry (fusions applied). The graph uses
    com.microsoft ops: onnxruntime only.
    """
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("onnxscript").setLevel(logging.ERROR)
        masked = fuse_masked_cross_attention(model)
        optimized, counts = optimize_for_ort(model, clear_metadata=True)
        counts = {**counts, "masked_cross_attention": masked, "split_projections": split_packed_projections(optimized),
                  "skip_layer_normalization_unfused": unfuse_skip_layer_norm(optimized)}
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
