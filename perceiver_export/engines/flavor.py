"""The one place that decides which module is TensorRT, and holds every API difference between flavors.

Flavors: NVIDIA TensorRT >= 10 (`tensorrt`, datacenter GPUs, builds for the GPU it runs on) and
TensorRT for RTX (`tensorrt_rtx`, builds ahead of time for chosen compute capabilities, even
on a machine without a GPU). Nothing else in the package imports either module.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

from ..errors import BackendUnavailableError, ConfigError

FLAVORS = ("tensorrt", "tensorrt_rtx")
INSTALL_HINTS = {
    "tensorrt": "install NVIDIA TensorRT >= 10 (`pip install tensorrt` from NVIDIA's package index; it needs a datacenter GPU driver)",
    "tensorrt_rtx": "install TensorRT for RTX: `pip install tensorrt-rtx-cu13`",
}
# TensorRT-RTX's ComputeCapability enum members; "sm89" on the command line.
RTX_COMPUTE_CAPABILITIES = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")


@dataclass(frozen=True)
class Flavor:
    name: str
    trt: ModuleType

    @property
    def version(self) -> str:
        return self.trt.__version__

    @property
    def targets_compute_capabilities(self) -> bool:
        """RTX builds ahead of time for chosen GPUs; datacenter TensorRT for the GPU it runs on."""
        return self.name == "tensorrt_rtx"

    # ---- API differences ---------------------------------------------------------
    def network_flags(self) -> int:
        # Both are strongly typed: precision is whatever the ONNX file says (no FP16/BF16 builder flags).
        return 1 << int(self.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    def set_compute_capabilities(self, config, targets: list[str]) -> None:
        if not targets:
            return
        if not self.targets_compute_capabilities:
            raise ConfigError(
                f"--compute-capability is a TensorRT-RTX option; {self.name} builds for the GPU it runs on"
            )
        config.num_compute_capabilities = len(targets)
        for i, cc in enumerate(targets):
            if not config.set_compute_capability(getattr(self.trt.ComputeCapability, cc.upper()), i):
                raise ConfigError(f"{self.name} {self.version} refused compute capability {cc}")

    def has_build_cache(self) -> bool:
        """Datacenter TensorRT has a timing cache; TensorRT-RTX's timing cache is a no-op (its cache is a runtime cache)."""
        return self.name == "tensorrt"

    def load_timing_cache(self, config, data: bytes) -> None:
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)

    def save_timing_cache(self, config) -> bytes:
        return bytes(config.get_timing_cache().serialize())


def parse_compute_capability(text: str) -> str:
    cc = text.strip().lower().replace(".", "")
    if not cc.startswith("sm"):
        cc = "sm" + cc
    if cc not in RTX_COMPUTE_CAPABILITIES:
        raise ConfigError(f"unknown compute capability {text!r}; TensorRT-RTX targets {', '.join(RTX_COMPUTE_CAPABILITIES)}")
    return cc


def installed_flavors() -> list[str]:
    return [name for name in FLAVORS if importlib.util.find_spec(name) is not None]


def import_flavor(name: str = "auto") -> Flavor:
    """auto = datacenter TensorRT where installed, else TensorRT-RTX."""
    if name == "auto":
        available = installed_flavors()
        if not available:
            raise BackendUnavailableError(
                "no TensorRT flavor is installed; " + "; or ".join(INSTALL_HINTS[f] for f in FLAVORS)
            )
        name = available[0]
    if name not in FLAVORS:
        raise ConfigError(f"unknown TensorRT flavor {name!r}; choose auto, {', '.join(FLAVORS)}")
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise BackendUnavailableError(f"TensorRT flavor {name!r} is not installed ({e}); {INSTALL_HINTS[name]}") from None
    return Flavor(name, module)


def create_execution_context(engine, runtime_cache=None):
    """An execution context; on TensorRT-RTX it shares `runtime_cache` (compiled kernels) across contexts."""
    if runtime_cache is not None and hasattr(engine, "create_runtime_config"):
        config = engine.create_runtime_config()
        config.set_runtime_cache(runtime_cache)
        return engine.create_execution_context(config)
    return engine.create_execution_context()


def create_runtime_cache(engine, blob: bytes | None):
    """TensorRT-RTX's runtime cache (None on datacenter TensorRT); a blob from another GPU or version is ignored."""
    if not hasattr(engine, "create_runtime_config"):
        return None
    cache = engine.create_runtime_config().create_runtime_cache()
    if blob:
        cache.deserialize(blob)  # False on a mismatch: the cache then simply starts empty
    return cache
