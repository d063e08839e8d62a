"""The options of the Ray Serve application (ray_serve.py), parsed once for every way they arrive: `serve run
perceiver_export.serving.ray_serve:app_builder key=value …` (strings), a `serve deploy` config's `args` (YAML
values), and the `rayserve` / `rayservice` writers. The batching knobs are `serve`'s, with its defaults; the
replica knobs are Ray Serve's deployment options. Imports no Ray: the writers run without it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError
from ..runtime import BACKENDS as RUNTIME_BACKENDS

# The runners a replica can run: every runner but the ONNX reference one (a parity check, not a server).
BACKENDS = tuple(b for b in RUNTIME_BACKENDS if b != "onnx-reference")
# Requests a replica takes in at once beyond its batcher's queue: at least the largest batch (Ray's router holds
# the rest back, so the batcher's --max-queue is what answers 503 / UNAVAILABLE under overload).
ONGOING_HEADROOM = 256
# What `serve run` and a config's `import_path` name, and the function Ray's gRPC proxy calls to register the
# Open Inference Protocol's gRPC service (`grpc_options.grpc_servicer_functions`).
IMPORT_PATH = "perceiver_export.serving.ray_serve:app_builder"
GRPC_SERVICER_FUNCTION = "perceiver_export.serving.ray_serve.add_inference_service"


@dataclass(frozen=True)
class RayServeOptions:
    artifact: str  # the artifact directory as the cluster's nodes see it
    name: str | None = None  # the served model's name (default: the manifest's)
    backend: str = "onnxruntime"
    graph: str | None = None  # onnxruntime: plain, optimized, int8
    engine: str | None = None  # tensorrt: engine file in the artifact
    device: str | None = None  # torch: cpu, cuda, cuda:N; tensorrt: GPU index
    threads: int = 1  # the runner's threads in each replica
    max_batch_size: int | None = None  # default: the contract's batch max; 1 turns batching off
    max_queue_delay_ms: float = 0.0
    max_queue: int = 256
    timeout_ms: float | None = None
    allow_non_finite: bool = False
    num_replicas: int = 1  # a fixed count; ignored when max_replicas turns autoscaling on
    min_replicas: int | None = None  # autoscaling (with max_replicas): default 1
    max_replicas: int | None = None  # set: Ray Serve's autoscaler between min_replicas and max_replicas
    target_ongoing_requests: float | None = None  # autoscaling target per replica (Ray's default: 2)
    num_cpus: float | None = None  # CPUs Ray reserves per replica (default: threads)
    num_gpus: float = 0.0
    max_ongoing_requests: int | None = None  # default: max_queue + ONGOING_HEADROOM
    ingress_replicas: int = 1  # replicas of the protocol front (no CPU reserved: decoding and checks only)

    def __post_init__(self):
        def bad(key: str, expected: str) -> ConfigError:
            return ConfigError(f"Ray Serve option {key}: expected {expected}, got {getattr(self, key)!r}")

        if not self.artifact:
            raise ConfigError("Ray Serve option artifact: expected the artifact directory, got nothing")
        if self.backend not in BACKENDS:
            raise bad("backend", f"one of {', '.join(BACKENDS)}")
        for key in ("threads", "num_replicas", "max_queue", "ingress_replicas"):
            if getattr(self, key) < (0 if key == "max_queue" else 1):
                raise bad(key, ">= 0" if key == "max_queue" else ">= 1")
        for key in ("max_batch_size", "min_replicas", "max_replicas", "max_ongoing_requests"):
            value = getattr(self, key)
            if value is not None and value < (0 if key == "min_replicas" else 1):
                raise bad(key, ">= 0" if key == "min_replicas" else ">= 1")
        for key in ("max_queue_delay_ms", "num_gpus"):
            if getattr(self, key) < 0:
                raise bad(key, ">= 0")
        for key in ("timeout_ms", "target_ongoing_requests", "num_cpus"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise bad(key, "> 0")
        if self.max_replicas is None and (self.min_replicas is not None or self.target_ongoing_requests is not None):
            raise ConfigError("Ray Serve options min_replicas and target_ongoing_requests need max_replicas "
                              "(which turns autoscaling on)")
        if self.max_replicas is not None and (self.min_replicas or 1) > self.max_replicas:
            raise ConfigError(f"Ray Serve options: min_replicas {self.min_replicas} is above max_replicas "
                              f"{self.max_replicas}")
        for flag, value, owner in (("graph", self.graph, "onnxruntime"), ("engine", self.engine, "tensorrt")):
            if value is not None and self.backend != owner:
                raise ConfigError(f"Ray Serve option {flag} is an option of the {owner} backend, not of {self.backend}")

    # ---- parsing --------------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> "RayServeOptions":
        """From `serve run` arguments (all strings) or a config's `args` (YAML values); a ConfigError names the
        key, what it takes and what came."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - set(fields))
        if unknown:
            raise ConfigError(f"unknown Ray Serve option(s) {', '.join(unknown)}: expected some of {', '.join(fields)}")
        values = {}
        for key, raw in args.items():
            values[key] = _convert(key, fields[key].type, raw)
        if "artifact" not in values:
            raise ConfigError("Ray Serve option artifact is required: artifact=DIR (the artifact as the cluster sees it)")
        return cls(**values)

    def to_args(self) -> dict[str, Any]:
        """The options that differ from the defaults, as a config's `args` (artifact always)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name != "artifact"}
        return {"artifact": self.artifact,
                **{k: getattr(self, k) for k, d in defaults.items() if getattr(self, k) != d}}

    # ---- what they mean -----------------------------------------------------------------------
    def deployment_options(self) -> dict[str, Any]:
        """Ray Serve's options for the deployment (`Deployment.options(**…)`)."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus if self.num_cpus is not None else float(self.threads),
                                  "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests or self.max_queue + ONGOING_HEADROOM,
        }
        if self.max_replicas is not None:
            autoscaling: dict[str, Any] = {"min_replicas": self.min_replicas if self.min_replicas is not None else 1,
                                           "max_replicas": self.max_replicas}
            if self.target_ongoing_requests is not None:
                autoscaling["target_ongoing_requests"] = self.target_ongoing_requests
            options["autoscaling_config"] = autoscaling
        else:
            options["num_replicas"] = self.num_replicas
        return options

    def serve_options(self):
        """`serve`'s options for the same runner and batcher (server.ServeOptions)."""
        from .server import ServeOptions

        return ServeOptions(backend=self.backend, graph=self.graph, engine=self.engine, device=self.device,
                            threads=self.threads, max_batch_size=self.max_batch_size,
                            max_queue_delay_ms=self.max_queue_delay_ms, max_queue=self.max_queue,
                            timeout_ms=self.timeout_ms, name=self.name, allow_non_finite=self.allow_non_finite)


def _convert(key: str, annotation: str, raw: Any) -> Any:
    """One option's value from a string (`serve run`) or a YAML scalar, by its annotation."""
    kind = annotation.replace(" | None", "")
    optional = "None" in annotation
    if raw is None or (optional and isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
        if optional:
            return None
        raise ConfigError(f"Ray Serve option {key}: expected a value, got nothing")
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(str(raw).strip()) if isinstance(raw, str) else int(raw)
        if kind == "float":
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        return str(raw)
    except ValueError:
        expected = {"bool": "true or false", "int": "an integer", "float": "a number"}[kind]
        raise ConfigError(f"Ray Serve option {key}: expected {expected}, got {raw!r}") from None


__all__ = ["BACKENDS", "GRPC_SERVICER_FUNCTION", "IMPORT_PATH", "ONGOING_HEADROOM", "RayServeOptions"]
