"""An ONNX graph's inputs and outputs against the I/O contract: the one check export and serving share.

Torch-free, so consumers of an artifact (the Triton writer) use it without importing the exporter.
"""

from __future__ import annotations

import onnx

from ..contract import IOContract

# Element types the contract names, both ways.
ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.BOOL: "bool",
}
ONNX_TYPES = {name: elem for elem, name in ONNX_DTYPES.items()}


def graph_dims(proto: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Each graph input/output's dims: an int for a fixed size, the dim_param string for a symbolic one."""
    out = {}
    for vi in list(proto.graph.input) + list(proto.graph.output):
        out[vi.name] = [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]
    return out


def graph_io_mismatch(proto: onnx.ModelProto, contract: IOContract) -> str | None:
    """The first way the graph's inputs/outputs differ from the contract, or None.

    Same names (initializers aside, nothing extra), element types, ranks, and each axis: the contract's
    symbolic name where it is dynamic, its size where it is fixed.
    """
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = {v.name: v for v in graph.input if v.name not in initializers}
    extra = sorted(set(inputs) - set(contract.input_names))
    if extra:
        return f"graph inputs {extra} are not in the manifest's contract"
    outputs = {v.name: v for v in graph.output}
    for kind, specs, values in (("input", contract.inputs, inputs), ("output", contract.outputs, outputs)):
        for spec in specs:
            value = values.get(spec.name)
            if value is None:
                return f"the contract's {kind} {spec.name!r} is not a {kind} of the graph (it has {', '.join(values)})"
            tensor = value.type.tensor_type
            if tensor.elem_type != ONNX_TYPES.get(spec.dtype):
                return (f"{kind} {spec.name!r} is {onnx.TensorProto.DataType.Name(tensor.elem_type)} "
                        f"in the graph but {spec.dtype} in the contract")
            dims = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
            if len(dims) != len(spec.dims):
                return f"{kind} {spec.name!r} has rank {len(dims)} in the graph but {len(spec.dims)} {contract.describe(spec)} in the contract"
            for i, (want, have) in enumerate(zip(spec.dims, dims)):
                fixed = isinstance(want, int) or contract.dim_bound(want, "min") == contract.dim_bound(want, "max")
                expected = contract.dim_bound(want, "min") if fixed else want
                if have != expected:
                    return (f"{kind} {spec.name!r} axis {i} is {have!r} in the graph but {expected!r} in the contract"
                            + ("" if fixed else " (a dynamic axis specialised or renamed)"))
    return None
