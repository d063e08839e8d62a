"""Runners: load an artifact directory and run it on one backend behind one interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifact.manifest import Manifest, read_manifest
from ..errors import BackendUnavailableError
from .base import Runner

BACKENDS = ("onnxruntime", "torch", "onnx-reference", "tensorrt", "openvino", "openvino-bf16")


def runner_class(backend: str) -> type[Runner]:
    # Imported on demand so that a missing optional backend only fails when asked for.
    if backend == "onnxruntime":
        try:
            from .onnxrt.runner import OnnxRuntimeRunner as cls
        except ImportError as e:
            raise BackendUnavailableError(
                f"onnxruntime is not installed ({e}): `pip install perceiver-export[cpu]` or `[gpu]`"
            ) from None
    elif backend == "torch":
        from .pyt.runner import TorchRunner as cls
    elif backend == "onnx-reference":
        from .onnxref.runner import OnnxReferenceRunner as cls
    elif backend == "tensorrt":
        from .trt.runner import TensorRTRunner as cls
    elif backend in ("openvino", "openvino-bf16"):
        try:
            from .openvino.runner import OpenVINORunner as cls
        except ImportError as e:
            raise BackendUnavailableError(
                f"openvino is not installed ({e}): `pip install perceiver-export[openvino]`"
            ) from None
    else:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return cls


def load(path: str | Path | Manifest, backend: str = "onnxruntime", check_files: bool = True, **options: Any) -> Runner:
    """Open an artifact directory and return a runner for `backend`.

    The manifest is validated and, unless check_files=False, every file's sha256 is checked
    (and ONNX external data must stay inside the directory) before any backend parses it. Backend options: onnxruntime(providers=, threads=),
    torch(device=, dtype=), tensorrt(engine=, device=, runtime_cache=, allow_plugins=),
    openvino(precision="f32"|"bf16", threads=, workaround=, config=); "openvino-bf16" is openvino with precision="bf16".
    """
    manifest = path if isinstance(path, Manifest) else read_manifest(path)
    if check_files:
        manifest.check_files()
        if backend in ("onnxruntime", "onnx-reference", "openvino", "openvino-bf16"):
            manifest.check_external_data()
    if backend == "openvino-bf16":
        options = {**options, "precision": "bf16"}
    return runner_class(backend)(manifest, **options)


__all__ = ["BACKENDS", "Runner", "load"]
