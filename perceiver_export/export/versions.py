"""Versions of the libraries that made an artifact, recorded in its manifest."""

from __future__ import annotations

import platform
from importlib import metadata


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("perceiver-export", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "numpy", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist != "onnxruntime-gpu":
                out[dist] = None
    return out
