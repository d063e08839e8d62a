"""The Open Inference Protocol (KServe v2) as this artifact speaks it: datatypes, model metadata and tensors.

Everything here is derived from the I/O contract: the metadata's names, datatypes and shapes (-1 for every
symbolic axis), and the checks a tensor off the wire passes before it becomes a numpy array — a known name,
its contract datatype, its rank, and exactly as many bytes (or JSON values) as its shape needs, computed
before anything is allocated. The REST codec reads and writes the binary tensor data extension with numpy
buffers (no per-element Python objects), so HTTP costs what the bytes cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import orjson

from ..contract import IOContract, TensorSpec
from ..errors import InputError
from ..runtime.arrays import NUMPY_DTYPES

WIRE_TYPES = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16", "bool": "BOOL"}
HEADER_LENGTH = "inference-header-content-length"  # the binary extension's header (lower case, as ASGI gives it)


def wire_type(spec: TensorSpec) -> str:
    return WIRE_TYPES[spec.dtype]


def metadata_shape(spec: TensorSpec) -> list[int]:
    """The tensor's shape for model metadata: fixed sizes as they are, -1 for every symbolic axis."""
    return [d if isinstance(d, int) else -1 for d in spec.dims]


def tensor_metadata(contract: IOContract) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) as the protocol's model-metadata tensors."""
    def one(spec: TensorSpec) -> dict:
        return {"name": spec.name, "datatype": wire_type(spec), "shape": metadata_shape(spec)}

    return [one(s) for s in contract.inputs], [one(s) for s in contract.outputs]


def decode_tensor(contract: IOContract, name: str, datatype: str, shape: Sequence[Any], *,
                  raw: bytes | memoryview | None = None, data: Any = None) -> np.ndarray:
    """A wire tensor as a numpy array, refused with `InputError` unless it is one the contract can take.

    The byte count (or JSON value count) the shape implies is checked before any allocation, so a huge
    declared shape with a tiny body costs nothing.
    """
    if name not in contract.input_names:
        raise InputError(f"unknown input {name!r}: expected one of {', '.join(contract.input_names)}")
    spec = contract.spec(name)
    expected_type = wire_type(spec)
    if str(datatype).upper() != expected_type:
        raise InputError(f"input {name!r}: expected datatype {expected_type}, got {datatype}")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise InputError(f"input {name!r}: shape must be a list of integers, got {shape!r}")
    if len(shape) != len(spec.dims):
        raise InputError(
            f"input {name!r}: expected rank {len(spec.dims)} {contract.describe(spec)}, got rank {len(shape)} "
            f"with shape {tuple(shape)}"
        )
    if any(n < 0 for n in shape):
        raise InputError(f"input {name!r}: shape {tuple(shape)} has a negative size")
    count = math.prod(shape)
    dtype = np.dtype(NUMPY_DTYPES[spec.dtype])
    if raw is not None:
        need = count * dtype.itemsize
        if len(raw) != need:
            raise InputError(
                f"input {name!r}: binary data is {len(raw)} bytes but shape {tuple(shape)} of {expected_type} "
                f"needs {need} bytes"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if data is None:
        raise InputError(f"input {name!r}: no data (neither a JSON 'data' field nor binary data)")
    try:
        array = np.asarray(data, dtype=np.float64 if dtype.kind == "f" or dtype.name == "bfloat16" else None)
    except (ValueError, TypeError):
        raise InputError(f"input {name!r}: JSON data is not a rectangular array of numbers") from None
    if array.dtype == object or array.size != count:
        raise InputError(
            f"input {name!r}: JSON data has {array.size if array.dtype != object else 'ragged'} values but shape "
            f"{tuple(shape)} needs {count}"
        )
    if expected_type == "BOOL":
        if array.dtype != np.bool_:
            raise InputError(f"input {name!r}: BOOL data must be true/false, got {array.dtype.name} values")
    elif array.dtype.kind not in "fiu":
        raise InputError(f"input {name!r}: {expected_type} data must be numbers, got {array.dtype.name} values")
    return array.astype(dtype).reshape(shape)


# ---- REST: JSON and the binary tensor data extension --------------------------------------------------
@dataclass
class RestRequest:
    id: str | None
    feeds: dict[str, np.ndarray]
    outputs: dict[str, bool]  # requested output -> binary; empty = every output, `binary_default`
    binary_default: bool


def _parameters(obj: Mapping, where: str) -> dict:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError(f"{where}: 'parameters' must be a JSON object")
    return params


def decode_rest(contract: IOContract, body: bytes, header_length: str | None) -> RestRequest:
    """An inference request body (JSON, optionally followed by binary tensor data) as checked arrays."""
    view = memoryview(body)
    if header_length is None:
        json_end = len(body)
    else:
        try:
            json_end = int(header_length)
        except ValueError:
            raise InputError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
        if not 0 < json_end <= len(body):
            raise InputError(f"Inference-Header-Content-Length is {json_end} but the body has {len(body)} bytes")
    try:
        request = orjson.loads(view[:json_end])
    except orjson.JSONDecodeError as e:
        raise InputError(f"malformed request: not valid JSON ({e})") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise InputError("malformed request: expected a JSON object with an 'inputs' list")
    params = _parameters(request, "request")
    binary_default = bool(params.get("binary_data_output", False))
    feeds: dict[str, np.ndarray] = {}
    offset = json_end
    for item in request["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError("malformed request: every input needs a 'name' string")
        name = item["name"]
        if name in feeds:
            raise InputError(f"input {name!r}: given twice")
        size = _parameters(item, f"input {name!r}").get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InputError(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
            if offset + size > len(body):
                raise InputError(
                    f"input {name!r}: binary_data_size is {size} bytes but only {len(body) - offset} bytes of "
                    "binary data are left in the body"
                )
            raw, offset = view[offset:offset + size], offset + size
        feeds[name] = decode_tensor(contract, name, item.get("datatype", ""), item.get("shape"),
                                    raw=raw, data=item.get("data"))
    if offset != len(body):
        raise InputError(f"the body has {len(body) - offset} bytes of binary data that no input claims")
    outputs: dict[str, bool] = {}
    for item in request.get("outputs") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError("malformed request: every requested output needs a 'name' string")
        known = [o.name for o in contract.outputs]
        if item["name"] not in known:
            raise InputError(f"unknown output {item['name']!r}: expected one of {', '.join(known)}")
        outputs[item["name"]] = bool(_parameters(item, f"output {item['name']!r}").get("binary_data", binary_default))
    request_id = request.get("id")
    return RestRequest(str(request_id) if request_id is not None else None, feeds, outputs, binary_default)


def encode_rest(contract: IOContract, model_name: str, request: RestRequest, results: Mapping[str, np.ndarray],
                request_id: str) -> tuple[bytes, int | None]:
    """The response body and, when binary data follows the JSON, the JSON's length for the header."""
    wanted = request.outputs or {o.name: request.binary_default for o in contract.outputs}
    tensors, blobs = [], []
    for name, binary in wanted.items():
        array = np.ascontiguousarray(results[name])
        entry: dict[str, Any] = {"name": name, "datatype": wire_type(contract.spec(name)), "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.astype(np.float32).ravel() if array.dtype.name == "bfloat16" else array.ravel()
        tensors.append(entry)
    header = orjson.dumps({"id": request_id, "model_name": model_name, "outputs": tensors},
                          option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
