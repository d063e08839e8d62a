"""Where the fp32 time goes at one point, and the most ONNX Runtime's CPU kernels could give there.

    .venv/bin/python scripts/fp32_ceiling.py ARTIFACT_DIR [--graph NAME] [--point B,Q,K,V] [--threads 2]
                                             [--repeats 9] [--out ceiling.json]

For a PerceiverLayer artifact, at one point (default: the bench grid's largest):

1. the in-run float32 GEMM peak (bench's yardstick, bench/measure.py);
2. the graph (default: the manifest's default graph) timed (median of --repeats) and profiled with ONNX Runtime's
   profiler; each node of the graph ONNX Runtime actually runs is counted as a weight GEMM (MatMul, Gemm or
   FusedMatMul with an initializer operand), attention (MultiHeadAttention, or a MatMul between activations), or
   other (LayerNormalization, BiasGelu, Add, Where, ...);
3. ONNX Runtime's attention kernels alone at the model's attention shapes: com.microsoft.MultiHeadAttention with
   the key padding mask (what the cross-attention runs) and without a mask (its flash-attention path); ONNX's own
   Attention (opset 23) with the mask and without; the mask carried into MultiHeadAttention's flash path as a 65th
   q/k column per head (with the Pad and Concat that build it); and the attention's bare products q @ k^T and
   attn @ v as batched MatMuls (MLAS's GEMM rate on those shapes, with the softmax and the mask for free);
4. bounds on the fraction of the peak: the weight GEMMs at their in-graph time plus the attention at each of those
   rates, with every other op free ("bounds") or at its measured time ("bounds_with_other_ops").

The profiler slows what it times (most of all the small ops), so its kernel times are scaled to the unprofiled
median: each kind keeps its share of the profile. The raw profile is in the JSON too.

The bare-product bound is what no ONNX Runtime kernel reaches: a fused attention kernel whose softmax costs nothing.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from perceiver_export.artifact.manifest import read_manifest
from perceiver_export.bench.flops import perceiver_attention_product_flops, perceiver_flops
from perceiver_export.bench.grid import default_grid
from perceiver_export.bench.measure import gemm_peak_gflops
from perceiver_export.bench.run import point_inputs
from perceiver_export.machine import cpu_name, cpu_simd_flags
from perceiver_export.model.module_ref import OURS

WEIGHT_GEMM_OPS = {"MatMul", "Gemm", "FusedMatMul"}
ATTENTION_OPS = {"MultiHeadAttention", "Attention"}


def session(model: bytes | str, threads: int, **options) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    for key, value in options.items():
        setattr(so, key, value)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def median_seconds(s: ort.InferenceSession, feeds: dict, repeats: int) -> float:
    s.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        s.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def node_kinds(optimized: Path) -> dict[str, str]:
    """Node name -> "weight GEMM" / "attention" / "other", over the graph ONNX Runtime runs after its own fusions."""
    model = onnx.load(str(optimized), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    kinds = {}
    for node in model.graph.node:
        if node.op_type in ATTENTION_OPS:
            kinds[node.name] = "attention"
        elif node.op_type in WEIGHT_GEMM_OPS:
            kinds[node.name] = "weight GEMM" if any(x in weights for x in node.input[:2]) else "attention"
        else:
            kinds[node.name] = "other"
    return kinds


def profile(graph: Path, feeds: dict, threads: int, tmp: Path, runs: int = 3) -> tuple[dict[str, float], dict[str, float]]:
    """Kernel milliseconds per run by kind, and by op type."""
    optimized = tmp / "ort-optimized.onnx"
    s = session(str(graph), threads, enable_profiling=True, profile_file_prefix=str(tmp / "profile"),
                optimized_model_filepath=str(optimized))
    s.run(None, feeds)  # warm-up, profiled too: dropped below
    for _ in range(runs):
        s.run(None, feeds)
    events = json.loads(Path(s.end_profiling()).read_text())
    kinds = node_kinds(optimized)
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(nodes) // (runs + 1)
    by_kind, by_op = collections.Counter(), collections.Counter()
    for e in nodes[per_run:]:
        name, op = e["name"][: -len("_kernel_time")], e["args"]["op_name"]
        by_kind[kinds.get(name, "attention" if op in ATTENTION_OPS else "other")] += e["dur"] / 1e3 / runs
        by_op[op] += e["dur"] / 1e3 / runs
    return dict(by_kind), dict(by_op.most_common())


def attention_kernels(batch: int, q_len: int, kv_len: int, heads: int, head: int, threads: int, repeats: int,
                      masked: bool) -> dict[str, float]:
    """Seconds of ONNX Runtime's attention kernels alone at one attention shape."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((batch, q_len, heads * head), dtype=np.float32) * head**-0.5
    k, v = (rng.standard_normal((batch, kv_len, heads * head), dtype=np.float32) for _ in "kv")
    mask = (rng.random((batch, kv_len)) < 0.8).astype(np.int32)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]

    def mha_session(with_mask: bool) -> tuple[ort.InferenceSession, dict]:
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, x.shape) for n, x in (("q", q), ("k", k), ("v", v))]
        names, feeds = ["q", "k", "v"], {"q": q, "k": k, "v": v}
        if with_mask:
            inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT32, mask.shape))
            names += ["", "mask"]
            feeds["mask"] = mask
        node = helper.make_node("MultiHeadAttention", names, ["out"], domain="com.microsoft", num_heads=heads, scale=1.0)
        graph = helper.make_graph([node], "mha", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
        return session(helper.make_model(graph, opset_imports=opsets).SerializeToString(), threads), feeds

    def mha(with_mask: bool) -> float:
        return median_seconds(*mha_session(with_mask), repeats)

    def matches_the_masked_kernel(s: ort.InferenceSession, feeds: dict) -> ort.InferenceSession:
        reference, reference_feeds = mha_session(True)
        np.testing.assert_allclose(s.run(None, feeds)[0], reference.run(None, reference_feeds)[0], rtol=1e-4, atol=1e-5)
        return s

    def batched_matmul(a_shape: tuple, b_shape: tuple) -> float:
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])], "bmm",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape), helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape)],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)])
        feeds = {"a": rng.standard_normal(a_shape, dtype=np.float32), "b": rng.standard_normal(b_shape, dtype=np.float32)}
        return median_seconds(session(helper.make_model(graph, opset_imports=opsets).SerializeToString(), threads), feeds, repeats)

    def mask_as_column() -> float:
        """The key padding mask carried into the flash path as one more q/k column per head: q gets 1, k gets 0 where
        the mask attends and -10000 where it does not, so q'.k' = q.k + the mask's bias. Timed with the ops that build
        the 65-wide q and k; checked against the masked kernel first."""
        ints = lambda name, values: helper.make_tensor(name, TensorProto.INT64, [len(values)], values)  # noqa: E731
        scalar = lambda name, value: helper.make_tensor(name, TensorProto.FLOAT, [], [value])  # noqa: E731
        nodes = [
            helper.make_node("Reshape", ["q", "heads"], ["q4"]), helper.make_node("Pad", ["q4", "pad", "one"], ["qp"]),
            helper.make_node("Reshape", ["qp", "wide"], ["qw"]), helper.make_node("Reshape", ["k", "heads"], ["k4"]),
            helper.make_node("Where", ["mask", "zero", "filter"], ["bias"]), helper.make_node("Unsqueeze", ["bias", "axes"], ["b4"]),
            helper.make_node("Tile", ["b4", "per_head"], ["bt"]), helper.make_node("Concat", ["k4", "bt"], ["kc"], axis=-1),
            helper.make_node("Reshape", ["kc", "wide"], ["kw"]),
            helper.make_node("MultiHeadAttention", ["qw", "kw", "v"], ["out"], domain="com.microsoft", num_heads=heads, scale=1.0)]
        inits = [ints("heads", [0, 0, heads, head]), ints("wide", [0, 0, heads * (head + 1)]), ints("pad", [0] * 7 + [1]),
                 ints("axes", [2, 3]), ints("per_head", [1, 1, heads, 1]),
                 scalar("one", 1.0), scalar("zero", 0.0), scalar("filter", -10000.0)]
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, x.shape) for n, x in (("q", q), ("k", k), ("v", v))]
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, mask.shape))
        graph = helper.make_graph(nodes, "mha_mask_column", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
        feeds = {"q": q, "k": k, "v": v, "mask": mask.astype(bool)}
        s = matches_the_masked_kernel(session(helper.make_model(graph, opset_imports=opsets).SerializeToString(), threads), feeds)
        return median_seconds(s, feeds, repeats)

    def onnx_attention(with_mask: bool) -> float:
        """ONNX's own Attention (opset 23) on 3-D inputs; its boolean mask must be (batch, 1, q_len, kv_len) in ONNX
        Runtime, so the key padding mask is expanded to that first (timed with it). Checked against the masked kernel."""
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, x.shape) for n, x in (("q", q), ("k", k), ("v", v))]
        feeds, nodes, inits, names = {"q": q, "k": k, "v": v}, [], [], ["q", "k", "v"]
        if with_mask:
            inputs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, mask.shape))
            feeds["mask"] = mask.astype(bool)
            inits = [helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
                     helper.make_tensor("shape", TensorProto.INT64, [4], [batch, 1, q_len, kv_len])]
            nodes = [helper.make_node("Unsqueeze", ["mask", "axes"], ["mask4"]), helper.make_node("Expand", ["mask4", "shape"], ["full"])]
            names.append("full")
        nodes.append(helper.make_node("Attention", names, ["out"], q_num_heads=heads, kv_num_heads=heads, scale=1.0))
        graph = helper.make_graph(nodes, "attention", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
        s = session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]).SerializeToString(), threads)
        return median_seconds(matches_the_masked_kernel(s, feeds) if with_mask else s, feeds, repeats)

    bh = batch * heads
    out = {"flash (no mask)": mha(False), "onnx Attention (no mask)": onnx_attention(False),
           "bare products": batched_matmul((bh, q_len, head), (bh, head, kv_len)) + batched_matmul((bh, q_len, kv_len), (bh, kv_len, head))}
    if masked:
        out["key padding mask"] = mha(True)
        out["mask as a 65th column, flash"] = mask_as_column()
        out["onnx Attention (mask)"] = onnx_attention(True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--graph", help="plain or a name in the manifest's graphs (default: the manifest's default graph)")
    ap.add_argument("--point", help="B,Q,K,V (default: the bench grid's largest point)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    manifest = read_manifest(args.artifact)
    if manifest.model_class != OURS or manifest.dtype != "float32":
        ap.error(f"{args.artifact}: a float32 {OURS} artifact is needed (this is {manifest.dtype} {manifest.model_class})")
    graph_name = args.graph or manifest.default_graph
    if graph_name != "plain" and graph_name not in manifest.graphs:
        ap.error(f"--graph {graph_name!r}: the artifact's graphs are plain, {', '.join(manifest.graphs)}")
    graph = manifest.onnx_path if graph_name == "plain" else manifest.directory / manifest.graphs[graph_name]["file"]
    point = tuple(int(x) for x in args.point.split(",")) if args.point else default_grid(manifest.contract.axes)[-1]
    config = manifest.model_config
    heads, head = int(config["heads"]), int(config.get("dim_head", 64))
    batch, q_len, k_len, v_len = point

    peak_rates = gemm_peak_gflops(args.threads)
    peak = max(peak_rates.values())
    flops = perceiver_flops(config, *point)
    products = perceiver_attention_product_flops(config, *point)
    weight_flops = flops - sum(products.values())
    feeds = point_inputs(manifest, point, np.random.default_rng(0))
    wall = median_seconds(session(str(graph), args.threads), feeds, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        by_kind, by_op = profile(graph, feeds, args.threads, Path(tmp))
    depth = int(config["depth"])
    self_kernels = attention_kernels(batch, q_len, q_len, heads, head, args.threads, args.repeats, masked=False)
    cross_kernels = attention_kernels(batch, q_len, k_len + v_len, heads, head, args.threads, args.repeats, masked=True)

    def gflops(f: float, seconds: float) -> float:
        return f / seconds / 1e9

    raw_ms = {kind: by_kind.get(kind, 0.0) for kind in ("weight GEMM", "attention", "other")}
    scale = wall * 1e3 / sum(raw_ms.values())
    ms = {kind: v * scale for kind, v in raw_ms.items()}
    attention_alone = {
        "as the graph runs it (key padding mask across, flash within)": depth * (self_kernels["flash (no mask)"] + cross_kernels["key padding mask"]),
        "the mask as a 65th q/k column across, flash throughout": depth * (self_kernels["flash (no mask)"] + cross_kernels["mask as a 65th column, flash"]),
        "ONNX Attention (opset 23) for both (masked across)": depth * (self_kernels["onnx Attention (no mask)"] + cross_kernels["onnx Attention (mask)"]),
        "ONNX Attention (opset 23) for both (no mask anywhere)": depth * (self_kernels["onnx Attention (no mask)"] + cross_kernels["onnx Attention (no mask)"]),
        "flash-attention path throughout (no mask anywhere)": depth * (self_kernels["flash (no mask)"] + cross_kernels["flash (no mask)"]),
        "bare products (softmax and mask free)": depth * (self_kernels["bare products"] + cross_kernels["bare products"]),
    }
    weight_s = ms["weight GEMM"] / 1e3
    result = {
        "artifact": manifest.data["name"], "graph": graph_name, "point": list(point), "threads": args.threads,
        "cpu": cpu_name(), "simd": cpu_simd_flags(), "onnxruntime": ort.__version__,
        "gemm_peak_gflops": round(peak, 1), "gemm_gflops": {k: round(v, 1) for k, v in peak_rates.items()},
        "flops": {"total": flops, "weight GEMMs": weight_flops, "attention products": products},
        "measured": {"median_ms": round(wall * 1e3, 2), "fraction_of_gemm_peak": round(gflops(flops, wall) / peak, 3),
                     "ms_by_kind": {k: round(v, 2) for k, v in ms.items()},
                     "profiled_kernel_ms_by_kind": {k: round(v, 2) for k, v in raw_ms.items()},
                     "profiled_kernel_ms_by_op": {k: round(v, 2) for k, v in by_op.items()},
                     "weight_gemm_fraction_of_peak": round(gflops(weight_flops, weight_s) / peak, 3) if weight_s else None,
                     "attention_fraction_of_peak": round(gflops(sum(products.values()), ms["attention"] / 1e3) / peak, 3) if ms["attention"] else None},
        "attention_alone": {name: {"ms": round(s * 1e3, 2), "fraction_of_gemm_peak": round(gflops(sum(products.values()), s) / peak, 3)}
                            for name, s in attention_alone.items()},
        "bounds": {name: round(gflops(flops, weight_s + s) / peak, 3) for name, s in attention_alone.items()},
        "bounds_with_other_ops": {name: round(gflops(flops, weight_s + s + ms["other"] / 1e3) / peak, 3)
                                  for name, s in attention_alone.items()},
    }
    print(f"{result['cpu']} ({', '.join(result['simd'])}), {args.threads} threads, onnxruntime {ort.__version__}, "
          f"GEMM peak {peak:.1f} GFLOP/s")
    print(f"{graph_name} graph at {'x'.join(map(str, point))}: {flops / 1e9:.1f} GFLOP, median {wall * 1e3:.1f} ms, "
          f"{result['measured']['fraction_of_gemm_peak']:.1%} of peak")
    print(f"  by the profile's shares: weight GEMMs {ms['weight GEMM']:.1f} ms ({weight_flops / 1e9:.1f} GFLOP, "
          f"{result['measured']['weight_gemm_fraction_of_peak'] or 0:.1%} of peak), attention {ms['attention']:.1f} ms "
          f"({sum(products.values()) / 1e9:.1f} GFLOP, {result['measured']['attention_fraction_of_peak'] or 0:.1%}), "
          f"other {ms['other']:.1f} ms")
    for name, s in attention_alone.items():
        print(f"  attention alone, {name}: {s * 1e3:.1f} ms ({result['attention_alone'][name]['fraction_of_gemm_peak']:.1%} "
              f"of peak) -> {result['bounds'][name]:.1%} of peak with every other op free, "
              f"{result['bounds_with_other_ops'][name]:.1%} with them as measured")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
