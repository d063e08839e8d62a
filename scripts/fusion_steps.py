"""What each rewrite of the optimized graph is worth: the graph after each step, timed in turns, with a profile.

    .venv/bin/python scripts/fusion_steps.py ARTIFACT_DIR [--threads 2] [--rounds 5] [--out steps.json]

Steps: plain model.onnx; onnxscript's optimize_for_ort alone; ours first (masked cross-attention ->
MultiHeadAttention) then optimize_for_ort; then the packed projections split; then SkipLayerNormalization undone
into Add + LayerNormalization (= what export writes as model.ort.onnx). Each is timed at the artifact's bench grid (median of --rounds turns, the steps taking turns so
machine noise hits all alike), against the in-run float32 GEMM peak, and profiled with ONNX Runtime's profiler at
the largest point: the share of time in GEMM ops (MatMul, MultiHeadAttention, ...) and in everything else.
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
import onnx_ir as ir
import onnxruntime as ort

from perceiver_export.artifact.manifest import read_manifest
from perceiver_export.bench.flops import perceiver_flops
from perceiver_export.bench.grid import default_grid
from perceiver_export.bench.measure import gemm_peak_gflops
from perceiver_export.bench.run import point_inputs
from perceiver_export.export.ort_graphs import onnxscript_fusions, rewrite_for_ort
from perceiver_export.machine import cpu_name, cpu_simd_flags

GEMM_OPS = {"MatMul", "FusedMatMul", "Gemm", "MultiHeadAttention"}


def step_graphs(src: Path, tmp: Path) -> dict[str, Path]:
    """plain, onnxscript's fusions alone, then the export's own steps (export/ort_graphs.rewrite_for_ort), each saved."""
    steps = {"plain": src, "onnxscript fusions": tmp / "1.onnx"}
    ir.save(onnxscript_fusions(ir.load(str(src)))[0], steps["onnxscript fusions"])

    def save(name: str, model) -> None:
        steps[name] = tmp / f"{len(steps)}.onnx"
        ir.save(model, steps[name])

    rewrite_for_ort(ir.load(str(src)), after_step=save)
    return steps


def session(path: Path, threads: int, profile_dir: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if profile_dir is not None:  # the profile's JSON goes there, not into the working directory
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_dir / f"profile-{path.stem}")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def profile_shares(path: Path, feeds: dict, threads: int, tmp: Path) -> dict[str, float]:
    s = session(path, threads, profile_dir=tmp)
    for _ in range(2):
        s.run(None, feeds)
    events = json.loads(Path(s.end_profiling()).read_text())
    by_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    return {op: round(d / total, 4) for op, d in by_op.most_common()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    manifest = read_manifest(args.artifact)
    grid = default_grid(manifest.contract.axes)
    rng = np.random.default_rng(0)
    inputs = [point_inputs(manifest, p, rng) for p in grid]
    peak = max(gemm_peak_gflops(args.threads).values())
    result = {"artifact": manifest.data["name"], "cpu": cpu_name(), "simd": cpu_simd_flags(), "threads": args.threads,
              "gemm_peak_gflops": round(peak, 1), "points": []}
    with tempfile.TemporaryDirectory() as tmp:
        steps = step_graphs(manifest.onnx_path, Path(tmp))
        sessions = {name: session(path, args.threads) for name, path in steps.items()}
        print(f"{cpu_name()} ({', '.join(cpu_simd_flags())}), {args.threads} threads, GEMM peak {peak:.1f} GFLOP/s")
        for point, feeds in zip(grid, inputs):
            flops = perceiver_flops(manifest.model_config, *point)
            times = {name: [] for name in sessions}
            for s in sessions.values():
                s.run(None, feeds)
            for _ in range(args.rounds):
                for name, s in sessions.items():
                    start = time.perf_counter()
                    s.run(None, feeds)
                    times[name].append(time.perf_counter() - start)
            row = {"point": list(point), "steps": {}}
            base = float(np.median(times["plain"]))
            for name, t in times.items():
                med = float(np.median(t))
                row["steps"][name] = {"median_ms": round(med * 1e3, 3), "vs_plain": round(base / med, 3),
                                      "fraction_of_gemm_peak": round(flops / med / 1e9 / peak, 3)}
                print(f"{'x'.join(map(str, point)):>14}  {name:26} {med * 1e3:9.2f} ms  {base / med:5.2f}x plain  "
                      f"{flops / med / 1e9 / peak:6.1%} of peak")
            result["points"].append(row)
        largest = inputs[-1]
        result["profile_at"] = list(grid[-1])
        result["profiles"] = {name: profile_shares(path, largest, args.threads, Path(tmp)) for name, path in steps.items()}
        for name, shares in result["profiles"].items():
            gemm = sum(v for k, v in shares.items() if k in GEMM_OPS)
            rest = ", ".join(f"{k} {v:.1%}" for k, v in shares.items() if k not in GEMM_OPS and v >= 0.01)
            print(f"profile {name:26} GEMM ops {gemm:.1%}; other: {rest}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
