"""`--json` of inspect, verify, bench and trt: one document on stdout per run, and the JSON Schema of each.

The schemas are the documentation (cli.md renders them at build time) and what the tests validate the output with.
"""

from __future__ import annotations

import json
import math
import sys

from ..artifact.manifest import Manifest

_STRING_OR_NULL = {"type": ["string", "null"]}
_PARITY = {
    "type": "object",
    "description": "The parity report, as verify stores it in manifest.json under 'parity'.",
    "required": ["passed", "reference", "dtype", "tolerance", "seed", "backends", "notes", "worst_max_abs", "cases"],
    "properties": {
        "passed": {"type": "boolean"},
        "dtype": {"type": "string"},
        "tolerance": {"type": "object", "description": "the dtype's default; each case has the one it was judged by"},
        "backends": {"type": "array", "items": {"type": "string"}},
        "notes": {"type": "array", "items": {"type": "string"}},
        "worst_max_abs": {"type": ["number", "null"]},
        "cases": {"type": "array", "items": {
            "type": "object",
            "required": ["backend", "case", "sizes", "max_abs", "passed", "tolerance"],
            "properties": {"backend": {"type": "string"}, "case": {"type": "string"}, "passed": {"type": "boolean"},
                           "tolerance": {"type": "object", "required": ["atol", "rtol"]}},
        }},
    },
}
_ENGINE = {
    "type": "object",
    "description": "An engine's manifest entry (manifest.json 'engines').",
    "required": ["file", "flavor", "version", "compute_capabilities", "precision", "tf32", "profiles", "onnx_sha256", "build"],
    "properties": {"compute_capabilities": {"type": ["array", "null"], "items": {"type": "string"}},
                   "tf32": {"type": "boolean"}, "profiles": {"type": "array"}},
}

SCHEMAS: dict[str, dict] = {
    "inspect": {
        "title": "inspect --json",
        "type": "object",
        "required": ["schema", "directory", "name", "dtype", "opset", "schema_version", "model", "contract", "files", "ops",
                     "graphs", "default_graph", "parity", "engines"],
        "properties": {
            "schema": {"const": "perceiver-export/inspect"},
            "directory": {"type": "string"},
            "name": {"type": "string"},
            "dtype": {"type": "string", "enum": ["float32", "float16", "bfloat16"]},
            "opset": {"type": "integer"},
            "schema_version": {"type": "integer", "description": "of manifest.json"},
            "model": {"type": "object", "required": ["class", "config"]},
            "contract": {"type": "object", "description": "the I/O contract, as in manifest.json"},
            "files": {"type": "object", "description": "file name: {sha256, bytes}, as in manifest.json"},
            "ops": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "ONNX op: count in model.onnx"},
            "graphs": {"type": "object", "additionalProperties": {"type": "string"}, "description": "graph name: file ('plain' is model.onnx)"},
            "default_graph": {"type": "object", "required": ["graph"]},
            "parity": {"oneOf": [{"type": "null"}, _PARITY]},
            "engines": {"type": "object", "additionalProperties": {
                "allOf": [_ENGINE, {"type": "object", "required": ["trtexec", "polygraphy_convert"],
                                    "description": "with the NVIDIA tool commands that rebuild the same engine"}]}},
        },
    },
    "verify": {
        "title": "verify --json",
        "type": "object",
        "required": ["schema", "directory", "passed", "files", "parity", "exit_code"],
        "properties": {
            "schema": {"const": "perceiver-export/verify"},
            "directory": {"type": "string"},
            "passed": {"type": "boolean", "description": "files intact and every parity case passed"},
            "files": {"type": "object", "required": ["intact", "error"],
                      "properties": {"intact": {"type": "boolean"}, "error": _STRING_OR_NULL},
                      "description": "every listed file's size and sha256 against the manifest"},
            "parity": {"oneOf": [{"type": "null"}, _PARITY], "description": "null when a damaged file stopped the run"},
            "exit_code": {"enum": [0, 1], "description": "the command's exit status: 0 passed, 1 a file or a case failed"},
        },
    },
    "bench": {
        "title": "bench --json",
        "type": "object",
        "description": "The document bench writes to bench.json, with the files it wrote.",
        "required": ["schema", "schema_version", "artifact", "machine", "settings", "grid", "results", "skipped", "files"],
        "properties": {
            "schema": {"const": "perceiver-export/bench"},
            "results": {"type": "array", "items": {
                "type": "object",
                "required": ["backend", "batch", "q_len", "k_len", "v_len", "median_ms", "p99_ms", "speedup_vs_torch_fp32"],
            }},
            "files": {"type": "object", "required": ["json", "png"]},
        },
    },
    "trt": {
        "title": "trt --json",
        "type": "object",
        "required": ["schema", "directory", "path", "engine", "notes", "seconds"],
        "properties": {
            "schema": {"const": "perceiver-export/trt"},
            "directory": {"type": "string"},
            "path": {"type": "string", "description": "the engine file written"},
            "engine": _ENGINE,
            "notes": {"type": "array", "items": {"type": "string"}},
            "seconds": {"type": "number", "description": "build time"},
        },
    },
}
SCHEMAS["bench --choose-default"] = {
    "title": "bench --choose-default --json",
    "type": "object",
    "required": ["schema", "directory", "default_graph", "was"],
    "properties": {"schema": {"const": "perceiver-export/default-graph"}, "default_graph": {"type": "object", "required": ["graph"]},
                   "was": {"type": "string", "description": "the default graph before"}},
}


def print_document(document: dict) -> None:
    """The whole of stdout under --json: one document and a newline (strict JSON: NaN and Inf become null)."""
    sys.stdout.write(json.dumps(_finite(document), indent=2, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def inspect_document(manifest: Manifest) -> dict:
    from ..engines.commands import polygraphy_convert_command, trtexec_command
    from .inspect_view import op_histogram

    d = manifest.data
    engines = {name: {**entry, "trtexec": trtexec_command(manifest, name),
                      "polygraphy_convert": polygraphy_convert_command(manifest, name)}
               for name, entry in manifest.engines.items()}
    return {
        "schema": "perceiver-export/inspect",
        "directory": str(manifest.directory),
        "name": d["name"], "dtype": d["dtype"], "opset": d["opset"], "schema_version": d["schema_version"],
        "created": d.get("created"), "versions": d.get("versions"),
        "model": {"class": manifest.model_class, "config": manifest.model_config},
        "contract": d["contract"],
        "files": d["files"],
        "ops": dict(op_histogram(manifest).most_common()),
        "graphs": {"plain": d["onnx"]["file"], **{n: g["file"] for n, g in manifest.graphs.items()}},
        "default_graph": d["default_graph"],
        "parity": d.get("parity"),
        "engines": engines,
    }


PLACEHOLDER = "<!-- json-schemas -->"


def schemas_markdown() -> str:
    """The schemas as cli.md shows them (the docs build and `python -m perceiver_export docs cli` both render this)."""
    out = []
    for command, schema in SCHEMAS.items():
        out += [f"### {schema['title']}", "", "```json", json.dumps(schema, indent=2, ensure_ascii=False), "```", ""]
    return "\n".join(out)
