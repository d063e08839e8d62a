"""The runner interface every backend shares: one input check from the contract, a thin backend part."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping

import numpy as np

from ..artifact.manifest import Manifest
from .arrays import NUMPY_DTYPES


class Runner(ABC):
    """`runner(q, k, v, mask=None) -> numpy.ndarray`, checked against the artifact's I/O contract.

    Inputs are numpy arrays or torch tensors of the contract's dtypes; the output is always
    a numpy array on the host (ml_dtypes.bfloat16 for a bfloat16 artifact).
    """

    backend: ClassVar[str]

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.contract = manifest.contract

    def __call__(self, q: Any, k: Any, v: Any, mask: Any = None) -> np.ndarray:
        return self.infer({"q": q, "k": k, "v": v, "mask": mask})

    def infer(self, feeds: Mapping[str, Any]) -> np.ndarray:
        """Run on named inputs; optional ones may be None or absent."""
        feeds = {name: value for name, value in feeds.items() if value is not None}
        sizes = self.contract.check_inputs(feeds)
        return self._infer(feeds, sizes)

    def with_defaults(self, feeds: Mapping[str, Any], sizes: Mapping[str, int]) -> dict[str, Any]:
        """Every graph input: omitted optional ones get the value they stand for (an all-True mask attends to all)."""
        full = dict(feeds)
        for spec in self.contract.inputs:
            if spec.name not in full:
                full[spec.name] = np.ones(self.contract.concrete_shape(spec.name, sizes), dtype=NUMPY_DTYPES[spec.dtype])
        return full

    @abstractmethod
    def _infer(self, feeds: Mapping[str, Any], sizes: Mapping[str, int]) -> np.ndarray:
        """Backend part: feeds are already checked; sizes maps each axis to its length."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.manifest.directory}>"
