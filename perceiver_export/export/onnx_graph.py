"""torch -> ONNX: dynamic shapes derived from the I/O contract, symbolic axes checked in the graph."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch

from ..artifact.graph_io import ONNX_DTYPES, graph_dims, graph_io_mismatch  # noqa: F401 (graph_dims: re-exported)
from ..contract import AXES, IOContract, TensorSpec, dim_terms
from ..errors import ConfigError, DynamicAxisError
from ..model.module_ref import CALL_CONTRACT

DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(17, 24)  # LayerNormalization needs 17; 23 is the newest torch 2.13 writes
TWO_GB = 2**31  # protobuf's limit on one serialized message
OUTPUT = "out"

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


def example_inputs(contract: IOContract, dtype: torch.dtype, sizes: dict[str, int] | None = None) -> tuple[torch.Tensor, ...]:
    sizes = sizes or example_sizes(contract)
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


def export_onnx(model: torch.nn.Module, contract: IOContract, opset: int = DEFAULT_OPSET,
                output_doc: str = "") -> tuple[onnx.ModelProto, IOContract]:
    """Export `model` (eval mode) with the contract's input names and symbolic axes.

    Returns the ModelProto and the contract completed with the output read from the graph:
    its dtype and its axes (say (batch, k_len + v_len, dim)) are what the module computes,
    not what we assume.
    """
    if opset not in SUPPORTED_OPSETS:
        raise ConfigError(f"opset must be in {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}, got {opset}")
    shapes = tuple(dynamic_shapes(contract).values())  # positional: q, k, v[, mask]
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program, args = capture_program(model, contract, shapes)
        try:
            onnx_program = torch.onnx.export(
                program,
                args,
                input_names=list(contract.input_names),
                output_names=[OUTPUT],
                dynamic_shapes=shapes,  # only names the graph's dims after the contract's axes
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except Exception as e:
            raise ConfigError(f"torch.onnx.export failed: {type(e).__name__}: {e}") from e
    proto = onnx_program.model_proto
    if len(proto.graph.output) != 1:
        names = [o.name for o in proto.graph.output]
        raise ConfigError(f"the module returns {len(names)} tensors ({names}); the call contract has one output tensor")
    _name_symbolic_dims(proto, contract)
    contract = contract.with_outputs((output_spec(proto, contract, output_doc),))
    check_symbolic_axes(proto, contract)
    return proto, contract


def capture_program(model: torch.nn.Module, contract: IOContract, shapes: tuple) -> tuple[torch.export.ExportedProgram, tuple]:
    """torch.export with the contract's ranges; returns the program and the example inputs it traced.

    Refuses (where torch.onnx.export's fallbacks would silently narrow) any axis the module
    specialises, narrows or ties to another. Traces with small distinct sizes first; a module
    that cannot even run on those (a fixed q_len, k_len tied to v_len) is traced again at the
    contract's opt sizes, so the error says which axis and what works.
    """
    from torch._dynamo.exc import UserError

    dtype = getattr(torch, contract.dtype)
    opt = {a: r.opt for a, r in contract.axes.items()}
    first: Exception | None = None
    for sizes in (example_sizes(contract), opt):
        args = example_inputs(contract, dtype, sizes)
        try:
            return torch.export.export(model, args, dynamic_shapes=shapes, strict=False), args
        except UserError as e:
            problems = _axis_problems(model, args, contract, shapes, e)
            if not problems:
                raise ConfigError(f"torch.export failed: {e}") from e
            error = DynamicAxisError(
                f"{type(model).__name__} cannot be exported over the declared ranges:\n  " + "\n  ".join(problems)
            )
            error.problems = problems
            raise error from e
        except Exception as e:  # the module's own code failed on these sizes
            first = first or e
    raise ConfigError(
        f"torch.export could not trace {type(model).__name__} with the call contract {CALL_CONTRACT}: "
        f"{type(first).__name__}: {first}"
    ) from first


def _axis_problems(model, args, contract: IOContract, shapes: tuple, error: Exception, rounds: int = 3) -> list[str]:
    """One line per axis torch.export could not keep over its range, from torch's own suggested fixes.

    Each round applies torch's fixes and traces again, so problems hidden behind the first ones
    are found too.
    """
    from torch._dynamo.exc import UserError
    from torch.export.dynamic_shapes import refine_dynamic_shapes_from_suggested_fixes as refine

    problems: dict[tuple[str, int], str] = {}
    current = shapes
    for _ in range(rounds):
        try:
            refined = refine(error.msg, current)
        except Exception:
            break
        for spec, before, after in zip(contract.inputs, current, refined):
            for axis, dim in (before or {}).items():
                new = (after or {}).get(axis)
                line = _describe_refinement(contract, spec.name, axis, spec.dims[axis], dim, new)
                if line:
                    problems.setdefault((spec.name, axis), line)
        current = refined
        try:
            torch.export.export(model, args, dynamic_shapes=current, strict=False)
            break
        except UserError as e:
            error = e
        except Exception:
            break
    return list(problems.values())


def _describe_refinement(contract: IOContract, name: str, axis: int, declared: str, before, after) -> str | None:
    """What torch's fix for one axis means, and the range option that does export; None if it changes nothing."""
    where = f"input {name!r} axis {axis} ({declared})"
    terms = dim_terms(declared)
    option = "--" + declared.replace("_", "-") if len(terms) == 1 else " and ".join("--" + t.replace("_", "-") for t in terms) + " ranges summing to"
    lo, hi = contract.dim_bound(declared, "min"), contract.dim_bound(declared, "max")
    if isinstance(after, int):
        return (f"{where}: the module specialises it to the constant {after} (declared range [{lo}, {hi}]); "
                f"export it fixed with {option} {after}, or make the module accept any {declared}")
    after_name = getattr(after, "__name__", None)
    if after is None or after_name is None:
        return None
    if after_name != getattr(before, "__name__", None):
        if len(dim_terms(declared)) > 1 and _export_dim_name(declared) in after_name.replace(" ", "_plus_"):
            return None  # the mask's k_len + v_len derived from k_len and v_len: what the contract says
        return (f"{where}: the module ties it to another axis ({declared} = {after_name}), but the call contract keeps "
                f"{', '.join(AXES[1:])} independent; export the tied axes with one fixed size, or change the module")
    new_lo, new_hi = max(getattr(after, "min", lo), lo), min(getattr(after, "max", hi), hi)
    if new_lo <= 2 and lo < new_lo:
        new_lo = lo  # torch reports sizes 0 and 1 as 2 when it traced with a larger example
    if (new_lo, new_hi) == (lo, hi):
        return None
    opt = min(max(contract.axes[declared].opt, new_lo), new_hi) if declared in contract.axes else new_lo
    return (f"{where}: the module only works for {declared} in [{new_lo}, {new_hi}], not the declared [{lo}, {hi}]; "
            f"export with {option} {new_lo}:{opt}:{new_hi}")


def output_spec(proto: onnx.ModelProto, contract: IOContract, doc: str = "") -> TensorSpec:
    """The graph's output as the contract states it: dtype, and each axis a fixed size or a sum of input axes."""
    out = proto.graph.output[0]
    elem = out.type.tensor_type.elem_type
    if elem not in ONNX_DTYPES or ONNX_DTYPES[elem] == "bool":
        raise ConfigError(f"the module's output has ONNX element type {onnx.TensorProto.DataType.Name(elem)}; "
                          f"the contract's outputs are float32, float16 or bfloat16")
    dims: list[int | str] = []
    for i, d in enumerate(out.type.tensor_type.shape.dim):
        if d.dim_param:
            terms = [t.strip() for t in d.dim_param.split("+")]
            if not all(t in contract.axes for t in terms) or len(set(terms)) != len(terms):
                raise ConfigError(
                    f"output axis {i} has size {d.dim_param!r}, which is not a fixed size or a sum of the input axes "
                    f"({', '.join(contract.axes)}): the I/O contract cannot describe it"
                )
            dims.append(" + ".join(sorted(terms, key=list(contract.axes).index)))
        elif d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            raise ConfigError(f"output axis {i} has no size in the exported graph (data-dependent?): the I/O contract cannot describe it")
    return TensorSpec(out.name, ONNX_DTYPES[elem], tuple(dims), doc=doc)


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


def check_symbolic_axes(proto: onnx.ModelProto, contract: IOContract) -> None:
    """The graph keeps every dynamic axis symbolic, under the contract's name; raise ConfigError if not."""
    problem = graph_io_mismatch(proto, contract)
    if problem:
        raise ConfigError(f"the exported graph does not match the I/O contract: {problem}")


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
