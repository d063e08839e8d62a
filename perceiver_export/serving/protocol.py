"""The Open Inference Protocol (KServe v2) as this artifact speaks it: datatypes, model metadata and tensors.

Everything here is derived from the I/O contract: the metadata's names, datatypes and shapes (-1 for every
symbolic axis), and the checks a tensor off the wire passes before it becomes a numpy array — a known name,
its contract datatype, its rank, and exactly as many bytes (or JSON values) as its shape needs, computed
before anything is allocated. The REST codec reads and writes the binary tensor data extension with numpy
buffers (no per-element Python objects), so HTTP costs what the bytes cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import orjson
import simdjson

from ..contract import IOContract, TensorSpec
from ..errors import InputError
from ..runtime.arrays import NUMPY_DTYPES
from .shared_memory import region_params

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
            array = _json_values(name, expected_type, data, shape, count, allow_non_finite).astype(
                dtype, copy=False).reshape(shape)
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


def _json_values(name: str, wire: str, data: Any, shape: Sequence[int], count: int,
                 allow_non_finite: bool = False) -> np.ndarray:
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
        if values is None and wire != "BOOL":
            values = _spelled_non_finite(name, wire, data, allow_non_finite)
        if values is None:
            raise InputError(f"input {name!r}: {wire} data must be true/false (a JSON null, number or string is not one)")
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


SPELLED_NON_FINITE = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf,
                      "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf}


def _spelled_non_finite(name: str, wire: str, data: "simdjson.Array", allow: bool) -> np.ndarray:
    """The slow path of number data simdjson would not read as doubles: the first value that is not a number is
    named by its flat index. Strings spelling NaN or Inf ("NaN", "Infinity", "-inf", ...) are refused as NaN and
    Inf are, or read as them with `allow` (they are how this server writes them in JSON outputs)."""
    flat: list = []

    def walk(x):
        for item in x:
            if isinstance(item, simdjson.Array):
                walk(item)
            else:
                flat.append(item)

    walk(data)
    values = np.empty(len(flat), dtype=np.float64)
    for i, item in enumerate(flat):
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            values[i] = item
            continue
        spelled = SPELLED_NON_FINITE.get(item.lower()) if isinstance(item, str) else None
        if spelled is None:
            raise InputError(f"input {name!r}: {wire} data must be numbers: element at flat index {i} is "
                             f"{orjson.dumps(item).decode()[:40]}")
        if not allow:
            raise InputError(f"input {name!r}: element at flat index {i} is {item!r} (NaN and Inf are refused; start "
                             "serve with --allow-non-finite to accept them)")
        values[i] = spelled
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
    output_regions: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # output -> shared memory span


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


def decode_rest(contract: IOContract, body: bytes | bytearray, header_length: str | None, *,
                allow_non_finite: bool = False, lift: bool = True, shared_memory=None) -> RestRequest:
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
    spans: dict[str, bytes] = {}
    text = view[:json_end] if json_end != len(body) else body
    if lift and json_end >= LARGE_JSON_BYTES:
        text, spans = _lift_number_arrays(bytes(text))
    parser = simdjson.Parser()
    try:
        request = parser.parse(text)
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
        item_params = _parameters(item, f"input {name!r}")
        size = item_params.get("binary_data_size")
        raw = None
        region = region_params(item_params, f"input {name!r}")
        if region is not None:
            if size is not None or item.get("data") is not None:
                raise InputError(f"input {name!r}: data from shared memory and in the request at once")
            if shared_memory is None:
                raise InputError(f"input {name!r}: this server takes no shared memory inputs")
            raw = shared_memory.read(*region, what=f"input {name!r}")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InputError(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
            if offset + size > len(body):
                raise InputError(
                    f"input {name!r}: binary_data_size is {size} bytes but only {len(body) - offset} bytes of "
                    "binary data are left in the body"
                )
            raw, offset = view[offset:offset + size], offset + size
        data = item.get("data")
        if isinstance(data, str) and data in spans:
            data = _number_array(name, spans.pop(data))
        feeds[name] = decode_tensor(contract, name, _plain(item.get("datatype", "")), _plain(item.get("shape")),
                                    raw=raw, data=data, allow_non_finite=allow_non_finite)
    if spans:  # a lifted array that was not an input's data (a parameter's, say): read the body as it is
        del parser, request
        return decode_rest(contract, body, header_length,
                           allow_non_finite=allow_non_finite, lift=False, shared_memory=shared_memory)
    if offset != len(body):
        raise InputError(f"the body has {len(body) - offset} bytes of binary data that no input claims")
    outputs: dict[str, bool] = {}
    output_regions: dict[str, tuple[str, int, int]] = {}
    requested = _plain(request.get("outputs")) or []
    if not isinstance(requested, list):
        raise InputError("malformed request: 'outputs' must be a list")
    for item in requested:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError("malformed request: every requested output needs a 'name' string")
        known = [o.name for o in contract.outputs]
        if item["name"] not in known:
            raise InputError(f"unknown output {item['name']!r}: expected one of {', '.join(known)}")
        output_params = _parameters(item, f"output {item['name']!r}")
        outputs[item["name"]] = bool(output_params.get("binary_data", binary_default))
        region = region_params(output_params, f"output {item['name']!r}")
        if region is not None:
            if shared_memory is None:
                raise InputError(f"output {item['name']!r}: this server writes no shared memory outputs")
            shared_memory.status(region[0])  # registered now, or refused before the request runs
            output_regions[item["name"]] = region
    request_id = _plain(request.get("id"))
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(f"malformed request: 'id' must be a string, got {type(request_id).__name__}")
    return RestRequest(request_id, feeds, outputs, binary_default, output_regions)


# A JSON part at least this large has its flat number arrays read by numpy's text parser (which releases the
# GIL and writes float32 straight away) instead of simdjson, whose parse holds the GIL and keeps 16 bytes per number.
LARGE_JSON_BYTES = 1 << 20
LIFTED_BYTES = 64 * 1024  # arrays smaller than this stay in the JSON
NUMBER_CHARS = b"0123456789eE+-., \t\r\n"
CHECK_STEP = 4 << 20


def _lift_number_arrays(text: bytes) -> tuple[bytes, dict[str, bytes]]:
    """`text` with each large flat array of plain numbers that is a `"data"` value replaced by a placeholder
    string, and the arrays' inner text by placeholder. Anything else (nested arrays, strings, NaN spellings) stays
    for simdjson. A placeholder contains a NUL, which a JSON string can only spell as an escape."""
    pieces, spans, done, at = [], {}, 0, 0
    while (at := text.find(b'"data"', at)) >= 0:
        i = at + 6
        while i < len(text) and text[i] in b" \t\r\n":
            i += 1
        if i >= len(text) or text[i] != ord(":"):
            at = i
            continue
        i += 1
        while i < len(text) and text[i] in b" \t\r\n":
            i += 1
        end = text.find(b"]", i)
        if i >= len(text) or text[i] != ord("[") or end < 0 or end - i < LIFTED_BYTES:
            at = i
            continue
        inner = text[i + 1:end]
        # In 4 MB steps, so that the event loop's thread gets the GIL between them.
        if any(inner[k:k + CHECK_STEP].translate(None, NUMBER_CHARS) for k in range(0, len(inner), CHECK_STEP)):
            at = end  # a nested array, a string, a literal: simdjson reads it
            continue
        key = f"lifted{len(spans)}"
        pieces += [text[done:i], b'"\\u0000', key.encode(), b'"']  # JSON "\u0000liftedN", the string NUL + liftedN
        spans["\x00" + key] = inner
        done = at = end + 1
    if not spans:
        return text, {}
    pieces.append(text[done:])
    return b"".join(pieces), spans


def _number_array(name: str, inner: bytes) -> np.ndarray:
    """A lifted array's numbers as float32 (past float32's range: Inf, refused as such)."""
    try:
        return np.fromstring(inner, dtype=np.float32, sep=",")
    except ValueError:
        raise InputError(f"input {name!r}: JSON data is not an array of numbers") from None


NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_tensor_data(array: np.ndarray) -> Any:
    """Output data for JSON: numbers, and NaN / Inf as the strings "NaN", "Infinity", "-Infinity" (JSON has no
    spelling for them; the protocol's tensor_data allows strings, and a `null` would break its schema)."""
    flat = array.astype(np.float32).ravel() if array.dtype.name == "bfloat16" else array.ravel()
    if flat.dtype.kind != "f" or np.isfinite(flat).all():
        return flat
    return [NON_FINITE[str(x)] if not math.isfinite(x) else x for x in flat.astype(np.float64).tolist()]


def encode_rest(contract: IOContract, model_name: str, request: RestRequest, results: Mapping[str, np.ndarray],
                request_id: str, model_version: str | None = None, shared_memory=None) -> tuple[bytes, int | None]:
    """The response body and, when binary data follows the JSON, the JSON's length for the header."""
    wanted = request.outputs or {o.name: request.binary_default for o in contract.outputs}
    tensors, blobs = [], []
    for name, binary in wanted.items():
        array = np.ascontiguousarray(results[name])
        entry: dict[str, Any] = {"name": name, "datatype": wire_type(contract.spec(name)), "shape": list(array.shape)}
        if name in request.output_regions:
            region, offset, size = request.output_regions[name]
            shared_memory.write(region, offset, size, array.tobytes(), what=f"output {name!r}")
            entry["parameters"] = {"shared_memory_region": region, "shared_memory_byte_size": array.nbytes}
            if offset:
                entry["parameters"]["shared_memory_offset"] = offset
        elif binary:
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
