"""Polygraphy interop: the parity grid's inputs and eager outputs in Polygraphy's JSON formats, and the commands
that re-check an artifact with NVIDIA's tool instead of ours (`polygraphy run`, then `polygraphy debug reduce`).

Polygraphy is optional at runtime: it is imported only to write its files, with what to install when missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..artifact.manifest import Manifest
from ..engines.commands import POLYGRAPHY_RTX_ENV, Command, polygraphy_shape_args
from ..engines.profiles import default_profile
from ..errors import BackendUnavailableError, ConfigError
from .compare import Tolerance
from .grid import Case

INPUTS, OUTPUTS, WORST = "inputs.json", "eager.json", "worst_inputs.json"
REFERENCE_RUNNER = "eager-torch-float32"  # the runner name --load-outputs compares against
INSTALL = "pip install polygraphy (or: pip install 'perceiver-export[polygraphy]')"
# Options that only mean something to Polygraphy's TensorRT runner; `as_onnxrt` drops them with their values.
_TRT_ONLY = ("--strongly-typed", "--tf32", "--pool-limit", "--builder-optimization-level", "--compute-capabilities",
             "--trt-config-postprocess-script")


@dataclass
class SavedCase:
    case: Case
    feeds: dict[str, np.ndarray]  # every graph input, the mask filled in as the runners do
    reference: np.ndarray
    need_atol: float  # the largest atol any backend needed on this case: picks the worst case


@dataclass
class CaseRecorder:
    """`verify_artifact(on_case=...)`: keeps every case, or (failed_only) those where some backend failed."""

    failed_only: bool = True
    cases: list[SavedCase] = field(default_factory=list)

    def __call__(self, case: Case, feeds: Mapping[str, np.ndarray], reference: np.ndarray, results: Sequence) -> None:
        if self.failed_only and all(r.comparison.passed for r in results):
            return
        need = max((r.comparison.required_atol for r in results), default=0.0)  # inf where a backend raised
        self.cases.append(SavedCase(case, dict(feeds), reference, need))


@dataclass
class PolygraphyFiles:
    directory: Path
    inputs: Path  # every kept case, one iteration each, in Polygraphy's JSON input format
    outputs: Path  # eager float32 outputs of the same iterations, as Polygraphy RunResults
    worst: Path  # the worst case alone: what `debug reduce` bisects on
    cases: list[Case]
    worst_case: SavedCase


def _polygraphy():
    try:
        from polygraphy.comparator import RunResults
        from polygraphy.comparator.struct import IterationResult
        from polygraphy.json import save_json
        from polygraphy.logger import G_LOGGER
    except ImportError as e:
        raise BackendUnavailableError(f"Polygraphy is not installed ({e}): {INSTALL}") from None
    return RunResults, IterationResult, save_json, G_LOGGER


def polygraphy_available(manifest: Manifest):
    """Polygraphy's pieces for this artifact, or the error saying why its files cannot be written."""
    if manifest.dtype == "bfloat16":
        raise ConfigError("Polygraphy's JSON data has no bfloat16 arrays: --save-inputs covers float32 and float16 artifacts")
    return _polygraphy()


def save_polygraphy_data(manifest: Manifest, recorder: CaseRecorder, directory: str | Path) -> PolygraphyFiles:
    """Write the recorded cases as DIRECTORY/inputs.json, eager.json and worst_inputs.json."""
    RunResults, IterationResult, save_json, G_LOGGER = polygraphy_available(manifest)
    if not recorder.cases:
        raise ConfigError("no parity cases to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    output = manifest.contract.outputs[0].name
    worst = max(recorder.cases, key=lambda c: c.need_atol)
    files = PolygraphyFiles(directory, directory / INPUTS, directory / OUTPUTS, directory / WORST,
                            [c.case for c in recorder.cases], worst)
    with G_LOGGER.verbosity(G_LOGGER.ERROR):  # its "Saving ..." lines are noise next to our report
        save_json([c.feeds for c in recorder.cases], str(files.inputs))
        save_json([worst.feeds], str(files.worst))
        iterations = [IterationResult({output: c.reference}, runner_name=REFERENCE_RUNNER) for c in recorder.cases]
        RunResults([(REFERENCE_RUNNER, iterations)]).save(str(files.outputs))
    return files


def run_command(manifest: Manifest, files: PolygraphyFiles, tolerance: Tolerance, rtx: bool = False) -> Command:
    """`polygraphy run model.onnx --trt` with the contract's profile, the saved inputs and the eager outputs to compare to.

    Polygraphy fails an element only when it misses both atol and rtol (|d| > atol and |d| > rtol·|ref|), so it is
    at most 2× looser than our atol + rtol·|ref|.
    """
    contract = manifest.contract
    shapes = default_profile(contract).to_dict(contract)["shapes"]
    argv = ["polygraphy", "run", str(manifest.onnx_path), "--trt", "--strongly-typed", *polygraphy_shape_args([shapes]),
            "--load-inputs", str(files.inputs), "--load-outputs", str(files.outputs), *_tolerance_args(tolerance)]
    return Command(tuple(argv), POLYGRAPHY_RTX_ENV if rtx else {})


def engine_run_command(manifest: Manifest, engine: str, files: PolygraphyFiles, tolerance: Tolerance) -> Command:
    """`polygraphy run model.<flavor>.engine --trt`: the artifact's own engine on Polygraphy's TensorRT runner."""
    entry = manifest.engines[engine]
    argv = ["polygraphy", "run", str(manifest.directory / engine), "--model-type", "engine", "--trt",
            "--load-inputs", str(files.inputs), "--load-outputs", str(files.outputs), *_tolerance_args(tolerance)]
    return Command(tuple(argv), POLYGRAPHY_RTX_ENV if entry["flavor"] == "tensorrt_rtx" else {})


def reduce_commands(manifest: Manifest, files: PolygraphyFiles, tolerance: Tolerance) -> list[Command]:
    """Bisect a failing graph to the smallest subgraph that still mismatches, on the worst case's shapes.

    Polygraphy's recipe: freeze the input shapes, take every intermediate tensor from ONNX Runtime (which passed
    parity) as the golden values, then let `debug reduce` run TensorRT on ever smaller subgraphs. (Polygraphy 0.53.6
    folds this graph's shape arithmetic wrongly with `sanitize --fold-constants`, so it is left out.)
    """
    d = files.directory
    static, golden, layerwise = d / "static.onnx", d / "layerwise_golden.json", d / "layerwise_inputs.json"
    shapes = [f"{name}:[{','.join(map(str, x.shape))}]" for name, x in files.worst_case.feeds.items()]
    iteration = d / "polygraphy_debug.onnx"  # each subgraph debug reduce tries, checked by the command after --check
    check = ["polygraphy", "run", str(iteration), "--trt", "--strongly-typed", "--load-inputs", str(layerwise),
             "--load-outputs", str(golden), *_tolerance_args(tolerance)]
    return [
        Command(("polygraphy", "surgeon", "sanitize", str(manifest.onnx_path), "--override-input-shapes", *shapes,
                 "-o", str(static))),
        Command(("polygraphy", "run", str(static), "--onnxrt", "--onnx-outputs", "mark", "all",
                 "--load-inputs", str(files.worst), "--save-outputs", str(golden))),
        Command(("polygraphy", "data", "merge", str(files.worst), str(golden), "-o", str(layerwise))),
        Command(("polygraphy", "debug", "reduce", str(static), "-o", str(d / "reduced.onnx"), "--mode=bisect",
                 "--load-inputs", str(layerwise), "--iter-artifact", str(iteration),
                 "--save-debug-replay", str(d / "debug_replay.json"), "--check", *check)),
    ]


def _tolerance_args(tolerance: Tolerance) -> list[str]:
    return ["--atol", f"{tolerance.atol:g}", "--rtol", f"{tolerance.rtol:g}"]


def as_onnxrt(command: Command) -> Command:
    """The same check on ONNX Runtime: `--trt` becomes `--onnxrt`, TensorRT-only options go with their values."""
    argv, skipping = [], False
    for arg in command.argv:
        if arg.startswith("--"):
            skipping = arg.startswith("--trt-") or arg in _TRT_ONLY
            if skipping:
                continue
            argv.append("--onnxrt" if arg == "--trt" else arg)
        elif not skipping:
            argv.append(arg)
    return Command(tuple(argv))


@dataclass(frozen=True)
class PolygraphyRun:
    returncode: int
    tail: str  # the last lines of its output: the verdict and what failed


def run_polygraphy(command: Command, timeout: float = 600) -> PolygraphyRun:
    """Run a `polygraphy ...` command as printed, with this Python's Polygraphy as `polygraphy` (also for the
    commands Polygraphy itself starts, such as `debug reduce --check polygraphy run ...`)."""
    if command.argv[0] != "polygraphy":
        raise ValueError(f"not a polygraphy command: {command}")
    entry = "import sys; from polygraphy.tools import main; sys.argv[0] = 'polygraphy'; sys.exit(main())"
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # the venv's `polygraphy` script
    result = subprocess.run([sys.executable, "-c", entry, *command.argv[1:]], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "PATH": path, **command.env})
    lines = (result.stdout + result.stderr).strip().splitlines()
    return PolygraphyRun(result.returncode, "\n".join(lines[-15:]))
