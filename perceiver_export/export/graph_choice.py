"""The default ONNX Runtime graph, chosen by measurement: the fastest verified graph at the opt shape, here.

A fused graph is not faster everywhere (the optimized one measured 2-4% slower than the plain one at large shapes
on a 2-core AMD EPYC), so export times each graph that passed parity at the artifact's own tolerance, interleaved,
and records the fastest in the manifest as "default_graph"; the ONNX Runtime runner and the C++ runtime start from
it. The int8 graph is never a candidate: it is verified at its own looser tolerance, it changes the numbers, and
only a user who asks for it gets it. A graph not faster than the plain one is never the default (plain wins ties).
"""

from __future__ import annotations

import os
import time
from typing import Mapping

import numpy as np

from ..artifact.manifest import Manifest
from ..machine import cpu_name, cpu_simd_flags
from ..runtime import load
from ..runtime.arrays import NUMPY_DTYPES
from ..verify.grid import Case, case_inputs
from .ort_graphs import INT8

PLAIN = "plain"
CHOSEN_BY = "median ms at the opt shape on this machine"
BUDGET_S = 1.5  # timed seconds per graph, at most; a tiny model stops at MAX_RUNS long before
MIN_RUNS, MAX_RUNS, WARMUP = 5, 300, 3


def choose_fastest(median_ms: Mapping[str, float]) -> str:
    """The graph with the smallest median; "plain" unless another is strictly faster."""
    best = PLAIN
    for name, ms in median_ms.items():
        if name != INT8 and ms < median_ms.get(best, float("inf")):
            best = name
    return best


def verified_graphs(manifest: Manifest) -> list[str]:
    """plain, then each of the manifest's graphs whose every parity case passed at the artifact's tolerance."""
    parity = manifest.data.get("parity") or {}
    cases = parity.get("cases") or []
    verified = [PLAIN]
    for name in manifest.graphs:
        mine = [c for c in cases if c.get("backend") == f"onnxruntime-{name}"]
        if name != INT8 and mine and all(c.get("passed") and c.get("tolerance") == parity.get("tolerance") for c in mine):
            verified.append(name)
    return verified


def untimed(why: str) -> dict:
    """The manifest entry when nothing was timed: the plain graph, and why."""
    return {"graph": PLAIN, "chosen_by": why}


def time_graphs(manifest: Manifest, graphs: list[str], threads: int, budget_s: float = BUDGET_S,
                seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, float]:
    """Median ms of one run of each graph at the contract's opt shape, or `sizes` (mask: random), runs interleaved.

    Interleaving (a round runs every graph once, in a rotating order) spreads a noisy neighbour or a frequency change
    over all graphs instead of charging it to whichever ran at that moment.
    """
    contract = manifest.contract
    opt = sizes or {a: r.opt for a, r in contract.axes.items()}
    feeds = case_inputs(contract, Case("timing", opt, "random"), np.random.default_rng(seed))
    dtype = NUMPY_DTYPES[manifest.dtype]
    feeds = {n: (x if x.dtype == np.bool_ else x.astype(dtype)) for n, x in feeds.items() if x is not None}
    runners = {g: load(manifest, backend="onnxruntime", check_files=False, graph=g, threads=threads) for g in graphs}
    for runner in runners.values():
        for _ in range(WARMUP):
            runner.infer(feeds)
    latencies: dict[str, list[float]] = {g: [] for g in graphs}
    start, rounds = time.perf_counter(), 0
    while rounds < MAX_RUNS and (rounds < MIN_RUNS or time.perf_counter() - start < budget_s * len(graphs)):
        order = graphs[rounds % len(graphs):] + graphs[:rounds % len(graphs)]
        for g in order:
            t0 = time.perf_counter()
            runners[g].infer(feeds)
            latencies[g].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {g: round(float(np.median(ms)), 4) for g, ms in latencies.items()}


def choose_default_graph(manifest: Manifest, threads: int | None = None, budget_s: float = BUDGET_S) -> dict:
    """Time the verified graphs and return the manifest's "default_graph" entry (the caller writes it)."""
    if manifest.dtype == "bfloat16":
        return untimed("plain: onnxruntime does not run bfloat16 graphs")
    if not (manifest.data.get("parity") or {}).get("passed"):
        return untimed("plain: the artifact has not passed parity, nothing was timed")
    graphs = verified_graphs(manifest)
    if len(graphs) == 1:
        return untimed("plain: the only verified graph")
    threads = threads or os.cpu_count() or 1
    median_ms = time_graphs(manifest, graphs, threads, budget_s)
    return {
        "graph": choose_fastest(median_ms),
        "chosen_by": CHOSEN_BY,
        "shape": {a: r.opt for a, r in manifest.contract.axes.items()},
        "median_ms": median_ms,
        "threads": threads,
        "cpu": cpu_name(),
        "simd": cpu_simd_flags(),
    }


def describe(entry: dict) -> str:
    """One line: "plain (median at batch 1, q_len 8, ...: plain 0.12 ms, optimized 0.13 ms; 2 threads, CPU)"."""
    if "median_ms" not in entry:
        return f"{entry['graph']} ({entry['chosen_by']})"
    shape = ", ".join(f"{a} {n}" for a, n in (entry.get("shape") or {}).items())
    times = ", ".join(f"{g} {ms:.3g} ms" for g, ms in entry["median_ms"].items())
    where = "; ".join(x for x in (f"{entry['threads']} thread{'s' if entry['threads'] != 1 else ''}" if entry.get("threads") else "", entry.get("cpu", "")) if x)
    return f"{entry['graph']} (median at {shape}: {times}; {where})"
