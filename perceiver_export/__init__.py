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
from .model import PerceiverLayer  # noqa: E402

__all__ = [
    "ArtifactError", "BackendUnavailableError", "ConfigError", "InputError", "ParityError",
    "PerceiverExportError", "PerceiverLayer", "__version__",
]
