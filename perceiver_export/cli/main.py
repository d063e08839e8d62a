"""`python -m perceiver_export ...`: the command line. Exit codes: 0 ok, 1 parity failed, 2 usage, 3 other errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from .. import __version__
from ..contract import AXES, AxisRange
from ..errors import ParityError, PerceiverExportError

EXIT_OK, EXIT_PARITY, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
ARTIFACTS = Path("artifacts")


def _axis_option(axis: str) -> str:
    return "--" + axis.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m perceiver_export",
        description="Export a PerceiverLayer to ONNX with dynamic axes and prove every backend matches eager PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"perceiver-export {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    onnx = sub.add_parser("onnx", help="export a model to ONNX with dynamic axes, then verify it against eager PyTorch")
    onnx.add_argument("--config", default="perceiver-base", help="model spec: a .toml path or a name under models/ (default: perceiver-base)")
    onnx.add_argument("--checkpoint", help="weights: .safetensors, or a torch checkpoint (loaded with weights_only=True); default: seeded random")
    onnx.add_argument("--out", type=Path, help="output directory (default: artifacts/<model name>)")
    onnx.add_argument("--opset", type=int, default=None, help="ONNX opset, 17..23 (default: 18)")
    onnx.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="precision of the exported graph (default: fp32)")
    onnx.add_argument("--seed", type=int, default=0, help="seed for random weights and the parity inputs (default: 0)")
    for axis in AXES:
        onnx.add_argument(_axis_option(axis), metavar="MIN:OPT:MAX", help=f"range of {axis} (default: from the config)")
    onnx.add_argument("--external-data", choices=["auto", "always", "never"], default="auto",
                      help="keep weights in model.onnx.data: auto = only when over protobuf's 2 GB (default)")
    onnx.add_argument("--no-verify", action="store_true", help="skip the parity check (the manifest then records parity: null)")
    _tolerance_options(onnx)

    verify = sub.add_parser("verify", help="check an artifact's files and its parity with eager PyTorch; exit 1 on a mismatch")
    verify.add_argument("dir", type=Path, help="artifact directory")
    verify.add_argument("--backends", help="comma-separated: onnxruntime, onnx-reference, torch (the artifact dtype in eager; default: every exported-graph backend that runs here)")
    verify.add_argument("--seed", type=int, default=0, help="seed of the parity inputs (default: 0)")
    verify.add_argument("--no-write", action="store_true", help="do not store the report in the manifest")
    _tolerance_options(verify)
    return parser


def _tolerance_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--atol", type=float, help="absolute tolerance (default: by dtype, see README)")
    p.add_argument("--rtol", type=float, help="relative tolerance (default: by dtype, see README)")


class _CaseProgress:
    """A transient progress bar over parity cases; failures are printed as they happen."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = Progress(TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                            console=console, transient=True)
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def __call__(self, result, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task("", total=total)
        self.bar.update(self.task, completed=done, description=f"{result.backend}: {result.case.name}")
        if not result.comparison.passed:
            self.console.print(f"  [bold red]✗[/] {result.backend} '{result.case.name}' max abs {result.comparison.max_abs:.2e}")


def cmd_onnx(args, console: Console) -> int:
    from ..config import load_spec
    from ..export.artifact_builder import export_artifact
    from ..export.onnx_graph import DEFAULT_OPSET
    from .report_table import print_parity

    spec = load_spec(args.config)
    overrides = {a: AxisRange.parse(getattr(args, a), _axis_option(a)) for a in AXES if getattr(args, a) is not None}
    spec = spec.with_axes(overrides)
    out = args.out or ARTIFACTS / spec.name
    try:
        with _CaseProgress(console) as progress:
            result = export_artifact(
                spec, out, dtype=args.dtype, opset=args.opset or DEFAULT_OPSET, seed=args.seed, checkpoint=args.checkpoint,
                external_data=args.external_data, verify=not args.no_verify, atol=args.atol, rtol=args.rtol,
                log=console.print, progress=progress,
            )
    except ParityError as e:
        if e.report is not None:
            print_parity(e.report, console)
        raise
    if result.report is not None:
        print_parity(result.report, console)
    files = ", ".join(result.manifest.data["files"])
    console.print(f"wrote {result.directory}/ ({files}, manifest.json) in {result.seconds:.1f} s", highlight=False)
    return EXIT_OK


def cmd_verify(args, console: Console) -> int:
    from ..verify.parity import verify_artifact
    from .report_table import print_parity

    backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
    with _CaseProgress(console) as progress:
        report = verify_artifact(args.dir, backends=backends, atol=args.atol, rtol=args.rtol, seed=args.seed,
                                 write=not args.no_write, progress=progress)
    print_parity(report, console)
    return EXIT_OK if report.passed else EXIT_PARITY


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Wide enough for the parity table when piped to a file or CI log.
    width = None if sys.stdout.isatty() else 160
    console = Console(highlight=False, width=width)
    errors = Console(stderr=True, highlight=False, width=width)
    try:
        return {"onnx": cmd_onnx, "verify": cmd_verify}[args.command](args, console)
    except ParityError as e:
        errors.print(f"[bold red]parity failed:[/] {e}")
        return EXIT_PARITY
    except PerceiverExportError as e:
        errors.print(f"[bold red]error ({type(e).__name__}):[/] {e}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
