"""Printing a parity report as a table (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..verify.parity import ParityReport


def _num(x: float | None) -> str:
    return "inf" if x is None else f"{x:.2e}"


def print_parity(report: ParityReport, console: Console) -> None:
    table = Table(
        title=f"parity of a {report.dtype} artifact vs eager float32 — tolerance {report.tolerance.as_dict()}"
        + ("" if len({str(r.tolerance) for r in report.results}) <= 1 else " (int8, TF32 and bf16-compute rows: their own: `python -m perceiver_export docs parity`)"),
        title_justify="left",
    )
    for col in ("backend", "case", "batch", "q", "k", "v", "mask", "max abs", "max rel", "p99 abs", "abs/std", "need atol", "need rtol", "ok"):
        table.add_column(col, justify="right" if col not in ("backend", "case", "mask", "ok") else "left")
    for r in report.results:
        c, s = r.comparison, r.case.sizes
        table.add_row(
            r.backend, r.case.name, str(s["batch"]), str(s["q_len"]), str(s["k_len"]), str(s["v_len"]), r.case.mask,
            _num(c.max_abs), _num(c.max_rel), _num(c.p99_abs), _num(c.max_abs_over_scale), _num(c.required_atol), _num(c.required_rtol),
            "[green]pass[/]" if c.passed else "[bold red]FAIL[/]",
        )
    console.print(table)
    errors = {}
    for r in report.results:
        if r.comparison.error:
            errors.setdefault((r.backend, r.comparison.error), []).append(r.case.name)
    for (backend, error), cases in errors.items():
        console.print(f"[bold red]{backend}[/] failed to run ({len(cases)} case(s): {', '.join(cases)}): {error}")
    for note in report.notes:
        console.print(f"note: {note}")
    verdict = "[green]PASSED[/]" if report.passed else f"[bold red]FAILED[/] ({len(report.failures)} of {len(report.results)} cases)"
    console.print(f"parity {verdict}")
