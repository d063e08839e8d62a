"""`rayserve` and `rayservice`: the Ray Serve config file and the KubeRay RayService, their flags mapped one to one
onto RayServeOptions (a flag not given leaves the option's own default, so the two commands, `serve run key=value`
and the builder agree). Imports no Ray, Kubernetes client or YAML until a command runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from ..serving.ray_options import RayServeOptions

# flag → RayServeOptions field, type, help
OPTION_FLAGS = (
    ("--name", "name", str, "the served model's name (default: the artifact's)"),
    ("--backend", "backend", str, "runner in each replica (default onnxruntime)"),
    ("--graph", "graph", str, "onnxruntime: plain, optimized or int8 (default: the runner's)"),
    ("--engine", "engine", str, "tensorrt: engine file in the artifact"),
    ("--device", "device", str, "torch: cpu, cuda, cuda:N; tensorrt: GPU index"),
    ("--threads", "threads", int, "the runner's threads in each replica (default 1)"),
    ("--max-batch-size", "max_batch_size", int, "rows per backend call; 1 turns batching off (default: the batch axis max)"),
    ("--max-queue-delay-ms", "max_queue_delay_ms", float, "how long a batch's first request waits for others (default 0)"),
    ("--max-queue", "max_queue", int, "queued requests per replica; past it 503 / UNAVAILABLE (default 256)"),
    ("--timeout-ms", "timeout_ms", float, "per-request timeout; past it 504 / DEADLINE_EXCEEDED (default none)"),
    ("--replicas", "num_replicas", int, "a fixed number of replicas (default 1; ignored with --max-replicas)"),
    ("--min-replicas", "min_replicas", int, "autoscaling's fewest replicas (needs --max-replicas; default 1)"),
    ("--max-replicas", "max_replicas", int, "turns Ray Serve's autoscaler on, up to this many replicas"),
    ("--target-ongoing-requests", "target_ongoing_requests", float, "autoscaling's target requests per replica (Ray's default 2)"),
    ("--num-cpus", "num_cpus", float, "CPUs Ray reserves per replica (default: --threads)"),
    ("--num-gpus", "num_gpus", float, "GPUs Ray reserves per replica (default 0)"),
    ("--max-ongoing-requests", "max_ongoing_requests", int, "requests a replica takes in at once (default: --max-queue + 256)"),
    ("--ingress-replicas", "ingress_replicas", int, "replicas of the protocol front that decodes, checks and forwards requests (default 1, no CPU reserved)"),
)


def _ray_serve_flags(p: argparse.ArgumentParser, artifact_default: str, backends: list[str]) -> None:
    p.add_argument("dir", type=Path, help="artifact directory (a file inside one, e.g. DIR/model.onnx, names its artifact)")
    p.add_argument("--artifact-path", metavar="PATH", help=f"the artifact directory as the cluster sees it (default: {artifact_default})")
    for flag, field, kind, text in OPTION_FLAGS:
        extra = {"choices": backends} if flag == "--backend" else {}
        p.add_argument(flag, dest=field, type=kind, default=None, help=text, **extra)
    p.add_argument("--allow-non-finite", action="store_true", default=None, help="accept NaN and Inf inputs")


def add_ray_parsers(sub, backends: list[str]) -> None:
    """The two commands' parsers; `backends`: the runners `serve` takes (cli/main.py's list, which --help reads
    without importing serving/)."""
    rs = sub.add_parser("rayserve", help="write a Ray Serve config file (`serve deploy FILE`) running the artifact's "
                                         "Ray Serve application")
    _ray_serve_flags(rs, "DIR's absolute path here", backends)
    rs.add_argument("--app-name", help="the Ray Serve application's name (default: the artifact's)")
    rs.add_argument("--route-prefix", default="/", help="the application's HTTP route prefix (default /)")
    rs.add_argument("--http-host", default="0.0.0.0", help="Serve's HTTP proxies listen here (default 0.0.0.0)")
    rs.add_argument("--http-port", type=int, default=8000, help="Serve's HTTP port (default 8000)")
    rs.add_argument("--grpc-port", type=int, default=9000, help="Serve's gRPC port (default 9000)")
    rs.add_argument("--out", type=Path, help="output file (default DIR/ray-serve.yaml)")

    svc = sub.add_parser("rayservice", help="write a KubeRay RayService manifest whose Ray cluster runs the artifact's "
                                            "Ray Serve application")
    _ray_serve_flags(svc, "/mnt/models", backends)
    svc.add_argument("--image", required=True, help="container image with perceiver-export[serve] and ray[serve] installed")
    svc.add_argument("--service-name", help="the RayService's name (default: the application's)")
    svc.add_argument("--app-name", help="the Ray Serve application's name (default: the artifact's)")
    svc.add_argument("--namespace", help="Kubernetes namespace (default: kubectl's)")
    svc.add_argument("--workers", type=int, default=1, help="worker pods; with --max-replicas the most the autoscaler "
                                                            "starts (default 1)")
    svc.add_argument("--memory", default="4Gi", help="memory request and limit of a worker pod (default 4Gi)")
    svc.add_argument("--head-cpu", default="1", help="CPU request and limit of the head pod (default 1)")
    svc.add_argument("--head-memory", default="2Gi", help="memory request and limit of the head pod (default 2Gi)")
    svc.add_argument("--artifact-pvc", metavar="NAME", help="PersistentVolumeClaim holding the artifact, mounted "
                                                            "read-only at --artifact-path (default: the image has it)")
    svc.add_argument("--ray-version", help="the image's Ray version, KubeRay's rayVersion (default: the Ray installed here)")
    svc.add_argument("--out", type=Path, help="output file (default DIR/rayservice.yaml)")


def ray_serve_options(args, artifact: str) -> RayServeOptions:
    """RayServeOptions from the flags given; those left out keep RayServeOptions' defaults."""
    from ..serving.ray_options import RayServeOptions

    given = {field: getattr(args, field) for _, field, _, _ in OPTION_FLAGS if getattr(args, field) is not None}
    if args.allow_non_finite:
        given["allow_non_finite"] = True
    return RayServeOptions(artifact=args.artifact_path or artifact, **given)


def cmd_rayserve(args, console: Console) -> int:
    from ..serving.ray_config import NOT_VALIDATED, app_name_for, write_serve_config

    options = ray_serve_options(args, str(args.dir.resolve()))
    written = write_serve_config(options, args.out or args.dir / "ray-serve.yaml",
                                 app_name=args.app_name or app_name_for(args.dir), route_prefix=args.route_prefix,
                                 http_host=args.http_host, http_port=args.http_port, grpc_port=args.grpc_port)
    checked = (f"validated with Ray {written.validated_with}'s ServeDeploySchema" if written.validated_with
               else NOT_VALIDATED)
    console.print(f"wrote {written.path} (application {written.app_name}, artifact {options.artifact}; {checked})\n"
                  f"deploy it on a running Ray cluster with\n  serve deploy {written.path}\n"
                  f"or start a local one with\n  serve run {written.path}", soft_wrap=True, markup=False)
    return 0


def cmd_rayservice(args, console: Console) -> int:
    from ..serving.ray_config import NOT_VALIDATED
    from ..serving.rayservice_manifest import RayServiceOptions, write_ray_service

    serve = ray_serve_options(args, "/mnt/models")
    options = RayServiceOptions(image=args.image, name=args.service_name, namespace=args.namespace,
                                workers=args.workers, memory=args.memory, head_cpu=args.head_cpu,
                                head_memory=args.head_memory, artifact_pvc=args.artifact_pvc,
                                ray_version=args.ray_version, app_name=args.app_name)
    written = write_ray_service(args.dir, serve, options, args.out or args.dir / "rayservice.yaml")
    checked = (f"serveConfigV2 validated with Ray {written.validated_with}'s ServeDeploySchema" if written.validated_with
               else f"serveConfigV2 {NOT_VALIDATED}")
    s = written.sizing
    console.print(f"wrote {written.path} (RayService {written.name}: {s.min_workers}..{s.max_workers} worker pods of "
                  f"{s.replicas_per_worker} replica(s); pod templates built with the Kubernetes client's classes; "
                  f"{checked})\ndeploy it with\n  kubectl apply -f {written.path}", soft_wrap=True, markup=False)
    return 0
