"""Runs a serialized TensorRT engine on an NVIDIA GPU through torch CUDA buffers.

The engine's manifest entry is checked against the running flavor, version and GPU before
deserializing; inputs are matched to an optimization profile with this package's error; each
thread gets its own execution context and CUDA stream.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...artifact.atomic import atomic_write_bytes
from ...artifact.manifest import Manifest
from ...engines.compat import check_engine_compatible, check_engine_trusted, cuda_compute_capability
from ...engines.flavor import create_execution_context, create_runtime_cache, import_flavor
from ...engines.profiles import Profile, select_profile
from ...errors import ArtifactError, BackendUnavailableError
from ..arrays import to_numpy, to_torch
from ..base import Runner


def pick_engine(manifest: Manifest, engine: str | None) -> dict:
    engines = manifest.engines
    if not engines:
        raise BackendUnavailableError(
            f"{manifest.directory} has no TensorRT engine: build one with `python -m perceiver_export trt {manifest.directory}`"
        )
    if engine is None:
        if len(engines) > 1:
            raise BackendUnavailableError(f"{manifest.directory} has several engines ({', '.join(engines)}): "
                                          "choose one with --engine NAME (engine=NAME in Python)")
        engine = next(iter(engines))
    if engine not in engines:
        raise ArtifactError(f"{manifest.directory}: no engine {engine!r} in the manifest; it lists {', '.join(engines)}")
    return engines[engine]


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, manifest: Manifest, engine: str | None = None, device: int = 0, runtime_cache: str | Path | None = None,
                 allow_plugins: bool = False):
        super().__init__(manifest)
        import torch

        self.entry = pick_engine(manifest, engine)
        check_engine_trusted(self.entry, allow_plugins)
        self.backend = f"tensorrt ({self.entry['file']})"
        self.tf32 = bool(self.entry.get("tf32"))
        cc = cuda_compute_capability(device)
        if cc is None:
            raise BackendUnavailableError("the TensorRT runner needs an NVIDIA GPU with CUDA; torch sees none here")
        flavor = import_flavor(self.entry["flavor"])
        check_engine_compatible(self.entry, flavor.name, flavor.version, cc)
        self.flavor = flavor
        self.device = torch.device("cuda", device)
        self.profiles = [Profile.from_dict(p) for p in self.entry["profiles"]]
        trt = flavor.trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine((manifest.directory / self.entry["file"]).read_bytes())
        if self.engine is None:
            raise BackendUnavailableError(f"{flavor.name} {flavor.version} could not deserialize {self.entry['file']}")
        cache_path = runtime_cache or self.entry["build"].get("cache")
        self.cache_path = Path(cache_path) if cache_path else None
        blob = self.cache_path.read_bytes() if self.cache_path and self.cache_path.is_file() else None
        self.runtime_cache = create_runtime_cache(self.engine, blob)
        self._local = threading.local()
        self.output_name = self.contract.outputs[0].name

    def _context(self):
        """One execution context and stream per thread: contexts are not thread-safe."""
        import torch

        if not hasattr(self._local, "context"):
            self._local.context = create_execution_context(self.engine, self.runtime_cache)
            self._local.stream = torch.cuda.Stream(self.device)
            self._local.profile = None
        return self._local

    def _infer(self, feeds: Mapping[str, Any], sizes: Mapping[str, int]) -> np.ndarray:
        import torch

        index = select_profile(self.profiles, sizes)
        local = self._context()
        ctx, stream = local.context, local.stream
        with torch.cuda.device(self.device), torch.cuda.stream(stream):
            if local.profile != index:
                ctx.set_optimization_profile_async(index, stream.cuda_stream)
                local.profile = index
            buffers = {}  # kept alive until the stream is synchronized
            for name, value in self.with_defaults(feeds, sizes).items():
                t = to_torch(value).to(self.device, non_blocking=True).contiguous()
                buffers[name] = t
                ctx.set_input_shape(name, tuple(t.shape))
                ctx.set_tensor_address(name, t.data_ptr())
            out_shape = self.contract.concrete_shape(self.output_name, sizes)
            out = torch.empty(out_shape, dtype=buffers["q"].dtype, device=self.device)
            ctx.set_tensor_address(self.output_name, out.data_ptr())
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise BackendUnavailableError(f"{self.flavor.name} execute_async_v3 failed for shapes {dict(sizes)}")
            stream.synchronize()
        return to_numpy(out)

    def save_runtime_cache(self) -> None:
        """Write TensorRT-RTX's runtime cache back so the next process skips kernel compilation."""
        if self.runtime_cache is not None and self.cache_path is not None:
            atomic_write_bytes(self.cache_path, bytes(self.runtime_cache.serialize()))
