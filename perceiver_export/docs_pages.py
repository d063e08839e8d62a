"""The guide's pages as package data, so that `python -m perceiver_export docs TOPIC` reads them wherever it runs."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

# A wheel ships docs/*.md inside the package (setup.py copies them); a checkout reads its own docs/.
DOCS_DIRS = (Path(__file__).resolve().parent / "docs", Path(__file__).resolve().parent.parent / "docs")


def docs_command(topic: str) -> str:
    """How a message or a --help text points at a page: a command that works in an installed package too."""
    return f"`python -m perceiver_export docs {topic}`"


def _pages() -> dict[str, Path]:
    for directory in DOCS_DIRS:
        pages = {p.stem: p for p in sorted(directory.glob("*.md"))}
        if pages:
            return pages
    return {}


def topics() -> dict[str, str]:
    """Every page's topic and its title (the first heading)."""
    out = {}
    for topic, path in _pages().items():
        title = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), topic)
        out[topic] = title
    return out


def page(topic: str) -> str:
    """The Markdown text of one page; ConfigError naming the topics there are."""
    pages = _pages()
    if topic not in pages:
        known = ", ".join(pages) or "none (this installation has no documentation pages)"
        raise ConfigError(f"no documentation page {topic!r}; the topics are: {known}")
    return pages[topic].read_text()
