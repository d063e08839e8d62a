"""What bench can time here: each backend and precision variant, created from one artifact."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..artifact.manifest import Manifest
from ..errors import BackendUnavailableError
from ..runtime import load

# name -> precision shown in the table; the order is the table's and the plot's.
BACKENDS = {
    "torch": "fp32",
    "torch-compile": "fp32",
    "torch-bf16": "bf16",
    "onnxruntime": "fp32",
    "onnxruntime-optimized": "fp32",
    "onnxruntime-int8": "int8",
    "openvino": "fp32",
    "openvino-bf16": "bf16",
    "tensorrt": "engine",
}
BASELINE = "torch"
DEFAULT_BACKENDS = ("torch", "torch-bf16", "onnxruntime", "onnxruntime-optimized", "onnxruntime-int8", "openvino",
                    "openvino-bf16", "tensorrt")


@dataclass
class Prepared:
    name: str
    precision: str
    infer: Callable[[Mapping[str, Any]], Any]
    startup_s: float
    config: Mapping[str, str] | None = None  # the settings that decide its speed and numbers (OpenVINO's compile config)


def prepare(manifest: Manifest, name: str, threads: int) -> Prepared:
    """Create one backend; BackendUnavailableError says why it cannot run here."""
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    if name in ("torch", "torch-bf16", "torch-compile"):
        if name == "torch-bf16" and manifest.dtype != "float32":
            raise BackendUnavailableError("torch-bf16 is measured from a float32 artifact")
        runner = load(manifest, backend="torch", check_files=False, dtype="bfloat16" if name == "torch-bf16" else None)
        if name == "torch-compile":
            runner.model = torch.compile(runner.model, dynamic=True)
    elif name.startswith("onnxruntime"):
        graph = name.removeprefix("onnxruntime").lstrip("-") or "plain"
        runner = load(manifest, backend="onnxruntime", check_files=False, threads=threads, graph=graph)
    elif name.startswith("openvino"):
        runner = load(manifest, backend=name, check_files=False, threads=threads)
    elif name == "tensorrt":
        runner = load(manifest, backend="tensorrt", check_files=False)
    else:
        raise BackendUnavailableError(f"unknown bench backend {name!r}; choose from {', '.join(BACKENDS)}")
    return Prepared(name, BACKENDS[name] if name != "tensorrt" else manifest.dtype, runner.infer, time.perf_counter() - start,
                    getattr(runner, "compile_config", None))
