"""The Open Inference Protocol's gRPC service for the served model, on KServe's generated protocol classes.

Every method is ours rather than KServe's servicer, which answered an unload from any client (then INTERNAL
`TypeError` on the next one), took any `model_version`, and went through per-request Python objects for
tensors. Errors are the protocol's status codes with this package's messages, as over REST.
"""

from __future__ import annotations

import logging
import uuid

import grpc
import numpy as np

from .. import __version__
from ..errors import (BatchFailedError, DeadlineExceededError, InputError, ModelControlError, ModelNotFoundError,
                      OverloadedError, RequestTooLargeError, ServingError)
from .model import MODEL_VERSION, ServedModel
from .protocol import decode_tensor, tensor_metadata, wire_type
from .shared_memory import region_params

GRPC_STATUS = {InputError: grpc.StatusCode.INVALID_ARGUMENT, ModelControlError: grpc.StatusCode.FAILED_PRECONDITION,
               ModelNotFoundError: grpc.StatusCode.NOT_FOUND, RequestTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
               OverloadedError: grpc.StatusCode.UNAVAILABLE, DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
               BatchFailedError: grpc.StatusCode.INTERNAL}
# Which repeated field of InferTensorContents carries each wire type.
CONTENTS_FIELD = {"FP32": "fp32_contents", "BOOL": "bool_contents"}
log = logging.getLogger("perceiver_export")


def grpc_status_of(error: Exception) -> grpc.StatusCode:
    for kind, code in GRPC_STATUS.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def contents_array(tensor, wire: str) -> np.ndarray | None:
    """A tensor's `contents` (the protocol's typed repeated fields) as a numpy array, or None if it has none."""
    field = CONTENTS_FIELD.get(wire)
    if field is None or not tensor.HasField("contents"):
        return None
    values = getattr(tensor.contents, field)
    return np.fromiter(values, dtype=np.bool_ if wire == "BOOL" else np.float64, count=len(values))


def tensor_params(tensor) -> dict:
    """A tensor's `parameters` map as plain values."""
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in tensor.parameters.items()
            if v.WhichOneof("parameter_choice")}


def make_servicer(model: ServedModel, *, extensions: list[str], allow_non_finite: bool, shared_memory=None):
    """The service's method handlers by method name (for `grpc.method_handlers_generic_handler`) and the inference
    call itself (for streaming)."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    async def answer(context, call):
        try:
            return await call()
        except (ServingError, InputError) as e:
            await context.abort(grpc_status_of(e), str(e))
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # noqa: BLE001 — a bug of ours: answered with the protocol's status, logged
            log.exception("internal error in a gRPC call")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")

    def metadata_tensors(specs):
        return [pb.ModelMetadataResponse.TensorMetadata(**t) for t in specs]

    async def infer_request(request) -> "pb.ModelInferResponse":
        model.check(request.model_name, request.model_version)
        raw = request.raw_input_contents
        regions = [region_params(tensor_params(t), f"input {t.name!r}") for t in request.inputs]
        in_request = sum(r is None for r in regions)  # raw contents are given for these only, in order
        if raw and len(raw) != in_request:
            raise InputError(f"{in_request} inputs outside shared memory but {len(raw)} raw input contents")
        feeds, next_raw = {}, 0
        for t, region in zip(request.inputs, regions):
            if t.name in feeds:
                raise InputError(f"input {t.name!r}: given twice")
            data, blob = None, None
            if region is not None:
                if shared_memory is None:
                    raise InputError(f"input {t.name!r}: this server takes no shared memory inputs")
                blob = shared_memory.read(*region, what=f"input {t.name!r}")
            elif raw:
                if t.HasField("contents"):
                    raise InputError(f"input {t.name!r}: both contents and raw_input_contents are given")
                blob, next_raw = raw[next_raw], next_raw + 1
            else:
                data = contents_array(t, str(t.datatype).upper())
            feeds[t.name] = decode_tensor(model.contract, t.name, t.datatype, list(t.shape),
                                          raw=blob, data=data, allow_non_finite=allow_non_finite)
        known = [o.name for o in model.contract.outputs]
        wanted = [o.name for o in request.outputs]
        output_regions = {}
        for o in request.outputs:
            if o.name not in known:
                raise InputError(f"unknown output {o.name!r}: expected one of {', '.join(known)}")
            region = region_params(tensor_params(o), f"output {o.name!r}")
            if region is not None:
                if shared_memory is None:
                    raise InputError(f"output {o.name!r}: this server writes no shared memory outputs")
                shared_memory.status(region[0])  # registered, or refused before the request runs
                output_regions[o.name] = region
        results = await model.infer(feeds, "grpc")
        outputs, raw_outputs = [], []
        for name in wanted or known:
            array = np.ascontiguousarray(results[name])
            tensor = pb.ModelInferResponse.InferOutputTensor(
                name=name, datatype=wire_type(model.contract.spec(name)), shape=list(array.shape))
            if name in output_regions:
                region, offset, size = output_regions[name]
                shared_memory.write(region, offset, size, array.tobytes(), what=f"output {name!r}")
                tensor.parameters["shared_memory_region"].string_param = region
                tensor.parameters["shared_memory_byte_size"].int64_param = array.nbytes
                if offset:
                    tensor.parameters["shared_memory_offset"].int64_param = offset
            else:
                raw_outputs.append(array.tobytes())
            outputs.append(tensor)
        return pb.ModelInferResponse(model_name=model.name, model_version=MODEL_VERSION,
                                     id=request.id or str(uuid.uuid4()), outputs=outputs, raw_output_contents=raw_outputs)

    async def server_live(request, context):
        return pb.ServerLiveResponse(live=True)

    async def server_ready(request, context):
        return pb.ServerReadyResponse(ready=model.ready)

    async def server_metadata(request, context):
        return pb.ServerMetadataResponse(name="perceiver-export", version=__version__, extensions=extensions)

    async def model_ready(request, context):
        async def call():
            model.check(request.name, request.version)
            return pb.ModelReadyResponse(ready=model.ready)
        return await answer(context, call)

    async def model_metadata(request, context):
        async def call():
            model.check(request.name, request.version)
            inputs, outputs = tensor_metadata(model.contract)
            return pb.ModelMetadataResponse(name=model.name, versions=[MODEL_VERSION], platform=model.platform,
                                            inputs=metadata_tensors(inputs), outputs=metadata_tensors(outputs))
        return await answer(context, call)

    async def model_infer(request, context):
        return await answer(context, lambda: infer_request(request))

    def repository(action, respond):
        """RepositoryModelLoad / Unload: the raw request (either message spelling), `action` under model control."""
        async def handler(raw: bytes, context):
            async def call():
                model.check(repository_model_name(raw), None)
                await action()
                return respond()
            return await answer(context, call)
        return handler

    repository_load = repository(model.load, lambda: pb.RepositoryModelLoadResponse(model_name=model.name, isLoaded=True))
    repository_unload = repository(model.unload,
                                   lambda: pb.RepositoryModelUnloadResponse(model_name=model.name, isUnloaded=True))

    def unary(fn, request_class=None):
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=request_class.FromString if request_class else None,
            response_serializer=lambda m: m.SerializeToString())

    handlers = {
        "ServerLive": unary(server_live, pb.ServerLiveRequest),
        "ServerReady": unary(server_ready, pb.ServerReadyRequest),
        "ServerMetadata": unary(server_metadata, pb.ServerMetadataRequest),
        "ModelReady": unary(model_ready, pb.ModelReadyRequest),
        "ModelMetadata": unary(model_metadata, pb.ModelMetadataRequest),
        "ModelInfer": unary(model_infer, pb.ModelInferRequest),
        "RepositoryModelLoad": unary(repository_load),
        "RepositoryModelUnload": unary(repository_unload),
    }
    return handlers, infer_request


def repository_model_name(raw: bytes) -> str:
    """The model name of a RepositoryModelLoad/Unload request in either spelling of the message: Triton's
    (tritonclient: repository_name = 1, model_name = 2) or KServe's (model_name = 1)."""
    fields: dict[int, str] = {}
    i = 0
    while i < len(raw):
        key, i = _varint(raw, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(raw, i)
        elif wire == 2:
            length, i = _varint(raw, i)
            if number in (1, 2):
                fields[number] = bytes(raw[i:i + length]).decode("utf-8", "replace")
            i += length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise InputError("malformed repository request")
    return fields.get(2, fields.get(1, ""))


def _varint(raw: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(raw) or shift > 63:
            raise InputError("malformed repository request")
        byte = raw[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


__all__ = ["GRPC_STATUS", "grpc_status_of", "make_servicer", "repository_model_name"]
