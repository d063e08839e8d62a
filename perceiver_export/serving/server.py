"""`python -m perceiver_export serve DIR`: one artifact over the Open Inference Protocol, HTTP/REST and gRPC.

KServe's Python model server supplies the protocol (health, server and model metadata, readiness, gRPC, the
error mapping of `InvalidInput` to 400 / INVALID_ARGUMENT, Prometheus `/metrics`); this module supplies the
model: the artifact's runner behind a `DynamicBatcher`, metadata from the I/O contract, and the REST inference
route, which decodes and encodes the binary tensor data extension with numpy buffers (KServe's own route turns
every binary element into a Python object: ~80 ms per MB in, ~370 ms per MB out, measured on this project's
CPU machines). We assemble KServe's REST app and gRPC servicer ourselves rather than call
`ModelServer.start()`, because that binds every interface (0.0.0.0 and [::]) and re-raises SIGTERM after
uvicorn's shutdown; here the address is `--host` (default 127.0.0.1) and SIGTERM drains and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from ..errors import BatchFailedError, ConfigError, DeadlineExceededError, InputError, OverloadedError, ServingError
from ..runtime import load
from ..runtime.base import Runner
from . import import_kserve
from .batcher import BatchStats, DynamicBatcher
from .protocol import HEADER_LENGTH, decode_rest, decode_tensor, encode_rest, tensor_metadata, wire_type

MODEL_VERSION = "1"
# HTTP status and gRPC status name of each way a valid request can go unanswered (the protocol's choices).
STATUS = {OverloadedError: (503, "unavailable"), DeadlineExceededError: (504, "deadline_exceeded"),
          BatchFailedError: (500, "internal")}


@dataclass
class ServeOptions:
    backend: str = "onnxruntime"
    graph: str | None = None  # onnxruntime: plain, optimized, int8 (default: the runner's)
    device: str | None = None  # torch: cpu, cuda, cuda:1
    engine: str | None = None  # tensorrt: engine file in the artifact
    threads: int | None = None  # backend threads (onnxruntime intra-op, torch, openvino)
    spinning: bool | None = None  # onnxruntime: idle threads spin-wait (None: its default, on; off measured slower)
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    max_batch_size: int | None = None  # default: the contract's batch max; 1 turns batching off
    max_queue_delay_ms: float = 0.0
    max_queue: int = 256
    timeout_ms: float | None = None
    name: str | None = None  # default: the manifest's name
    grace_s: float = 30.0  # SIGTERM: at most this long to answer queued and in-flight requests
    log_level: str = "warning"


def load_runner(directory: str | Path, options: ServeOptions) -> Runner:
    """The artifact's runner for `options.backend`, with the backend options that apply to it."""
    extra: dict[str, Any] = {}
    if options.backend == "onnxruntime":
        extra = {k: v for k, v in (("graph", options.graph), ("threads", options.threads), ("spinning", options.spinning))
                 if v is not None}
    elif options.backend == "torch":
        if options.threads:
            import torch

            torch.set_num_threads(options.threads)
        extra = {"device": options.device} if options.device else {}
    elif options.backend == "tensorrt":
        extra = {k: v for k, v in (("engine", options.engine), ("device", options.device)) if v is not None}
    elif options.backend in ("openvino", "openvino-bf16"):
        extra = {"threads": options.threads} if options.threads else {}
    for flag, value, owner in (("--graph", options.graph, "onnxruntime"), ("--engine", options.engine, "tensorrt")):
        if value is not None and options.backend != owner:
            raise ConfigError(f"{flag} is an option of the {owner} backend, not of {options.backend}")
    return load(directory, backend=options.backend, **extra)


class Metrics:
    """Prometheus series next to KServe's own on `/metrics` (one set per process)."""

    _instance: "Metrics | None" = None

    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("perceiver_requests", "Inference requests answered, by protocol and status",
                                ["model", "protocol", "status"])
        self.latency = Histogram("perceiver_request_seconds", "Inference request latency inside the server",
                                 ["model", "protocol"],
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("perceiver_batch_size", "Rows per backend call", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_requests = Histogram("perceiver_batch_requests", "Requests per backend call", ["model"],
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = Histogram("perceiver_batch_seconds", "Backend call time per batch", ["model"],
                                       buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.queue_depth = Gauge("perceiver_queue_depth", "Requests waiting for a batch", ["model"])

    @classmethod
    def get(cls) -> "Metrics":
        if cls._instance is None:
            cls._instance = Metrics()
        return cls._instance


def _client_errors_without_traceback(record: logging.LogRecord) -> bool:
    """KServe logs a client's bad input with a server traceback; the message alone says what was wrong."""
    if record.exc_info and type(record.exc_info[1]).__name__ == "InvalidInput":
        record.exc_info = record.exc_text = None
    return True


def make_model_class(kserve):
    """The KServe model class (built once KServe is imported, since it subclasses `kserve.Model`)."""
    from grpc_interceptor import exceptions as grpc_errors
    from kserve.errors import InvalidInput
    from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelInferResponse

    grpc_status = {OverloadedError: grpc_errors.Unavailable, DeadlineExceededError: grpc_errors.DeadlineExceeded,
                   BatchFailedError: grpc_errors.Internal}

    class PerceiverModel(kserve.Model):
        """An artifact as a KServe model: metadata from the contract, inference through the batcher."""

        def __init__(self, name: str, runner: Runner, batcher: DynamicBatcher, metrics: Metrics):
            super().__init__(name)
            self.runner = runner
            self.contract = runner.contract
            self.batcher = batcher
            self.metrics = metrics
            self.inputs_metadata, self.outputs_metadata = tensor_metadata(self.contract)

        def load(self) -> bool:
            self.ready = True
            return self.ready

        def get_input_types(self) -> list[dict]:
            return self.inputs_metadata

        def get_output_types(self) -> list[dict]:
            return self.outputs_metadata

        async def infer_feeds(self, feeds: Mapping[str, np.ndarray], protocol: str) -> dict[str, np.ndarray]:
            """Run decoded inputs through the batcher; every outcome is counted once."""
            start = time.perf_counter()
            status = "ok"
            try:
                out = await self.batcher.infer(feeds)
                return {self.contract.outputs[0].name: out}
            except InputError:
                status = "invalid_argument"
                raise
            except ServingError as e:
                status = STATUS[type(e)][1]
                raise
            except asyncio.CancelledError:
                status = "cancelled"
                raise
            finally:
                self.metrics.requests.labels(self.name, protocol, status).inc()
                self.metrics.latency.labels(self.name, protocol).observe(time.perf_counter() - start)

        async def predict(self, payload, headers: dict | None = None):
            """gRPC requests with `contents` instead of raw bytes, which KServe decodes (see `infer_grpc`)."""
            tensors = [(t.name, t.datatype, list(t.shape), t._raw_data, t.data) for t in payload.inputs]
            wanted = [o.name for o in payload.request_outputs or []]
            return await self.infer_tensors(tensors, wanted, payload.id)

        async def infer_grpc(self, request) -> ModelInferResponse:
            """A ModelInferRequest with raw input contents (tritonclient's form), straight from the protobuf."""
            raw = request.raw_input_contents
            if len(raw) != len(request.inputs):
                raise InvalidInput(f"{len(request.inputs)} inputs but {len(raw)} raw input contents")
            tensors = [(t.name, t.datatype, list(t.shape), raw[i], None) for i, t in enumerate(request.inputs)]
            return await self.infer_tensors(tensors, [o.name for o in request.outputs], request.id)

        async def infer_tensors(self, tensors: list[tuple], wanted: list[str], request_id: str | None) -> ModelInferResponse:
            """Decoded, checked, batched and answered; errors as the gRPC statuses of the protocol."""
            try:
                feeds = {}
                for name, datatype, shape, raw, data in tensors:
                    if name in feeds:
                        raise InputError(f"input {name!r}: given twice")
                    feeds[name] = decode_tensor(self.contract, name, datatype, shape, raw=raw, data=data)
                known = [o.name for o in self.contract.outputs]
                for name in wanted:
                    if name not in known:
                        raise InputError(f"unknown output {name!r}: expected one of {', '.join(known)}")
                results = await self.infer_feeds(feeds, "grpc")
            except InputError as e:
                raise InvalidInput(str(e)) from None
            except ServingError as e:
                raise grpc_status[type(e)](str(e)) from None
            outputs, raw_outputs = [], []
            for name in wanted or known:
                array = np.ascontiguousarray(results[name])
                outputs.append(ModelInferResponse.InferOutputTensor(
                    name=name, datatype=wire_type(self.contract.spec(name)), shape=list(array.shape)))
                raw_outputs.append(array.tobytes())
            return ModelInferResponse(model_name=self.name, model_version=MODEL_VERSION, id=request_id or str(uuid.uuid4()),
                                      outputs=outputs, raw_output_contents=raw_outputs)

    return PerceiverModel


def add_rest_infer_route(app, model) -> None:
    """`POST /v2/models/{name}[/versions/1]/infer`, registered before KServe's so that it answers."""
    async def rest_infer(request: Request, model_name: str, model_version: str | None = None):
        if model_name != model.name or model_version not in (None, MODEL_VERSION):
            version = f" version {model_version}" if model_version else ""
            return JSONResponse({"error": f"Model with name {model_name}{version} does not exist."}, status_code=404)
        if not model.ready:
            return JSONResponse({"error": f"Model with name {model_name} is not ready."}, status_code=503)
        try:
            body = await request.body()
        except ClientDisconnect:  # the client went away before its request ended: nothing to answer
            model.metrics.requests.labels(model.name, "http", "client_disconnected").inc()
            return Response(status_code=499)
        try:
            decoded = decode_rest(model.contract, body, request.headers.get(HEADER_LENGTH))
            results = await model.infer_feeds(decoded.feeds, "http")
        except InputError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except ServingError as e:
            return JSONResponse({"error": str(e)}, status_code=STATUS[type(e)][0])
        body, header_length = encode_rest(model.contract, model.name, decoded, results,
                                          decoded.id or str(uuid.uuid4()))
        if header_length is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(header_length)})

    app.add_api_route("/v2/models/{model_name}/infer", rest_infer, methods=["POST"])
    app.add_api_route("/v2/models/{model_name}/versions/{model_version}/infer", rest_infer, methods=["POST"])
    # Routes match in the order they were added: move ours ahead of any registered before.
    ours = app.router.routes[-2:]
    del app.router.routes[-2:]
    app.router.routes[0:0] = ours


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets' connections, and without it a
    # response's header and body writes meet Nagle and delayed ACKs (measured: +40 ms on every small response).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen for HTTP on {host}:{port}: {e.strerror} (choose another --http-port)") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve(directory: str | Path, options: ServeOptions,
                on_listening: Callable[[dict], None] = lambda info: None) -> int:
    """Serve until SIGTERM or SIGINT: then readiness turns false, new requests get 503 / UNAVAILABLE, every
    queued and in-flight request is answered (for at most `grace_s`), and the servers stop. Returns 0."""
    kserve = import_kserve()
    import uvicorn
    from grpc import aio
    from kserve.model_server import app
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(options.log_level.upper())
    logging.getLogger("kserve").addFilter(_client_errors_without_traceback)
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")  # KServe's app, not ours

    runner = load_runner(directory, options)
    metrics = Metrics.get()
    name = options.name or runner.manifest.data["name"]

    def on_batch(stats: BatchStats) -> None:
        metrics.batch_size.labels(name).observe(stats.batch)
        metrics.batch_requests.labels(name).observe(stats.requests)
        metrics.batch_seconds.labels(name).observe(stats.seconds)

    batcher = DynamicBatcher(runner, max_batch_size=options.max_batch_size, max_queue_delay_ms=options.max_queue_delay_ms,
                             max_queue=options.max_queue, timeout_ms=options.timeout_ms, on_batch=on_batch)
    metrics.queue_depth.labels(name).set_function(lambda: batcher.queue_depth)
    model = make_model_class(kserve)(name, runner, batcher, metrics)
    model.load()
    registry = kserve.ModelRepository()
    registry.update(model)

    class ServingDataPlane(DataPlane):
        async def ready(self) -> bool:  # KServe's says True for as long as the process lives
            return model.ready

    dataplane = ServingDataPlane(model_registry=registry)
    extension = ModelRepositoryExtension(model_registry=registry)

    rest = RESTServer("kserve.model_server:app", dataplane, extension, options.http_port,
                      grace_period=int(options.grace_s), timeout_keep_alive=5)
    rest.create_application()
    add_rest_infer_route(app, model)
    rest.config.host = options.host

    class QuietServer(uvicorn.Server):
        def install_signal_handlers(self) -> None:  # uvicorn < 0.29
            pass

        def capture_signals(self):  # uvicorn >= 0.29: ours are installed on the loop below
            import contextlib

            return contextlib.nullcontext()

    http_server = QuietServer(rest.config)
    http_socket = _listening_socket(options.host, options.http_port)

    grpc_server = aio.server(interceptors=(ExceptionToStatusInterceptor(),),
                             options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    class Servicer(InferenceServicer):
        async def ModelInfer(self, request, context):
            # tritonclient's requests (raw contents, this model, ready) skip KServe's InferRequest objects.
            if request.model_name == model.name and request.raw_input_contents and model.ready:
                return await model.infer_grpc(request)
            return await super().ModelInfer(request, context)

    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(dataplane, extension), grpc_server)
    host = f"[{options.host}]" if ":" in options.host else options.host
    try:
        grpc_port = grpc_server.add_insecure_port(f"{host}:{options.grpc_port}")
    except RuntimeError:
        grpc_port = 0
    if grpc_port == 0:  # older grpcio reports a failed bind by returning 0, newer by raising
        http_socket.close()
        raise ConfigError(f"cannot listen for gRPC on {options.host}:{options.grpc_port} (choose another --grpc-port)")

    await batcher.start()
    await grpc_server.start()
    http_task = asyncio.create_task(http_server.serve(sockets=[http_socket]))
    while not http_server.started and not http_task.done():
        await asyncio.sleep(0.01)
    if http_task.done():
        http_task.result()  # raises what stopped it
    on_listening({"model": name, "host": options.host, "http_port": http_socket.getsockname()[1],
                  "grpc_port": grpc_port, "backend": runner.backend, "max_batch_size": batcher.max_batch_size})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    model.ready = False  # /v2/health/ready and model readiness: false from here on
    close = asyncio.ensure_future(batcher.close())  # refuses new requests, answers the queued ones
    done, _ = await asyncio.wait([close], timeout=options.grace_s)
    if not done:
        failed = batcher.fail_queued(f"the server stopped: its {options.grace_s:g} s grace period ended first")
        logging.getLogger("perceiver_export").warning("grace period over: %d queued request(s) answered 503", failed)
        await close
    http_server.should_exit = True
    await grpc_server.stop(grace=min(5.0, options.grace_s))
    await http_task
    return 0


def run(directory: str | Path, options: ServeOptions, on_listening: Callable[[dict], None] = lambda info: None) -> int:
    # The standard event loop, not uvloop: grpc.aio supports asyncio's, and under uvloop its p99 at 16 concurrent
    # clients grew to ~200 ms stalls (measured with `loadtest` here; 27 ms on asyncio's loop).
    return asyncio.run(serve(directory, options, on_listening))


__all__ = ["ServeOptions", "load_runner", "run", "serve"]
