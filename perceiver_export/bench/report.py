"""bench's outputs: a trtexec-style table per grid point (compact in a narrow terminal), bench.json (atomic) and bench.png."""

from __future__ import annotations

import json
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from ..artifact.atomic import atomic_path, atomic_write_text
from ..figures import DPI, FIG_WIDTH_IN, STYLE

# Column -> its cell from one result row. The full table holds every one; under the terminal's width, the compact one
# (the latencies and rates a comparison starts from) fits 80 columns.
CELLS = {
    "backend": lambda r: r["backend"],
    "prec": lambda r: r["precision"],
    "runs": lambda r: str(r["iterations"]),
    "min ms": lambda r: f"{r['min_ms']:.2f}",
    "median ms": lambda r: f"{r['median_ms']:.2f}",
    "p90 ms": lambda r: f"{r['p90_ms']:.2f}",
    "p99 ms": lambda r: f"{r['p99_ms']:.2f}",
    "seq/s": lambda r: f"{r['sequences_per_s']:.1f}",
    "tokens/s": lambda r: f"{r['tokens_per_s']:.0f}",
    "GFLOP/s": lambda r: f"{r['gflops_per_s']:.1f}",
    "% peak": lambda r: f"{100 * r['fraction_of_gemm_peak']:.0f}%",
    "× torch": lambda r: f"{r['speedup_vs_torch_fp32']:.2f}",
    "err/std": lambda r: f"{r['max_abs_error_over_std']:.1e}",
    "RSS +MB": lambda r: f"{r['peak_rss_growth_mb']:.0f}",
}
FULL_COLUMNS = tuple(CELLS)
COMPACT_COLUMNS = ("backend", "prec", "median ms", "p99 ms", "seq/s", "GFLOP/s", "× torch")


def _point_table(title: str, rows: list[dict], columns: tuple[str, ...]) -> Table:
    compact = columns != FULL_COLUMNS
    table = Table(title=title, title_justify="left", **({"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False, "collapse_padding": True} if compact else {}))
    for col in columns:
        text = col in ("backend", "prec")
        table.add_column(col, justify="left" if text else "right", no_wrap=not text, overflow="fold")
    for r in rows:
        table.add_row(*(CELLS[col](r) for col in columns))
    return table


def _natural_width(table: Table, console: Console) -> int:
    """Columns the table takes when nothing is narrowed (rich's measure is capped at the console's width)."""
    return console.measure(table, options=console.options.update_width(10_000)).maximum


def print_bench(data: dict, console: Console) -> None:
    m = data["machine"]
    console.print(f"{data['artifact']['name']} ({data['artifact']['dtype']}) on {m['cpu']} ({', '.join(m['simd']) or 'no AVX'}), "
                  f"{m['threads']} threads; float32 GEMM peak {data['gemm_peak_gflops']:.1f} GFLOP/s "
                  f"(best of {', '.join(f'{k}: {v:.0f}' for k, v in data['gemm_gflops'].items())}); warm-up {data['settings']['warmup']} "
                  f"excluded, then ≥{data['settings']['min_iters']} runs or {data['settings']['seconds_per_point']} s per point")
    for point in data["grid"]:
        rows = [r for r in data["results"] if [r["batch"], r["q_len"], r["k_len"], r["v_len"]] == point]
        title = (f"batch {point[0]}, q_len {point[1]}, k_len {point[2]}, v_len {point[3]} ({rows[0]['flops'] / 1e9:.2f} GFLOP)"
                 if rows else str(point))
        table = _point_table(title, rows, FULL_COLUMNS)
        if _natural_width(table, console) > console.width:
            table = _point_table(title, rows, COMPACT_COLUMNS)
            table.caption = f"{', '.join(c for c in FULL_COLUMNS if c not in COMPACT_COLUMNS)}: --wide, or bench.json"
            table.caption_justify = "left"
        console.print(table)
    if data["startup_s"]:
        console.print("start-up (s): " + ", ".join(f"{k} {v:.2f}" for k, v in data["startup_s"].items()))
    for name, config in data.get("backend_config", {}).items():
        console.print(f"{name} config: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    for name, why in data["skipped"].items():
        console.print(f"skipped {name}: {why}")


def write_json(data: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def write_plot(data: dict, path: Path) -> None:
    """bench.png: bench_figure(data), sized to be read at a docs page's width (figures.py)."""
    import matplotlib.pyplot as plt

    fig = bench_figure(data)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)


def bench_figure(data: dict):
    """Median latency against tokens per sequence (q_len + k_len + v_len) above the speed-up over eager fp32."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        fig, (lat_ax, up_ax) = plt.subplots(2, 1, figsize=(FIG_WIDTH_IN, 8.4), sharex=True)
        backends = list(dict.fromkeys(r["backend"] for r in data["results"]))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for n, name in enumerate(backends):
            rows = [r for r in data["results"] if r["backend"] == name]
            smallest = min(r["batch"] for r in rows)
            for batch in sorted({r["batch"] for r in rows}):
                sub = sorted((r for r in rows if r["batch"] == batch), key=lambda r: r["q_len"] + r["k_len"] + r["v_len"])
                x = [r["q_len"] + r["k_len"] + r["v_len"] for r in sub]
                style = "-o" if batch == smallest else "s"
                label = f"{name} ({rows[0]['precision']})" if batch == smallest else None
                kw = dict(color=colors[n % len(colors)], label=label, markersize=8 if batch != smallest else 5)
                lat_ax.plot(x, [r["median_ms"] for r in sub], style, **kw)
                up_ax.plot(x, [r["speedup_vs_torch_fp32"] for r in sub], style, **kw)
        batches = sorted({r["batch"] for r in data["results"]})
        if len(batches) > 1:
            lat_ax.plot([], [], "s", color="grey", label=f"squares: batch {', '.join(map(str, batches[1:]))}")
        lat_ax.set(xscale="log", yscale="log", ylabel="median latency (ms)",
                   title=f"{data['artifact']['name']}: latency, batch {batches[0]} ({data['machine']['threads']} threads)")
        up_ax.axhline(1.0, color="grey", lw=0.8)
        up_ax.set(xscale="log", xlabel="tokens per sequence (q_len + k_len + v_len)", ylabel="speed-up over torch eager fp32",
                  title="speed-up (same run)")
        for ax in (lat_ax, up_ax):
            ax.grid(alpha=0.3)
        # One legend for both panels, under them: inside either it would hide points.
        handles, labels = lat_ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False)
        fig.tight_layout(rect=(0, 0.01 + 0.025 * -(-len(labels) // 2), 1, 1))
    return fig
