"""`python -m perceiver_export serve DIR`: one artifact over the Open Inference Protocol, HTTP/REST and gRPC.

The server is assembled here: the model (model.py: runner, batcher, model control), the REST app (rest.py), the
gRPC service (grpc_service.py, on KServe's generated protocol classes) and Triton's extensions beside them, and
the request limits, which are enforced where bytes arrive — a declared body past `--max-request-bytes` is
refused with 413 before it is read, a request whose headers and body take longer than `--request-timeout-s` is
answered 408 and its connection closed, an idle connection is closed after `--keep-alive-s`, oversized headers
get 431, and gRPC refuses a message past the limit with RESOURCE_EXHAUSTED. We start uvicorn and grpc.aio
ourselves rather than call KServe's `ModelServer.start()`, because that binds every interface (0.0.0.0 and [::])
and re-raises SIGTERM after uvicorn's shutdown; here the address is `--host` (default 127.0.0.1) and SIGTERM
drains and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import orjson

from ..contract import IOContract
from ..errors import ConfigError
from ..runtime import load
from ..runtime.base import Runner
from .batcher import DynamicBatcher
from .model import CONTROL_MODES, MODEL_VERSION, ServedModel

# Bytes per element a JSON request may spend ("-1.23456789e-05," is 16), and what the rest of it may take.
JSON_BYTES_PER_VALUE = {"bool": 6}
JSON_BYTES_PER_NUMBER = 16
REQUEST_OVERHEAD_BYTES = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024  # request line and headers together (uvicorn/httptools set no limit)
LINGER_S = 2.0  # after refusing a request, how long its remaining bytes are read and dropped before closing


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
    model_control_mode: str = "none"  # Triton's: none (load/unload refused) or explicit
    max_request_bytes: int | None = None  # default: default_max_request_bytes(contract)
    request_timeout_s: float = 30.0  # headers and body of one request must arrive within this
    keep_alive_s: float = 5.0  # an idle connection is closed after this
    allow_non_finite: bool = False  # accept NaN / Inf in floating-point inputs


def default_max_request_bytes(contract: IOContract) -> int:
    """The largest valid request written as JSON (every input at its max shape), plus room for the rest."""
    total = REQUEST_OVERHEAD_BYTES
    for spec in contract.inputs:
        per_value = JSON_BYTES_PER_VALUE.get(spec.dtype, JSON_BYTES_PER_NUMBER)
        total += math.prod(contract.shape(spec.name, "max")) * per_value
    return total

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


def make_model(directory: str | Path, options: ServeOptions, metrics: "Metrics",
               remote_batcher: Callable[[ServedModel], Any] | None = None) -> ServedModel:
    """The served model for `options` (runner, batcher, statistics), not loaded yet (`await model.load(initial=True)`).
    The Ray Serve application (ray_serve.py) builds its model replicas here too, and its ingress with
    `remote_batcher(model)`: a batcher that sends each request elsewhere, with no runner in this process."""
    from .statistics import InferenceStatistics

    def make_batcher(runner: Runner, on_batch) -> DynamicBatcher:
        if remote_batcher is not None:
            return remote_batcher(model)
        return DynamicBatcher(runner, max_batch_size=options.max_batch_size,
                              max_queue_delay_ms=options.max_queue_delay_ms, max_queue=options.max_queue,
                              timeout_ms=options.timeout_ms, on_batch=on_batch)

    runner = (lambda: None) if remote_batcher is not None else (lambda: load_runner(directory, options))
    model = ServedModel(directory, options.name, options.model_control_mode, runner, make_batcher, metrics,
                        platform=f"perceiver-export_{options.backend}")
    model.statistics = InferenceStatistics(model.name, MODEL_VERSION)
    return model


def served_config_of(model: ServedModel, options: ServeOptions) -> dict:
    """Triton's model configuration of the served model (what `/config` and gRPC ModelConfig answer)."""
    from .model_config import served_model_config

    return served_model_config(
        model.contract, model.name, max_batch_size=model.max_batch_size,
        max_queue_delay_us=int(options.max_queue_delay_ms * 1000), max_queue_size=options.max_queue,
        timeout_us=int(options.timeout_ms * 1000) if options.timeout_ms else None, backend="perceiver_export",
        kind="KIND_GPU" if options.device and "cuda" in str(options.device) or options.backend == "tensorrt" else "KIND_CPU")


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
        self.resent = Counter("perceiver_requests_resent", "Requests sent again to another replica because the one "
                              "answering them stopped (the Ray Serve application's ingress)", ["model"])

    @classmethod
    def get(cls) -> "Metrics":
        if cls._instance is None:
            cls._instance = Metrics()
        return cls._instance


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



# ---- request limits, where bytes arrive ------------------------------------------------------------------
def guarded_http_protocol(max_request_bytes: int, request_timeout_s: float, keep_alive_s: float):
    """uvicorn's httptools protocol with the limits uvicorn lacks: a fresh connection that sends nothing is
    closed after `keep_alive_s` (uvicorn arms its keep-alive timer only after a response), a request must
    arrive whole within `request_timeout_s` (408, closed), a declared or streamed body past `max_request_bytes`
    is answered 413 and the connection closed without reading further, headers past MAX_HEADER_BYTES get 431."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpProtocol(HttpToolsProtocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._read_timer: asyncio.TimerHandle | None = None
            self._header_bytes = 0
            self._body_bytes = 0
            self._refused = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(keep_alive_s, self.timeout_keep_alive_handler)

        def connection_lost(self, exc) -> None:
            self._cancel_read_timer()
            super().connection_lost(exc)

        def refuse(self, status: int, reason: str, message: str) -> None:
            """Answer the request being read with `status` and close: the rest of its bytes are never read."""
            self._refused = True
            self._cancel_read_timer()
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
                body = orjson.dumps({"error": message})
                self.transport.write(b"".join([
                    f"HTTP/1.1 {status} {reason}\r\n".encode(), b"content-type: application/json\r\n",
                    f"content-length: {len(body)}\r\n".encode(), b"connection: close\r\n\r\n", body]))
            # A lingering close: closing with the client's bytes still unread sends a reset, which can destroy
            # the answer before the client reads it. Stop writing, discard what still comes (data_received),
            # and close when the client does or after LINGER_S.
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

        def eof_received(self):
            if self._refused:
                self.transport.close()
                return None
            return super().eof_received()

        def data_received(self, data: bytes) -> None:
            if not self._refused:
                super().data_received(data)

        def send_400_response(self, msg: str) -> None:  # a request httptools cannot parse
            if not self._refused:
                self.refuse(400, "Bad Request", f"malformed HTTP request: {msg}")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = self._body_bytes = 0
            self._cancel_read_timer()
            self._read_timer = self.loop.call_later(request_timeout_s, self._read_timed_out)

        def on_url(self, url: bytes) -> None:
            self._count_header(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_header(len(name) + len(value))
            super().on_header(name, value)

        def _count_header(self, n: int) -> None:
            self._header_bytes += n
            if self._header_bytes > MAX_HEADER_BYTES:
                self.refuse(431, "Request Header Fields Too Large",
                            f"the request line and headers are larger than {MAX_HEADER_BYTES} bytes")
                raise ConnectionAbortedError("headers too large")  # stops the parser on this connection

        def on_headers_complete(self) -> None:
            for name, value in self.headers:
                if name == b"content-length":
                    try:
                        declared = int(value)
                    except ValueError:
                        declared = -1
                    if declared > max_request_bytes:
                        self.refuse(413, "Content Too Large",
                                    f"the request body of {declared} bytes is larger than the server's limit of "
                                    f"{max_request_bytes} bytes (--max-request-bytes)")
                        raise ConnectionAbortedError("body too large")
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self._refused:
                return
            self._body_bytes += len(body)
            if self._body_bytes > max_request_bytes:
                self.refuse(413, "Content Too Large", f"the request body is larger than the server's limit of "
                                                      f"{max_request_bytes} bytes (--max-request-bytes)")
                raise ConnectionAbortedError("body too large")
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._cancel_read_timer()
            if not self._refused:
                super().on_message_complete()

        def _read_timed_out(self) -> None:
            self._read_timer = None
            self.refuse(408, "Request Timeout", f"the request did not arrive within {request_timeout_s:g} s "
                                                "(--request-timeout-s)")

        def _cancel_read_timer(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

    return GuardedHttpProtocol


def served_extensions(control_mode: str) -> list[str]:
    """The protocol and Triton extensions this server answers (server metadata lists exactly these)."""
    extensions = ["binary_tensor_data", "model_configuration", "statistics", "schedule_policy", "system_shared_memory"]
    return extensions + (["model_repository"] if control_mode == "explicit" else [])


def metrics_body(accept: str | None) -> tuple[bytes, str]:
    from prometheus_client import REGISTRY, exposition

    encoder, content_type = exposition.choose_encoder(accept)
    return encoder(REGISTRY), content_type


async def serve(directory: str | Path, options: ServeOptions,
                on_listening: Callable[[dict], None] = lambda info: None) -> int:
    """Serve until SIGTERM or SIGINT: then readiness turns false, new requests get 503 / UNAVAILABLE, every
    queued and in-flight request is answered (for at most `grace_s`), and the servers stop. Returns 0."""
    import grpc
    import uvicorn
    from grpc import aio

    from .grpc_service import make_servicer
    from .rest import make_rest_app
    from .shared_memory import SharedMemoryRegions
    from .triton_grpc import extension_handler, shared_memory_handler

    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "perceiver_export"):
        logging.getLogger(name).setLevel(options.log_level.upper())
    if options.model_control_mode not in CONTROL_MODES:
        raise ConfigError(f"--model-control-mode must be one of {', '.join(CONTROL_MODES)}, "
                          f"got {options.model_control_mode!r}")
    for flag, value in (("--request-timeout-s", options.request_timeout_s), ("--keep-alive-s", options.keep_alive_s)):
        if not value > 0:
            raise ConfigError(f"{flag} must be > 0, got {value}")

    metrics = Metrics.get()
    model = make_model(directory, options, metrics)
    await model.load(initial=True)
    metrics.queue_depth.labels(model.name).set_function(lambda: model.batcher.queue_depth if model.batcher else 0)
    limit = options.max_request_bytes or default_max_request_bytes(model.contract)
    if limit < 1:
        raise ConfigError(f"--max-request-bytes must be >= 1, got {limit}")
    extensions = served_extensions(options.model_control_mode)
    served_config = served_config_of(model, options)

    def config_for(name: str, version: str) -> dict:
        model.check(name, version)
        return served_config

    def stats_for(name: str, version: str) -> dict:
        if name or version:  # no name: every model's statistics
            model.check(name, version)
        return model.statistics.as_json()

    # A region holds at most what one request may carry.
    shared_memory = SharedMemoryRegions(max_region_bytes=limit)
    app = make_rest_app(model, extensions=extensions, max_request_bytes=limit, allow_non_finite=options.allow_non_finite,
                        model_config=lambda: served_config, statistics=lambda: model.statistics.as_json(),
                        metrics_body=metrics_body, shared_memory=shared_memory)
    http_config = uvicorn.Config(app, host=options.host, port=options.http_port, log_config=None,
                            log_level=options.log_level, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=int(options.grace_s), timeout_keep_alive=options.keep_alive_s,
                            http=guarded_http_protocol(limit, options.request_timeout_s, options.keep_alive_s))

    class QuietServer(uvicorn.Server):
        def install_signal_handlers(self) -> None:  # uvicorn < 0.29
            pass

        def capture_signals(self):  # uvicorn >= 0.29: ours are installed on the loop below
            import contextlib

            return contextlib.nullcontext()

    http_server = QuietServer(http_config)
    http_socket = _listening_socket(options.host, options.http_port)

    grpc_server = aio.server(options=[("grpc.max_send_message_length", -1),
                                      ("grpc.max_receive_message_length", limit)])
    handlers, infer_request = make_servicer(model, extensions=extensions, allow_non_finite=options.allow_non_finite,
                                               shared_memory=shared_memory)
    grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),
                                          extension_handler(config_for, stats_for, infer_request),
                                          shared_memory_handler(shared_memory)))
    host = f"[{options.host}]" if ":" in options.host else options.host
    try:
        grpc_port = grpc_server.add_insecure_port(f"{host}:{options.grpc_port}")
    except RuntimeError:
        grpc_port = 0
    if grpc_port == 0:  # older grpcio reports a failed bind by returning 0, newer by raising
        http_socket.close()
        raise ConfigError(f"cannot listen for gRPC on {options.host}:{options.grpc_port} (choose another --grpc-port)")

    await grpc_server.start()
    http_task = asyncio.create_task(http_server.serve(sockets=[http_socket]))
    while not http_server.started and not http_task.done():
        await asyncio.sleep(0.01)
    if http_task.done():
        http_task.result()  # raises what stopped it
    on_listening({"model": model.name, "host": options.host, "http_port": http_socket.getsockname()[1],
                  "grpc_port": grpc_port, "backend": model.runner.backend, "max_batch_size": model.max_batch_size,
                  "max_request_bytes": limit, "model_control_mode": options.model_control_mode})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    model.serving = False  # /v2/health/ready and model readiness: false from here on
    batcher = model.batcher
    if batcher is not None:
        close = asyncio.ensure_future(batcher.close())  # refuses new requests, answers the queued ones
        done, _ = await asyncio.wait([close], timeout=options.grace_s)
        if not done:
            failed = batcher.fail_queued(f"the server stopped: its {options.grace_s:g} s grace period ended first")
            logging.getLogger("perceiver_export").warning("grace period over: %d queued request(s) answered 503", failed)
            await close
    http_server.should_exit = True
    await grpc_server.stop(grace=min(5.0, options.grace_s))
    await http_task
    shared_memory.unregister()
    return 0


def run(directory: str | Path, options: ServeOptions, on_listening: Callable[[dict], None] = lambda info: None) -> int:
    # The standard event loop, not uvloop: grpc.aio supports asyncio's, and under uvloop its p99 at 16 concurrent
    # clients grew to ~200 ms stalls (measured with `loadtest` here; 27 ms on asyncio's loop).
    return asyncio.run(serve(directory, options, on_listening))


__all__ = ["Metrics", "ServeOptions", "default_max_request_bytes", "load_runner", "make_model", "metrics_body", "run", "serve",
           "served_config_of", "served_extensions"]
