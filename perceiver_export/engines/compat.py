"""Whether an engine recorded in the manifest can run here: flavor, version and compute capability."""

from __future__ import annotations

from typing import Mapping

from ..errors import BackendUnavailableError


class EngineIncompatibleError(BackendUnavailableError):
    """The engine was built for another TensorRT flavor, version or GPU than the one here."""


def check_engine_compatible(entry: Mapping, flavor: str, version: str, compute_capability: str | None) -> None:
    """Refuse, before deserializing, an engine that TensorRT would reject with a bare error code.

    compute_capability is the running GPU's, e.g. "sm89" (None: unknown, not checked).
    """
    name = entry.get("file", "engine")
    if entry["flavor"] != flavor:
        raise EngineIncompatibleError(f"{name} was built with {entry['flavor']}, but this process runs {flavor}")
    if entry["version"] != version:
        raise EngineIncompatibleError(
            f"{name} was built with {flavor} {entry['version']}, but {version} is installed; "
            "TensorRT engines only load in the version that built them: rebuild with `python -m perceiver_export trt`"
        )
    targets = entry.get("compute_capabilities") or []
    if compute_capability and targets and compute_capability not in targets:
        raise EngineIncompatibleError(
            f"{name} targets {', '.join(targets)}, but this GPU is {compute_capability}: "
            f"rebuild with --compute-capability {compute_capability}"
        )


def check_engine_trusted(entry: Mapping, allow_plugins: bool) -> None:
    """Refuse an engine that embeds plugins (native code run at deserialization) unless the caller allows it.

    The build records the network's plugin layers; an entry without that record is treated as unknown.
    """
    name = entry.get("file", "engine")
    plugins = entry.get("plugins")
    if allow_plugins:
        return
    if plugins is None:
        raise EngineIncompatibleError(
            f"{name}: the manifest does not say whether the engine embeds plugins (native code); "
            "rebuild it with `python -m perceiver_export trt`, or, if you trust it, load it in Python with allow_plugins=True "
            "(the command line never loads plugins)"
        )
    if plugins:
        raise EngineIncompatibleError(
            f"{name} embeds plugin layers {plugins[:5]} (native code): load it in Python with "
            "allow_plugins=True only if you trust its source (the command line never loads plugins)"
        )


def cuda_compute_capability(device=0) -> str | None:
    """The GPU's compute capability as "sm90", or None without a CUDA GPU (asked through torch)."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"
