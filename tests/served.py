"""A real `python -m perceiver_export serve` process for tests (127.0.0.1, ephemeral ports, always stopped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from perceiver_export.serving.process import ServerProcess

REPO = Path(__file__).resolve().parent.parent


class Served(ServerProcess):
    """The server process, started from the repository root so that `tests.user_layers` modules import."""

    def __init__(self, directory: str | Path, *options: str):
        super().__init__(directory, *options, cwd=REPO)


def triton_inputs(module, feeds: dict[str, np.ndarray]) -> list:
    """tritonclient InferInputs (http or grpc module) for named arrays, binary data (the clients' default)."""
    types = {"float32": "FP32", "float16": "FP16", "bool": "BOOL"}
    inputs = []
    for name, array in feeds.items():
        tensor = module.InferInput(name, list(array.shape), types[array.dtype.name])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs
