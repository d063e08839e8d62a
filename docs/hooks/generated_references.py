"""MkDocs hook: pages generated from the code at build time, so they cannot drift from it.

- `<!-- cli-reference -->` (cli.md) becomes the reference of `python -m perceiver_export`, rendered from the
  argparse parser itself (`perceiver_export.cli.main.build_parser()`): every subcommand, its usage, every option
  with its help and default.
- `<!-- json-schemas -->` (cli.md) becomes the JSON Schema of each `--json` output
  (`perceiver_export.cli.json_output.SCHEMAS`).
- `<!-- manifest-schema -->` (artifacts.md) becomes the JSON Schema `manifest.json` is validated with
  (`perceiver_export.artifact.manifest_schema.MANIFEST_SCHEMA`).

A page that should hold a placeholder but does not fails the build, as does a placeholder on any other page.
"""

from __future__ import annotations

import argparse
import json

from mkdocs.exceptions import PluginError

PLACEHOLDERS = {"<!-- cli-reference -->": "cli.md", "<!-- manifest-schema -->": "artifacts.md",
                "<!-- json-schemas -->": "cli.md"}
USAGE_WIDTH = 100


def on_page_markdown(markdown: str, page, config, files) -> str:
    for placeholder, owner in PLACEHOLDERS.items():
        here = page.file.src_uri == owner
        if here and placeholder not in markdown:
            raise PluginError(f"{owner} lost its {placeholder} placeholder: the generated reference would be missing")
        if placeholder in markdown and not here:
            raise PluginError(f"{page.file.src_uri}: {placeholder} belongs on {owner} only")
        if here:
            render = {"<!-- cli-reference -->": cli_reference, "<!-- manifest-schema -->": manifest_schema,
                      "<!-- json-schemas -->": json_schemas}[placeholder]
            markdown = markdown.replace(placeholder, render())
    return markdown


def manifest_schema() -> str:
    from perceiver_export.artifact.manifest_schema import MANIFEST_SCHEMA

    return "```json\n" + json.dumps(MANIFEST_SCHEMA, indent=2, ensure_ascii=False) + "\n```\n"


def json_schemas() -> str:
    from perceiver_export.cli.json_output import schemas_markdown

    return schemas_markdown()


def cli_reference() -> str:
    from perceiver_export.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {a.dest: a.help for a in sub._choices_actions}
    out = [
        f"`{parser.prog}` — {parser.description}",
        "",
        _usage(parser),
        "",
        _options_table(parser, skip=(sub,)),
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    out += [f"| [`{name}`](#{name}) | {_cell(summaries.get(name, ''))} |" for name in sub.choices]
    for name, command in sub.choices.items():
        out += ["", f"## {name} {{#{name}}}", "", _cell(summaries.get(name, "")), "", _usage(command), "",
                _options_table(command)]
    return "\n".join(out) + "\n"


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return "```text\n" + formatter.format_help().strip() + "\n```"


def _options_table(parser: argparse.ArgumentParser, skip=()) -> str:
    formatter = argparse.HelpFormatter(parser.prog)
    rows = ["| argument | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if action in skip or isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        rows.append(f"| {_invocation(action)} | {_default(action)} | {_cell(formatter._expand_help(action) if action.help else '')} |")
    return "\n".join(rows)


def _invocation(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}`"
    if action.nargs == 0:
        value = ""
    elif action.choices is not None and action.metavar is None:
        value = " " + "|".join(str(c) for c in action.choices)
    else:
        value = " " + (action.metavar or action.dest.upper())
    names = ", ".join(f"{option}{value}" for option in action.option_strings)
    repeat = " (repeatable)" if isinstance(action, argparse._AppendAction) else ""
    required = " (required)" if action.required else ""
    return _cell(f"`{names}`") + repeat + required


def _default(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._VersionAction)):
        return ""
    if action.default is None or action.default == [] or action.default == "" or action.default == argparse.SUPPRESS:
        return ""
    return _cell(f"`{action.default}`")


def _cell(text: str) -> str:
    """Text inside a Markdown table cell: one line; outside code spans pipes and angle brackets are escaped (inside
    them Python-Markdown keeps both as they are)."""
    parts = " ".join(str(text).split()).split("`")
    return "`".join(p if i % 2 else _escape(p) for i, p in enumerate(parts))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
