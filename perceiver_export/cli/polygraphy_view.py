"""`verify`'s Polygraphy hand-off: write the saved cases and print the commands that re-check them with NVIDIA's tool."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..artifact.manifest import Manifest
from ..verify.parity import ParityReport
from ..verify.polygraphy import (
    CaseRecorder,
    PolygraphyFiles,
    as_onnxrt,
    engine_run_command,
    reduce_commands,
    run_command,
    save_polygraphy_data,
)


def default_failure_dir(artifact: Path) -> Path:
    """Beside the artifact, like DIR.rejected/: the artifact directory itself only changes as a whole."""
    return artifact.parent / f"{artifact.name}.polygraphy"


def print_commands(manifest: Manifest, files: PolygraphyFiles, report: ParityReport, console: Console) -> None:
    tol = report.tolerance

    def show(title: str, *commands) -> None:
        console.print(title)
        for c in commands:
            console.print(f"  {c}", markup=False, highlight=False, soft_wrap=True)

    show("re-check with Polygraphy and TensorRT (on a GPU; TensorRT for RTX: prefix POLYGRAPHY_USE_TENSORRT_RTX=1):",
         run_command(manifest, files, tol))
    for engine in manifest.engines:
        show(f"the artifact's engine {engine} on Polygraphy's TensorRT runner:", engine_run_command(manifest, engine, files, tol))
    show("the same check on ONNX Runtime (runs anywhere):", as_onnxrt(run_command(manifest, files, tol)))
    show(f"bisect a failing graph to its smallest failing subgraph (on the worst case, '{files.worst_case.case.name}'):",
         *reduce_commands(manifest, files, tol))


def save_and_print(manifest: Manifest, recorder: CaseRecorder, directory: Path, report: ParityReport, console: Console) -> None:
    files = save_polygraphy_data(manifest, recorder, directory)
    which = "the failing" if recorder.failed_only else "all"
    console.print(f"wrote {which} {len(files.cases)} parity case(s) for Polygraphy to {files.directory}/ "
                  f"({files.inputs.name}, {files.outputs.name}, {files.worst.name})", highlight=False)
    print_commands(manifest, files, report, console)
