"""A KubeRay `RayService` whose Ray cluster runs the Ray Serve application (ray_serve.py) on an artifact.

`serveConfigV2` is the YAML of ray_config.serve_config — the same document `rayserve` writes for `serve deploy` —
so the cluster and a hand-run `serve deploy` parse the same options. The head and worker pod templates are built
from the Kubernetes client's model classes (`V1PodTemplateSpec`, `V1Container`, …: a field they do not know, or a
value of the wrong type, fails here); the RayService's own fields follow KubeRay's CRD (ray.io/v1), which the
tests check the manifest against. The head runs Ray's control plane and no replicas (num-cpus 0); each worker pod
is sized for the replicas it holds: CPUs and GPUs per replica times replicas per worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..artifact.atomic import atomic_write_text
from ..errors import ConfigError
from .kserve_manifest import K8S_NAME, kubernetes_quantity
from .ray_config import GRPC_PORT, HTTP_PORT, checked_serve_config, ray_installed_version
from .ray_options import RayServeOptions

GCS_PORT, DASHBOARD_PORT = 6379, 8265
ARTIFACT_VOLUME = "artifact"
# KubeRay's sample thresholds: a model that takes minutes to load is not restarted while it loads.
SERVICE_UNHEALTHY_S, DEPLOYMENT_UNHEALTHY_S = 900, 300


@dataclass(frozen=True)
class RayServiceOptions:
    image: str  # has perceiver-export[serve] and ray[serve] installed
    name: str | None = None  # the RayService's name (default: the application's)
    namespace: str | None = None
    workers: int = 1  # worker pods (the most, with autoscaling)
    memory: str = "4Gi"  # per worker pod
    head_cpu: str = "1"
    head_memory: str = "2Gi"
    artifact_pvc: str | None = None  # a PersistentVolumeClaim holding the artifact, mounted read-only at its path
    ray_version: str | None = None  # the image's Ray (default: the Ray installed here, if any)
    app_name: str | None = None


@dataclass(frozen=True)
class WorkerSizing:
    replicas_per_worker: int
    cpu: float  # per worker pod
    gpu: int
    min_workers: int
    max_workers: int


def worker_sizing(serve: RayServeOptions, workers: int) -> WorkerSizing:
    """How many replicas each worker pod holds and what it needs for them."""
    if workers < 1:
        raise ConfigError(f"--workers: expected 1 or more worker pods, got {workers}")
    replicas = serve.max_replicas if serve.max_replicas is not None else serve.num_replicas
    per_worker = math.ceil(replicas / workers)
    actor = serve.deployment_options()["ray_actor_options"]
    if serve.max_replicas is not None:  # Ray's autoscaler adds worker pods as Serve adds replicas
        minimum = serve.min_replicas if serve.min_replicas is not None else 1
        min_workers = math.ceil(minimum / per_worker)
    else:
        min_workers = workers
    return WorkerSizing(per_worker, actor["num_cpus"] * per_worker, math.ceil(actor["num_gpus"] * per_worker),
                        min_workers, workers)


def _cpu_quantity(cpus: float) -> str:
    millis = math.ceil(cpus * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def build_ray_service(directory: str | Path, serve: RayServeOptions, options: RayServiceOptions) -> dict[str, Any]:
    """The RayService as a plain document (pod templates serialized from the Kubernetes client's classes)."""
    return _built(directory, serve, options)[0]


def _built(directory: str | Path, serve: RayServeOptions,
           options: RayServiceOptions) -> tuple[dict[str, Any], WorkerSizing, str | None]:
    """The RayService, how its workers are sized, and the Ray version that checked serveConfigV2 (None: no Ray here)."""
    from kubernetes.client import (
        ApiClient,
        V1Container,
        V1ContainerPort,
        V1ObjectMeta,
        V1PersistentVolumeClaimVolumeSource,
        V1PodSpec,
        V1PodTemplateSpec,
        V1ResourceRequirements,
        V1Volume,
        V1VolumeMount,
    )

    from .ray_config import app_name_for

    if not options.image.strip():
        raise ConfigError("--image: give the container image that has perceiver-export[serve] and ray[serve] installed")
    app_name = options.app_name or app_name_for(directory)
    name = options.name or app_name
    if not K8S_NAME.match(name):
        raise ConfigError(f"the RayService name {name!r} (--service-name; default: the application's) must be a DNS "
                          "label (lower case, digits, '-')")
    if options.artifact_pvc is not None and not K8S_NAME.match(options.artifact_pvc):
        raise ConfigError(f"--artifact-pvc {options.artifact_pvc!r}: a PersistentVolumeClaim name is a DNS label")
    if not serve.artifact.startswith("/"):
        raise ConfigError(f"--artifact-path {serve.artifact!r}: expected an absolute path inside the container")
    sizing = worker_sizing(serve, options.workers)
    config, validated_with = checked_serve_config(serve, app_name=app_name)
    import yaml

    mounts = [V1VolumeMount(name=ARTIFACT_VOLUME, mount_path=serve.artifact, read_only=True)] if options.artifact_pvc else None
    volumes = [V1Volume(name=ARTIFACT_VOLUME, persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
        claim_name=options.artifact_pvc, read_only=True))] if options.artifact_pvc else None
    serve_ports = [V1ContainerPort(container_port=HTTP_PORT, name="serve"),
                   V1ContainerPort(container_port=GRPC_PORT, name="grpc")]

    def template(container_name: str, ports, requests: dict[str, str], limits: dict[str, str]):
        return V1PodTemplateSpec(spec=V1PodSpec(
            containers=[V1Container(name=container_name, image=options.image, ports=ports, volume_mounts=mounts,
                                    resources=V1ResourceRequirements(requests=requests, limits=limits))],
            volumes=volumes))

    head_resources = {"cpu": kubernetes_quantity(options.head_cpu, "--head-cpu"),
                      "memory": kubernetes_quantity(options.head_memory, "--head-memory")}
    worker_resources = {"cpu": _cpu_quantity(sizing.cpu), "memory": kubernetes_quantity(options.memory, "--memory")}
    worker_limits = {**worker_resources, **({"nvidia.com/gpu": str(sizing.gpu)} if sizing.gpu else {})}
    head = template("ray-head", [V1ContainerPort(container_port=GCS_PORT, name="gcs-server"),
                                 V1ContainerPort(container_port=DASHBOARD_PORT, name="dashboard"), *serve_ports],
                    head_resources, head_resources)
    worker = template("ray-worker", serve_ports, worker_resources, worker_limits)
    to_document = ApiClient().sanitize_for_serialization
    worker_group: dict[str, Any] = {
        "groupName": "replicas",
        "replicas": sizing.min_workers,
        "minReplicas": sizing.min_workers,
        "maxReplicas": sizing.max_workers,
        "rayStartParams": {},
        "template": to_document(worker),
    }
    autoscaling = serve.max_replicas is not None
    cluster: dict[str, Any] = {
        "enableInTreeAutoscaling": autoscaling,
        "headGroupSpec": {
            # The head runs the controller and proxies, no replicas: its CPUs are not offered to Serve.
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": to_document(head),
        },
        "workerGroupSpecs": [worker_group],
    }
    ray_version = options.ray_version or ray_installed_version()
    if ray_version:
        cluster = {"rayVersion": ray_version, **cluster}
    metadata = to_document(V1ObjectMeta(name=name, namespace=options.namespace, annotations={
        "perceiver-export/version": __version__,
        "perceiver-export/artifact": app_name,
        "perceiver-export/replicas-per-worker": str(sizing.replicas_per_worker),
    }))
    document = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": metadata,
        "spec": {
            "serviceUnhealthySecondThreshold": SERVICE_UNHEALTHY_S,
            "deploymentUnhealthySecondThreshold": DEPLOYMENT_UNHEALTHY_S,
            "serveConfigV2": yaml.safe_dump(config, sort_keys=False),
            "rayClusterConfig": cluster,
        },
    }
    return document, sizing, validated_with


def ray_service_yaml(document: dict[str, Any], serve: RayServeOptions, options: RayServiceOptions,
                     validated_with: str | None) -> str:
    import yaml

    from .ray_config import NOT_VALIDATED

    checked = f"serveConfigV2 checked with Ray {validated_with}'s ServeDeploySchema" if validated_with else f"serveConfigV2 {NOT_VALIDATED}"
    where = (f"PersistentVolumeClaim {options.artifact_pvc} mounted read-only at {serve.artifact}" if options.artifact_pvc
             else f"{serve.artifact} in the image")
    header = (f"# KubeRay RayService for {document['metadata']['name']}, written by perceiver-export {__version__}; "
              f"{checked}.\n"
              f"# The image must have perceiver-export[serve] and ray[serve] installed; the artifact: {where}.\n")
    return header + yaml.dump(document, Dumper=_block_strings(), sort_keys=False)


def _block_strings():
    import yaml

    class BlockStrings(yaml.SafeDumper):
        """Multi-line strings (serveConfigV2) as YAML block literals, readable as the config they hold."""

    def string(dumper, text):
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)

    BlockStrings.add_representer(str, string)
    return BlockStrings


@dataclass(frozen=True)
class WrittenRayService:
    path: Path
    name: str
    sizing: WorkerSizing
    validated_with: str | None


def write_ray_service(directory: str | Path, serve: RayServeOptions, options: RayServiceOptions,
                      out: str | Path) -> WrittenRayService:
    document, sizing, validated_with = _built(directory, serve, options)
    out = Path(out)
    atomic_write_text(out, ray_service_yaml(document, serve, options, validated_with))
    return WrittenRayService(out, document["metadata"]["name"], sizing, validated_with)


__all__ = ["RayServiceOptions", "WorkerSizing", "WrittenRayService", "build_ray_service", "worker_sizing",
           "write_ray_service"]
