"""A KServe `InferenceService` whose predictor runs `python -m perceiver_export serve` on an artifact.

The manifest is built from KServe's own model classes (`V1beta1InferenceService`, `V1beta1PredictorSpec`) and
Kubernetes' (`V1Container`, probes, resources), so a field KServe does not know, or a value of the wrong type,
fails here rather than at `kubectl apply`. KServe's serverless mode exposes one port per predictor container:
`--protocol http` (the REST port, default) or `grpc` (named h2c). SIGTERM drains the server's queue, so the
pod's termination grace period is the server's plus a margin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..artifact.atomic import atomic_write_text
from ..artifact.manifest import read_manifest
from ..errors import ConfigError
from . import import_kserve

HTTP_PORT, GRPC_PORT = 8080, 8081  # KServe's conventions for a predictor container
K8S_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass
class KServeOptions:
    image: str
    name: str | None = None  # default: the artifact's name
    namespace: str | None = None
    model_dir: str = "/mnt/models"  # where the artifact is inside the container
    storage_uri: str | None = None  # s3://, gs://, pvc://…: KServe's storage initializer copies it to model_dir
    protocol: str = "http"
    min_replicas: int = 1
    max_replicas: int = 1
    cpu: str = "2"
    memory: str = "4Gi"
    gpu: int = 0
    backend: str = "onnxruntime"
    serve_args: tuple[str, ...] = ()  # further `serve` options, e.g. ("--max-batch-size", "8")
    grace_s: float = 30.0


def kubernetes_quantity(value: str, option: str) -> str:
    """`value` if Kubernetes reads it as a quantity (KServe and RayService resources), else a ConfigError."""
    from kubernetes.utils import parse_quantity

    try:
        parse_quantity(value)
    except ValueError:
        raise ConfigError(f"{option}: {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)") from None
    return str(value)


def build_inference_service(directory: str | Path, options: KServeOptions):
    """The InferenceService as KServe's model object (validated by its classes as it is built)."""
    kserve = import_kserve()
    from kubernetes.client import (
        V1Container,
        V1ContainerPort,
        V1EnvVar,
        V1HTTPGetAction,
        V1ObjectMeta,
        V1Probe,
        V1ResourceRequirements,
    )

    manifest = read_manifest(directory)
    name = options.name or manifest.data["name"]
    if not K8S_NAME.match(name):
        raise ConfigError(f"--name {name!r}: an InferenceService name must be a DNS label (lower case, digits, '-')")
    if not options.image.strip():
        raise ConfigError("--image: give the container image that has perceiver-export[serve] installed")
    if options.protocol not in ("http", "grpc"):
        raise ConfigError(f"--protocol must be http or grpc, got {options.protocol!r}")
    if not 0 <= options.min_replicas <= options.max_replicas or options.max_replicas < 1:
        raise ConfigError(f"replicas must satisfy 0 <= min <= max and max >= 1, got {options.min_replicas}..{options.max_replicas}")
    if options.gpu < 0:
        raise ConfigError(f"--gpu must be 0 or more, got {options.gpu}")
    resources = {"cpu": kubernetes_quantity(options.cpu, "--cpu"),
                 "memory": kubernetes_quantity(options.memory, "--memory")}
    limits = dict(resources)
    if options.gpu:
        limits["nvidia.com/gpu"] = str(options.gpu)
    port = HTTP_PORT if options.protocol == "http" else GRPC_PORT
    args = ["-m", "perceiver_export", "serve", options.model_dir, "--name", name, "--host", "0.0.0.0",
            "--http-port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT), "--backend", options.backend,
            "--grace-s", f"{options.grace_s:g}", *options.serve_args]
    probe_path = "/v2/health/ready"
    container = V1Container(
        name="kserve-container", image=options.image, command=["python"], args=args,
        ports=[V1ContainerPort(container_port=port, protocol="TCP", name="h2c" if options.protocol == "grpc" else None)],
        env=[V1EnvVar(name="STORAGE_URI", value=options.storage_uri)] if options.storage_uri else None,
        resources=V1ResourceRequirements(requests=resources, limits=limits),
        readiness_probe=V1Probe(http_get=V1HTTPGetAction(path=probe_path, port=HTTP_PORT), period_seconds=5)
        if options.protocol == "http" else None,
    )
    onnx_sha = manifest.data["files"].get("model.onnx", {}).get("sha256", "")
    return kserve.V1beta1InferenceService(
        api_version="serving.kserve.io/v1beta1", kind="InferenceService",
        metadata=V1ObjectMeta(name=name, namespace=options.namespace, annotations={
            "perceiver-export/version": __version__,
            "perceiver-export/artifact": manifest.data["name"],
            "perceiver-export/model-onnx-sha256": onnx_sha,
            "serving.kserve.io/deploymentMode": "Serverless",
        }),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=kserve.V1beta1PredictorSpec(
            containers=[container], min_replicas=options.min_replicas, max_replicas=options.max_replicas,
            termination_grace_period_seconds=int(options.grace_s) + 10,
        )),
    )


def inference_service_yaml(directory: str | Path, options: KServeOptions) -> str:
    import yaml

    document = import_kserve().ApiClient().sanitize_for_serialization(build_inference_service(directory, options))
    header = (f"# KServe InferenceService for {document['metadata']['name']}, written by perceiver-export {__version__}.\n"
              f"# The image must have `pip install perceiver-export[serve]` and the artifact at {options.model_dir}"
              f"{' (copied there from STORAGE_URI by KServe)' if options.storage_uri else ''}.\n")
    return header + yaml.safe_dump(document, sort_keys=False)


def write_inference_service(directory: str | Path, options: KServeOptions, out: str | Path) -> Path:
    out = Path(out)
    atomic_write_text(out, inference_service_yaml(directory, options))
    return out
