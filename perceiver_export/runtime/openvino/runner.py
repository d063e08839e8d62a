"""Runs model.onnx with OpenVINO's CPU plugin: float32, or bfloat16 inference precision on CPUs with bf16 instructions.

One compiled model serves every shape in the contract (OpenVINO reads the ONNX file's dynamic dims). Every compile
property that decides the numbers or the speed is explicit and recorded in `compile_config`: OpenVINO's own defaults
differ by CPU (its CPU plugin computes in bfloat16 by default where the CPU has bf16 instructions).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Mapping

import numpy as np
import openvino as ov

from ...artifact.manifest import Manifest
from ...errors import BackendUnavailableError
from ...machine import cpu_flags
from ..arrays import to_numpy
from ..base import Runner

PRECISIONS = {"f32": "openvino", "bf16": "openvino-bf16"}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# OpenVINO 2026.4's CPU plugin: a compiled model whose first call has a length-1 sequence axis inside attention
# (MatMul -> Softmax -> MatMul, fused into one "snippets" kernel) gives wrong answers for later calls with that
# axis >= 16, float32 and bfloat16 alike. Turning the snippets fusions off avoids it; see docs/openvino.md for the
# reproducer, the other workaround (CPU_RUNTIME_CACHE_CAPACITY: 0) and what each costs.
SHAPE_CHANGE_WORKAROUND = {"SNIPPETS_MODE": "DISABLE"}


def bf16_unavailable_reason(core: ov.Core | None = None) -> str | None:
    """Why bfloat16 inference cannot run at full speed here, or None when it can.

    Without avx512_bf16/amx_bf16 OpenVINO would emulate bf16 (slower than float32) or quietly fall back to it.
    """
    flags = cpu_flags()
    if flags is not None:
        if not set(BF16_FLAGS) & flags:
            return f"this CPU has no bfloat16 instructions ({'/'.join(BF16_FLAGS)} not in /proc/cpuinfo)"
        return None
    capabilities = (core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return None if "BF16" in capabilities else "OpenVINO's CPU plugin reports no BF16 capability here"


class OpenVINORunner(Runner):
    backend = "openvino"

    def __init__(self, manifest: Manifest, precision: str = "f32", threads: int | None = None,
                 workaround: bool = True, config: Mapping[str, str] | None = None):
        """precision: "f32" (backend "openvino") or "bf16" (backend "openvino-bf16": bfloat16 inference precision).
        threads: OpenVINO's INFERENCE_NUM_THREADS (default: all cores). workaround: apply SHAPE_CHANGE_WORKAROUND
        (turn it off only to see the bug). config: further CPU plugin properties, applied last."""
        super().__init__(manifest)
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        self.precision = precision
        self.backend = PRECISIONS[precision]
        if manifest.dtype != "float32":
            raise BackendUnavailableError(
                f"the openvino runner takes float32 artifacts (this one is {manifest.dtype}); for bfloat16 compute "
                "export float32 and use the openvino-bf16 backend (--backend openvino-bf16; backend='openvino-bf16' in Python)"
            )
        core = ov.Core()
        if precision == "bf16":
            reason = bf16_unavailable_reason(core)
            if reason:
                raise BackendUnavailableError(f"openvino-bf16: {reason}")
        self.threads = threads or os.cpu_count() or 1
        self.compile_config = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": str(self.threads),
            "PERFORMANCE_HINT": "LATENCY",
            **(SHAPE_CHANGE_WORKAROUND if workaround else {}),
            **{k: str(v) for k, v in (config or {}).items()},
        }
        self.version = ov.get_version()
        start = time.perf_counter()
        try:
            self.compiled = core.compile_model(core.read_model(str(manifest.onnx_path)), "CPU", self.compile_config)
        except RuntimeError as e:  # an operator or shape its ONNX frontend or CPU plugin does not take
            first_line = next(iter(str(e).strip().splitlines()), "")
            raise BackendUnavailableError(
                f"OpenVINO {self.version} cannot compile {manifest.onnx_path.name}: {first_line[:500]}"
            ) from None
        self.startup_s = time.perf_counter() - start
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # an InferRequest runs one call at a time

    def _infer(self, feeds: Mapping[str, Any], sizes: Mapping[str, int]) -> np.ndarray:
        arrays = {n: np.ascontiguousarray(to_numpy(v)) for n, v in self.with_defaults(feeds, sizes).items()}
        with self._lock:
            # share_outputs=False: the request reuses its output buffer on the next call, so the result is copied.
            return self._request.infer(arrays, share_outputs=False)[0]
