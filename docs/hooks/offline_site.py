"""MkDocs hook: the built site works offline, every script, stylesheet and font served from the site itself.

- Mermaid: mkdocs-material renders ```mermaid blocks with a global `mermaid` when a page has one, else it fetches
  mermaid.min.js from a CDN. The file comes from the npm package pinned in package.json (`npm ci`, which
  scripts/setup.sh runs) and is copied into the site as assets/javascripts/mermaid.min.js, which mkdocs.yml's
  extra_javascript loads. Its major version must be the one the theme drives (11).
- The check: after the build, every page is read and a `<script src>`, a `<link>` that loads (stylesheet, preload,
  icon...), an `<img>`/`<iframe>`/`<source>`, or a CSS `@import`/`url()` in a `<style>` or in a built .css file that
  points at another host fails the build, naming page and address. mkdocs-material's Google Fonts are off
  (`theme.font: false` in mkdocs.yml) for this reason: the theme then uses the system's fonts.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

MERMAID_DIST = Path("node_modules/mermaid/dist/mermaid.min.js")
MERMAID_SITE_PATH = "assets/javascripts/mermaid.min.js"
MERMAID_MAJOR = "11"  # mkdocs-material 9 calls Mermaid 11's API (and fetches mermaid@11 when none is on the page)

# A <link rel=...> that makes the browser fetch something; "preconnect" and "dns-prefetch" only open connections.
LOADING_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "shortcut", "apple-touch-icon", "manifest"}
CSS_URL = re.compile(r"""@import\s+(?:url\()?\s*['"]?([^'")\s;]+)|url\(\s*['"]?([^'")\s]+)""", re.IGNORECASE)
EXTERNAL = re.compile(r"^(?:https?:)?//", re.IGNORECASE)


def on_files(files, config):
    root = Path(config["config_file_path"]).parent
    source = root / MERMAID_DIST
    if not source.is_file():
        raise PluginError(f"{MERMAID_DIST} is missing: run `npm ci` at the repository top (scripts/setup.sh does); "
                          "the architecture diagram needs Mermaid from the site itself, not a CDN")
    version = json.loads((root / "node_modules/mermaid/package.json").read_text())["version"]
    if version.split(".")[0] != MERMAID_MAJOR:
        raise PluginError(f"node_modules has Mermaid {version}; mkdocs-material drives Mermaid {MERMAID_MAJOR}: "
                          "pin mermaid 11.x in package.json and run `npm ci`")
    if MERMAID_SITE_PATH not in config["extra_javascript"]:
        raise PluginError(f"mkdocs.yml's extra_javascript must load {MERMAID_SITE_PATH}, else the theme fetches "
                          "Mermaid from a CDN")
    files.append(File.generated(config, MERMAID_SITE_PATH, abs_src_path=str(source)))
    return files


def on_post_build(config):
    site = Path(config["site_dir"])
    found = [f"{page.relative_to(site)}: {address}"
             for page in sorted(site.rglob("*.html")) for address in external_loads(page.read_text(encoding="utf-8"))]
    found += [f"{sheet.relative_to(site)}: {address}"
              for sheet in sorted(site.rglob("*.css")) for address in css_external_urls(sheet.read_text(encoding="utf-8"))]
    if found:
        shown = "\n  ".join(found[:20]) + (f"\n  ... and {len(found) - 20} more" if len(found) > 20 else "")
        raise PluginError(f"the site loads {len(found)} resource(s) from other hosts; offline they fail "
                          f"(serve them from the site, see docs/hooks/offline_site.py):\n  {shown}")


def external_loads(html: str) -> list[str]:
    """The other-host addresses an HTML page makes the browser load (not the links a reader may click)."""
    parser = _LoadCollector()
    parser.feed(html)
    parser.close()
    return parser.found


def css_external_urls(css: str) -> list[str]:
    return [url for match in CSS_URL.finditer(css) for url in match.groups() if url and EXTERNAL.match(url)]


class _LoadCollector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "link":
            rels = set(attrs.get("rel", "").lower().split())
            candidates = [attrs.get("href", "")] if rels & LOADING_RELS else []
        elif tag in ("script", "img", "iframe", "source", "audio", "video", "embed"):
            candidates = [attrs.get("src", "")]
        else:
            candidates = []
        if tag == "style":
            self._in_style = True
        if "style" in attrs:
            candidates += css_external_urls(attrs["style"])
        self.found += [c for c in candidates if EXTERNAL.match(c)]

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.found += css_external_urls(data)
