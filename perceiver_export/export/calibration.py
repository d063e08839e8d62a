"""Calibration inputs for static int8 quantization: real inputs the user saved as .npz files.

Each file holds one array per contract input, named as in the contract ("q", "k", "v", optionally "mask"), with the
samples along the batch axis (any number of them; they are fed in batches within the contract's batch range); one
file is one set of sequence lengths. Every file is checked against the contract (the same check every
runner applies) before any quantizer sees it, so a wrong file fails with the input, what was expected and what came.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..contract import IOContract
from ..errors import ConfigError, InputError
from ..runtime.arrays import NUMPY_DTYPES


def read_calibration(paths: Sequence[str | Path], contract: IOContract) -> list[dict[str, np.ndarray]]:
    """Every file's arrays, checked; optional inputs left out are filled with what they stand for (all-True mask)."""
    sets = []
    for path in paths:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise ConfigError(f"--calibration {path}: no such file") from None
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ConfigError(f"--calibration {path}: not a readable .npz file ({e})") from None
        # The first sample of each array goes through the contract's check (the batch axis is the sample count here,
        # so it may exceed the contract's batch range; the reader hands the quantizer batches within it).
        first = {name: a[:1] if a.ndim else a for name, a in arrays.items()}
        try:
            sizes = contract.check_inputs(first)
        except InputError as e:
            raise InputError(f"--calibration {path}: {e}") from None
        counts = {name: a.shape[0] for name, a in arrays.items()}
        if len(set(counts.values())) > 1:
            raise InputError(f"--calibration {path}: every input needs the same number of samples (first axis), got "
                             + ", ".join(f"{n} {c}" for n, c in counts.items()))
        sizes = {**sizes, "batch": next(iter(counts.values()))}
        for spec in contract.inputs:
            if spec.name not in arrays:
                arrays[spec.name] = np.ones(contract.concrete_shape(spec.name, sizes), dtype=NUMPY_DTYPES[spec.dtype])
        sets.append(arrays)
    if not sets:
        raise ConfigError("--calibration: no files given")
    return sets


class CalibrationReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over the checked sets, one batch at a time."""

    def __init__(self, sets: Sequence[dict[str, np.ndarray]], batch: int = 1):
        self._batches = self._split(sets, batch)

    @staticmethod
    def _split(sets, batch) -> Iterator[dict[str, np.ndarray]]:
        for arrays in sets:
            n = next(iter(arrays.values())).shape[0]
            for start in range(0, n, batch):
                yield {name: a[start:start + batch] for name, a in arrays.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)
