"""A Ray Serve application for an artifact: `serve`'s model, protocol and batcher on Ray Serve's replicas.

Each replica holds the artifact's runner behind the same exact `DynamicBatcher` as `serve` (model.py, built by
server.make_model), and answers the same Open Inference Protocol: REST (with the binary tensor extension) is
`serve`'s own Starlette app (rest.py) behind Ray's HTTP proxy, gRPC is `serve`'s own handlers (grpc_service.py)
behind Ray's gRPC proxy, which calls the deployment's method of the gRPC method's name. So a client written for
`serve` (docs/serving.md) works unchanged against the cluster; replicas, placement, autoscaling, health checks
and rolling updates are Ray Serve's.

    serve run perceiver_export.serving.ray_serve:app_builder artifact=DIR [threads=1 num_replicas=2 …]
    serve deploy serve_config.yaml            # `python -m perceiver_export rayserve DIR` writes one

Options: ray_options.RayServeOptions. Over gRPC, Ray's proxy must register the protocol's service: a config's
`grpc_options.grpc_servicer_functions` lists ray_options.GRPC_SERVICER_FUNCTION (`serve start --grpc-port …
--grpc-servicer-functions …` for `serve run`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from ray import serve

from .ray_options import RayServeOptions

log = logging.getLogger("perceiver_export")
# The protocol's gRPC methods a replica answers (model control is Ray Serve's: redeploy, not RepositoryModelLoad).
GRPC_METHODS = ("ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelInfer")


class _Aborted(Exception):
    """A gRPC call answered with a status other than OK: the code and details are already on Ray's context."""


class _RayContext:
    """What grpc_service's handlers use of a grpc.aio context, on Ray Serve's gRPC context: `abort` sets the
    status there and raises, and Ray's proxy answers with that status and message."""

    def __init__(self, context):
        self._context = context

    async def abort(self, code, details: str):
        self._context.set_code(code)
        self._context.set_details(details)
        raise _Aborted(details)


def add_inference_service(servicer, server) -> None:
    """The servicer function for Ray's gRPC proxy (ray_options.GRPC_SERVICER_FUNCTION): the protocol's service
    with its unary methods taking the request's bytes as they came. The proxy pickles a request to the replica,
    and KServe's generated message classes do not pickle (their module is imported under a name that does not
    import again), so the replica parses the bytes itself (`OpenInferenceReplica.ModelInfer` & co.)."""
    import grpc

    handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name)) for name in GRPC_METHODS}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),))


def _grpc_method(name: str):
    async def method(self, request: bytes, grpc_context):
        handler = self._grpc[name]
        return await handler.unary_unary(handler.request_deserializer(request), _RayContext(grpc_context))

    method.__name__ = name
    method.__doc__ = f"The Open Inference Protocol's {name} (gRPC)."
    return method


@serve.deployment(name="perceiver", health_check_period_s=2, health_check_timeout_s=30, graceful_shutdown_timeout_s=20)
@serve.ingress()
class OpenInferenceReplica:
    """One replica: the served model, its REST app and its gRPC handlers."""

    async def __init__(self, options: RayServeOptions):
        from .grpc_service import make_servicer
        from .rest import make_rest_app
        from .server import (Metrics, default_max_request_bytes, make_model, metrics_body, served_config_of,
                             served_extensions)

        self.options = options
        serve_options = options.serve_options()
        metrics = Metrics.get()
        self.model = make_model(options.artifact, serve_options, metrics)
        await self.model.load(initial=True)
        model = self.model
        metrics.queue_depth.labels(model.name).set_function(lambda: model.batcher.queue_depth if model.batcher else 0)
        limit = default_max_request_bytes(model.contract)
        extensions = [e for e in served_extensions("none") if e != "system_shared_memory"]  # one host only
        served_config = served_config_of(model, serve_options)
        self._app = make_rest_app(model, extensions=extensions, max_request_bytes=limit,
                                  allow_non_finite=options.allow_non_finite, model_config=lambda: served_config,
                                  statistics=lambda: model.statistics.as_json(), metrics_body=metrics_body)
        handlers, _ = make_servicer(model, extensions=extensions, allow_non_finite=options.allow_non_finite)
        self._grpc = {name: handlers[name] for name in GRPC_METHODS}
        log.warning("replica of %s ready in pid %d: backend %s, max batch %d", model.name, os.getpid(),
                    model.runner.backend, model.max_batch_size)

    def __serve_build_asgi_app__(self):
        return self._app

    async def check_health(self):
        """Ray's health check: a replica whose model is not ready is replaced."""
        if not self.model.ready:
            raise RuntimeError(f"model {self.model.name!r} is not ready")

    async def __del__(self):
        batcher = self.model.batcher if hasattr(self, "model") else None
        if batcher is not None:
            self.model.serving = False
            await batcher.close()  # answers what is queued before the replica goes

    ServerLive = _grpc_method("ServerLive")
    ServerReady = _grpc_method("ServerReady")
    ServerMetadata = _grpc_method("ServerMetadata")
    ModelReady = _grpc_method("ModelReady")
    ModelMetadata = _grpc_method("ModelMetadata")
    ModelInfer = _grpc_method("ModelInfer")


def app_builder(args: Mapping[str, Any]):
    """The application for `serve run …:app_builder key=value …` or a config's `args` (RayServeOptions)."""
    options = RayServeOptions.from_args(dict(args))
    return OpenInferenceReplica.options(**options.deployment_options()).bind(options)


__all__ = ["GRPC_METHODS", "OpenInferenceReplica", "app_builder"]
