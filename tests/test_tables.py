"""The parity and bench tables fit an 80-column terminal without cutting a value; --wide prints every column."""

import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from perceiver_export.artifact.manifest import read_manifest
from perceiver_export.bench.report import print_bench
from perceiver_export.cli.report_table import print_parity
from perceiver_export.verify.parity import verify_artifact
from tests.conftest import REPO

BENCH_JSON = REPO / "docs" / "bench-perceiver-base.json"  # a real run: seven backends, long names
FULL_COLUMNS = ["backend", "case", "batch", "q", "k", "v", "mask", "max abs", "max rel", "p99 abs", "abs/std", "need atol",
                "need rtol", "ok"]
BENCH_FULL = ["backend", "prec", "runs", "min ms", "median ms", "p90 ms", "p99 ms", "seq/s", "tokens/s", "GFLOP/s", "% peak",
              "× torch", "err/std", "RSS +MB"]
BENCH_COMPACT = ["backend", "prec", "median ms", "p99 ms", "seq/s", "GFLOP/s", "× torch"]


def rendered(print_fn, data, width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    print_fn(data, console)
    return console.export_text().splitlines()


def header_cells(lines: list[str], first: str) -> list[str]:
    header = next(line for line in lines if line.strip("┃│ ").startswith(first))
    return [c for c in (part.strip() for part in header.replace("┃", "  ").split("  ")) if c]


@pytest.fixture(scope="module")
def report(tiny_fp32):
    return verify_artifact(read_manifest(tiny_fp32.directory), write=False)


def test_parity_table_compact_at_80_columns_full_when_wide(report):
    lines = rendered(print_parity, report, 80)
    text = "\n".join(lines)
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text
    rows = [line.split() for line in lines]
    for r in report.results:  # each result is a row: its backend, its max abs and its verdict, none of them cut
        assert any(row[0] == r.backend and f"{r.comparison.max_abs:.2e}" in row and row[-1] == "pass" for row in rows), r
    assert {"onnxruntime", "onnxruntime-optimized"} <= {row[0] for row in rows if row}
    assert "--wide" in text and "parity PASSED" in text
    lines = rendered(print_parity, report, 1000)  # --wide's width: every column
    assert header_cells(lines, "backend") == FULL_COLUMNS
    for r in report.results:
        assert any(r.backend in line and f"{r.comparison.max_rel:.2e}" in line and f"{r.comparison.p99_abs:.2e}" in line
                   for line in lines)
    assert "--wide" not in "\n".join(lines)


def test_bench_tables_compact_at_80_columns_full_when_wide():
    data = json.loads(BENCH_JSON.read_text())
    lines = rendered(print_bench, data, 80)
    text = "\n".join(lines)
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text
    assert header_cells(lines, "backend") == BENCH_COMPACT
    rows = [line.split() for line in lines]
    for r in data["results"]:
        assert [r["backend"], r["precision"], f"{r['median_ms']:.2f}", f"{r['p99_ms']:.2f}"] in [row[:4] for row in rows], r
    assert text.count("bench.json") == len(data["grid"])  # each compact table says where the other columns are
    lines = rendered(print_bench, data, 1000)  # --wide's width: every column
    assert header_cells(lines, "backend") == BENCH_FULL
    assert sum(line.startswith("┃ backend") for line in lines) == len(data["grid"])
    for r in data["results"]:
        assert any(r["backend"] in line and f"{r['tokens_per_s']:.0f}" in line and f"{r['max_abs_error_over_std']:.1e}" in line
                   for line in lines)


def cli(*args, columns: int):
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "perceiver_export", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600, check=False)


def test_verify_at_80_columns_then_wide(tiny_fp32):
    """COLUMNS is honoured when piped: compact at 80; --wide prints every column past the terminal's width."""
    narrow = cli("verify", str(tiny_fp32.directory), "--no-write", "--backends", "onnxruntime", columns=80)
    assert narrow.returncode == 0, narrow.stderr
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80 and "…" not in narrow.stdout
    assert "onnxruntime-optimized" in narrow.stdout and "p99 abs" not in header_cells(narrow.stdout.splitlines(), "backend")
    wide = cli("verify", str(tiny_fp32.directory), "--no-write", "--backends", "onnxruntime", "--wide", columns=80)
    assert wide.returncode == 0, wide.stderr
    assert header_cells(wide.stdout.splitlines(), "backend") == FULL_COLUMNS
    assert max(len(line) for line in wide.stdout.splitlines()) > 100
