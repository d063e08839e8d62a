"""verify: run an artifact's backends against eager PyTorch over the parity grid, and refuse on a mismatch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..artifact.manifest import Manifest, read_manifest
from ..errors import BackendUnavailableError, InputError, ParityError
from ..runtime import load
from ..runtime.arrays import NUMPY_DTYPES
from .compare import TOLERANCES, Comparison, Tolerance, compare
from .grid import Case, case_inputs, parity_cases, run_order

REFERENCE = "torch eager, float32, the artifact's weights"


@dataclass
class CaseResult:
    backend: str
    case: Case
    comparison: Comparison
    seconds: float
    tolerance: Tolerance

    def as_dict(self) -> dict:
        return {
            "backend": self.backend,
            "case": self.case.name,
            "sizes": dict(self.case.sizes),
            "mask": self.case.mask,
            **self.comparison.as_dict(),
            "tolerance": self.tolerance.as_dict(),
            "seconds": round(self.seconds, 4),
        }


@dataclass
class ParityReport:
    dtype: str
    tolerance: Tolerance  # the dtype's default; a backend may have its own (int8, TF32), see CaseResult
    seed: int
    backends: list[str]
    notes: list[str] = field(default_factory=list)
    results: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.comparison.passed for r in self.results)

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if not r.comparison.passed]

    def drop_backend(self, backend: str, note: str) -> None:
        """Forget one backend's results (a variant that will not be shipped), saying why."""
        self.results = [r for r in self.results if r.backend != backend]
        self.backends = [b for b in self.backends if b != backend]
        self.notes.append(note)

    def rename_backend(self, old: str, new: str) -> None:
        """A variant checked under a working name and shipped under another (the int8 route that was kept)."""
        for r in self.results:
            if r.backend == old:
                r.backend = new
        self.backends = [new if b == old else b for b in self.backends]

    def as_dict(self) -> dict:
        worst = max(self.results, key=lambda r: r.comparison.max_abs, default=None)
        return {
            "passed": self.passed,
            "reference": REFERENCE,
            "dtype": self.dtype,
            "tolerance": self.tolerance.as_dict(),
            "seed": self.seed,
            "backends": self.backends,
            "notes": self.notes,
            "worst_max_abs": worst.comparison.max_abs if worst and np.isfinite(worst.comparison.max_abs) else None,
            "cases": [r.as_dict() for r in self.results],
        }


def default_runners(manifest: Manifest, other_runtimes: bool = True) -> tuple[list, list[str]]:
    """A runner for every backend and graph that can run this artifact here, and notes on the ones that cannot.

    other_runtimes=False checks only the artifact's own ONNX Runtime graphs (what an export writes and vouches for);
    True adds the runtimes that read model.onnx themselves (OpenVINO) and the artifact's TensorRT engines."""
    notes: list[str] = []
    if manifest.dtype == "bfloat16":
        runners = [load(manifest, backend="onnx-reference", check_files=False)]
        notes.append("onnxruntime's CPU kernels have no bfloat16 MatMul: the graph is checked with ONNX's reference evaluator")
    else:
        runners = [load(manifest, backend="onnxruntime", check_files=False, graph=g) for g in ("plain", *manifest.graphs)]
    if not other_runtimes:
        return runners, notes
    if manifest.dtype == "float32":
        for backend in ("openvino", "openvino-bf16"):
            try:
                runners.append(load(manifest, backend=backend, check_files=False))
            except BackendUnavailableError as e:
                notes.append(f"{backend} not run: {e}")
    for name in manifest.engines:
        try:
            runners.append(load(manifest, backend="tensorrt", check_files=False, engine=name))
        except BackendUnavailableError as e:
            notes.append(f"{name} not run: {e}")
    return runners, notes


def runners_for(manifest: Manifest, backend: str) -> list:
    """The runners one --backends name stands for: "onnxruntime" is every ONNX Runtime graph the manifest lists (plain,
    optimized, int8), "onnxruntime-NAME" one of them; any other name is that backend's one runner."""
    if backend == "onnxruntime":
        return [load(manifest, backend="onnxruntime", check_files=False, graph=g) for g in ("plain", *manifest.graphs)]
    if backend.startswith("onnxruntime-"):
        return [load(manifest, backend="onnxruntime", check_files=False, graph=backend.removeprefix("onnxruntime-"))]
    return [load(manifest, backend=backend, check_files=False)]


def verify_artifact(
    directory: str | Path | Manifest,
    backends: Sequence[str] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    write: bool = True,
    progress=None,
    check_files: bool = True,
    on_case=None,
    other_runtimes: bool = True,
) -> ParityReport:
    """Compare each backend with eager float32 PyTorch on the parity grid; store the report in the manifest.

    Never raises on a mismatch: the caller decides (the CLI exits 1); see `require_parity`. on_case(case, feeds,
    reference, results) sees each case's inputs (every graph input, the mask filled in as the runners do), the
    eager output and the backends' results: verify/polygraphy.py's CaseRecorder saves them for Polygraphy.
    """
    manifest = directory if isinstance(directory, Manifest) else read_manifest(directory)
    if check_files:  # the exporter passes False: it hashed these very files a moment ago
        manifest.check_files()
        manifest.check_external_data()
    contract = manifest.contract
    if backends:
        runners, notes = [r for b in backends for r in runners_for(manifest, b)], []
    else:
        runners, notes = default_runners(manifest, other_runtimes)
    for runner in runners:  # settings that decide a backend's numbers, when they are not the library's defaults
        if getattr(runner, "compile_config", None):
            notes.append(f"{runner.backend} compiled with {', '.join(f'{k}={v}' for k, v in runner.compile_config.items())}")
    default = TOLERANCES[manifest.dtype]
    overridden = atol is not None or rtol is not None
    if overridden:
        default = Tolerance(default.atol if atol is None else atol, default.rtol if rtol is None else rtol)
    report = ParityReport(dtype=manifest.dtype, tolerance=default, seed=seed, backends=[r.backend for r in runners], notes=notes)

    def tolerance(runner) -> Tolerance:
        if overridden:
            return default
        if str(getattr(runner, "graph", "")).split(".")[0] == "int8":  # int8, and int8.<route> while choosing
            return TOLERANCES["int8"]
        if getattr(runner, "precision", None) == "bf16" and manifest.dtype == "float32":
            return TOLERANCES["bf16-compute"]
        if getattr(runner, "tf32", False) and manifest.dtype == "float32":
            return TOLERANCES["tf32"]
        return default

    reference = load(manifest, backend="torch", check_files=False, dtype="float32")
    # One runner per backend takes every case, in an order that changes shapes both ways on every axis.
    cases = run_order(parity_cases(contract), contract)
    dtype = NUMPY_DTYPES[manifest.dtype]
    rng = np.random.default_rng(seed)
    total = len(cases) * len(runners)
    for case in cases:
        feeds = case_inputs(contract, case, rng)
        # Inputs are rounded to the artifact's dtype first so the reference sees exactly what the backend sees.
        feeds = {n: (x.astype(dtype) if x is not None and x.dtype != np.bool_ else x) for n, x in feeds.items()}
        ref = reference.infer(feeds)  # the float32 runner upcasts the rounded inputs
        case_results = []
        for runner in runners:
            tol = tolerance(runner)
            start = time.perf_counter()
            try:
                out = runner.infer(feeds)
            except InputError:
                raise  # the grid lies inside the contract: this would be our bug, not the backend's
            except Exception as e:  # a backend that crashes on a valid input fails parity; it does not abort it
                first_line = next(iter(str(e).strip().splitlines()), "")
                comparison = Comparison.failed_run(f"{type(e).__name__}: {first_line[:500]}")
            else:
                comparison = compare(out.astype(np.float32), ref, tol.atol, tol.rtol, tol.scale_atol)
            seconds = time.perf_counter() - start
            result = CaseResult(runner.backend, case, comparison, seconds, tol)
            report.results.append(result)
            case_results.append(result)
            if progress:
                progress(result, len(report.results), total)
        if on_case:
            given = {n: x for n, x in feeds.items() if x is not None}
            on_case(case, reference.with_defaults(given, case.sizes), ref, case_results)
    if write:
        manifest.data["parity"] = report.as_dict()
        manifest.write()
    return report


def require_parity(report: ParityReport) -> None:
    if not report.passed:
        worst = max(report.failures, key=lambda r: r.comparison.required_atol)
        if worst.comparison.error:
            what = f"failed to run: {worst.comparison.error}"
        else:
            what = (f"max abs error {worst.comparison.max_abs:.3g} needs atol {worst.comparison.required_atol:.3g} "
                    f"at rtol {worst.tolerance.rtol:g} (allowed {worst.tolerance.as_dict()})")
        error = ParityError(
            f"{len(report.failures)} of {len(report.results)} parity cases failed; worst: {worst.backend} "
            f"'{worst.case.name}' ({worst.case.label}) {what}"
        )
        error.report = report
        raise error

