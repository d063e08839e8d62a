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
import simdjson

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
                  raw: bytes | memoryview | None = None, data: Any = None,
                  allow_non_finite: bool = False) -> np.ndarray:
    """A wire tensor as a numpy array, refused with `InputError` unless it is one the contract can take.

    The byte count (or JSON value count) the shape implies is checked before any allocation, so a huge
    declared shape with a tiny body costs nothing. `data` is JSON data (a parsed simdjson array, a list, or a
    numpy array from gRPC contents). NaN and Inf in a floating-point input are refused naming the first flat
    index, unless `allow_non_finite`: they are not a number a client means to send, and JSON has no spelling
    for them (a JSON value past float32's range becomes Inf, so it is refused the same way).
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
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    elif data is None:
        raise InputError(f"input {name!r}: no data (neither a JSON 'data' field nor binary data)")
    else:
        with np.errstate(over="ignore"):  # past the datatype's range is Inf, refused below
            array = _json_values(name, expected_type, data, shape, count).astype(dtype).reshape(shape)
    if dtype.kind != "b" and not allow_non_finite:
        check_finite(name, array)
    return array


def check_finite(name: str, array: np.ndarray) -> None:
    """`InputError` naming the first NaN or Inf of a floating-point input, by its flat (row-major) index."""
    finite = np.isfinite(array.astype(np.float32, copy=False))
    if not finite.all():
        index = int(np.flatnonzero(~finite.ravel())[0])
        raise InputError(
            f"input {name!r}: element at flat index {index} is {float(array.ravel()[index])} (NaN and Inf are "
            "refused, and a JSON number past the datatype's range becomes Inf; start serve with --allow-non-finite "
            "to accept them)"
        )


def _json_values(name: str, wire: str, data: Any, shape: Sequence[int], count: int) -> np.ndarray:
    """JSON tensor data (flat, or nested to exactly `shape`) as a flat float64 or bool array, without a Python
    object per element for simdjson arrays (a 50 MB body costs its bytes, not a list of floats)."""
    if isinstance(data, np.ndarray):
        values = data.ravel()
    elif isinstance(data, simdjson.Array):
        _check_nesting(name, data, shape)
        try:
            values = _simdjson_bools(data) if wire == "BOOL" else np.frombuffer(data.as_buffer(of_type="d"), np.float64)
        except (TypeError, ValueError):
            values = None
        if values is None:
            kind = "true/false" if wire == "BOOL" else "numbers"
            raise InputError(f"input {name!r}: {wire} data must be {kind} (a JSON null or string is not one)")
    elif isinstance(data, list):
        try:
            values = np.asarray(data, dtype=None if wire == "BOOL" else np.float64).ravel()
        except (ValueError, TypeError):
            raise InputError(f"input {name!r}: JSON data is not a rectangular array of numbers") from None
    else:
        raise InputError(f"input {name!r}: JSON 'data' must be an array, got {type(data).__name__}")
    if values.dtype == object or values.size != count:
        raise InputError(
            f"input {name!r}: JSON data has {values.size if values.dtype != object else 'ragged'} values but shape "
            f"{tuple(shape)} needs {count}"
        )
    if wire == "BOOL" and values.dtype != np.bool_:
        raise InputError(f"input {name!r}: BOOL data must be true/false, got {values.dtype.name} values")
    if wire != "BOOL" and values.dtype.kind not in "fiu":
        raise InputError(f"input {name!r}: {wire} data must be numbers, got {values.dtype.name} values")
    return values


def _check_nesting(name: str, data: "simdjson.Array", shape: Sequence[int]) -> None:
    """Nested JSON data must nest exactly as the shape does (flat data is fine): a ragged array is refused."""
    level, rows = 0, [data]
    while rows and len(rows[0]) and isinstance(rows[0][0], simdjson.Array):
        if level >= len(shape) - 1:
            raise InputError(f"input {name!r}: JSON data nests deeper than shape {tuple(shape)}")
        if any(len(r) != shape[level] for r in rows):
            raise InputError(f"input {name!r}: JSON data is ragged or does not nest as shape {tuple(shape)}")
        rows = [item for r in rows for item in r]
        if not all(isinstance(item, simdjson.Array) for item in rows):
            raise InputError(f"input {name!r}: JSON data is ragged or does not nest as shape {tuple(shape)}")
        level += 1
    if level and any(len(r) != shape[level] for r in rows):
        raise InputError(f"input {name!r}: JSON data is ragged or does not nest as shape {tuple(shape)}")


def _simdjson_bools(data: "simdjson.Array") -> np.ndarray | None:
    """true/false values of a (nested) JSON array, read from its minified text; None if any value is not a bool.

    In minified valid JSON every value starts right after '[' or ',' (or is a nested array's '['), and a value
    starting with 't' or 'f' can only be true or false."""
    text = np.frombuffer(data.mini.encode() if isinstance(data.mini, str) else data.mini, dtype=np.uint8)
    starts = np.flatnonzero((text[:-1] == ord("[")) | (text[:-1] == ord(","))) + 1
    first = text[starts]
    first = first[first != ord("[")]
    first = first[first != ord("]")]  # an empty nested array
    if not np.isin(first, (ord("t"), ord("f"))).all():
        return None
    return first == ord("t")


# ---- REST: JSON and the binary tensor data extension --------------------------------------------------
@dataclass
class RestRequest:
    id: str | None
    feeds: dict[str, np.ndarray]
    outputs: dict[str, bool]  # requested output -> binary; empty = every output, `binary_default`
    binary_default: bool


def _plain(value: Any) -> Any:
    """A small simdjson value (an id, a shape, parameters) as plain Python."""
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _parameters(obj: Any, where: str) -> dict:
    params = _plain(obj.get("parameters")) or {}
    if not isinstance(params, dict):
        raise InputError(f"{where}: 'parameters' must be a JSON object")
    return params


def decode_rest(contract: IOContract, body: bytes, header_length: str | None, *,
                allow_non_finite: bool = False) -> RestRequest:
    """An inference request body (JSON, optionally followed by binary tensor data) as checked arrays.

    The JSON is parsed with simdjson, and tensor data goes from its parse straight into numpy buffers: the
    request costs about its own size in memory, not a Python float per element.
    """
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
    parser = simdjson.Parser()
    try:
        request = parser.parse(bytes(view[:json_end]) if json_end != len(body) else bytes(body))
    except (ValueError, RuntimeError) as e:
        raise InputError(f"malformed request: not valid JSON ({e})") from None
    if not isinstance(request, simdjson.Object) or not isinstance(request.get("inputs"), simdjson.Array):
        raise InputError("malformed request: expected a JSON object with an 'inputs' list")
    params = _parameters(request, "request")
    binary_default = bool(params.get("binary_data_output", False))
    feeds: dict[str, np.ndarray] = {}
    offset = json_end
    for item in request["inputs"]:
        if not isinstance(item, simdjson.Object) or not isinstance(item.get("name"), str):
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
        feeds[name] = decode_tensor(contract, name, _plain(item.get("datatype", "")), _plain(item.get("shape")),
                                    raw=raw, data=item.get("data"), allow_non_finite=allow_non_finite)
    if offset != len(body):
        raise InputError(f"the body has {len(body) - offset} bytes of binary data that no input claims")
    outputs: dict[str, bool] = {}
    requested = _plain(request.get("outputs")) or []
    if not isinstance(requested, list):
        raise InputError("malformed request: 'outputs' must be a list")
    for item in requested:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError("malformed request: every requested output needs a 'name' string")
        known = [o.name for o in contract.outputs]
        if item["name"] not in known:
            raise InputError(f"unknown output {item['name']!r}: expected one of {', '.join(known)}")
        outputs[item["name"]] = bool(_parameters(item, f"output {item['name']!r}").get("binary_data", binary_default))
    request_id = _plain(request.get("id"))
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(f"malformed request: 'id' must be a string, got {type(request_id).__name__}")
    return RestRequest(request_id, feeds, outputs, binary_default)


NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_tensor_data(array: np.ndarray) -> Any:
    """Output data for JSON: numbers, and NaN / Inf as the strings "NaN", "Infinity", "-Infinity" (JSON has no
    spelling for them; the protocol's tensor_data allows strings, and a `null` would break its schema)."""
    flat = array.astype(np.float32).ravel() if array.dtype.name == "bfloat16" else array.ravel()
    if flat.dtype.kind != "f" or np.isfinite(flat).all():
        return flat
    return [NON_FINITE[str(x)] if not math.isfinite(x) else x for x in flat.astype(np.float64).tolist()]


def encode_rest(contract: IOContract, model_name: str, request: RestRequest, results: Mapping[str, np.ndarray],
                request_id: str, model_version: str | None = None) -> tuple[bytes, int | None]:
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
            entry["data"] = json_tensor_data(array)
        tensors.append(entry)
    response: dict[str, Any] = {"id": request_id, "model_name": model_name}
    if model_version is not None:
        response["model_version"] = model_version
    response["outputs"] = tensors
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
