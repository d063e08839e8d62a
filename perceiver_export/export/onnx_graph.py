"""torch -> ONNX: dynamic shapes derived from the I/O contract, symbolic axes checked in the graph."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch

from ..contract import IOContract, dim_terms
from ..errors import ConfigError

DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(17, 24)  # LayerNormalization needs 17; 23 is the newest torch 2.13 writes
TWO_GB = 2**31  # protobuf's limit on one serialized message

# Example sizes used to trace: small, distinct and > 1 so no axis is mistaken for another or specialised.
_EXAMPLE_SIZES = {"batch": 2, "q_len": 3, "k_len": 5, "v_len": 7}


def _export_dim_name(dim: str) -> str:
    """torch.export wants identifiers; a sum such as 'k_len + v_len' is traced as its own Dim."""
    return "_plus_".join(dim_terms(dim))


def example_sizes(contract: IOContract) -> dict[str, int]:
    sizes = {}
    for axis, rng in contract.axes.items():
        wanted = _EXAMPLE_SIZES.get(axis, 3)
        sizes[axis] = min(max(wanted, rng.min), rng.max)
    return sizes


def dynamic_shapes(contract: IOContract) -> dict[str, dict[int, torch.export.Dim]]:
    """torch.export dynamic shapes for every input, from the contract's axis ranges."""
    dims: dict[str, torch.export.Dim] = {}
    shapes = {}
    for spec in contract.inputs:
        entry = {}
        for i, d in enumerate(spec.dims):
            if isinstance(d, int):
                continue
            lo, hi = contract.dim_bound(d, "min"), contract.dim_bound(d, "max")
            if lo == hi:  # a fixed axis stays static
                continue
            name = _export_dim_name(d)
            if name not in dims:
                dims[name] = torch.export.Dim(name, min=lo, max=hi)
            entry[i] = dims[name]
        shapes[spec.name] = entry or None
    return shapes


def example_inputs(contract: IOContract, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    sizes = example_sizes(contract)
    gen = torch.Generator().manual_seed(0)
    out = []
    for spec in contract.inputs:
        shape = contract.concrete_shape(spec.name, sizes)
        if spec.dtype == "bool":
            t = torch.rand(shape, generator=gen) > 0.3
        else:
            t = torch.randn(shape, generator=gen).to(dtype)
        out.append(t)
    return tuple(out)


def export_onnx(model: torch.nn.Module, contract: IOContract, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Export `model` (eval mode) with the contract's names and symbolic axes; return the ModelProto."""
    if opset not in SUPPORTED_OPSETS:
        raise ConfigError(f"opset must be in {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}, got {opset}")
    dtype = next(model.parameters()).dtype
    args = example_inputs(contract, dtype)
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model,
                args,
                input_names=list(contract.input_names),
                output_names=[o.name for o in contract.outputs],
                dynamic_shapes=tuple(dynamic_shapes(contract).values()),  # positional: q, k, v, mask
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except Exception as e:
            raise ConfigError(f"torch.onnx.export failed: {type(e).__name__}: {e}") from e
    proto = program.model_proto
    _name_symbolic_dims(proto, contract)
    check_symbolic_axes(proto, contract)
    return proto


class _quiet_exporter:
    """The dynamo exporter logs progress and optional-dependency notes at WARNING; keep the CLI readable."""

    def __enter__(self):
        self._loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
        self._levels = [lg.level for lg in self._loggers]
        for lg in self._loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for lg, level in zip(self._loggers, self._levels):
            lg.setLevel(level)


def _name_symbolic_dims(proto: onnx.ModelProto, contract: IOContract) -> None:
    """Rename traced dim params (k_len_plus_v_len) to the contract's names (k_len + v_len) graph-wide."""
    renames = {_export_dim_name(d): d for spec in contract.inputs for d in spec.dims if isinstance(d, str)}
    renames = {k: v for k, v in renames.items() if k != v}
    graph = proto.graph
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def graph_dims(proto: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Each graph input/output's dims: an int for a fixed size, the dim_param string for a symbolic one."""
    out = {}
    for vi in list(proto.graph.input) + list(proto.graph.output):
        out[vi.name] = [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]
    return out


def check_symbolic_axes(proto: onnx.ModelProto, contract: IOContract) -> None:
    """The graph keeps every dynamic axis symbolic, under the contract's name; raise ConfigError if not."""
    dims = graph_dims(proto)
    for spec in contract.inputs + contract.outputs:
        if spec.name not in dims:
            raise ConfigError(f"exported graph has no {spec.name!r}; it has {sorted(dims)}")
        got = dims[spec.name]
        if len(got) != len(spec.dims):
            raise ConfigError(f"exported {spec.name!r} has rank {len(got)}, the contract says {len(spec.dims)}")
        for i, (want, have) in enumerate(zip(spec.dims, got)):
            fixed = isinstance(want, int) or contract.dim_bound(want, "min") == contract.dim_bound(want, "max")
            expected = contract.dim_bound(want, "min") if fixed else want
            if have != expected:
                raise ConfigError(
                    f"exported {spec.name!r} axis {i}: expected {expected!r}, the graph has {have!r}"
                    + ("" if fixed else " (torch.export specialised a dynamic axis)")
                )


def save_onnx(proto: onnx.ModelProto, path: Path, external_data: str = "auto") -> list[Path]:
    """Write the graph; return every file written. external_data: auto | always | never.

    auto keeps one self-contained file while the model fits protobuf's 2 GB limit, so
    consumers (TensorRT's parser, C++, Triton) get a single file whenever they can.
    """
    if external_data not in ("auto", "always", "never"):
        raise ConfigError(f"external_data must be auto, always or never, got {external_data!r}")
    size = proto.ByteSize()
    use_external = external_data == "always" or (external_data == "auto" and size >= TWO_GB)
    if external_data == "never" and size >= TWO_GB:
        raise ConfigError(f"the model is {size / 2**30:.1f} GiB, over protobuf's 2 GB: it needs external data")
    if not use_external:
        onnx.save_model(proto, path)
        return [path]
    data_name = path.name + ".data"
    # Small tensors (shape constants) stay inline: onnxruntime's shape inference cannot read external ones.
    onnx.save_model(
        proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name, size_threshold=1024
    )
    return [path, path.parent / data_name]
