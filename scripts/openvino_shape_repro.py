"""OpenVINO CPU plugin: one compiled model, dynamic shapes, wrong answers after a first call with a length-1 axis.

Self-contained (numpy, onnx, openvino): attention without weights, Transpose -> MatMul -> Softmax -> MatMul over a
dynamic sequence axis S. The first call has S = 1; the next, with S = 16 on the same compiled model, is wrong. A
fresh compiled model, a first call with S >= 2, CPU_RUNTIME_CACHE_CAPACITY=0 or SNIPPETS_MODE=DISABLE each give the
right answer. Exit status 1 when the bug shows. Seen with openvino 2026.4.1 (PyPI) on x86-64, float32 and bfloat16.
"""

import sys

import numpy as np
import openvino as ov
from onnx import TensorProto, helper

HEADS, DIM = 2, 16


def attention_model() -> bytes:
    """softmax(x @ x^T) @ x over x: (batch, HEADS, S, DIM), S dynamic."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["x", "xt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "x"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", HEADS, "S", DIM])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", HEADS, "S", DIM])
    graph = helper.make_graph(nodes, "attention", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def reference(x: np.ndarray) -> np.ndarray:
    s = x @ x.swapaxes(-1, -2)
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ x


def max_errors(config: dict, lengths=(1, 16), precision: str = "f32") -> list[float]:
    """Max abs error of each call, in order, on ONE compiled model (S = each of `lengths`)."""
    core = ov.Core()
    model = core.read_model(attention_model(), b"")
    # The precision hint is explicit: the CPU plugin's default is bf16 on CPUs with bf16 instructions.
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision, **config})
    request = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    errors = []
    for s in lengths:
        x = rng.standard_normal((1, HEADS, s, DIM), dtype=np.float32) * 0.3
        errors.append(float(np.abs(request.infer([x])[0] - reference(x)).max()))
    return errors


if __name__ == "__main__":
    print(f"openvino {ov.get_version()}")
    bug = False
    for name, config in {"default": {}, "CPU_RUNTIME_CACHE_CAPACITY=0": {"CPU_RUNTIME_CACHE_CAPACITY": "0"},
                         "SNIPPETS_MODE=DISABLE": {"SNIPPETS_MODE": "DISABLE"}}.items():
        for lengths in ((1, 16), (16, 1, 16), (2, 1, 16)):
            errors = max_errors(config, lengths)
            wrong = errors[-1] > 1e-4
            bug |= wrong and name == "default"
            print(f"{name:<29} S = {', '.join(map(str, lengths)):<9} max abs error per call: "
                  f"{', '.join(f'{e:.1e}' for e in errors)}{'  WRONG' if wrong else ''}")
    sys.exit(1 if bug else 0)
