"""bench: the FLOP count, the grid, the output structure and JSON schema — never timing thresholds."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from perceiver_export import PerceiverLayer
from perceiver_export.bench.flops import perceiver_attention_product_flops, perceiver_flops
from perceiver_export.bench.grid import default_grid, parse_grid
from perceiver_export.bench.report import write_plot
from perceiver_export.bench.run import BenchSettings, run_bench
from perceiver_export.contract import AxisRange
from perceiver_export.errors import ConfigError
from tests.conftest import REPO, openvino_backends

TINY = {"dim": 32, "heads": 2, "depth": 2, "dim_head": 16, "ff_mult": 2}


def test_flop_count_matches_a_hand_count_for_the_tiny_config():
    # batch 1, q_len 2, k_len 3, v_len 4 (context 7); inner = 2 x 16 = 32, hidden = 64. Per block:
    #   self-attn  2 x (2*32*32 + 2*32*64 + 2*32*32 + 2*2*2*32)  = 16896
    #   cross-attn 2 x (2*32*32 + 7*32*64 + 2*32*32 + 2*2*7*32)  = 38656
    #   feed-fwd   2 x 2 x (32*64 + 64*32)                       = 16384
    assert perceiver_flops(TINY, 1, 2, 3, 4) == 2 * (16896 + 38656 + 16384)
    assert perceiver_flops(TINY, 3, 2, 3, 4) == 3 * perceiver_flops(TINY, 1, 2, 3, 4)


def test_attention_product_flops_are_the_activation_products_of_the_hand_count():
    # The 2*2*n*32 terms above (q @ k^T and attn @ v), times 2 FLOPs, times depth 2.
    assert perceiver_attention_product_flops(TINY, 1, 2, 3, 4) == {"self": 2 * 2 * (2 * 2 * 2 * 32), "cross": 2 * 2 * (2 * 2 * 7 * 32)}
    assert perceiver_attention_product_flops(TINY, 3, 2, 3, 4)["cross"] == 3 * 3584


@pytest.mark.parametrize("sizes", [(1, 2, 3, 4), (2, 5, 7, 1), (3, 16, 24, 24)])
def test_flop_count_agrees_with_torch_flop_counter(sizes):
    from torch.utils.flop_counter import FlopCounterMode

    model = PerceiverLayer(**TINY).eval()
    b, q, k, v = sizes
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(b, q, 32), torch.randn(b, k, 32), torch.randn(b, v, 32))
    assert counter.get_total_flops() == perceiver_flops(TINY, b, q, k, v)


def test_default_grid_spans_the_ranges_and_ends_at_the_largest_point():
    axes = {"batch": AxisRange(1, 1, 8), "q_len": AxisRange(1, 32, 256), "k_len": AxisRange(1, 32, 512), "v_len": AxisRange(1, 32, 512)}
    assert default_grid(axes) == [(1, 32, 32, 32), (1, 90, 128, 128), (1, 256, 512, 512), (8, 256, 512, 512)]


def test_parse_grid_checks_ranges():
    axes = {"batch": AxisRange(1, 1, 4), "q_len": AxisRange(1, 8, 16), "k_len": AxisRange(1, 8, 24), "v_len": AxisRange(1, 8, 24)}
    assert parse_grid("1:8:8:8, 4:16:24:24", axes) == [(1, 8, 8, 8), (4, 16, 24, 24)]
    with pytest.raises(ConfigError, match=r"--grid 1:32:8:8: q_len 32 is outside the artifact's range \[1, 16\]"):
        parse_grid("1:32:8:8", axes)
    with pytest.raises(ConfigError, match="expected BATCH:Q_LEN:K_LEN:V_LEN, got '1:8:8'"):
        parse_grid("1:8:8", axes)


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory, tiny_spec):
    from perceiver_export.export.artifact_builder import export_artifact

    out = tmp_path_factory.mktemp("bench") / "a"
    export_artifact(tiny_spec, out, int8=True, verify=False)
    settings = BenchSettings(backends=["onnxruntime", "onnxruntime-optimized", "onnxruntime-int8", "torch-bf16", "openvino",
                                       "openvino-bf16", "tensorrt"],
                             grid=[(1, 8, 8, 8), (2, 16, 24, 24)], warmup=1, min_iters=2, max_iters=2, seconds=0.0, threads=1,
                             explicit=["torch-bf16"])
    return out, run_bench(out, settings)


def test_bench_structure_and_json_schema(bench_data):
    _, data = bench_data
    assert data["schema"] == "perceiver-export/bench" and data["schema_version"] == 1
    assert data["gemm_peak_gflops"] > 0 and data["machine"]["threads"] == 1
    assert data["grid"] == [[1, 8, 8, 8], [2, 16, 24, 24]]
    names = {r["backend"] for r in data["results"]}
    ov = openvino_backends()
    assert names == {"torch", "torch-bf16", "onnxruntime", "onnxruntime-optimized", "onnxruntime-int8", *ov}
    assert "tensorrt" in data["skipped"] and "no TensorRT engine" in data["skipped"]["tensorrt"]
    assert set(data["skipped"]) == {"tensorrt"} | {"openvino", "openvino-bf16"} - set(ov)  # each with its reason
    assert len(data["results"]) == len(names) * 2
    assert list(data["backend_config"]) == ov  # the compile settings that decide OpenVINO's numbers and speed
    assert all(c["INFERENCE_NUM_THREADS"] == "1" for c in data["backend_config"].values())
    keys = {"backend", "precision", "batch", "q_len", "k_len", "v_len", "iterations", "warmup", "min_ms", "mean_ms",
            "median_ms", "p90_ms", "p99_ms", "max_ms", "sequences_per_s", "tokens_per_s", "flops", "gflops_per_s",
            "fraction_of_gemm_peak", "speedup_vs_torch_fp32", "max_abs_error_over_std", "peak_rss_growth_mb", "seconds"}
    for r in data["results"]:
        assert keys <= set(r), keys - set(r)
        assert r["iterations"] == 2 and r["min_ms"] <= r["median_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["flops"] == perceiver_flops(TINY, r["batch"], r["q_len"], r["k_len"], r["v_len"])
        assert r["tokens_per_s"] == pytest.approx(r["sequences_per_s"] * (r["q_len"] + r["k_len"] + r["v_len"]))
    torch_rows = [r for r in data["results"] if r["backend"] == "torch"]
    assert all(r["speedup_vs_torch_fp32"] == 1.0 and r["max_abs_error_over_std"] == 0.0 for r in torch_rows)
    errs = {r["backend"]: r["max_abs_error_over_std"] for r in data["results"] if r["batch"] == 2}
    assert errs["onnxruntime"] < 1e-5 and 1e-4 < errs["onnxruntime-int8"] < 0.1 and 1e-4 < errs["torch-bf16"] < 0.2
    if "openvino" in ov:
        assert errs["openvino"] < 1e-5
    if "openvino-bf16" in ov:
        assert 1e-4 < errs["openvino-bf16"] < 0.05
    json.dumps(data)  # serialisable as is


def test_bench_plot_is_a_png(bench_data, tmp_path):
    _, data = bench_data
    write_plot(data, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cli_writes_json_and_png(bench_data, tmp_path):
    out, _ = bench_data
    r = subprocess.run([sys.executable, "-m", "perceiver_export", "bench", str(out), "--backends", "onnxruntime",
                        "--grid", "1:8:8:8", "--iterations", "1", "--seconds", "0", "--threads", "1", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "GFLOP/s" in r.stdout and "median ms" in r.stdout and "float32 GEMM peak" in r.stdout
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [x["backend"] for x in data["results"]] == ["torch", "onnxruntime"]
    assert (tmp_path / "bench.png").stat().st_size > 1000
    bad = subprocess.run([sys.executable, "-m", "perceiver_export", "bench", str(out), "--backends", "tensorflow"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert bad.returncode == 3 and "unknown bench backend(s) ['tensorflow']" in bad.stderr


def test_int8_graph_passes_its_scale_tolerance_and_the_default_graph_is_the_timed_choice(tmp_path, tiny_spec):
    from perceiver_export import runtime
    from perceiver_export.export.artifact_builder import export_artifact

    result = export_artifact(tiny_spec, tmp_path / "a", int8=True)
    assert result.report.passed
    assert set(result.manifest.graphs) == {"optimized", "int8"}
    assert result.manifest.graphs["optimized"]["fusions"].get("mha2", 0) >= 2  # self-attention fused per block
    by = {}
    for r in result.report.results:
        by.setdefault(r.backend, []).append(r)
    assert set(by) == {"onnxruntime", "onnxruntime-optimized", "onnxruntime-int8"}  # export checks what it writes
    assert all(r.tolerance.scale_atol == 0.1 for r in by["onnxruntime-int8"])
    assert 1e-3 < max(r.comparison.max_abs_over_scale for r in by["onnxruntime-int8"]) < 0.1
    assert max(r.comparison.max_abs for r in by["onnxruntime-optimized"]) < 1e-5
    chosen = result.manifest.data["default_graph"]
    assert set(chosen["median_ms"]) == {"plain", "optimized"}  # int8 is never timed nor chosen
    assert chosen["graph"] == min(["plain", "optimized"], key=lambda g: (chosen["median_ms"][g], g != "plain"))
    assert runtime.load(result.directory).graph == chosen["graph"]
    assert runtime.load(result.directory, graph="plain").backend == "onnxruntime"


def test_optimized_graph_that_fails_parity_is_dropped_not_shipped(tmp_path, tiny_spec, monkeypatch):
    """A fusion that changes the numbers (simulated: perturbed weights in the fused graph) must not be written."""
    import onnx

    from perceiver_export.export import artifact_builder, ort_graphs

    real = ort_graphs.write_optimized_graph

    def wrong_fusion(src, dst):
        entry = real(src, dst)
        model = onnx.load(str(dst))
        t = max(model.graph.initializer, key=lambda i: np.prod(i.dims))
        arr = onnx.numpy_helper.to_array(t).copy() * 1.5
        t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
        onnx.save(model, str(dst))
        return entry

    monkeypatch.setattr(artifact_builder, "write_optimized_graph", wrong_fusion)
    result = artifact_builder.export_artifact(tiny_spec, tmp_path / "a")
    assert result.report.passed and result.manifest.graphs == {}
    assert not (result.directory / "model.ort.onnx").exists() and "model.ort.onnx" not in result.manifest.data["files"]
    assert any("optimized ONNX Runtime graph failed parity" in n for n in result.report.notes)
    stored = json.loads((result.directory / "manifest.json").read_text())
    assert stored["parity"]["backends"] == ["onnxruntime"] and stored["parity"]["passed"]


def test_int8_needs_a_float32_export(tmp_path, tiny_spec):
    from perceiver_export.export.artifact_builder import export_artifact

    with pytest.raises(ConfigError, match="--int8 quantizes a float32 export"):
        export_artifact(tiny_spec, tmp_path / "a", dtype="fp16", int8=True)
