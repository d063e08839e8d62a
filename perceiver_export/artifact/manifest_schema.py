"""JSON Schema of manifest.json (schema_version 2): an artifact from elsewhere is untrusted input."""

_NAME = {"type": "string", "minLength": 1, "maxLength": 256}
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_RANGE = {
    "type": "object",
    "required": ["min", "opt", "max"],
    "properties": {k: {"type": "integer", "minimum": 1, "maximum": 2**31 - 1} for k in ("min", "opt", "max")},
}
_TENSOR = {
    "type": "object",
    "required": ["name", "dtype", "dims"],
    "properties": {
        "name": _NAME,
        "dtype": {"enum": ["float32", "float16", "bfloat16", "bool"]},
        "dims": {"type": "array", "maxItems": 8, "items": {"anyOf": [{"type": "integer", "minimum": 1}, _NAME]}},
        "optional": {"type": "boolean"},
    },
}

MANIFEST_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "schema_version", "name", "model", "dtype", "opset", "contract", "onnx", "weights", "files",
                 "default_graph"],
    "properties": {
        "schema": {"const": "perceiver-export/manifest"},
        "schema_version": {"const": 2},
        "name": _NAME,
        "model": {"type": "object", "required": ["class", "config"], "properties": {
            "class": {"type": "string", "maxLength": 256, "pattern": r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?$"},
            "config": {"type": "object", "maxProperties": 64}}},
        "dtype": {"enum": ["float32", "float16", "bfloat16"]},
        "opset": {"type": "integer", "minimum": 1, "maximum": 100},
        "contract": {
            "type": "object",
            "required": ["axes", "inputs", "outputs"],
            "properties": {
                "axes": {"type": "object", "maxProperties": 16, "additionalProperties": _RANGE},
                "inputs": {"type": "array", "minItems": 1, "maxItems": 16, "items": _TENSOR},
                "outputs": {"type": "array", "minItems": 1, "maxItems": 16, "items": _TENSOR},
            },
        },
        "onnx": {"type": "object", "required": ["file"],
                 "properties": {"file": _NAME, "external_data": {"anyOf": [{"type": "null"}, _NAME]}}},
        "weights": {"type": "object", "required": ["file"], "properties": {"file": _NAME}},
        "files": {
            "type": "object",
            "maxProperties": 64,
            "additionalProperties": {
                "type": "object", "required": ["sha256", "bytes"],
                "properties": {"sha256": _SHA256, "bytes": {"type": "integer", "minimum": 0}},
            },
        },
        "graphs": {"type": "object", "maxProperties": 16,
                   "additionalProperties": {"type": "object", "required": ["file"], "properties": {"file": _NAME}}},
        # The graph runners start from, and the timings that chose it (export/graph_choice.py).
        "default_graph": {
            "type": "object",
            "required": ["graph", "chosen_by"],
            "properties": {
                "graph": _NAME,
                "chosen_by": {"type": "string", "maxLength": 256},
                "shape": {"type": "object", "maxProperties": 16, "additionalProperties": {"type": "integer", "minimum": 1}},
                "median_ms": {"type": "object", "maxProperties": 17,
                              "additionalProperties": {"type": "number", "minimum": 0}},
                "threads": {"type": "integer", "minimum": 1},
                "cpu": {"type": "string", "maxLength": 256},
                "simd": {"type": "array", "maxItems": 64, "items": {"type": "string", "maxLength": 64}},
            },
        },
        "engines": {"type": "object", "maxProperties": 64,
                    "additionalProperties": {"type": "object", "required": ["file", "flavor", "version", "profiles"]}},
        "parity": {"type": ["object", "null"]},
    },
}
