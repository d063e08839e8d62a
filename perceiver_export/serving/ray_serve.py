"""A Ray Serve application for an artifact: `serve`'s model, protocol and batcher on Ray Serve's replicas.

Two deployments. `ingress` replicas answer the Open Inference Protocol with `serve`'s own code: REST (binary
tensor extension included) is `serve`'s Starlette app (rest.py) behind Ray's HTTP proxy, gRPC is `serve`'s
handlers (grpc_service.py) behind Ray's gRPC proxy, which calls the deployment's method of the gRPC method's
name. They decode and check each request against the contract and send it, through a deployment handle, to
`model` replicas: the artifact's runner behind the same exact `DynamicBatcher` as `serve` (server.make_model).
The split is there for faults: Ray's proxies answer a request whose replica died under it with 500 / INTERNAL;
the ingress sends it again to another model replica, and answers 503 / UNAVAILABLE only if none answers. So a
client written for `serve` (docs/serving.md) works unchanged against the cluster; replicas, placement,
autoscaling, health checks and rolling updates are Ray Serve's.

    serve run perceiver_export.serving.ray_serve:app_builder artifact=DIR [threads=1 num_replicas=2 …]
    serve deploy serve_config.yaml            # `python -m perceiver_export rayserve DIR` writes one

Options: ray_options.RayServeOptions. Over gRPC, Ray's proxy must register the protocol's service: a config's
`grpc_options.grpc_servicer_functions` lists ray_options.GRPC_SERVICER_FUNCTION (`add_inference_service` here).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from ray import serve

from .ray_options import RayServeOptions

log = logging.getLogger("perceiver_export")
# The protocol's gRPC methods the ingress answers (model control is Ray Serve's: redeploy, not RepositoryModelLoad).
GRPC_METHODS = ("ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelInfer")


class ReplicaStoppingError(Exception):
    """A model replica was asked to infer after it began to stop (a redeploy or scale-down): the ingress sends the
    request to another replica."""


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
    import again), so the ingress parses the bytes itself (`OpenInferenceIngress.ModelInfer` & co.)."""
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


@serve.deployment(name="model", health_check_period_s=2, health_check_timeout_s=30, graceful_shutdown_timeout_s=20)
class ModelReplica:
    """A model replica: the artifact's runner behind `serve`'s DynamicBatcher, which batches the requests every
    ingress replica sends it. Takes decoded, checked inputs; returns the output and the batcher's timings."""

    async def __init__(self, options: RayServeOptions):
        from .server import Metrics, make_model

        self.model = make_model(options.artifact, options.serve_options(), Metrics.get())
        await self.model.load(initial=True)
        log.warning("model replica of %s ready in pid %d: backend %s, max batch %d", self.model.name, os.getpid(),
                    self.model.runner.backend, self.model.max_batch_size)

    def max_batch_size(self) -> int:
        return self.model.max_batch_size

    async def infer(self, feeds: dict) -> tuple:
        batcher = self.model.batcher
        if batcher is None or not batcher.accepting:
            raise ReplicaStoppingError(f"model {self.model.name!r}: this replica is stopping")
        timing: dict = {}
        out = await batcher.infer(feeds, timing)
        return out, timing

    async def check_health(self):
        """Ray's health check: a replica whose model is not ready is replaced."""
        if not self.model.ready:
            raise RuntimeError(f"model {self.model.name!r} is not ready")

    async def __del__(self):
        batcher = self.model.batcher if hasattr(self, "model") else None
        if batcher is not None:
            self.model.serving = False
            await batcher.close()  # answers what is queued before the replica goes


class RemoteBatcher:
    """What ServedModel needs of a batcher, in an ingress replica: each request goes to the model deployment,
    where it is batched. Ray's proxies answer a request whose replica dies under it with 500 / INTERNAL ("The
    actor died unexpectedly"); here such a request (inference has no side effects), or one that reached a replica
    already stopping, is sent again to another replica, up to RESEND times, and if none answers it is a 503 /
    UNAVAILABLE the client can retry."""

    RESEND = 2

    def __init__(self, handle, name: str, max_batch_size: int, resent):
        self.handle, self.name, self.max_batch_size, self.resent = handle, name, max_batch_size, resent
        self.accepting = True
        self.queue_depth = 0  # the queue is in the model replicas

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.accepting = False

    def fail_queued(self, reason: str) -> int:
        return 0

    async def infer(self, feeds: dict, timing: dict):
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        from ..errors import InputError, OverloadedError, ServingError

        lost = None
        for _ in range(1 + self.RESEND):
            try:
                out, remote_timing = await self.handle.infer.remote(feeds)
            except (RayActorError, ActorUnavailableError) as e:  # the replica died or went away under the request
                lost = e
                self.resent.inc()
                continue
            except RayTaskError as e:  # the replica raised: our own errors keep their type and message
                if isinstance(e.cause, ReplicaStoppingError):
                    lost = e.cause
                    self.resent.inc()
                    continue
                if isinstance(e.cause, (ServingError, InputError)):
                    raise e.cause from None
                raise
            timing.update(remote_timing)
            return out
        raise OverloadedError(f"model {self.name!r}: the replica answering this request stopped "
                              f"({type(lost).__name__}), {1 + self.RESEND} times; retry the request")


@serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=20)
@serve.ingress()
class OpenInferenceIngress:
    """An ingress replica: `serve`'s REST app and gRPC handlers, which decode and check every request against the
    contract (bad input is refused here, before any model replica sees it) and send it to the model deployment."""

    async def __init__(self, model_handle, options: RayServeOptions):
        from .grpc_service import make_servicer
        from .rest import make_rest_app
        from .server import (Metrics, default_max_request_bytes, make_model, metrics_body, served_config_of,
                             served_extensions)

        serve_options = options.serve_options()
        max_batch_size = await model_handle.max_batch_size.remote()
        metrics = Metrics.get()
        model = make_model(options.artifact, serve_options, metrics, remote_batcher=lambda m: RemoteBatcher(
            model_handle, m.name, max_batch_size, metrics.resent.labels(m.name)))
        await model.load(initial=True)
        self.model = model
        limit = default_max_request_bytes(model.contract)
        extensions = [e for e in served_extensions("none") if e != "system_shared_memory"]  # one host only
        served_config = served_config_of(model, serve_options)
        self._app = make_rest_app(model, extensions=extensions, max_request_bytes=limit,
                                  allow_non_finite=options.allow_non_finite, model_config=lambda: served_config,
                                  statistics=lambda: model.statistics.as_json(), metrics_body=metrics_body)
        handlers, _ = make_servicer(model, extensions=extensions, allow_non_finite=options.allow_non_finite)
        self._grpc = {name: handlers[name] for name in GRPC_METHODS}

    def __serve_build_asgi_app__(self):
        return self._app

    ServerLive = _grpc_method("ServerLive")
    ServerReady = _grpc_method("ServerReady")
    ServerMetadata = _grpc_method("ServerMetadata")
    ModelReady = _grpc_method("ModelReady")
    ModelMetadata = _grpc_method("ModelMetadata")
    ModelInfer = _grpc_method("ModelInfer")


def app_builder(args: Mapping[str, Any]):
    """The application for `serve run …:app_builder key=value …` or a config's `args` (RayServeOptions)."""
    options = RayServeOptions.from_args(dict(args))
    model = ModelReplica.options(**options.deployment_options()).bind(options)
    return OpenInferenceIngress.options(num_replicas=options.ingress_replicas).bind(model, options)


__all__ = ["GRPC_METHODS", "ModelReplica", "OpenInferenceIngress", "RemoteBatcher", "ReplicaStoppingError",
           "add_inference_service", "app_builder"]
