"""Runs the eager PyTorch model rebuilt from the artifact's config and weights.safetensors."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ...artifact.manifest import Manifest
from ...artifact.weights import TORCH_DTYPES, build_model
from ..arrays import to_numpy, to_torch
from ..base import Runner


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, manifest: Manifest, device: str = "cpu", dtype: str | None = None):
        """dtype overrides the artifact's (e.g. 'float32' for a full-precision reference)."""
        super().__init__(manifest)
        self.device = torch.device(device)
        self.model = build_model(manifest.model_class, manifest.model_config, manifest.weights_path,
                                 dtype or manifest.dtype).to(self.device)
        self.compute_dtype = TORCH_DTYPES[dtype or manifest.dtype]

    def _infer(self, feeds: Mapping[str, Any], sizes: Mapping[str, int]) -> np.ndarray:
        args = []  # positional, in the contract's order: the module's own parameter names may differ
        for spec in self.contract.inputs:
            if spec.name in feeds:
                t = to_torch(feeds[spec.name]).to(self.device)
                args.append(t if t.dtype == torch.bool else t.to(self.compute_dtype))
        with torch.inference_mode():
            out = self.model(*args)
        return to_numpy(out)
