"""perceiver-export: take a PyTorch PerceiverLayer to ONNX (and TensorRT) with proof that every backend agrees."""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ArtifactError,
    BackendUnavailableError,
    ConfigError,
    InputError,
    ParityError,
    PerceiverExportError,
)
# The entry points, imported on first use (PEP 562) so `import perceiver_export` stays light, and so the runners
# that need no torch (onnxruntime, openvino: Triton's Python-backend stub environment has no torch) import without it.
# Name -> its module.
_LAZY = {
    "PerceiverLayer": ".model",
    "export_artifact": ".export.artifact_builder",
    "verify_artifact": ".verify.parity",
    "build_engine": ".engines.build",
    "BuildOptions": ".engines.build",
    "load_spec": ".config",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ArtifactError", "BackendUnavailableError", "ConfigError", "InputError", "ParityError",
    "PerceiverExportError", "PerceiverLayer", "__version__",
    "export_artifact", "verify_artifact", "build_engine", "BuildOptions", "load_spec",  # _LAZY's names
]
