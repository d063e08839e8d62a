"""Runs model.onnx with ONNX Runtime (CPU, or CUDA with onnxruntime-gpu)."""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from ...artifact.manifest import Manifest
from ...errors import BackendUnavailableError
from ..arrays import to_numpy
from ..base import Runner


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, manifest: Manifest, providers: Sequence[str] | None = None, threads: int | None = None,
                 graph: str | None = None, spinning: bool | None = None):
        """graph: "plain" (model.onnx), or a variant from the manifest's "graphs" ("optimized", "int8").
        Default: the manifest's default_graph, the fastest verified graph where it was exported (or re-chosen with
        `bench --choose-default`); never int8 unless asked for.
        spinning: whether idle intra-op threads spin-wait for the next run (ONNX Runtime's default: yes). A server
        turns it off: spinning threads take the cores its own request handling needs between runs."""
        super().__init__(manifest)
        self.graph = graph or manifest.default_graph
        if self.graph != "plain" and self.graph not in manifest.graphs:
            raise BackendUnavailableError(
                f"{manifest.directory} has no {self.graph!r} graph; it has: plain{''.join(', ' + g for g in manifest.graphs)}"
            )
        self.backend = "onnxruntime" if self.graph == "plain" else f"onnxruntime-{self.graph}"
        path = manifest.onnx_path if self.graph == "plain" else manifest.directory / manifest.graphs[self.graph]["file"]
        if manifest.dtype == "bfloat16":
            # Its CPU kernels lack bfloat16 MatMul, and its Python API has no bfloat16 numpy type.
            raise BackendUnavailableError(
                "the onnxruntime runner takes float32 and float16 artifacts; for bfloat16 use "
                "the torch or onnx-reference backend (--backend / --backends on the command line, backend= in Python), or TensorRT"
            )
        providers = list(providers) if providers else default_providers()
        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"onnxruntime {ort.__version__} here has no {', '.join(missing)}; available: {', '.join(available)} "
                "(CUDA needs `pip install onnxruntime-gpu` instead of onnxruntime)"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if spinning is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.log_severity_level = 3
        start = time.perf_counter()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/NotImplemented types
            msg = str(e)
            if "NOT_IMPLEMENTED" in msg:
                raise BackendUnavailableError(
                    f"onnxruntime {ort.__version__} ({', '.join(providers)}) cannot run this {manifest.dtype} graph: {msg}"
                ) from None
            raise
        self.startup_s = time.perf_counter() - start
        self.providers = self.session.get_providers()
        self.output_name = manifest.contract.outputs[0].name

    def _infer(self, feeds: Mapping[str, Any], sizes: Mapping[str, int]) -> np.ndarray:
        arrays = {name: to_numpy(value) for name, value in self.with_defaults(feeds, sizes).items()}
        return self.session.run([self.output_name], arrays)[0]
