"""`onnx` command's work: build the model, export it, write the artifact directory, verify, publish."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..artifact.atomic import publish_dir, remove_stale_staging, staging_dir_for
from ..artifact.manifest import SCHEMA, SCHEMA_VERSION, Manifest, file_entry
from ..artifact.weights import TORCH_DTYPES, load_into, read_checkpoint, save_weights
from ..config import ModelSpec
from ..contract import DTYPES
from ..errors import ConfigError, ParityError
from ..verify.parity import ParityReport, require_parity, verify_artifact
from .graph_choice import choose_default_graph, describe, untimed
from .onnx_graph import DEFAULT_OPSET, export_onnx, save_onnx
from .calibration import read_calibration
from .int8_routes import applicable_routes, candidate_file, candidate_graph, keep_fastest_int8, write_int8_route
from .ort_graphs import GRAPH_FILES, INT8, OPTIMIZED, write_optimized_graph
from .reexport import carry_over, describe_carryover
from .versions import library_versions

DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class ExportResult:
    directory: Path
    manifest: Manifest
    report: ParityReport | None
    seconds: float
    carried: list[str] = field(default_factory=list)  # engines of the replaced artifact kept (same model.onnx)
    moved_aside: list[str] = field(default_factory=list)  # what else `directory` held, now in `previous`
    previous: Path | None = None  # DIR.previous: the replaced directory, whole; None when nothing needed keeping
    not_carried: dict[str, str] = field(default_factory=dict)  # engine file -> why it was moved aside

    def carryover_lines(self) -> list[str]:
        """What happened to the files `directory` held before, in words (empty for a fresh directory)."""
        return describe_carryover(self.carried, self.moved_aside, self.previous, self.not_carried)


def normalize_dtype(dtype: str) -> str:
    dtype = DTYPE_ALIASES.get(dtype, dtype)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be fp32, fp16 or bf16, got {dtype!r}")
    return dtype


def build_eager_model(spec: ModelSpec, seed: int, checkpoint: str | Path | None) -> torch.nn.Module:
    """The float32 eval-mode model (ours or the spec's module): seeded random weights, or the checkpoint's."""
    torch.manual_seed(seed)
    model = spec.build().float()
    if checkpoint is not None:
        load_into(model, read_checkpoint(checkpoint), f"checkpoint {checkpoint}")
    return model.eval()


def export_artifact(
    spec: ModelSpec,
    out: str | Path,
    *,
    dtype: str = "float32",
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    external_data: str = "auto",
    optimize: bool = True,
    int8: bool = False,
    int8_routes: Sequence[str] | None = None,
    calibration: Sequence[str | Path] | None = None,
    verify: bool = True,
    time_graphs: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    log: Callable[[str], None] = lambda msg: None,
    progress=None,
) -> ExportResult:
    """Export `spec` into directory `out`.

    The artifact is assembled and verified in a staging directory beside `out` and only
    then swapped into place, so `out` always holds one complete artifact: the previous
    one if this export is killed or fails parity. A failing artifact is kept at
    `<out>.rejected` for inspection and ParityError is raised.

    When `out` already holds files, nothing of them is deleted: engines built from the same model.onnx for the
    same contract are carried into the new artifact with their manifest entries (`carried`); if the old directory
    has anything else the new one lacks (other engines, bench/, loadtest/, inferenceservice.yaml, the user's
    files), it is moved whole to `<out>.previous` (replacing an older one) and those entries are `moved_aside`.

    optimize writes model.ort.onnx (ONNX Runtime fusions; dropped with a note if it fails
    parity, the plain graph is then used); int8 writes model.int8.onnx: each of int8_routes
    (default: every one that applies, see export/int8_routes.py) is written and verified, and
    the fastest that passes is kept (the export fails when none passes). calibration: .npz files
    of real inputs for the static-qdq route.

    time_graphs: after parity, time each graph verified at the artifact's tolerance at the opt shape and record
    the fastest as the manifest's default_graph (export/graph_choice.py); off, or without verify, it is plain.
    """
    if int8 and normalize_dtype(dtype) != "float32":
        raise ConfigError("--int8 quantizes a float32 export: use it with --dtype fp32")
    if (int8_routes or calibration) and not int8:
        raise ConfigError("--int8-routes and --calibration choose how the int8 graph is made: add --int8")
    if int8 and not verify and len(int8_routes or ()) > 1:
        raise ConfigError("--int8-routes: choosing between routes needs their parity results; name one route with --no-verify")
    start = time.perf_counter()
    dtype = normalize_dtype(dtype)
    out = Path(out)
    remove_stale_staging(out)

    model = build_eager_model(spec, seed, checkpoint).to(TORCH_DTYPES[dtype])
    log(f"exporting {spec.name} ({spec.module}, {sum(p.numel() for p in model.parameters()):,} parameters, {dtype}, opset {opset})")
    doc = "updated latents" if spec.is_ours else f"output of {spec.module}"
    proto, contract = export_onnx(model, spec.contract(dtype), opset, output_doc=doc)
    routes = applicable_routes(int8_routes, optimize, bool(calibration)) if int8 else []
    if int8 and not verify:
        routes = routes[:1]  # nothing to choose by: the first (with no --int8-routes, "dynamic")
    calibration_sets = read_calibration(calibration, contract) if int8 and calibration else None

    staging = staging_dir_for(out)
    try:
        onnx_files = save_onnx(proto, staging / "model.onnx", external_data)
        save_weights(model, staging / "weights.safetensors")
        files = [*onnx_files, staging / "weights.safetensors"]
        graphs = {}
        if optimize and dtype != "bfloat16":  # onnxruntime's CPU kernels have no bfloat16 MatMul
            log("writing the ONNX Runtime graph (fusions)")
            graphs[OPTIMIZED] = write_optimized_graph(staging / "model.onnx", staging / GRAPH_FILES[OPTIMIZED])
        for route in routes:
            log(f"writing an int8 graph: route {route}")
            optimized = staging / GRAPH_FILES[OPTIMIZED] if OPTIMIZED in graphs else None
            name, file = (candidate_graph(route), candidate_file(route)) if verify else (INT8, GRAPH_FILES[INT8])
            graphs[name] = write_int8_route(route, staging / "model.onnx", optimized, staging / file, calibration_sets)
        files += [staging / f for g in graphs.values() for f in g["files"]]
        manifest = Manifest(
            staging,
            {
                "schema": SCHEMA,
                "schema_version": SCHEMA_VERSION,
                "name": spec.name,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "model": {"class": spec.module, "config": dict(spec.model)},
                "dtype": dtype,
                "opset": opset,
                "seed": None if checkpoint else seed,
                "checkpoint": str(checkpoint) if checkpoint else None,
                "contract": contract.to_dict(),
                "onnx": {
                    "file": "model.onnx",
                    "external_data": onnx_files[1].name if len(onnx_files) > 1 else None,
                },
                "weights": {"file": "weights.safetensors", "format": "safetensors", "dtype": dtype},
                "graphs": graphs,
                "files": {f.name: file_entry(f) for f in files},
                "versions": library_versions(),
                "parity": None,
                "default_graph": untimed("plain: not timed (--no-verify)" if not verify else
                                         "plain: not timed (--no-time-graphs)"),
            },
        )
        manifest.write()
        report = None
        if verify:
            log("verifying against eager PyTorch")
            # The graphs this export writes; OpenVINO (a runtime of its own over model.onnx) is checked by `verify DIR`.
            report = verify_artifact(manifest, atol=atol, rtol=rtol, seed=seed, progress=progress, check_files=False,
                                     other_runtimes=False)
            keep_fastest_int8(manifest, report, GRAPH_FILES[INT8], log)
            _drop_optimized_graph_if_it_alone_failed(manifest, report)
            if not report.passed:
                rejected = out.parent / f"{out.name}.rejected"
                shutil.rmtree(rejected, ignore_errors=True)
                staging.rename(rejected)
                try:
                    require_parity(report)
                except ParityError as e:
                    error = ParityError(f"{e}; {out} was left as it was, the failing artifact is in {rejected}")
                    error.report = report
                    raise error from None
            if time_graphs:
                log("timing the verified ONNX Runtime graphs at the opt shape")
                manifest.data["default_graph"] = choose_default_graph(manifest)
                manifest.write()
                log(f"default graph: {describe(manifest.data['default_graph'])}")
        kept = carry_over(out, manifest)
        publish_dir(staging, out, previous=kept.previous)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    final = Manifest(out, manifest.data)
    return ExportResult(out, final, report, time.perf_counter() - start, kept.carried, kept.moved_aside, kept.previous,
                        {n: kept.reasons[n] for n in kept.moved_aside if n in kept.reasons})


def _drop_optimized_graph_if_it_alone_failed(manifest: Manifest, report: ParityReport) -> None:
    """A fusion that changes the numbers is not shipped; the plain graph serves instead."""
    failing = {r.backend for r in report.failures}
    name = f"onnxruntime-{OPTIMIZED}"
    if failing != {name}:
        return
    crashed = next((r.comparison.error for r in report.failures if r.comparison.error), None)
    why = f"failed to run ({crashed})" if crashed else f"failed parity (max abs error {max(r.comparison.max_abs for r in report.failures):.3g})"
    for f in manifest.data["graphs"].pop(OPTIMIZED)["files"]:
        manifest.data["files"].pop(f, None)
        (manifest.directory / f).unlink(missing_ok=True)
    report.drop_backend(name, f"the optimized ONNX Runtime graph {why} and was not written")
    manifest.data["parity"] = report.as_dict()
    manifest.write()
