"""Figure sizes for the plots bench and loadtest write: readable when shown at a docs page's column width.

A figure FIG_WIDTH_IN wide at DPI is 1080 px; the docs site shows it scaled to its column (about 720 px at a
1280 px window), so a font of `pt` points appears at pt × PAGE_COLUMN_PX / (72 × FIG_WIDTH_IN) px: 10 pt → 14 px,
the legend's 9 pt → 12.5 px. MIN_FONT_PT keeps every text at or above 11 px there (tests/test_figures.py checks).
"""

from __future__ import annotations

FIG_WIDTH_IN = 7.2
DPI = 150
PAGE_COLUMN_PX = 720
MIN_FONT_PT = 8
STYLE = {"font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 10.5}


def shown_px(font_pt: float, fig_width_in: float = FIG_WIDTH_IN) -> float:
    """How tall a font of font_pt points appears once the figure is scaled to the page's column."""
    return font_pt * PAGE_COLUMN_PX / (72 * fig_width_in)
