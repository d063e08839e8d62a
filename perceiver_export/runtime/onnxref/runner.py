"""Runs model.onnx with ONNX's own reference evaluator (numpy, the spec's semantics).

Slow, but it runs every dtype the spec allows; verification uses it for bfloat16 graphs
where onnxruntime's CPU kernels stop.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from ...artifact.manifest import Manifest
from ..arrays import to_numpy
from ..base import Runner


class OnnxReferenceRunner(Runner):
    backend = "onnx-reference"

    def __init__(self, manifest: Manifest):
        super().__init__(manifest)
        model = onnx.load(str(manifest.onnx_path), load_external_data=True)
        self.evaluator = ReferenceEvaluator(model)
        self.output_name = manifest.contract.outputs[0].name

    def _infer(self, feeds: Mapping[str, Any], sizes: Mapping[str, int]) -> np.ndarray:
        arrays = {name: to_numpy(value) for name, value in self.with_defaults(feeds, sizes).items()}
        return np.asarray(self.evaluator.run([self.output_name], arrays)[0])
