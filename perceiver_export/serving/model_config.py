"""Triton's ModelConfig of an artifact, from its I/O contract: one derivation for the config.pbtxt files `triton`
writes and for the configuration `serve` answers on `/v2/models/NAME/config` and gRPC `ModelConfig`.

A config is a dict in Triton's JSON form: the field names of Triton's model_config.proto, enums by name
("TYPE_FP32", "KIND_GPU"), integers as JSON numbers (what Triton's REST API returns and perf_analyzer reads; protobuf's
json_format would write the int64 fields as strings). `config_pbtxt` writes the same dict as protobuf text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..contract import IOContract, TensorSpec, dim_terms
from ..errors import ConfigError

BATCH = "batch"
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "bool": "TYPE_BOOL"}
# Fields of model_config.proto whose values are enums (written bare in text form) and maps (written as entries).
ENUM_FIELDS = frozenset({"data_type", "kind", "format", "timeout_action"})
MAP_FIELDS = frozenset({"cc_model_filenames", "metric_tags", "parameters"})


@dataclass(frozen=True)
class Batching:
    max_batch_size: int  # 0: no Triton batching, the batch dim is written explicitly
    reason: str | None = None  # why Triton's batching is not used


def batching_for(contract: IOContract) -> Batching:
    """Triton batching when it can honour the batch axis: dim 0 of every tensor, lower bound 1."""
    rng = contract.axes.get(BATCH)
    if rng is None:
        return Batching(0, "the contract has no batch axis: max_batch_size 0, every dim written explicitly")
    without = [t.name for t in contract.inputs + contract.outputs if len(t.dims) < 2 or t.dims[0] != BATCH]
    if without:
        return Batching(0, f"{', '.join(without)} lack batch as dim 0 (of two or more): Triton's batch dim cannot "
                           "describe them, so max_batch_size is 0, the batch dim is written explicitly and dynamic batching is off")
    if rng.min > 1:
        return Batching(0, f"batch min is {rng.min}: Triton's batching accepts any batch from 1 to max_batch_size and "
                           "cannot enforce a lower bound, so max_batch_size is 0, the batch dim is written explicitly "
                           "and dynamic batching is off")
    return Batching(rng.max)


def triton_dims(contract: IOContract, spec: TensorSpec, batched: bool) -> list[int]:
    """A tensor's dims as Triton's config has them: -1 where the size varies, the size where it cannot."""
    dims = []
    for d in spec.dims[1:] if batched else spec.dims:
        fixed = isinstance(d, int) or all(contract.axes[t].min == contract.axes[t].max for t in dim_terms(d))
        dims.append(contract.dim_bound(d, "min") if fixed else -1)
    return dims


def triton_type(spec: TensorSpec) -> str:
    if spec.dtype not in TRITON_TYPES:
        raise ConfigError(f"{spec.name}: dtype {spec.dtype} has no Triton type here ({', '.join(TRITON_TYPES)})")
    return TRITON_TYPES[spec.dtype]


def tensor_config(contract: IOContract, spec: TensorSpec, batched: bool, optional: bool = False,
                  ragged: bool = False) -> dict:
    entry: dict[str, Any] = {"name": spec.name, "data_type": triton_type(spec), "dims": triton_dims(contract, spec, batched)}
    if optional:
        entry["optional"] = True
    if ragged:
        entry["allow_ragged_batch"] = True
    return entry


def dynamic_batching_config(max_queue_delay_us: int, *, preferred_batch_size: Sequence[int] = (),
                            max_queue_size: int | None = None, timeout_us: int | None = None) -> dict:
    """Triton's `dynamic_batching`; a queue policy only when a queue limit or a timeout is set (REJECT: the request
    is answered with an error, which is what our batcher does past either)."""
    config: dict[str, Any] = {"max_queue_delay_microseconds": int(max_queue_delay_us)}
    if preferred_batch_size:
        config["preferred_batch_size"] = [int(n) for n in preferred_batch_size]
    if max_queue_size is not None or timeout_us:
        policy: dict[str, Any] = {"timeout_action": "REJECT"}
        if timeout_us:
            policy["default_timeout_microseconds"] = int(timeout_us)
        if max_queue_size is not None:
            policy["max_queue_size"] = int(max_queue_size)
        config["default_queue_policy"] = policy
    return config


def model_config(contract: IOContract, name: str, *, platform: str | None = None, backend: str | None = None,
                 max_batch_size: int | None = None, dynamic_batching: Mapping | None = None,
                 instance_group: Sequence[Mapping] = (), optional_inputs: bool = False,
                 ragged_inputs: Sequence[str] = (), extra: Mapping[str, Any] | None = None) -> dict:
    """The ModelConfig dict of a model whose tensors are the contract's.

    `max_batch_size` None is `batching_for(contract)`'s; a contract Triton cannot batch (`batching_for` says 0) is
    always 0, every dim explicit and no dynamic batching. `optional_inputs` marks the contract's optional inputs
    `optional: true`: only where the model behind the config really runs without them (see triton_repo.py for why
    Triton's own onnxruntime and tensorrt models do not). `ragged_inputs` are written `allow_ragged_batch: true`
    (Triton's batcher then groups requests whose sizes differ there; only a model that pads them may say so).
    """
    batchable = batching_for(contract).max_batch_size
    mbs = 0 if batchable == 0 else (batchable if max_batch_size is None else int(max_batch_size))
    config: dict[str, Any] = {"name": name}
    if platform is not None:
        config["platform"] = platform
    if backend is not None:
        config["backend"] = backend
    config["max_batch_size"] = mbs
    config["input"] = [tensor_config(contract, t, mbs > 0, optional_inputs and t.optional, mbs > 0 and t.name in ragged_inputs)
                       for t in contract.inputs]
    config["output"] = [tensor_config(contract, t, mbs > 0) for t in contract.outputs]
    if instance_group:
        config["instance_group"] = [dict(g) for g in instance_group]
    config.update(extra or {})
    if mbs > 0 and dynamic_batching is not None:
        config["dynamic_batching"] = dict(dynamic_batching)
    return config


def served_model_config(contract: IOContract, name: str, *, max_batch_size: int, max_queue_delay_us: int,
                        max_queue_size: int, timeout_us: int | None = None, backend: str = "perceiver_export",
                        kind: str = "KIND_CPU") -> dict:
    """What `serve` answers for its model: its batcher's max_batch_size and queue knobs as Triton's dynamic batcher
    would state them, and the contract's optional inputs optional (the server fills an absent mask with True)."""
    return model_config(
        contract, name, backend=backend, max_batch_size=max_batch_size,
        dynamic_batching=dynamic_batching_config(max_queue_delay_us, max_queue_size=max_queue_size, timeout_us=timeout_us),
        instance_group=[{"name": name, "kind": kind, "count": 1}], optional_inputs=True,
        extra={"version_policy": {"latest": {"num_versions": 1}}},
    )


# ---- protobuf text form (config.pbtxt) --------------------------------------------------------
def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _scalar(field: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value if field in ENUM_FIELDS else quoted(value)
    raise ConfigError(f"config field {field}: cannot write {type(value).__name__} {value!r} as protobuf text")


def _field_lines(field: str, value: Any, indent: str, comments: Mapping[str, str]) -> list[str]:
    if field in MAP_FIELDS:
        lines = []
        for k, v in value.items():
            if isinstance(v, Mapping):  # a message value (parameters: { string_value: ... })
                lines += [f"{indent}{field} {{", f"{indent}  key: {quoted(k)}", f"{indent}  value {{",
                          *_message_lines(v, indent + "    ", comments), f"{indent}  }}", f"{indent}}}"]
            else:
                lines.append(f"{indent}{field} {{ key: {quoted(k)} value: {quoted(v)} }}")
        return lines
    if isinstance(value, Mapping):
        return [f"{indent}{field} {{", *_message_lines(value, indent + "  ", comments), f"{indent}}}"]
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], Mapping):
            lines = [f"{indent}{field} ["]
            for i, item in enumerate(value):
                lines += [f"{indent}  {{", *_message_lines(item, indent + "    ", comments),
                          f"{indent}  }}" + ("," if i < len(value) - 1 else "")]
            return lines + [f"{indent}]"]
        return [f"{indent}{field}: [ " + ", ".join(_scalar(field, v) for v in value) + " ]"]
    return [f"{indent}{field}: {_scalar(field, value)}"]


def _message_lines(message: Mapping, indent: str, comments: Mapping[str, str]) -> list[str]:
    lines = []
    note = comments.get(message.get("name")) if "data_type" in message else None  # an input or an output
    if note:
        lines.append(f"{indent}# {note}")
    for field, value in message.items():
        lines += _field_lines(field, value, indent, comments)
    return lines


def config_pbtxt(config: Mapping, header: Sequence[str] = (), tensor_comments: Mapping[str, str] | None = None) -> str:
    """The config as protobuf text (config.pbtxt): `header` lines first, then a blank line; `tensor_comments` puts
    a `#` line into the named input's or output's block."""
    body = _message_lines(config, "", tensor_comments or {})
    return "\n".join([*header, "", *body] if header else body) + "\n"


__all__ = ["Batching", "batching_for", "config_pbtxt", "dynamic_batching_config", "model_config",
           "served_model_config", "tensor_config", "triton_dims", "triton_type"]
