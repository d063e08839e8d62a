"""The gRPC methods of Triton's `inference.GRPCInferenceService` that KServe's servicer lacks, ModelConfig,
ModelStatistics and ModelStreamInfer, as one generic handler that sits beside KServe's on the same server
(grpc dispatches by full method path, `/inference.GRPCInferenceService/ModelConfig`, over all handlers).

The message classes come from Triton's own .proto descriptors, which tritonclient ships serialized inside its
generated `tritonclient/grpc/*_pb2.py`. We read those bytes with `ast` (never importing the modules: importing
`tritonclient.grpc` registers `inference.*` in protobuf's default pool, where KServe's messages of the same names
already live) and load them into a private descriptor pool. The wire format is Triton's, so tritonclient and
perf_analyzer read the answers as Triton's. Nothing here imports kserve at module import either, so the tests
(which import tritonclient.grpc) can run this handler in their own process.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import logging
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Awaitable, Callable, Mapping

from ..errors import BackendUnavailableError, ModelNotFoundError

SERVICE = "inference.GRPCInferenceService"
PROTO_FILES = ("model_config_pb2.py", "service_pb2.py")  # dependency first
MESSAGES = ("ModelConfig", "ModelConfigRequest", "ModelConfigResponse", "ModelStatisticsRequest",
            "ModelStatisticsResponse", "ModelStreamInferResponse", "ModelInferRequest", "ModelInferResponse",
            "SystemSharedMemoryStatusRequest", "SystemSharedMemoryStatusResponse", "SystemSharedMemoryRegisterRequest",
            "SystemSharedMemoryRegisterResponse", "SystemSharedMemoryUnregisterRequest",
            "SystemSharedMemoryUnregisterResponse")
MAX_IN_FLIGHT = 64  # per stream: requests read but not yet answered on it; past it the stream is not read further

log = logging.getLogger("perceiver_export")


def serialized_descriptors(path: Path) -> list[bytes]:
    """The FileDescriptorProto bytes a protoc-generated _pb2.py passes to `AddSerializedFile(b'...')`."""
    tree = ast.parse(path.read_text(), str(path))
    found = [node.args[0].value for node in ast.walk(tree)
             if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "AddSerializedFile"
             and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, bytes)]
    if len(found) != 1:
        raise BackendUnavailableError(f"{path}: expected one AddSerializedFile(b'...') call, found {len(found)}")
    return found


@lru_cache(maxsize=1)
def triton_messages() -> SimpleNamespace:
    """Triton's message classes (ModelConfigResponse, ...) from a private pool: attributes named as in MESSAGES."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    spec = importlib.util.find_spec("tritonclient")  # imports the bare namespace package only
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("Triton's gRPC extensions need tritonclient's .proto descriptors: "
                                      "`pip install perceiver-export[serve]`")
    folder = Path(next(iter(spec.submodule_search_locations))) / "grpc"
    pool = descriptor_pool.DescriptorPool()
    for file in PROTO_FILES:
        if not (folder / file).is_file():
            raise BackendUnavailableError(f"{folder / file} is missing: reinstall tritonclient[grpc]")
        for data in serialized_descriptors(folder / file):
            pool.Add(descriptor_pb2.FileDescriptorProto.FromString(data))
    return SimpleNamespace(**{name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
                              for name in MESSAGES})


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def stream_response_bytes(infer_response: bytes) -> bytes:
    """A serialized ModelStreamInferResponse carrying a serialized ModelInferResponse (field 2, length-delimited):
    KServe's response goes out as it is, no copy into the other pool's class."""
    return b"\x12" + _varint(len(infer_response)) + infer_response


def error_text(error: BaseException) -> str:
    details = getattr(error, "details", None)  # grpc_interceptor's GrpcException (KServe's statuses)
    text = details if isinstance(details, str) and details else str(error)
    return text or type(error).__name__


def extension_handler(config_for: Callable[[str, str], Mapping], stats_for: Callable[[str, str], Mapping],
                      infer: Callable[[Any], Awaitable[Any]], *, request_type: Any = None,
                      max_in_flight: int = MAX_IN_FLIGHT):
    """A `grpc.GenericRpcHandler` (for grpc.aio servers) answering ModelConfig, ModelStatistics, ModelStreamInfer.

    - `config_for(name, version)` returns the ModelConfig dict (model_config.py); ModelNotFoundError -> NOT_FOUND.
    - `stats_for(name, version)` returns `{"model_stats": [...]}` (statistics.py; name "" asks for every model).
    - `infer(request)` answers one ModelInferRequest (of `request_type`, default KServe's) with a ModelInferResponse
      (anything with SerializeToString). On a stream, requests run concurrently and each response is written when
      it is ready, carrying its request's `id` (as Triton does; clients match responses by id); a request that
      fails is answered on the stream with `error_message` (and its id), and the stream stays open. At most
      `max_in_flight` requests of one stream are read and not yet answered.
    """
    import grpc
    from google.protobuf import json_format

    messages = triton_messages()
    if request_type is None:
        from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelInferRequest as request_type
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")

    def not_found(context, error: ModelNotFoundError, empty):
        # A status set and an empty message returned, not context.abort(): abort raises, and KServe's interceptor
        # logs every exception that passes it as an internal error with a traceback.
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details(str(error))
        return empty

    async def model_config(request, context):
        try:
            config = config_for(request.name, request.version)
        except ModelNotFoundError as e:
            return not_found(context, e, messages.ModelConfigResponse())
        response = messages.ModelConfigResponse()
        json_format.ParseDict(config, response.config)
        return response

    async def model_statistics(request, context):
        try:
            stats = stats_for(request.name, request.version)
        except ModelNotFoundError as e:
            return not_found(context, e, messages.ModelStatisticsResponse())
        return json_format.ParseDict(stats, messages.ModelStatisticsResponse())

    def failed(request, error: BaseException) -> bytes:
        stub = messages.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                           id=request.id)
        return messages.ModelStreamInferResponse(error_message=error_text(error), infer_response=stub).SerializeToString()

    async def model_stream_infer(requests, context):
        answers: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(max_in_flight)
        running: set[asyncio.Task] = set()
        end = object()

        async def answer(request) -> None:
            try:
                payload = stream_response_bytes((await infer(request)).SerializeToString())
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 — every failure is the client's to read, the stream goes on
                if not isinstance(e, (ValueError, LookupError)) and getattr(e, "details", None) is None:
                    # Not a client error (ValueError: KServe's InvalidInput, ours) nor a status: a server bug.
                    log.exception("stream request %r failed", request.id)
                payload = failed(request, e)
            answers.put_nowait(payload)

        async def read() -> None:
            try:
                async for request in requests:
                    await slots.acquire()  # released once its answer is written: back-pressure on the reader
                    task = asyncio.ensure_future(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                while running:
                    await asyncio.wait(set(running))
            finally:
                answers.put_nowait(end)

        reader = asyncio.ensure_future(read())
        try:
            while (payload := await answers.get()) is not end:
                yield payload
                slots.release()
            await reader  # raises what ended the reading, if anything did
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    identity = lambda data: data  # noqa: E731 — stream responses are serialized by hand above
    return grpc.method_handlers_generic_handler(SERVICE, {
        "ModelConfig": grpc.unary_unary_rpc_method_handler(
            model_config, request_deserializer=messages.ModelConfigRequest.FromString,
            response_serializer=messages.ModelConfigResponse.SerializeToString),
        "ModelStatistics": grpc.unary_unary_rpc_method_handler(
            model_statistics, request_deserializer=messages.ModelStatisticsRequest.FromString,
            response_serializer=messages.ModelStatisticsResponse.SerializeToString),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            model_stream_infer, request_deserializer=request_type.FromString, response_serializer=identity),
    })


def shared_memory_handler(regions):
    """A `grpc.GenericRpcHandler` for Triton's SystemSharedMemoryStatus / Register / Unregister over `regions`
    (a SharedMemoryRegions); a mistake (an unknown key, a region past its file) is INVALID_ARGUMENT."""
    import grpc

    from ..errors import InputError

    messages = triton_messages()

    def guarded(call, empty):
        async def handler(request, context):
            try:
                return call(request)
            except InputError as e:
                context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                context.set_details(str(e))
                return empty()
        return handler

    def status(request):
        response = messages.SystemSharedMemoryStatusResponse()
        for entry in regions.status(request.name):
            region = response.regions[entry["name"]]
            region.name, region.key, region.offset, region.byte_size = (entry["name"], entry["key"], entry["offset"],
                                                                        entry["byte_size"])
        return response

    def register(request):
        regions.register(request.name, request.key, request.offset, request.byte_size)
        return messages.SystemSharedMemoryRegisterResponse()

    def unregister(request):
        regions.unregister(request.name)
        return messages.SystemSharedMemoryUnregisterResponse()

    def unary(call, request_class, response_class):
        return grpc.unary_unary_rpc_method_handler(guarded(call, response_class), request_deserializer=request_class.FromString,
                                                   response_serializer=response_class.SerializeToString)

    return grpc.method_handlers_generic_handler(SERVICE, {
        "SystemSharedMemoryStatus": unary(status, messages.SystemSharedMemoryStatusRequest,
                                          messages.SystemSharedMemoryStatusResponse),
        "SystemSharedMemoryRegister": unary(register, messages.SystemSharedMemoryRegisterRequest,
                                            messages.SystemSharedMemoryRegisterResponse),
        "SystemSharedMemoryUnregister": unary(unregister, messages.SystemSharedMemoryUnregisterRequest,
                                              messages.SystemSharedMemoryUnregisterResponse),
    })


__all__ = ["SERVICE", "extension_handler", "shared_memory_handler", "stream_response_bytes", "triton_messages"]
