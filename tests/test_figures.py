"""bench's and loadtest's plots are readable at a docs page's column width, and the committed ones are current."""

import json
import struct
from pathlib import Path

import pytest

from perceiver_export.bench.report import bench_figure
from perceiver_export.figures import DPI, PAGE_COLUMN_PX
from perceiver_export.serving.loadtest import loadtest_figure

DOCS = Path(__file__).resolve().parents[1] / "docs"
FIGURES = {"bench-perceiver-base": bench_figure, "loadtest-perceiver-base": loadtest_figure}


@pytest.fixture(params=sorted(FIGURES))
def drawn(request):
    import matplotlib.pyplot as plt

    name = request.param
    fig = FIGURES[name](json.loads((DOCS / f"{name}.json").read_text()))
    fig.canvas.draw()  # tick labels exist only once drawn
    yield name, fig
    plt.close(fig)


def test_every_text_is_at_least_11_px_at_the_page_column_width(drawn):
    from matplotlib.text import Text

    name, fig = drawn
    width_px = fig.get_size_inches()[0] * DPI
    assert width_px >= PAGE_COLUMN_PX  # shown scaled down to the column, never blown up
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert len(texts) > 10
    shown = {t.get_text(): t.get_fontsize() * DPI / 72 * PAGE_COLUMN_PX / width_px for t in texts}
    small = {text: round(px, 1) for text, px in shown.items() if px < 11}
    assert not small, f"{name}: text under 11 px at {PAGE_COLUMN_PX} px: {small}"


def test_committed_plot_is_what_the_code_draws_now(drawn):
    """A plot drawn by older code (another size) fails here: scripts/redraw_docs_plots.py redraws it from its JSON."""
    name, fig = drawn
    header = (DOCS / f"{name}.png").read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert (width, height) == tuple(round(x * DPI) for x in fig.get_size_inches())
