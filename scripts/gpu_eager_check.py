"""One-off GPU measurement: eager PyTorch on CUDA against the artifact's float32 CPU reference, and its latency.

    python scripts/gpu_eager_check.py OUT.json ARTIFACT_DIR [ARTIFACT_DIR ...]

For each artifact: the compute capability our engine code records (engines.compat), the parity grid run
by the `torch` runner on CUDA in float32 (TF32 off, torch's default), float16 and bfloat16, each compared
with the CPU float32 reference (max abs error, the tolerance it would need), and CUDA latency (median of
timed runs after warm-up, synchronised) at opt and max shapes against ONNX Runtime on this machine's CPUs
in the same run, eager and replayed as a CUDA graph. Needs a CUDA GPU; the numbers go to README "Benchmarks" by hand, with the card named.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from perceiver_export import runtime
from perceiver_export.engines.compat import cuda_compute_capability
from perceiver_export.runtime.arrays import NUMPY_DTYPES
from perceiver_export.verify.compare import TOLERANCES, compare
from perceiver_export.verify.grid import Case, case_inputs, parity_cases


def cuda_ms(fn, warmup: int = 5, runs: int = 30) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def captured(step):
    """The same forward captured once as a CUDA graph (static inputs): what replaying it costs, launches removed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def cpu_ms(fn, warmup: int = 2, runs: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def check(directory: Path) -> dict:
    reference = runtime.load(directory, backend="torch", dtype="float32")
    contract = reference.contract
    rng = np.random.default_rng(0)
    cases = [(c, case_inputs(contract, c, rng)) for c in parity_cases(contract)]
    gpus = {dtype: runtime.load(directory, backend="torch", device="cuda", dtype=dtype) for dtype in ("float32", "float16", "bfloat16")}
    parity = {}
    for dtype, gpu in gpus.items():
        worst = {"max_abs": 0.0, "required_atol": 0.0, "passed_default_tolerance": True}
        tol = TOLERANCES[dtype]
        for case, feeds in cases:
            # Rounded to the dtype under test, handed over as the artifact's float32 (the runner casts them back).
            rounded = {n: (x.astype(NUMPY_DTYPES[dtype]).astype(np.float32) if x is not None and x.dtype != np.bool_ else x)
                       for n, x in feeds.items()}
            ref = reference.infer(rounded)
            c = compare(gpu.infer(rounded).astype(np.float32), ref, tol.atol, tol.rtol)
            worst["max_abs"] = max(worst["max_abs"], c.max_abs)
            worst["required_atol"] = max(worst["required_atol"], c.required_atol)
            worst["passed_default_tolerance"] &= c.passed
        parity[dtype] = worst
    timing = {}
    axes = contract.axes
    ort = runtime.load(directory, backend="onnxruntime", graph="plain")
    for label, sizes in (("opt", {a: r.opt for a, r in axes.items()}), ("max", {a: r.max for a, r in axes.items()})):
        feeds = case_inputs(contract, Case(label, sizes, "random"), rng)
        row = {"sizes": sizes}
        row["onnxruntime_cpu_ms"] = cpu_ms(lambda: ort.infer(feeds))
        for dtype, gpu in gpus.items():
            tensors = {n: (torch.from_numpy(x).cuda() if x.dtype == np.bool_ else torch.from_numpy(x).cuda().to(getattr(torch, dtype)))
                       for n, x in feeds.items()}
            model = gpu.model
            args = [tensors[s.name] for s in contract.inputs if s.name in tensors]

            def step():
                with torch.inference_mode():
                    model(*args)

            row[f"torch_cuda_{dtype}_ms"] = cuda_ms(step)
            try:
                row[f"cuda_graph_{dtype}_ms"] = cuda_ms(captured(step))
            except Exception as e:  # a module whose forward syncs with the host cannot be captured
                row[f"cuda_graph_{dtype}_ms"] = None
                row["cuda_graph_error"] = f"{type(e).__name__}: {e}"[:300]
        row["speedup_cuda_fp16_vs_fp32"] = row["torch_cuda_float32_ms"] / row["torch_cuda_float16_ms"]
        if row["cuda_graph_float32_ms"] and row["cuda_graph_float16_ms"]:
            row["speedup_cuda_graph_fp32_vs_eager"] = row["torch_cuda_float32_ms"] / row["cuda_graph_float32_ms"]
            row["speedup_cuda_graph_fp16_vs_eager_fp32"] = row["torch_cuda_float32_ms"] / row["cuda_graph_float16_ms"]
        row["speedup_cuda_fp32_vs_onnxruntime_cpu"] = row["onnxruntime_cpu_ms"] / row["torch_cuda_float32_ms"]
        timing[label] = row
    return {"artifact": str(directory), "model": reference.manifest.data["model"], "parity_vs_cpu_fp32": parity, "latency": timing}


def main(out: Path, directories: list[Path]) -> None:
    result = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": cuda_compute_capability(),
        "cpu_threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "artifacts": [check(d) for d in directories],
    }
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
