"""scripts/fp32_ceiling.py: how it sorts the graph's kernels, and what its JSON holds — never a timing threshold."""

import importlib.util
import json
import subprocess
import sys

import onnxruntime as ort

from perceiver_export.bench.flops import perceiver_attention_product_flops, perceiver_flops
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "fp32_ceiling.py"


def ceiling():
    spec = importlib.util.spec_from_file_location("fp32_ceiling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ort_optimized(graph, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ran.onnx")
    ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    return tmp_path / "ran.onnx"


def test_optimized_graph_kernels_sort_into_ten_weight_gemms_and_two_attentions_per_block(tiny_fp32, tmp_path):
    manifest = tiny_fp32.manifest
    graph = manifest.directory / manifest.graphs["optimized"]["file"]
    kinds = list(ceiling().node_kinds(ort_optimized(graph, tmp_path)).values())
    depth = manifest.model_config["depth"]
    # to_q, to_k, to_v, to_out of both attentions and the two feed-forward layers; self- and cross-attention
    assert (kinds.count("weight GEMM"), kinds.count("attention")) == (10 * depth, 2 * depth)


def test_plain_graph_attention_products_are_not_weight_gemms(tiny_fp32, tmp_path):
    kinds = list(ceiling().node_kinds(ort_optimized(tiny_fp32.manifest.onnx_path, tmp_path)).values())
    depth = tiny_fp32.manifest.model_config["depth"]
    # q @ k^T and attn @ v of both attentions are MatMuls between activations
    assert kinds.count("attention") == 4 * depth


def test_json_splits_the_flops_and_gives_a_bound_per_attention_kernel(tiny_fp32, tmp_path):
    out = tmp_path / "ceiling.json"
    run = subprocess.run([sys.executable, str(SCRIPT), str(tiny_fp32.manifest.directory), "--point", "2,3,4,5",
                          "--repeats", "1", "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    config = tiny_fp32.manifest.model_config
    products = perceiver_attention_product_flops(config, 2, 3, 4, 5)
    assert data["graph"] == tiny_fp32.manifest.default_graph and data["point"] == [2, 3, 4, 5]
    assert data["flops"] == {"total": perceiver_flops(config, 2, 3, 4, 5), "attention products": products,
                             "weight GEMMs": perceiver_flops(config, 2, 3, 4, 5) - products["self"] - products["cross"]}
    assert set(data["bounds"]) == set(data["bounds_with_other_ops"]) == set(data["attention_alone"]) and len(data["bounds"]) == 6
    assert all(data["bounds_with_other_ops"][k] < v for k, v in data["bounds"].items())
    assert all(v > 0 for v in data["measured"]["profiled_kernel_ms_by_kind"].values())
    assert abs(sum(data["measured"]["ms_by_kind"].values()) - data["measured"]["median_ms"]) < 0.05


def test_refuses_a_graph_the_artifact_does_not_have(tiny_fp32):
    run = subprocess.run([sys.executable, str(SCRIPT), str(tiny_fp32.manifest.directory), "--graph", "fast"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2
    assert "--graph 'fast': the artifact's graphs are plain, optimized" in run.stderr
