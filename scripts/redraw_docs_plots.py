"""Redraw the docs' plots from their committed JSON, with the plotting code bench and loadtest use (no re-run).

    .venv/bin/python scripts/redraw_docs_plots.py

docs/bench-perceiver-base.png from docs/bench-perceiver-base.json, docs/loadtest-perceiver-base.png from
docs/loadtest-perceiver-base.json. Run it after changing bench_figure, loadtest_figure or perceiver_export/figures.py;
tests/test_figures.py fails while a committed plot is not the size the code draws.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

from perceiver_export.artifact.atomic import atomic_path
from perceiver_export.bench.report import bench_figure
from perceiver_export.figures import DPI
from perceiver_export.serving.loadtest import loadtest_figure

DOCS = Path(__file__).resolve().parents[1] / "docs"
PLOTS = {"bench-perceiver-base": bench_figure, "loadtest-perceiver-base": loadtest_figure}


def main() -> None:
    for name, draw in PLOTS.items():
        fig = draw(json.loads((DOCS / f"{name}.json").read_text()))
        with atomic_path(DOCS / f"{name}.png") as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
        plt.close(fig)
        print(f"docs/{name}.png")


if __name__ == "__main__":
    main()
