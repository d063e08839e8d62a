"""Printing a parity report as a table (rich): every statistic when the terminal is wide enough (or with --wide), else a
compact one that fits 80 columns without cutting a value."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from ..verify.parity import ParityReport

FULL_COLUMNS = ("backend", "case", "batch", "q", "k", "v", "mask", "max abs", "max rel", "p99 abs", "abs/std", "need atol",
                "need rtol", "ok")
COMPACT_COLUMNS = ("backend", "case", "b×q×k×v", "max abs", "need atol", "ok")
LEFT = ("backend", "case", "mask", "ok")


def _num(x: float | None) -> str:
    return "inf" if x is None else f"{x:.2e}"


def _verdict(passed: bool) -> str:
    return "[green]pass[/]" if passed else "[bold red]FAIL[/]"


def _title(report: ParityReport) -> str:
    own = len({str(r.tolerance) for r in report.results}) > 1
    return (f"parity of a {report.dtype} artifact vs eager float32 — tolerance {report.tolerance.as_dict()}"
            + (" (int8, TF32 and bf16-compute rows: their own: `python -m perceiver_export docs parity`)" if own else ""))


def full_table(report: ParityReport) -> Table:
    table = Table(title=_title(report), title_justify="left")
    for col in FULL_COLUMNS:
        table.add_column(col, justify="left" if col in LEFT else "right")
    for r in report.results:
        c, s = r.comparison, r.case.sizes
        table.add_row(
            r.backend, r.case.name, str(s["batch"]), str(s["q_len"]), str(s["k_len"]), str(s["v_len"]), r.case.mask,
            _num(c.max_abs), _num(c.max_rel), _num(c.p99_abs), _num(c.max_abs_over_scale), _num(c.required_atol), _num(c.required_rtol),
            _verdict(c.passed),
        )
    return table


def compact_table(report: ParityReport) -> Table:
    """The columns that say which backend failed where and by how much; numbers never wrap, names fold rather than
    being cut to '…'."""
    table = Table(title=_title(report), title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, collapse_padding=True)
    for col in COMPACT_COLUMNS:
        numeric = col not in LEFT
        table.add_column(col, justify="right" if numeric else "left", no_wrap=numeric, overflow="fold")
    for r in report.results:
        c, s = r.comparison, r.case.sizes
        shape = "×".join(str(s[a]) for a in ("batch", "q_len", "k_len", "v_len"))
        table.add_row(r.backend, r.case.name, shape, _num(c.max_abs), _num(c.required_atol), _verdict(c.passed))
    return table


def _natural_width(table: Table, console: Console) -> int:
    """Columns the table takes when nothing is narrowed (rich's measure is capped at the console's width)."""
    return console.measure(table, options=console.options.update_width(10_000)).maximum


def print_parity(report: ParityReport, console: Console) -> None:
    table = full_table(report)
    if _natural_width(table, console) > console.width:
        table = compact_table(report)
        table.caption = "mask, max rel, p99 abs, abs/std and need rtol: --wide, or the manifest's parity report"
        table.caption_justify = "left"
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
