"""`bench DIR`: time every backend over the grid against eager fp32, with FLOP/s against the GEMM peak."""

from __future__ import annotations

import gc
from functools import partial
import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..artifact.manifest import read_manifest
from ..errors import BackendUnavailableError, ConfigError
from ..machine import cpu_name, cpu_simd_flags
from ..model.module_ref import OURS
from ..runtime import load
from ..runtime.arrays import NUMPY_DTYPES
from .backends import BACKENDS, BASELINE, DEFAULT_BACKENDS, prepare
from .flops import counted_flops, perceiver_flops
from .grid import Point, default_grid
from .measure import gemm_peak_gflops, rss_bytes, time_callable

SCHEMA = "perceiver-export/bench"
SCHEMA_VERSION = 1


@dataclass
class BenchSettings:
    backends: Sequence[str] = DEFAULT_BACKENDS
    grid: Sequence[Point] | None = None
    warmup: int = 1
    min_iters: int = 3
    max_iters: int = 100
    seconds: float = 0.5  # per backend and grid point, after warm-up
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    seed: int = 0
    explicit: Sequence[str] = ()  # backends the user named (run even where a default would skip them)


def point_inputs(manifest, point: Point, rng: np.random.Generator) -> dict:
    """Every input of the contract at one grid point (a mask, when there is one, attends to ~80%)."""
    contract = manifest.contract
    sizes = dict(zip(("batch", "q_len", "k_len", "v_len"), point))
    feeds = {}
    for spec in contract.inputs:
        shape = contract.concrete_shape(spec.name, sizes)
        if spec.dtype == "bool":
            feeds[spec.name] = rng.random(shape) < 0.8
        else:
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(NUMPY_DTYPES[spec.dtype])
    return feeds


def point_flops(manifest, feeds: dict, point: Point, counter_model=None) -> int:
    if manifest.model_class == OURS:
        return perceiver_flops(manifest.model_config, *point)
    return counted_flops(counter_model, feeds)


def run_bench(directory: str | Path, settings: BenchSettings, progress: Callable[[str], None] = lambda msg: None) -> dict:
    manifest = read_manifest(directory)
    manifest.check_files()
    unknown = [b for b in settings.backends if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"unknown bench backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    grid = list(settings.grid or default_grid(manifest.contract.axes))
    rng = np.random.default_rng(settings.seed)
    inputs = [point_inputs(manifest, p, rng) for p in grid]

    counter_model = None if manifest.model_class == OURS else load(manifest, backend="torch", check_files=False, dtype="float32").model
    flops_at = [point_flops(manifest, feeds, p, counter_model) for p, feeds in zip(grid, inputs)]
    del counter_model
    progress(f"measuring the float32 GEMM peak ({settings.threads} threads)")
    gemm = gemm_peak_gflops(settings.threads)
    peak = max(gemm.values())
    backends = [BASELINE] + [b for b in settings.backends if b != BASELINE]  # the baseline is always measured
    simd = cpu_simd_flags()
    results, skipped, startup, configs = [], {}, {}, {}
    reference: list[np.ndarray] = []
    for name in backends:
        gc.collect()
        rss_before = rss_bytes()
        if name == "torch-bf16" and name not in settings.explicit and not {"avx512_bf16", "amx_bf16"} & set(simd):
            skipped[name] = ("this CPU has no bfloat16 instructions (avx512_bf16/amx_bf16): torch emulates bf16 "
                             "and runs 5-20x slower than fp32 (measured); ask for it with --backends to time it anyway")
            progress(f"{name}: skipped")
            continue
        try:
            prepared = prepare(manifest, name, settings.threads)
        except BackendUnavailableError as e:
            skipped[name] = str(e)
            progress(f"{name}: skipped ({e})")
            continue
        startup[name] = round(prepared.startup_s, 4)
        if prepared.config:
            configs[name] = dict(prepared.config)
        for i, (point, feeds) in enumerate(zip(grid, inputs)):
            progress(f"{name}: batch {point[0]}, q_len {point[1]}, k_len {point[2]}, v_len {point[3]}")
            timing = time_callable(partial(prepared.infer, feeds), warmup=settings.warmup, min_iters=settings.min_iters,
                                   max_iters=settings.max_iters, budget_s=settings.seconds, rss_before=rss_before)
            out = np.asarray(prepared.infer(feeds)).astype(np.float32)
            if name == BASELINE:
                reference.append(out)
            ref = reference[i]
            batch, q, k, v = point
            flops = flops_at[i]
            seconds = timing.median_ms / 1e3
            results.append({
                "backend": name,
                "precision": prepared.precision,
                "batch": batch, "q_len": q, "k_len": k, "v_len": v,
                **timing.summary(),
                "sequences_per_s": batch / seconds,
                "tokens_per_s": batch * (q + k + v) / seconds,
                "flops": flops,
                "gflops_per_s": flops / seconds / 1e9,
                "fraction_of_gemm_peak": flops / seconds / 1e9 / peak,
                "max_abs_error_over_std": float(np.abs(out - ref).max() / ref.std()),
            })
        del prepared
    base = {(r["batch"], r["q_len"], r["k_len"], r["v_len"]): r["median_ms"] for r in results if r["backend"] == BASELINE}
    for r in results:
        r["speedup_vs_torch_fp32"] = base[(r["batch"], r["q_len"], r["k_len"], r["v_len"])] / r["median_ms"]
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artifact": {"directory": str(manifest.directory), "name": manifest.data["name"], "dtype": manifest.dtype,
                     "config": manifest.model_config,
                     "graphs": {name: {k: g[k] for k in ("route", "fusions") if k in g} for name, g in manifest.graphs.items()}},
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "threads": settings.threads, "python": platform.python_version(),
                    "simd": cpu_simd_flags()},
        "gemm_peak_gflops": peak,
        "gemm_gflops": gemm,
        "settings": {"warmup": settings.warmup, "min_iters": settings.min_iters, "max_iters": settings.max_iters,
                     "seconds_per_point": settings.seconds, "seed": settings.seed},
        "baseline": BASELINE,
        "grid": [list(p) for p in grid],
        "startup_s": startup,
        "backend_config": configs,
        "skipped": skipped,
        "results": results,
    }
