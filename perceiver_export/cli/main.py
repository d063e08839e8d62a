"""`python -m perceiver_export ...`: the command line. Exit codes: 0 ok, 1 parity failed, 2 usage, 3 other errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

# Only what the parser needs is imported here: --help, --version and usage errors answer without rich, torch or ONNX
# (tests/test_cli_startup.py); each command imports what it uses.
from .. import __version__
from ..contract import AXES, AxisRange
from ..errors import ConfigError, ParityError, PerceiverExportError
from .ray_commands import add_ray_parsers, cmd_rayserve, cmd_rayservice

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_PARITY, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
ARTIFACTS = Path("artifacts")
ARTIFACT_DIR_HELP = "artifact directory (a file inside one, e.g. DIR/model.onnx, names its artifact)"
JSON_HELP = "print one JSON document on stdout (progress and notes go to stderr); schema: `python -m perceiver_export docs cli`"
WIDE_COLUMNS = 1000  # --wide: no table is narrowed to the terminal
SERVE_BACKENDS = ["onnxruntime", "torch", "tensorrt", "openvino", "openvino-bf16"]  # runners serve, loadtest and kserve take


def _axis_option(axis: str) -> str:
    return "--" + axis.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m perceiver_export",
        description="Export a PerceiverLayer to ONNX with dynamic axes and prove every backend matches eager PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"perceiver-export {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    onnx = sub.add_parser("onnx", help="export a model to ONNX with dynamic axes, then verify it against eager PyTorch")
    onnx.add_argument("--config", default="perceiver-base", help="model spec: a .toml path or a name under models/ (default: perceiver-base)")
    onnx.add_argument("--model", metavar="PACKAGE.MODULE:CLASS",
                      help="export your own nn.Module with forward(q, k, v, mask=None) instead (axis ranges still from --config)")
    onnx.add_argument("--model-args", metavar="JSON", help="--model's constructor keyword arguments, a JSON object (default {})")
    onnx.add_argument("--dim", type=int, help="feature size of q (default: the constructor's dim or query_dim)")
    onnx.add_argument("--context-dim", type=int, help="feature size of k and v (default: the constructor's context_dim, else --dim)")
    onnx.add_argument("--name", help="artifact name (default: the spec's name, or --model's class in kebab-case)")
    onnx.add_argument("--checkpoint", help="weights: .safetensors, or a torch checkpoint (loaded with weights_only=True); default: seeded random")
    onnx.add_argument("--out", type=Path, help="output directory (default: artifacts/<model name>)")
    onnx.add_argument("--opset", type=int, default=None, help="ONNX opset, 17..23 (default: 18)")
    onnx.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="precision of the exported graph (default: fp32)")
    onnx.add_argument("--seed", type=int, default=0, help="seed for random weights and the parity inputs (default: 0)")
    for axis in AXES:
        onnx.add_argument(_axis_option(axis), metavar="MIN:OPT:MAX", help=f"range of {axis} (default: from the config)")
    onnx.add_argument("--external-data", choices=["auto", "always", "never"], default="auto",
                      help="keep weights in model.onnx.data: auto = only when over protobuf's 2 GB (default)")
    onnx.add_argument("--no-optimize", action="store_true", help="do not write model.ort.onnx (ONNX Runtime fusions)")
    onnx.add_argument("--int8", action="store_true", help="also write model.int8.onnx (int8 weights; fp32 exports; own tolerance): "
                      "every int8 route is verified and the fastest that passes is kept")
    onnx.add_argument("--int8-routes", metavar="ROUTE,...", type=lambda s: [r.strip() for r in s.split(",") if r.strip()],
                      help="int8 routes to try (default: every one that applies): dynamic, dynamic-fused, matmulnbits8, static-qdq")
    onnx.add_argument("--calibration", metavar="FILE.npz", nargs="+",
                      help="real inputs (arrays named as the contract's inputs, batch first) for the static-qdq int8 route")
    onnx.add_argument("--no-verify", action="store_true", help="skip the parity check (the manifest then records parity: null)")
    onnx.add_argument("--no-time-graphs", action="store_true",
                      help="do not time the verified ONNX Runtime graphs at the opt shape: the default graph is then plain")
    _tolerance_options(onnx)
    _wide_option(onnx, "the parity table")

    verify = sub.add_parser("verify", help="check an artifact's files and its parity with eager PyTorch; exit 1 when a file's "
                                           "sha256 or a parity case does not match")
    verify.add_argument("dir", type=Path, help=ARTIFACT_DIR_HELP)
    verify.add_argument("--json", action="store_true", help=JSON_HELP)
    verify.add_argument("--backends", help="comma-separated: onnxruntime (every ONNX Runtime graph the artifact lists), "
                        "onnxruntime-optimized, onnxruntime-int8 (one of them), onnx-reference, torch (the artifact dtype "
                        "in eager), openvino, openvino-bf16, tensorrt (default: every exported-graph backend that runs here)")
    verify.add_argument("--seed", type=int, default=0, help="seed of the parity inputs (default: 0)")
    verify.add_argument("--no-write", action="store_true", help="do not store the report in the manifest")
    verify.add_argument("--save-inputs", type=Path, metavar="DIR",
                        help="write every case's inputs and eager outputs in Polygraphy's JSON formats to DIR and print "
                             "the Polygraphy commands that re-check them (failing cases are written to DIR.polygraphy/ anyway)")
    _tolerance_options(verify)
    _wide_option(verify, "the parity table")

    trt = sub.add_parser("trt", help="build a TensorRT engine from DIR/model.onnx with profiles from the manifest")
    trt.add_argument("dir", type=Path, help=ARTIFACT_DIR_HELP)
    trt.add_argument("--json", action="store_true", help=JSON_HELP)
    trt.add_argument("--flavor", default="auto", choices=["auto", "tensorrt", "tensorrt_rtx"],
                     help="auto = datacenter TensorRT where installed, else TensorRT-RTX")
    trt.add_argument("--compute-capability", action="append", default=[], metavar="SM",
                     help="TensorRT-RTX target GPU, repeatable: sm75 sm80 sm86 sm89 sm120 sm121 (default: this "
                          "machine's GPU where TensorRT-RTX supports it, else sm89)")
    trt.add_argument("--profile", action="append", default=[], metavar="[NAME:]AXIS=MIN:OPT:MAX,...",
                     help="an extra optimization profile; axes left out keep the artifact's range (repeatable)")
    trt.add_argument("--workspace", type=int, metavar="MIB", help="workspace memory limit in MiB")
    trt.add_argument("--opt-level", type=int, metavar="0-5", help="builder optimization level (TensorRT default 3)")
    trt.add_argument("--cache", type=Path, help="timing cache (TensorRT) loaded and saved back; runtime cache for TensorRT-RTX")
    trt.add_argument("--tf32", action="store_true", help="allow TF32 matmuls in a float32 engine (verified at fp16's tolerance)")
    trt.add_argument("--out", help="engine file name inside DIR (default model.<flavor>.engine)")

    bench = sub.add_parser("bench", help="latency, throughput, memory and FLOP/s of every backend over a grid of shapes")
    bench.add_argument("dir", type=Path, help=ARTIFACT_DIR_HELP)
    bench.add_argument("--json", action="store_true", help=JSON_HELP)
    bench.add_argument("--backends", help="comma-separated, from: torch, torch-compile, torch-bf16, onnxruntime, "
                       "onnxruntime-optimized, onnxruntime-int8, openvino, openvino-bf16, tensorrt (default: all but torch-compile)")
    bench.add_argument("--grid", metavar="B:Q:K:V,...", help="points (default: opt, middle and max lengths at the opt batch, then all at max)")
    bench.add_argument("--iterations", type=int, default=3, help="minimum timed runs per point (default 3)")
    bench.add_argument("--seconds", type=float, default=0.5, help="time budget per backend and point after warm-up (default 0.5)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed runs per point (default 1)")
    bench.add_argument("--threads", type=int, help="threads for torch, onnxruntime and openvino (default: all cores)")
    bench.add_argument("--out", type=Path, help="folder for bench.json and bench.png (default: DIR/bench)")
    bench.add_argument("--choose-default", action="store_true",
                       help="only re-time the verified ONNX Runtime graphs at the opt shape on this machine and record the "
                            "fastest as the manifest's default graph (the one runners start from)")
    _wide_option(bench, "the tables")

    inspect = sub.add_parser("inspect", help="print an artifact's I/O contract, ONNX ops and engines")
    inspect.add_argument("dir", type=Path, help=ARTIFACT_DIR_HELP)
    inspect.add_argument("--json", action="store_true", help=JSON_HELP)

    triton = sub.add_parser("triton", help="write a Triton Inference Server model repository for an artifact (configs from its I/O contract)")
    triton.add_argument("dir", type=Path, help=ARTIFACT_DIR_HELP)
    triton.add_argument("--repo", type=Path, default=Path("triton"), metavar="PATH", help="model repository; other models in it are left alone (default: ./triton)")
    triton.add_argument("--name", help="model name (default: the artifact's name)")
    triton.add_argument("--version", type=int, default=1, metavar="N", help="model version directory (default 1)")
    triton.add_argument("--graph", choices=["plain", "optimized", "int8"],
                        help="which of the artifact's ONNX graphs to serve, written as model.onnx (default: the "
                             "manifest's default graph with --kind cpu, else plain)")
    triton.add_argument("--max-queue-delay-us", type=int, default=100, metavar="N", help="dynamic batching's queue delay in µs (default 100)")
    triton.add_argument("--no-dynamic-batching", action="store_true", help="leave dynamic batching out of the config")
    triton.add_argument("--instances", type=int, default=1, metavar="N", help="model instances (default 1)")
    triton.add_argument("--kind", default="auto", choices=["auto", "gpu", "cpu"],
                        help="instance kind of the ONNX model: auto = Triton picks the GPU when there is one (default)")
    triton.add_argument("--trt-name", metavar="NAME", help="name of the TensorRT model (default: <name>-tensorrt)")
    engines = triton.add_mutually_exclusive_group()
    engines.add_argument("--engine", action="append", default=[], metavar="FILE",
                         help="engine of the manifest to serve (repeatable; default: every datacenter TensorRT engine)")
    engines.add_argument("--no-engines", action="store_true", help="write no TensorRT model")
    triton.add_argument("--preferred-batch-size", type=int, action="append", default=[], metavar="N",
                        help="dynamic batching's preferred batch size (repeatable)")
    triton.add_argument("--max-queue-size", type=int, metavar="N",
                        help="dynamic batching's queue limit; past it a request is rejected (0: no limit; default: none)")
    triton.add_argument("--queue-timeout-us", type=int, metavar="N",
                        help="a request queued longer than this is rejected (default_queue_policy, timeout_action REJECT)")
    triton.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "python"],
                        help="onnxruntime: the ONNX graph (platform onnxruntime_onnx) and TensorRT plans (default); "
                             "python: Triton's Python backend running this package's runner, padding k/v like serve")
    triton.add_argument("--runner", default="onnxruntime", choices=SERVE_BACKENDS,
                        help="--backend python: the runner model.py runs (default onnxruntime)")
    triton.add_argument("--threads", type=int, metavar="N", help="--backend python: the runner's threads (default: all cores)")
    triton.add_argument("--device", help="--backend python: torch: cpu, cuda, cuda:N; tensorrt: GPU index")
    triton.add_argument("--site-packages", action="append", metavar="PATH",
                        help="--backend python: a path model.py adds to sys.path where Triton runs it (repeatable; "
                             "default: this interpreter's site-packages and this package's location)")
    triton.add_argument("--artifact-path", metavar="PATH",
                        help="--backend python: the artifact directory as Triton sees it (a container's mount; "
                             "default: its absolute path here)")
    serve = sub.add_parser("serve", help="serve an artifact over the Open Inference Protocol (KServe v2: HTTP/REST and gRPC) with dynamic batching")
    serve.add_argument("dir", type=Path, help=ARTIFACT_DIR_HELP)
    serve.add_argument("--backend", default="onnxruntime", choices=SERVE_BACKENDS, help="runner (default onnxruntime)")
    serve.add_argument("--graph", choices=["plain", "optimized", "int8"], help="onnxruntime: which ONNX graph (default: the runner's)")
    serve.add_argument("--device", help="torch: cpu, cuda, cuda:N; tensorrt: GPU index")
    serve.add_argument("--engine", help="tensorrt: engine file in DIR (default: the one that runs here)")
    serve.add_argument("--threads", type=int, help="backend threads (onnxruntime intra-op, torch, openvino; default: all cores)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 in a container)")
    serve.add_argument("--http-port", type=int, default=8080, help="HTTP/REST port, 0 = any free port (default 8080)")
    serve.add_argument("--grpc-port", type=int, default=8081, help="gRPC port, 0 = any free port (default 8081)")
    serve.add_argument("--name", help="model name (default: the artifact's name)")
    serve.add_argument("--max-batch-size", type=int, help="rows per backend call; 1 turns batching off (default: the batch axis max)")
    serve.add_argument("--max-queue-delay-ms", type=float, default=0.0,
                       help="how long a batch's first request waits for others (default 0: batches form while the backend is busy, as Triton's default)")
    serve.add_argument("--max-queue", type=int, default=256, help="queued requests; past it: 503 / UNAVAILABLE at once (default 256)")
    serve.add_argument("--timeout-ms", type=float, help="per-request timeout; past it: 504 / DEADLINE_EXCEEDED (default none)")
    serve.add_argument("--grace-s", type=float, default=30.0, help="on SIGTERM, at most this long to answer queued and in-flight requests (default 30)")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"], help="server log level (default warning)")
    serve.add_argument("--model-control-mode", default="none", choices=["none", "explicit"],
                       help="as Triton's: none refuses load/unload requests; explicit allows them (default none)")
    serve.add_argument("--max-request-bytes", type=int,
                       help="largest request body (HTTP) or message (gRPC); past it: 413 / RESOURCE_EXHAUSTED "
                            "(default: the largest valid request in JSON, from the contract's max shapes)")
    serve.add_argument("--request-timeout-s", type=float, default=30.0,
                       help="a request's headers and body must arrive within this; past it: 408, connection closed (default 30)")
    serve.add_argument("--keep-alive-s", type=float, default=5.0, help="idle connections are closed after this (default 5)")
    serve.add_argument("--allow-non-finite", action="store_true",
                       help="accept NaN and Inf in floating-point inputs (default: 400 naming the first one)")
    load = sub.add_parser("loadtest", help="closed-loop clients (tritonclient or perf_analyzer) against a real `serve` process: latency, req/s, batching on vs off")
    load.add_argument("dir", type=Path, help=ARTIFACT_DIR_HELP)
    load.add_argument("--client", default="tritonclient", choices=["tritonclient", "perf_analyzer", "both"],
                      help="the load generator: tritonclient (default), Triton's perf_analyzer "
                           "(scripts/install_perf_analyzer.sh; every request at the contract's opt sizes), or both in "
                           "one run on the same servers and opt-size requests")
    load.add_argument("--requests", type=int, default=200, help="requests per protocol, concurrency and mode (default 200)")
    load.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client counts (default 1,4,16,64)")
    load.add_argument("--protocols", default="grpc,http", help="grpc, http or both (default grpc,http)")
    load.add_argument("--q-len", type=int, help="q_len of every request (default: the artifact's opt)")
    load.add_argument("--k-len", metavar="MIN:MAX", help="k lengths, drawn uniformly (default 1:2*opt)")
    load.add_argument("--v-len", metavar="MIN:MAX", help="v lengths, drawn uniformly (default 1:2*opt)")
    load.add_argument("--max-batch-size", type=int, help="the server's max batch size with batching on (default: the batch axis max)")
    load.add_argument("--max-queue-delay-ms", type=float, default=0.0, help="the server's queue delay with batching on (default 0)")
    load.add_argument("--backend", default="onnxruntime", choices=SERVE_BACKENDS, help="runner (default onnxruntime)")
    load.add_argument("--graph", choices=["plain", "optimized", "int8"], help="onnxruntime graph (default: the runner's)")
    load.add_argument("--threads", type=int, help="backend threads, for the server and the direct baseline")
    load.add_argument("--timeout-s", type=float, default=600.0, help="the whole run stops after this long (default 600)")
    load.add_argument("--perf-stability", type=int, default=50,
                      help="perf_analyzer: three count windows within this %% settle a level (-s; default 50)")
    load.add_argument("--out", type=Path, help="folder for loadtest.json and loadtest.png (default DIR/loadtest)")
    ks = sub.add_parser("kserve", help="write a KServe InferenceService manifest whose predictor runs `serve` on the artifact")
    ks.add_argument("dir", type=Path, help=ARTIFACT_DIR_HELP)
    ks.add_argument("--image", required=True, help="container image with perceiver-export[serve] installed")
    ks.add_argument("--name", help="InferenceService and model name (default: the artifact's name)")
    ks.add_argument("--namespace", help="Kubernetes namespace (default: kubectl's)")
    ks.add_argument("--model-dir", default="/mnt/models", help="the artifact's path in the container (default /mnt/models)")
    ks.add_argument("--storage-uri", help="where KServe's storage initializer copies the artifact from (s3://, gs://, pvc://...)")
    ks.add_argument("--protocol", default="http", choices=["http", "grpc"], help="the port KServe exposes (default http)")
    ks.add_argument("--min-replicas", type=int, default=1, help="default 1 (0 scales to zero)")
    ks.add_argument("--max-replicas", type=int, default=1, help="default 1")
    ks.add_argument("--cpu", default="2", help="CPU request and limit (default 2)")
    ks.add_argument("--memory", default="4Gi", help="memory request and limit (default 4Gi)")
    ks.add_argument("--gpu", type=int, default=0, help="NVIDIA GPUs (nvidia.com/gpu limit; default 0)")
    ks.add_argument("--backend", default="onnxruntime", choices=SERVE_BACKENDS, help="serve's runner (default onnxruntime)")
    ks.add_argument("--serve-args", default="", help="further serve options, e.g. '--max-batch-size 8 --timeout-ms 500'")
    ks.add_argument("--grace-s", type=float, default=30.0, help="serve's drain time on SIGTERM; the pod gets 10 s more (default 30)")
    ks.add_argument("--out", type=Path, help="output file (default DIR/inferenceservice.yaml)")
    add_ray_parsers(sub, SERVE_BACKENDS)
    _doctor_parser(sub)
    docs = sub.add_parser("docs", help="print a page of the guide (they ship with the package): "
                                       "`docs` lists the topics, `docs parity` prints one")
    docs.add_argument("topic", nargs="?", help="a page's topic, e.g. parity, tensorrt, serving (default: list them)")
    return parser


def _doctor_parser(sub) -> None:
    doctor = sub.add_parser("doctor", help="check this machine: versions, GPU, backends, then export, verify, build an engine "
                                           "for this GPU, run it and compare with eager PyTorch on a tiny model")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON (schema perceiver-export/doctor)")
    doctor.add_argument("--keep", type=Path, metavar="DIR", help="keep the tiny artifact and Polygraphy's files in DIR (default: a temporary folder)")


def _wide_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--wide", action="store_true",
                   help=f"print {what} with every column whatever the terminal's width (narrower than that: a compact layout)")


def _tolerance_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--atol", type=float, help="absolute tolerance (default: by dtype and backend: "
                   "`python -m perceiver_export docs parity`)")
    p.add_argument("--rtol", type=float, help="relative tolerance (default: by dtype and backend: "
                   "`python -m perceiver_export docs parity`)")


class _CaseProgress:
    """A transient progress bar over parity cases; failures are printed as they happen."""

    def __init__(self, console: Console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.console = console
        self.bar = Progress(TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                            console=console, transient=True)
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def __call__(self, result, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task("", total=total)
        self.bar.update(self.task, completed=done, description=f"{result.backend}: {result.case.name}")
        if not result.comparison.passed:
            self.console.print(f"  [bold red]✗[/] {result.backend} '{result.case.name}' max abs {result.comparison.max_abs:.2e}")


def cmd_onnx(args, console: Console) -> int:
    from ..config import load_spec
    from ..export.artifact_builder import export_artifact
    from ..export.onnx_graph import DEFAULT_OPSET
    from .report_table import print_parity

    spec = load_spec(args.config)
    io = {k: v for k, v in (("dim", args.dim), ("context_dim", args.context_dim)) if v is not None}
    if args.model:
        spec = spec.with_module(args.model, _json_object(args.model_args, "--model-args"), name=args.name, io=io)
    elif args.model_args is not None:
        raise ConfigError("--model-args goes with --model")
    elif io and spec.is_ours:
        raise ConfigError("--dim and --context-dim are for your own module (--model); PerceiverLayer's dim is in its spec")
    else:
        spec = replace(spec, name=args.name or spec.name, io={**spec.io, **io})
    overrides = {a: AxisRange.parse(getattr(args, a), _axis_option(a)) for a in AXES if getattr(args, a) is not None}
    spec = spec.with_axes(overrides)
    out = args.out or ARTIFACTS / spec.name
    try:
        with _CaseProgress(console) as progress:
            result = export_artifact(
                spec, out, dtype=args.dtype, opset=args.opset or DEFAULT_OPSET, seed=args.seed, checkpoint=args.checkpoint,
                external_data=args.external_data, optimize=not args.no_optimize, int8=args.int8,
                int8_routes=args.int8_routes, calibration=args.calibration,
                verify=not args.no_verify, time_graphs=not args.no_time_graphs, atol=args.atol, rtol=args.rtol,
                log=console.print, progress=progress,
            )
    except ParityError as e:
        if e.report is not None:
            print_parity(e.report, console)
        raise
    if result.report is not None:
        print_parity(result.report, console)
    files = ", ".join(result.manifest.data["files"])
    console.print(f"wrote {result.directory}/ ({files}, manifest.json) in {result.seconds:.1f} s", highlight=False)
    for line in result.carryover_lines():  # what the directory held before: kept, or moved to DIR.previous/
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    return EXIT_OK


def _json_object(text: str | None, option: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{option}: not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option}: expected a JSON object of keyword arguments, got {type(value).__name__}")
    return value


def cmd_verify(args, console: Console) -> int:
    from ..artifact.manifest import read_manifest
    from ..errors import ArtifactDamagedError
    from ..verify.parity import verify_artifact
    from ..verify.polygraphy import CaseRecorder, polygraphy_available
    from .json_output import print_document
    from .polygraphy_view import default_failure_dir, save_and_print
    from .report_table import print_parity

    out = _stderr_console() if args.json else console  # --json: stdout holds the document only
    backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
    manifest = read_manifest(args.dir)
    if args.save_inputs:
        polygraphy_available(manifest)  # refuse before the grid runs, not after
    recorder = CaseRecorder(failed_only=not args.save_inputs)
    try:
        with _CaseProgress(out) as progress:
            report = verify_artifact(manifest, backends=backends, atol=args.atol, rtol=args.rtol, seed=args.seed,
                                     write=not args.no_write, progress=progress, on_case=recorder)
    except ArtifactDamagedError as e:  # a file that is not what was verified fails verification, as parity does
        if args.json:
            print_document({"schema": "perceiver-export/verify", "directory": str(manifest.directory), "passed": False,
                            "files": {"intact": False, "error": str(e)}, "parity": None, "exit_code": EXIT_PARITY})
        _stderr_console().print(f"[bold red]verification failed:[/] {e}")
        return EXIT_PARITY
    if not args.json:
        print_parity(report, console)
    if recorder.cases:
        try:
            save_and_print(manifest, recorder, args.save_inputs or default_failure_dir(args.dir), report, out)
        except PerceiverExportError as e:
            if args.save_inputs:
                raise
            out.print(f"note: the failing cases were not saved for Polygraphy: {e}")
    code = EXIT_OK if report.passed else EXIT_PARITY
    if args.json:
        print_document({"schema": "perceiver-export/verify", "directory": str(manifest.directory), "passed": report.passed,
                        "files": {"intact": True, "error": None}, "parity": report.as_dict(), "exit_code": code})
    return code


def cmd_trt(args, console: Console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ..artifact.manifest import read_manifest
    from ..engines.build import BuildOptions, build_engine, target_compute_capabilities
    from ..engines.flavor import import_flavor, parse_compute_capability
    from ..engines.profiles import parse_profile
    from .json_output import print_document

    console = _stderr_console() if args.json else console  # --json: stdout holds the document only
    contract = read_manifest(args.dir).contract
    profiles = [parse_profile(text, contract, i + 1) for i, text in enumerate(args.profile)]
    flavor = import_flavor(args.flavor)
    ccs = [parse_compute_capability(c) for c in args.compute_capability]  # empty: build_engine's default, as in Python
    targets, _ = target_compute_capabilities(flavor, ccs)
    options = BuildOptions(flavor=flavor.name, compute_capabilities=ccs, profiles=profiles, workspace_mib=args.workspace,
                           optimization_level=args.opt_level, cache=args.cache, tf32=args.tf32, engine_name=args.out)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console, transient=True)
    tasks: dict[str, int] = {}

    def on_progress(event, phase, parent, n):
        if event == "start":
            tasks[phase] = bar.add_task(("  " if parent else "") + phase, total=max(n, 1))
        elif event == "step" and phase in tasks:
            bar.update(tasks[phase], completed=n + 1)
        elif event == "finish" and phase in tasks:
            bar.remove_task(tasks.pop(phase))

    console.print(f"building with {flavor.name} {flavor.version}" + (f" for {', '.join(targets)}" if targets else ""))
    with bar:
        result = build_engine(args.dir, options, progress=on_progress)
    for note in result.notes:
        console.print(f"note: {note}")
    e = result.entry
    console.print(f"wrote {result.path} ({e['build']['bytes']:,} bytes, {len(e['profiles'])} profile(s), "
                  f"TF32 {'allowed' if e['tf32'] else 'off'}) in {result.seconds:.1f} s")
    if args.json:
        print_document({"schema": "perceiver-export/trt", "directory": str(args.dir), "path": str(result.path),
                        "engine": e, "notes": result.notes, "seconds": round(result.seconds, 3)})
    return EXIT_OK


def cmd_bench(args, console: Console) -> int:
    from ..artifact.manifest import read_manifest
    from ..bench.grid import parse_grid
    from ..bench.report import print_bench, write_json, write_plot
    from ..bench.run import BenchSettings, run_bench
    from .json_output import print_document

    console = _stderr_console() if args.json else console  # --json: stdout holds the document only
    if args.choose_default:
        return _choose_default_graph(args, console)
    settings = BenchSettings()
    if args.backends:
        settings.backends = settings.explicit = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.grid:
        settings.grid = parse_grid(args.grid, read_manifest(args.dir).contract.axes)
    settings.min_iters, settings.seconds, settings.warmup = max(1, args.iterations), args.seconds, max(0, args.warmup)
    settings.max_iters = max(settings.max_iters, settings.min_iters)
    if args.threads:
        settings.threads = args.threads
    with console.status("benchmarking") as status:
        data = run_bench(args.dir, settings, progress=lambda msg: status.update(msg))
    if not args.json:
        print_bench(data, console)
    out = args.out or args.dir / "bench"
    write_json(data, out / "bench.json")
    write_plot(data, out / "bench.png")
    console.print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    if args.json:
        print_document({**data, "files": {"json": str(out / "bench.json"), "png": str(out / "bench.png")}})
    return EXIT_OK


def _choose_default_graph(args, console: Console) -> int:
    from ..artifact.manifest import read_manifest
    from ..export.graph_choice import choose_default_graph, describe

    manifest = read_manifest(args.dir)
    manifest.check_files()
    before = manifest.default_graph
    with console.status("timing the verified ONNX Runtime graphs at the opt shape"):
        manifest.data["default_graph"] = choose_default_graph(manifest, threads=args.threads)
    manifest.write()  # atomically: a runner starting meanwhile reads the old manifest or the new one
    console.print(f"default graph: {describe(manifest.data['default_graph'])}", highlight=False)
    console.print(f"recorded in {manifest.directory / 'manifest.json'} (was {before})", highlight=False)
    if args.json:
        from .json_output import print_document

        print_document({"schema": "perceiver-export/default-graph", "directory": str(manifest.directory),
                        "default_graph": manifest.data["default_graph"], "was": before})
    return EXIT_OK


def cmd_inspect(args, console: Console) -> int:
    from ..artifact.manifest import read_manifest
    from .inspect_view import print_inspect
    from .json_output import inspect_document, print_document

    if args.json:
        print_document(inspect_document(read_manifest(args.dir)))
    else:
        print_inspect(read_manifest(args.dir), console)
    return EXIT_OK


def cmd_triton(args, console: Console) -> int:
    from ..serving.triton_repo import TritonOptions, server_command, write_triton_repo

    options = TritonOptions(name=args.name, version=args.version, graph=args.graph, dynamic_batching=not args.no_dynamic_batching,
                            max_queue_delay_us=args.max_queue_delay_us, instances=args.instances, kind=args.kind,
                            engines=not args.no_engines, engine_files=args.engine, trt_name=args.trt_name,
                            preferred_batch_size=args.preferred_batch_size, max_queue_size=args.max_queue_size,
                            queue_timeout_us=args.queue_timeout_us, backend=args.backend, runner=args.runner,
                            threads=args.threads, device=args.device, site_packages=args.site_packages,
                            artifact_path=args.artifact_path)
    result = write_triton_repo(args.dir, args.repo, options)
    for model in result.models:
        files = ", ".join(["config.pbtxt", *model.files])
        console.print(f"wrote {result.repo / model.name}/ ({model.platform}, max_batch_size {model.max_batch_size}): {files}")
    for note in result.notes:
        console.print(f"note: {note}")
    if result.validated:
        console.print("configs validated with Triton's model_config.proto (tritonclient)")
    console.print(f"start the server:\n  {server_command(result.repo, args.backend)}", soft_wrap=True)
    return EXIT_OK


def cmd_serve(args, console: Console) -> int:
    from ..serving.server import ServeOptions, run

    options = ServeOptions(
        backend=args.backend, graph=args.graph, device=args.device, engine=args.engine, threads=args.threads,
        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, name=args.name,
        max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms, max_queue=args.max_queue,
        timeout_ms=args.timeout_ms, grace_s=args.grace_s, log_level=args.log_level,
        model_control_mode=args.model_control_mode, max_request_bytes=args.max_request_bytes,
        request_timeout_s=args.request_timeout_s, keep_alive_s=args.keep_alive_s, allow_non_finite=args.allow_non_finite,
    )

    def on_listening(info: dict) -> None:
        batching = "off" if info["max_batch_size"] == 1 else f"up to {info['max_batch_size']} rows"
        console.print(f"serving {info['model']} ({info['backend']}, batching {batching}) on "
                      f"http://{info['host']}:{info['http_port']} and grpc {info['host']}:{info['grpc_port']}",
                      soft_wrap=True)  # one line whatever the width: scripts and ServerProcess read it
        console.file.flush()

    code = run(args.dir, options, on_listening)
    console.print("stopped: every accepted request was answered")
    return code


def cmd_loadtest(args, console: Console) -> int:
    from ..serving.loadtest import LoadSettings, print_loadtest, run_loadtest, write_loadtest

    try:
        concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--concurrency: expected comma-separated integers, got {args.concurrency!r}") from None
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if not concurrency or min(concurrency) < 1 or args.requests < 1 or not protocols or set(protocols) - {"grpc", "http"}:
        raise ConfigError("--concurrency and --requests must be positive; --protocols is grpc, http or both")
    settings = LoadSettings(requests=args.requests, concurrency=concurrency, protocols=protocols, q_len=args.q_len,
                            k_len=args.k_len, v_len=args.v_len, max_batch_size=args.max_batch_size,
                            max_queue_delay_ms=args.max_queue_delay_ms, threads=args.threads, backend=args.backend,
                            graph=args.graph, timeout_s=args.timeout_s, client=args.client,
                            perf_stability=args.perf_stability)
    with console.status("load test") as status:
        data = run_loadtest(args.dir, settings, progress=lambda msg: status.update(msg))
    print_loadtest(data, console)
    json_path, png_path = write_loadtest(data, args.out or args.dir / "loadtest")
    console.print(f"wrote {json_path} and {png_path}")
    return EXIT_OK


def cmd_kserve(args, console: Console) -> int:
    import shlex

    from ..serving.kserve_manifest import KServeOptions, write_inference_service

    options = KServeOptions(image=args.image, name=args.name, namespace=args.namespace, model_dir=args.model_dir,
                            storage_uri=args.storage_uri, protocol=args.protocol, min_replicas=args.min_replicas,
                            max_replicas=args.max_replicas, cpu=args.cpu, memory=args.memory, gpu=args.gpu,
                            backend=args.backend, serve_args=tuple(shlex.split(args.serve_args)), grace_s=args.grace_s)
    out = write_inference_service(args.dir, options, args.out or args.dir / "inferenceservice.yaml")
    console.print(f"wrote {out} (validated with KServe's V1beta1InferenceService); deploy it with\n  kubectl apply -f {out}",
                  soft_wrap=True)
    return EXIT_OK
def cmd_docs(args, console: Console) -> int:
    from ..docs_pages import page, topics

    if not args.topic:
        for topic, title in topics().items():
            console.print(f"  {topic:<24}{title}", markup=False, highlight=False)
        return EXIT_OK
    text = page(args.topic)
    if args.topic == "cli":  # the page's generated part, as the docs site renders it
        from .json_output import PLACEHOLDER, schemas_markdown

        text = text.replace(PLACEHOLDER, schemas_markdown())
    if sys.stdout.isatty():
        from rich.markdown import Markdown

        console.print(Markdown(text))
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_doctor(args, console: Console) -> int:
    from ..doctor import run_doctor
    from .doctor_view import print_environment, print_step, print_verdict

    if args.json:
        report = run_doctor(args.keep)
        console.print_json(json.dumps(report.as_dict()))
        return report.exit_code

    def start(report) -> None:
        print_environment(report, console)
        console.print("checks (a tiny PerceiverLayer, exported to a temporary folder)" if not args.keep else f"checks (in {args.keep})")

    report = run_doctor(args.keep, on_start=start, on_step=lambda step: print_step(step, console))
    print_verdict(report, console)
    return report.exit_code


def _stderr_console() -> Console:
    """Where --json sends progress and notes; as wide as main's error console when not a terminal."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def _artifact_dir(path: Path, errors: Console) -> Path:
    """DIR as given, or the artifact a file inside one belongs to (said on stderr, so --json's stdout stays one document)."""
    from ..artifact.locate import artifact_dir_for

    directory, note = artifact_dir_for(path)
    if note:
        errors.print(note, markup=False, highlight=False, soft_wrap=True)
    return directory


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console

    # As `python -m` does: `--model mypackage.layer:Class` and artifacts of it resolve from the current directory.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    # A terminal's width, or COLUMNS; piped to a file or CI log, wide enough for the full tables. --wide: tables at their
    # full width whatever the terminal's (it wraps the lines); narrower, they print a compact layout.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    if getattr(args, "wide", False):
        width = WIDE_COLUMNS
    console = Console(highlight=False, width=width)
    errors = Console(stderr=True, highlight=False, width=width)
    try:
        if isinstance(getattr(args, "dir", None), Path) and not args.dir.exists():
            # Refused before the command imports torch or ONNX (seconds): the same error reading it would give.
            from ..artifact.manifest import read_manifest

            read_manifest(args.dir)
        commands = {"onnx": cmd_onnx, "verify": cmd_verify, "trt": cmd_trt, "bench": cmd_bench, "inspect": cmd_inspect,
                    "triton": cmd_triton, "serve": cmd_serve, "loadtest": cmd_loadtest, "kserve": cmd_kserve,
                    "doctor": cmd_doctor, "docs": cmd_docs, "rayserve": cmd_rayserve, "rayservice": cmd_rayservice}
        if isinstance(getattr(args, "dir", None), Path):  # every command that takes an artifact DIR
            args.dir = _artifact_dir(args.dir, errors)
        return commands[args.command](args, console)
    except ParityError as e:
        errors.print(f"[bold red]parity failed:[/] {e}")
        return EXIT_PARITY
    except PerceiverExportError as e:
        errors.print(f"[bold red]error ({type(e).__name__}):[/] {e}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
