"""The docs site's sources: lists that render as lists, tables that fit the page, and a site that loads nothing from
another host (docs/hooks/offline_site.py, which the strict build in scripts/test.sh runs)."""

import importlib.util
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
LIST_ITEM = re.compile(r"\s*(?:[-*+]|\d+\.)\s")
MAX_TABLE_COLUMNS = 6  # at 1280 px the page's column is ~720 px: 7 columns of figures already overflowed it


def _offline_hook():
    spec = importlib.util.spec_from_file_location("offline_site", REPO / "docs" / "hooks" / "offline_site.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outside_fences(text: str):
    fenced = False
    for number, line in enumerate(text.split("\n"), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield number, line


def test_no_list_starts_right_under_a_paragraph_line():
    """Python-Markdown needs a blank line before a list; without it "Tried and dropped:" and its items are one line."""
    found = []
    for page in PAGES:
        previous = ""
        for number, line in _outside_fences(page.read_text()):
            paragraph = previous.strip() and not previous[0].isspace() and previous[0] not in "#|>" \
                and not LIST_ITEM.match(previous)
            if paragraph and LIST_ITEM.match(line):
                found.append(f"{page.relative_to(REPO)}:{number}: {previous.strip()[-40:]!r}")
            previous = line
    assert not found, found


def test_no_table_is_wider_than_the_page_allows():
    wide = []
    for page in sorted((REPO / "docs").glob("*.md")):
        for number, line in _outside_fences(page.read_text()):
            if line.startswith("|") and re.match(r"\|\s*:?-", line):  # a header's delimiter row
                columns = len(re.findall(r"(?<!\\)\|", line.strip())) - 1
                if columns > MAX_TABLE_COLUMNS:
                    wide.append(f"{page.name}:{number}: {columns} columns")
    assert not wide, wide


def test_offline_check_finds_scripts_stylesheets_and_fonts_from_other_hosts():
    hook = _offline_hook()
    page = """<html><head>
      <link rel="preconnect" href="https://fonts.gstatic.com" crossorigin>
      <link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">
      <link rel="stylesheet" href="../assets/stylesheets/main.css">
      <style>@import url("https://cdn.example.org/x.css"); @font-face{src:url(//fonts.example.org/f.woff2)}</style>
      <script src="https://unpkg.com/mermaid@11/dist/mermaid.min.js"></script>
      <script src="../assets/javascripts/mermaid.min.js"></script>
    </head><body><a href="https://github.com/x/y">a link is not a load</a><img src="http://img.example.org/b.png">
    </body></html>"""
    assert hook.external_loads(page) == [
        "https://fonts.googleapis.com/css?family=Roboto", "https://cdn.example.org/x.css",
        "//fonts.example.org/f.woff2", "https://unpkg.com/mermaid@11/dist/mermaid.min.js",
        "http://img.example.org/b.png"]
    assert hook.css_external_urls("@font-face{src:url('https://x.org/a.woff2')} .a{background:url(img/b.png)}") == \
        ["https://x.org/a.woff2"]


def test_mkdocs_config_keeps_the_site_offline():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=Loader)
    assert config["theme"]["font"] is False  # else mkdocs-material loads Google Fonts on every page
    assert "docs/hooks/offline_site.py" in config["hooks"]
    assert _offline_hook().MERMAID_SITE_PATH in config["extra_javascript"]
    assert '"mermaid": "11.' in (REPO / "package.json").read_text()  # the major mkdocs-material drives
