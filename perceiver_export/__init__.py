"""perceiver-export: take a PyTorch PerceiverLayer to ONNX (and TensorRT) with proof that every backend agrees."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from .errors import (  # nothing heavy: loaded at once
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
}

if TYPE_CHECKING:  # what type checkers, IDEs and the API docs see
    from .model import PerceiverLayer


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
    "ArtifactError", "BackendUnavailableError", "ConfigError", "InputError", "ParityError",
    "PerceiverExportError", "PerceiverLayer", "__version__",
]
