"""Printing `doctor`'s report: versions, the GPU, what runs here, then each check as it finishes."""

from __future__ import annotations

from rich.console import Console

from ..doctor import FAILED, NOT_HERE, OK, DoctorReport, Step

MARKS = {OK: "[green]✓[/]", FAILED: "[bold red]✗[/]", NOT_HERE: "–", "skipped": "·"}


def print_environment(report: DoctorReport, console: Console) -> None:
    env, gpu = report.environment, report.gpu
    console.print(f"[bold]perceiver-export {env['perceiver-export']} doctor[/] — Python {env['python']} on {env['platform']}")
    for name, version in env["packages"].items():
        extra = ""
        if name == "torch":
            extra = f" (CUDA {env['torch_cuda']})" if env["torch_cuda"] else " (CPU build)"
        elif name.startswith("onnxruntime") and env["onnxruntime_providers"]:
            extra = f" ({', '.join(env['onnxruntime_providers'])})"
        console.print(f"  {name:<16}{version or 'not installed'}{extra}")
    if gpu["name"]:
        console.print(f"  {'GPU':<16}{gpu['name']}, {gpu['compute_capability']}, driver {gpu['driver'] or 'unknown'}"
                      + ("" if gpu["usable"] else f" — not usable: {gpu['reason']}"))
    else:
        console.print(f"  {'GPU':<16}none: {gpu['reason']}")
    console.print("backends")
    for b in report.backends:
        if b.version is None:
            text = "not installed" + (f" — {b.install}" if b.install else "")
        else:
            runs = f"runs here: {b.detail}" if b.runs_here else f"cannot run here: {b.detail}"
            text = runs if b.builds_here is None else ("builds here; " if b.builds_here else "cannot build here; ") + runs
        console.print(f"  {b.name:<16}{text}", markup=False, highlight=False, soft_wrap=True)


def print_step(step: Step, console: Console) -> None:
    text = step.detail if step.status in (OK, "skipped") else (f"not here: {step.detail}" if step.status == NOT_HERE else step.error)
    console.print(f"  {MARKS[step.status]} {step.name:<11}", end="")
    console.print(f"{text} ({step.seconds:g} s)" if step.status == OK else text, markup=False, highlight=False, soft_wrap=True)
    if step.fix and step.status != OK:
        console.print(f"{'':15}→ {step.fix}", markup=False, highlight=False, soft_wrap=True)


def print_verdict(report: DoctorReport, console: Console) -> None:
    absent = [s.name for s in report.steps if s.status == NOT_HERE]
    if report.passed:
        console.print("[green]PASSED[/]: everything that can run here ran and passed"
                      + (f" (not here: {', '.join(absent)})" if absent else ""))
    else:
        failed = [s.name for s in report.steps if s.status == FAILED]
        console.print(f"[bold red]FAILED[/]: {', '.join(failed)} (exit {report.exit_code})")
    if report.workdir:
        console.print(f"kept the artifact and Polygraphy's files in {report.workdir}")
