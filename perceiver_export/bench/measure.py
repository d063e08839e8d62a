"""Timing one callable: warm-up excluded, a run length by iterations and time budget, percentiles, memory."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


@dataclass(frozen=True)
class Timing:
    latencies_ms: tuple[float, ...]
    warmup: int
    first_ms: float | None  # the first warm-up call: lazy initialisation, compilation
    seconds: float  # wall time of the measured iterations
    peak_rss_growth_mb: float  # over the RSS before the backend was created

    def percentile(self, p: float) -> float:
        return float(np.percentile(self.latencies_ms, p))

    @property
    def median_ms(self) -> float:
        return self.percentile(50)

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms)
        return {
            "iterations": len(lat), "warmup": self.warmup, "first_call_ms": self.first_ms, "seconds": round(self.seconds, 3),
            "min_ms": float(lat.min()), "mean_ms": float(lat.mean()), "median_ms": self.median_ms,
            "p90_ms": self.percentile(90), "p99_ms": self.percentile(99), "max_ms": float(lat.max()),
            "peak_rss_growth_mb": round(self.peak_rss_growth_mb, 1),
        }


def time_callable(fn: Callable[[], object], *, warmup: int, min_iters: int, max_iters: int, budget_s: float,
                  rss_before: int) -> Timing:
    """Run `fn` warmup times untimed, then until max_iters or the budget is spent (but at least min_iters)."""
    peak = rss_bytes()
    first_ms = None
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        if i == 0:
            first_ms = (time.perf_counter() - t0) * 1e3
        peak = max(peak, rss_bytes())
    latencies = []
    start = time.perf_counter()
    while len(latencies) < max_iters and (len(latencies) < min_iters or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        latencies.append((time.perf_counter() - t0) * 1e3)
        peak = max(peak, rss_bytes())
    return Timing(tuple(latencies), warmup, first_ms, time.perf_counter() - start, max(peak - rss_before, 0) / 2**20)


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_peak_gflops(threads: int, sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> dict[str, float]:
    """This machine's float32 GEMM rate with `threads` threads: the yardstick for "how close to the limit".

    The best of square GEMMs through torch (MKL/oneDNN) and onnxruntime (MLAS), so neither
    backend is judged against a slower library than the one it uses.
    """
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    torch.set_num_threads(threads)
    rates: dict[str, float] = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        rates[f"torch.mm {n}"] = 2 * n**3 / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString(),
                                       options, providers=["CPUExecutionProvider"])
        feeds = {"a": a.numpy(), "b": b.numpy()}
        rates[f"onnxruntime MatMul {n}"] = 2 * n**3 / _best_seconds(lambda: session.run(None, feeds), repeats) / 1e9
    return rates
