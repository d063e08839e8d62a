"""perceiver-export: take a PyTorch PerceiverLayer to ONNX (and TensorRT) with proof that every backend agrees."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from .errors import (  # nothing heavy: loaded at once
    ArtifactDamagedError,
    ArtifactError,
    BackendUnavailableError,
    ConfigError,
    InputError,
    ParityError,
    PerceiverExportError,
)

# Public names whose modules pull in torch or ONNX, imported on first use (PEP 562) so that
# `import perceiver_export` and `python -m perceiver_export --help` stay fast. Name -> module it lives in; a new one
# goes here, under TYPE_CHECKING and in __all__ (tests/test_cli_startup.py checks the three agree).
_LAZY = {
    "PerceiverLayer": ".model",
    # the entry points (docs/python-api.md)
    "export_artifact": ".export.artifact_builder",
    "verify_artifact": ".verify.parity",
    "build_engine": ".engines.build",
    "BuildOptions": ".engines.build",
    "load_spec": ".config",
}

if TYPE_CHECKING:  # what type checkers, IDEs and the API docs see
    from .config import load_spec
    from .engines.build import BuildOptions, build_engine
    from .export.artifact_builder import export_artifact
    from .model import PerceiverLayer
    from .verify.parity import verify_artifact


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ArtifactDamagedError", "ArtifactError", "BackendUnavailableError", "ConfigError", "InputError", "ParityError",
    "PerceiverExportError", "__version__",
    "PerceiverLayer", "export_artifact", "verify_artifact", "build_engine", "BuildOptions", "load_spec",  # _LAZY's
]
