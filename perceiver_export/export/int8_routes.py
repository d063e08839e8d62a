"""The ways to an int8 graph: each is written, checked by the parity grid, and the fastest that passes is kept.

Routes (all quantize only the weight matmuls; attention's activation x activation products stay float32):
  dynamic        quantize_dynamic on model.onnx: int8 weights per output channel (7-bit range), activations
                 quantized per call (DynamicQuantizeMatMul / MatMulIntegerToFloat).
  dynamic-fused  the same on the optimized graph (model.ort.onnx): the fused attention, layer norms and GELU of
                 the fp32 graph around int8 GEMMs.
  matmulnbits8   ONNX Runtime's MatMulNBits with 8-bit weights in blocks of 32 along K and accuracy level 4
                 (int8 compute), on the optimized graph when there is one.
  static-qdq     quantize_static in QDQ form with activation ranges calibrated on inputs the user passes
                 (--calibration FILE.npz ...), on the optimized graph when there is one.

export/artifact_builder.py writes each route as graph "int8.<route>", verifies them all, times the ones that pass
at the opt and the max shape, keeps the fastest (route_score) as "int8" (model.int8.onnx) and records every route's
result in the manifest.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from ..errors import ConfigError
from .calibration import CalibrationReader

ROUTES = ("dynamic", "dynamic-fused", "matmulnbits8", "static-qdq")
CHOSEN_BY = ("fastest route that passed parity: the smallest geometric mean, over the opt and the max shape, of its "
             "median ms over the best median at that shape, on this machine")
BUDGET_S = {"opt": 1.5, "max": 0.5}  # timed seconds per route and shape (at least 5 rounds each)
CANDIDATE_PREFIX = "int8."
NBITS_BLOCK = 32


def candidate_graph(route: str) -> str:
    return f"{CANDIDATE_PREFIX}{route}"


def candidate_file(route: str) -> str:
    return f"model.int8.{route}.onnx"


def applicable_routes(requested: Sequence[str] | None, has_optimized: bool, has_calibration: bool) -> list[str]:
    """The routes to try: the requested ones (default: every one that can run), checked."""
    unknown = [r for r in requested or () if r not in ROUTES]
    if unknown:
        raise ConfigError(f"--int8-routes: unknown route {unknown[0]!r}; choose from {', '.join(ROUTES)}")
    if requested:
        if "dynamic-fused" in requested and not has_optimized:
            raise ConfigError("--int8-routes dynamic-fused quantizes the optimized graph: drop --no-optimize")
        if "static-qdq" in requested and not has_calibration:
            raise ConfigError("--int8-routes static-qdq needs calibration inputs: --calibration FILE.npz [FILE.npz ...]")
        return list(dict.fromkeys(requested))
    routes = ["dynamic"] + (["dynamic-fused"] if has_optimized else []) + ["matmulnbits8"]
    return routes + (["static-qdq"] if has_calibration else [])


def write_int8_route(route: str, plain: Path, optimized: Path | None, dst: Path, calibration=None) -> dict:
    """Write one route's graph to dst; returns its manifest entry (without the selection figures).

    plain is a float32 export (export_artifact refuses --int8 with any other dtype)."""
    src = optimized if optimized is not None and route != "dynamic" else plain
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
        settings = _WRITERS[route](src, dst, calibration)
    return {
        "file": dst.name,
        "files": [dst.name],
        "route": route,
        "from": "optimized" if src == optimized else "plain",
        **settings,
    }


def _dynamic(src: Path, dst: Path, calibration) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = {"MatMulConstBOnly": True}
    # reduce_range (7-bit weights) keeps u8 x s8 products clear of int16 saturation in AVX2 kernels (no VNNI):
    # measured on perceiver-base, max error / output std 0.33 without it on such a CPU, 0.038 with it.
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True,
                     weight_type=QuantType.QInt8, extra_options=options)
    return {"producer": "onnxruntime.quantization.quantize_dynamic",
            "settings": {"op_types": ["MatMul"], "per_channel": True, "reduce_range": True, "weight_type": "QInt8", **options}}


def _matmulnbits8(src: Path, dst: Path, calibration) -> dict:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=NBITS_BLOCK, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=NBITS_BLOCK, is_symmetric=True,
                                     accuracy_level=4, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), False)
    return {"producer": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer",
            "settings": {"bits": 8, "block_size": NBITS_BLOCK, "symmetric": True, "accuracy_level": 4}}


def _static_qdq(src: Path, dst: Path, calibration) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    options = {"MatMulConstBOnly": True}  # calibration: checked sets; applicable_routes requires them for this route
    quantize_static(str(src), str(dst), CalibrationReader(calibration, batch=1), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, extra_options=options)
    samples = sum(next(iter(s.values())).shape[0] for s in calibration)
    return {"producer": "onnxruntime.quantization.quantize_static",
            "settings": {"format": "QDQ", "op_types": ["MatMul"], "per_channel": True, "reduce_range": True,
                         "activation_type": "QUInt8", "weight_type": "QInt8", "calibration": "MinMax", **options},
            "calibration": {"samples": samples, "files": len(calibration)}}


_WRITERS = {"dynamic": _dynamic, "dynamic-fused": _dynamic, "matmulnbits8": _matmulnbits8, "static-qdq": _static_qdq}


def route_score(graph: str, medians: dict[str, dict[str, float]]) -> float:
    """Geometric mean over the timed shapes of graph's median / the best median there (1.0: fastest everywhere).

    Routes trade places with the shape (a fused graph wins on long sequences, loses on short ones), so neither
    shape alone decides; 0.0 when nothing was timed (a single route)."""
    if not medians:
        return 0.0
    ratios = [m[graph] / min(m.values()) for m in medians.values()]
    return float(np.prod(ratios) ** (1 / len(ratios)))


def keep_fastest_int8(manifest, report, final_file: str, log=lambda msg: None) -> None:
    """Of the int8 routes that passed parity, keep the fastest (route_score) as graph "int8"; drop the rest.

    When none passed, nothing changes: the report fails and the export with it. Every route's outcome (passed or
    not, its worst error, its time) is recorded in the kept graph's entry, with how the choice was made.
    """
    from ..machine import cpu_name, cpu_simd_flags
    from .graph_choice import time_graphs

    candidates = [g for g in manifest.graphs if g.startswith(CANDIDATE_PREFIX)]
    if not candidates:
        return
    backend = {g: f"onnxruntime-{g}" for g in candidates}
    failed = {r.backend for r in report.failures}
    passed = [g for g in candidates if backend[g] not in failed]
    if not passed:
        return
    outcome = {}
    for g in candidates:
        results = [r for r in report.results if r.backend == backend[g]]
        worst = max((r.comparison.max_abs_over_scale for r in results), default=float("inf"))
        crashed = next((r.comparison.error for r in results if r.comparison.error), None)
        outcome[g.removeprefix(CANDIDATE_PREFIX)] = {
            "passed": g in passed,
            "worst_max_abs_over_std": None if not np.isfinite(worst) else round(float(worst), 5),
            **({"error": crashed} if crashed else {}),
        }
    axes = manifest.contract.axes
    shapes = {"opt": {a: r.opt for a, r in axes.items()}, "max": {a: r.max for a, r in axes.items()}}
    threads = os.cpu_count() or 1
    medians: dict[str, dict[str, float]] = {}
    if len(passed) > 1:
        log(f"timing the int8 routes that passed ({', '.join(g.removeprefix(CANDIDATE_PREFIX) for g in passed)}) "
            "at the opt and the max shape")
        for label, sizes in shapes.items():
            medians[label] = time_graphs(manifest, passed, threads, budget_s=BUDGET_S[label], sizes=sizes)
        for g in passed:
            outcome[g.removeprefix(CANDIDATE_PREFIX)]["median_ms"] = {label: m[g] for label, m in medians.items()}
    winner = min(passed, key=lambda g: route_score(g, medians))
    route = winner.removeprefix(CANDIDATE_PREFIX)
    directory = manifest.directory
    for g in candidates:
        if g == winner:
            continue
        entry = manifest.data["graphs"].pop(g)
        for f in entry["files"]:
            manifest.data["files"].pop(f, None)
            (directory / f).unlink(missing_ok=True)
        why = "failed parity" if not outcome[g.removeprefix(CANDIDATE_PREFIX)]["passed"] else "slower (opt and max shapes)"
        report.drop_backend(backend[g], f"int8 route {g.removeprefix(CANDIDATE_PREFIX)} not kept: {why}")
    entry = manifest.data["graphs"].pop(winner)
    old = entry["file"]
    (directory / old).rename(directory / final_file)
    manifest.data["files"][final_file] = manifest.data["files"].pop(old)
    entry["file"], entry["files"] = final_file, [final_file]
    entry["selection"] = {
        "chosen_by": CHOSEN_BY,
        "shapes": shapes,
        "threads": threads,
        "cpu": cpu_name(),
        "simd": cpu_simd_flags(),
        "routes": outcome,
    }
    manifest.data["graphs"]["int8"] = entry
    report.rename_backend(backend[winner], "onnxruntime-int8")
    report.notes.append(f"int8 route kept: {route}")
    manifest.data["parity"] = report.as_dict()
    manifest.write()
