"""The Open Inference Protocol's REST routes for the served model, and only those: health, server and model
metadata and readiness (versioned too), inference, Triton's model configuration, statistics and repository
extensions, and `/metrics`.

KServe's REST app answered a client's mistakes with 500s (a v1 `predict` of `{}`), `"versions": null`, 501 on
versioned metadata, FastAPI's `{"detail": ...}` on unknown routes, and exposed load / unload to any client; this
app is ours so that every route is one we mean to serve and every non-2xx body is the protocol's `{"error": ...}`.
Bodies are read here with the server's size limit (the listening protocol refuses a declared size past it before
the body is read); large JSON bodies are decoded off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Callable

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..errors import (BatchFailedError, DeadlineExceededError, InputError, ModelControlError, ModelNotFoundError,
                      OverloadedError, RequestTooLargeError, ServingError)
from .model import MODEL_VERSION, ServedModel
from .protocol import HEADER_LENGTH, decode_rest, encode_rest, tensor_metadata

HTTP_STATUS = {InputError: 400, ModelControlError: 400, ModelNotFoundError: 404, RequestTooLargeError: 413,
               OverloadedError: 503, DeadlineExceededError: 504, BatchFailedError: 500}
# Bodies at least this large are decoded in a worker thread (smaller ones cost less than the hand-off).
DECODE_OFF_LOOP_BYTES = 1 << 20
log = logging.getLogger("perceiver_export")


def error_response(status: int, message: str, close: bool = False) -> Response:
    headers = {"connection": "close"} if close else None
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json", headers=headers)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def status_of(error: Exception) -> int:
    for kind, status in HTTP_STATUS.items():
        if isinstance(error, kind):
            return status
    return 500


async def read_body(request: Request, limit: int) -> bytearray:
    """The whole body, refused with `RequestTooLargeError` as soon as it passes `limit` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestTooLargeError(f"the request body is larger than the server's limit of {limit} bytes "
                                       "(--max-request-bytes)")
    return body  # not copied into bytes: a large body would be held twice


def make_rest_app(model: ServedModel, *, extensions: list[str], max_request_bytes: int, allow_non_finite: bool,
                  model_config: Callable[[], dict], statistics: Callable[[], dict], metrics_body: Callable,
                  shared_memory=None) -> Starlette:
    """The REST app for `model`; `model_config()` and `statistics()` give Triton's JSON bodies; `shared_memory`
    (a SharedMemoryRegions) serves Triton's system shared memory extension."""

    def handled(endpoint):
        """Every outcome of a route as a response: a package error by its status, anything else a 500 with
        the protocol's body on a connection that stays usable (the response is complete)."""
        async def route(request: Request) -> Response:
            try:
                params = request.path_params
                if "model_name" in params:
                    model.check(params["model_name"], params.get("model_version"))
                return await endpoint(request)
            except ClientDisconnect:
                model.metrics.requests.labels(model.name, "http", "client_disconnected").inc()
                return Response(status_code=499)
            except ServingError as e:
                return error_response(status_of(e), str(e), close=isinstance(e, RequestTooLargeError))
            except InputError as e:
                return error_response(400, str(e))
            except Exception as e:  # noqa: BLE001 — a bug of ours: answered, logged, the server goes on
                log.exception("internal error on %s %s", request.method, request.url.path)
                return error_response(500, f"internal error: {type(e).__name__}: {e}")
        return route

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    def not_ready(what: str) -> Response:
        # Draining for a stop: 503, the server is going away; an unloaded model: 400, as Triton answers.
        if not model.serving:
            return error_response(503, f"{what} is not ready: the server is shutting down")
        return error_response(400, f"{what} is not ready: model {model.name!r} is unloaded")

    async def ready(request: Request) -> Response:
        return json_response({"ready": True}) if model.ready else not_ready("the server")

    async def server_metadata(request: Request) -> Response:
        return json_response({"name": "perceiver-export", "version": __version__, "extensions": extensions})

    async def model_metadata(request: Request) -> Response:
        inputs, outputs = tensor_metadata(model.contract)
        return json_response({"name": model.name, "versions": [MODEL_VERSION], "platform": model.platform,
                              "inputs": inputs, "outputs": outputs})

    async def model_ready(request: Request) -> Response:
        return json_response({"name": model.name, "ready": True}) if model.ready else not_ready(f"model {model.name!r}")

    async def config(request: Request) -> Response:
        return json_response(model_config())

    async def stats(request: Request) -> Response:
        return json_response(statistics())

    async def infer(request: Request) -> Response:
        if not model.ready:
            model.metrics.requests.labels(model.name, "http", "unavailable").inc()
            raise OverloadedError(f"model {model.name!r} is not ready: "
                                  + ("the server is shutting down" if not model.serving else
                                     f"it is unloaded (POST /v2/repository/models/{model.name}/load)"))
        body = await read_body(request, max_request_bytes)
        header_length = request.headers.get(HEADER_LENGTH)
        if len(body) >= DECODE_OFF_LOOP_BYTES:
            decoded = await asyncio.to_thread(decode_rest, model.contract, body, header_length,
                                              allow_non_finite=allow_non_finite, shared_memory=shared_memory)
        else:
            decoded = decode_rest(model.contract, body, header_length, allow_non_finite=allow_non_finite,
                                  shared_memory=shared_memory)
        del body
        results = await model.infer(decoded.feeds, "http")
        out, json_length = encode_rest(model.contract, model.name, decoded, results, decoded.id or str(uuid.uuid4()),
                                       MODEL_VERSION, shared_memory)
        if json_length is None:
            return Response(out, media_type="application/json")
        return Response(out, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(json_length)})

    async def repository_index(request: Request) -> Response:
        return json_response(model.repository_index())

    async def load(request: Request) -> Response:
        name = request.path_params["load_name"]
        model.check(name, None)
        await model.load()
        return json_response({"name": name, "load": True})

    async def unload(request: Request) -> Response:
        name = request.path_params["load_name"]
        model.check(name, None)
        await model.unload()
        return json_response({"name": name, "unload": True})

    async def shm_status(request: Request) -> Response:
        return json_response(shared_memory.status(request.path_params.get("region")))

    async def shm_register(request: Request) -> Response:
        body = await read_body(request, 64 * 1024)
        try:
            spec = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise InputError(f"malformed register request: not valid JSON ({e})") from None
        if not isinstance(spec, dict):
            raise InputError("malformed register request: expected a JSON object with key, offset and byte_size")
        shared_memory.register(request.path_params["region"], spec.get("key"), spec.get("offset", 0),
                               spec.get("byte_size"))
        return json_response({})

    async def shm_unregister(request: Request) -> Response:
        shared_memory.unregister(request.path_params.get("region"))
        return json_response({})

    async def metrics(request: Request) -> Response:
        body, content_type = metrics_body(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    model_routes = []
    for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        model_routes += [
            Route(prefix, handled(model_metadata), methods=["GET"]),
            Route(prefix + "/ready", handled(model_ready), methods=["GET"]),
            Route(prefix + "/infer", handled(infer), methods=["POST"]),
            Route(prefix + "/config", handled(config), methods=["GET"]),
            Route(prefix + "/stats", handled(stats), methods=["GET"]),
        ]
    routes = [
        Route("/v2/health/live", handled(live), methods=["GET"]),
        Route("/v2/health/ready", handled(ready), methods=["GET"]),
        Route("/v2", handled(server_metadata), methods=["GET"]),
        Route("/v2/", handled(server_metadata), methods=["GET"]),
        Route("/v2/models/stats", handled(stats), methods=["GET"]),
        *model_routes,
        Route("/v2/repository/index", handled(repository_index), methods=["POST"]),
        Route("/v2/repository/models/{load_name}/load", handled(load), methods=["POST"]),
        Route("/v2/repository/models/{load_name}/unload", handled(unload), methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if shared_memory is not None:
        routes += [
            Route("/v2/systemsharedmemory/status", handled(shm_status), methods=["GET"]),
            Route("/v2/systemsharedmemory/region/{region}/status", handled(shm_status), methods=["GET"]),
            Route("/v2/systemsharedmemory/region/{region}/register", handled(shm_register), methods=["POST"]),
            Route("/v2/systemsharedmemory/unregister", handled(shm_unregister), methods=["POST"]),
            Route("/v2/systemsharedmemory/region/{region}/unregister", handled(shm_unregister), methods=["POST"]),
        ]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        messages = {404: f"no such route: {request.method} {request.url.path}",
                    405: f"method {request.method} is not allowed on {request.url.path}"}
        return error_response(exc.status_code, messages.get(exc.status_code, exc.detail))

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


__all__ = ["make_rest_app", "error_response", "HTTP_STATUS"]
