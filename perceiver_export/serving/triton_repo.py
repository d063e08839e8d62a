"""Triton Inference Server model repositories for an artifact, every shape and dtype read from its I/O contract.

`write_triton_repo(DIR, REPO)` writes REPO/<name>/ (the ONNX graph, platform onnxruntime_onnx) and, when the
artifact has datacenter TensorRT engines, REPO/<name>-tensorrt/ (platform tensorrt_plan). Each model directory
is assembled beside its destination and swapped in whole; other models in REPO are left alone.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import __version__
from ..artifact.atomic import fsync_dir, publish_dir, remove_stale_staging, staging_dir_for
from ..artifact.graph_io import graph_io_mismatch
from ..artifact.manifest import Manifest, read_manifest
from ..contract import IOContract, TensorSpec, dim_terms
from ..errors import ArtifactError, ConfigError

BATCH = "batch"
GRAPHS = ("plain", "optimized", "int8")
KINDS = {"auto": None, "gpu": "KIND_GPU", "cpu": "KIND_CPU"}  # auto: Triton picks the GPU when there is one
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "bool": "TYPE_BOOL"}
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass
class TritonOptions:
    name: str | None = None  # default: the manifest's name
    version: int = 1
    graph: str | None = None  # plain, optimized or int8; default: see default_graph
    dynamic_batching: bool = True
    max_queue_delay_us: int = 100
    instances: int = 1
    kind: str = "auto"
    engines: bool = True
    engine_files: Sequence[str] = ()  # which engines go into the tensorrt_plan model (default: every usable one)
    trt_name: str | None = None  # default: <name>-tensorrt


@dataclass
class TritonModel:
    name: str
    platform: str
    max_batch_size: int
    config: str
    files: dict[str, Path]  # path inside the model directory -> source file in the artifact


@dataclass
class TritonResult:
    repo: Path
    models: list[TritonModel]
    notes: list[str] = field(default_factory=list)
    validated: bool = False  # parsed with Triton's own model_config.proto


@dataclass(frozen=True)
class Batching:
    max_batch_size: int  # 0: no Triton batching, the batch dim is written explicitly
    reason: str | None = None  # why Triton's batching is not used


# ---- what the config says, from the contract --------------------------------------------------
def batching_for(contract: IOContract) -> Batching:
    """Triton batching when it can honour the batch axis: dim 0 of every tensor, lower bound 1."""
    rng = contract.axes.get(BATCH)
    if rng is None:
        return Batching(0, "the contract has no batch axis: max_batch_size 0, every dim written explicitly")
    without = [t.name for t in contract.inputs + contract.outputs if len(t.dims) < 2 or t.dims[0] != BATCH]
    if without:
        return Batching(0, f"{', '.join(without)} lack batch as dim 0 (of two or more): Triton's batch dim cannot "
                           "describe them, so max_batch_size is 0, the batch dim is written explicitly and dynamic batching is off")
    if rng.min > 1:
        return Batching(0, f"batch min is {rng.min}: Triton's batching accepts any batch from 1 to max_batch_size and "
                           "cannot enforce a lower bound, so max_batch_size is 0, the batch dim is written explicitly "
                           "and dynamic batching is off")
    return Batching(rng.max)


def triton_dims(contract: IOContract, spec: TensorSpec, batched: bool) -> list[int]:
    """A tensor's dims as config.pbtxt writes them: -1 where the size varies, the size where it cannot."""
    dims = []
    for d in spec.dims[1:] if batched else spec.dims:
        fixed = isinstance(d, int) or all(contract.axes[t].min == contract.axes[t].max for t in dim_terms(d))
        dims.append(contract.dim_bound(d, "min") if fixed else -1)
    return dims


def triton_type(spec: TensorSpec) -> str:
    if spec.dtype not in TRITON_TYPES:
        raise ConfigError(f"{spec.name}: dtype {spec.dtype} has no Triton type here ({', '.join(TRITON_TYPES)})")
    return TRITON_TYPES[spec.dtype]


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def io_lines(section: str, specs: Sequence[TensorSpec], contract: IOContract, batching: Batching) -> list[str]:
    lines = [f"{section} ["]
    for i, spec in enumerate(specs):
        lines.append("  {")
        if spec.optional:
            lines.append(f"    # {contract.describe(spec)}: optional in the contract, required by the graph: send all True to attend to everything")
        dims = ", ".join(str(n) for n in triton_dims(contract, spec, batching.max_batch_size > 0))
        lines += [f"    name: {quoted(spec.name)}", f"    data_type: {triton_type(spec)}", f"    dims: [ {dims} ]"]
        lines.append("  }," if i < len(specs) - 1 else "  }")
    return lines + ["]"]


def instance_group_lines(count: int, kind: str | None, profiles: Sequence[int] = ()) -> list[str]:
    lines = ["instance_group [", "  {", f"    count: {count}"]
    if kind:
        lines.append(f"    kind: {kind}")
    if profiles:
        lines.append("    profile: [ " + ", ".join(f'"{i}"' for i in profiles) + " ]")
    return lines + ["  }", "]"]


def header_lines(manifest: Manifest, sources: Sequence[str]) -> list[str]:
    """`#` lines: where the model came from and the ranges Triton will not enforce."""
    contract = manifest.contract
    parity = manifest.data.get("parity")
    proven = ("parity with eager PyTorch was proven only inside them" if parity and parity.get("passed")
              else "parity with eager PyTorch was not verified for this artifact")
    lines = [
        (f"Generated by perceiver-export {__version__} from artifact {quoted(manifest.data['name'])} "
         f"({manifest.dtype}, opset {manifest.data['opset']})."),
        "Re-run `python -m perceiver_export triton` rather than editing: the artifact's manifest is the source.",
        *sources,
        "I/O contract ranges (min / opt / max):",
        *(f"  {axis}: {r.min} / {r.opt} / {r.max}" for axis, r in contract.axes.items()),
        f"Triton does not enforce these ranges: keep requests inside them ({proven}).",
    ]
    return ["# " + line.replace("\n", " ") for line in lines]


def config_text(header: list[str], name: str, platform: str, contract: IOContract, batching: Batching,
                options: TritonOptions, instance_group: list[str], extra: Sequence[str] = ()) -> str:
    lines = [*header, "", f"name: {quoted(name)}", f"platform: {quoted(platform)}", f"max_batch_size: {batching.max_batch_size}",
             *io_lines("input", contract.inputs, contract, batching), *io_lines("output", contract.outputs, contract, batching),
             *instance_group, *extra]
    if batching.max_batch_size > 0 and options.dynamic_batching:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {options.max_queue_delay_us}", "}"]
    return "\n".join(lines) + "\n"


# ---- the ONNX model ---------------------------------------------------------------------------
def graph_files(manifest: Manifest, graph: str) -> list[str]:
    """The chosen graph's files in the artifact, the graph first (then its external data, which keeps its name)."""
    if graph == "plain":
        return manifest.onnx_files
    if graph not in manifest.graphs:
        have = ", ".join(["plain", *manifest.graphs])
        raise ConfigError(f"--graph {graph}: {manifest.directory} has no {graph!r} graph (it has: {have})"
                          + ("; export with --int8 to get one" if graph == "int8" else ""))
    entry = manifest.graphs[graph]
    return list(entry.get("files") or [entry["file"]])


def check_graph_matches_contract(path: Path, contract: IOContract) -> None:
    """Triton would otherwise refuse the model at load time, or a client would (artifact/graph_io.py)."""
    import onnx

    problem = graph_io_mismatch(onnx.load(str(path), load_external_data=False), contract)
    if problem:
        raise ArtifactError(f"{path}: {problem}")


def onnx_model(manifest: Manifest, name: str, options: TritonOptions, batching: Batching) -> TritonModel:
    files = graph_files(manifest, options.graph)
    check_graph_matches_contract(manifest.directory / files[0], manifest.contract)
    sha = manifest.data["files"][files[0]]["sha256"]
    header = header_lines(manifest, [f"Graph: {files[0]} ({options.graph}), sha256 {sha}"])
    text = config_text(header, name, "onnxruntime_onnx", manifest.contract, batching, options,
                       instance_group_lines(options.instances, KINDS[options.kind]))
    copies = {f"{options.version}/model.onnx": manifest.directory / files[0]}
    copies.update({f"{options.version}/{f}": manifest.directory / f for f in files[1:]})
    return TritonModel(name, "onnxruntime_onnx", batching.max_batch_size, text, copies)


# ---- the TensorRT model -----------------------------------------------------------------------
def cc_key(cc: str) -> str:
    """"sm89" -> "8.9", "sm120" -> "12.0": how Triton's cc_model_filenames names a GPU."""
    m = re.fullmatch(r"sm(\d+)(\d)", cc)
    if m is None:
        raise ArtifactError(f"engine compute capability {cc!r} is not of the form sm<major><minor>")
    return f"{m[1]}.{m[2]}"


def servable_engines(manifest: Manifest, selected: Sequence[str]) -> tuple[dict[str, dict], list[str]]:
    """The engines Triton's tensorrt backend can load (datacenter flavor, no plugins), and notes on the rest."""
    unknown = [f for f in selected if f not in manifest.engines]
    if unknown:
        raise ConfigError(f"--engine {unknown[0]}: not an engine of {manifest.directory} "
                          f"(it has: {', '.join(manifest.engines) or 'none'})")
    onnx_sha = {n: manifest.data["files"][n]["sha256"] for n in manifest.onnx_files}
    chosen, notes = {}, []
    for file, entry in manifest.engines.items():
        if selected and file not in selected:
            continue
        if entry["flavor"] != "tensorrt":
            notes.append(f"{file} skipped: it was built with {entry['flavor']} (TensorRT for RTX), which Triton's tensorrt "
                         "backend cannot load (it links datacenter TensorRT); serve the ONNX model, or build an engine "
                         "with `trt --flavor tensorrt` on the serving GPU")
            continue
        if entry.get("plugins") != []:
            notes.append(f"{file} skipped: the manifest records plugin layers (native code) or does not say; "
                         "Triton would need their library loaded")
            continue
        if entry.get("onnx_sha256") != onnx_sha:
            raise ArtifactError(f"{manifest.directory / file}: built from another {manifest.onnx_path.name} than this "
                                "artifact's: rebuild it with `python -m perceiver_export trt`")
        chosen[file] = entry
    return chosen, notes


def plan_files(engines: dict[str, dict]) -> dict[str, tuple[str, str | None]]:
    """Plan file name in the version directory -> (engine file, compute capability): one plan per compute capability;
    model.plan for an engine whose entry records none (datacenter TensorRT builds for the GPU it runs on)."""
    plans: dict[str, tuple[str, str | None]] = {}
    for file, entry in engines.items():
        for cc in entry.get("compute_capabilities") or [None]:
            plan = f"model.{cc}.plan" if cc else "model.plan"
            if plan in plans:
                target = f"compute capability {cc_key(cc)}" if cc else "an unrecorded GPU (the one that built it)"
                raise ConfigError(f"engines {plans[plan][0]} and {file} both target {target}; one Triton model holds one "
                                  "plan per compute capability: pick one with --engine")
            plans[plan] = (file, cc)
    return plans


def profile_indices(engines: dict[str, dict]) -> list[int]:
    """The optimization profiles every engine has in common: Triton names them by index, per model."""
    (first, entry), *rest = engines.items()
    axes = [p["axes"] for p in entry["profiles"]]
    for file, other in rest:
        if [p["axes"] for p in other["profiles"]] != axes:
            raise ConfigError(f"engines {first} and {file} have different optimization profiles; Triton's instance group "
                              "names profiles by index, so they cannot share one model: pick engines with --engine")
    return list(range(len(axes)))


def tensorrt_model(manifest: Manifest, name: str, engines: dict[str, dict], options: TritonOptions,
                   batching: Batching) -> tuple[TritonModel, list[str]]:
    plans = plan_files(engines)
    files = manifest.data["files"]
    sources = [(f"Engine: {file} ({e['flavor']} {e['version']}, sha256 {files[file]['sha256']}) -> "
                f"{', '.join(p for p, (f, _) in plans.items() if f == file)}") for file, e in engines.items()]
    sources.append(f"Built from {manifest.onnx_path.name}, sha256 {files[manifest.onnx_path.name]['sha256']}")
    sources += [f"Profile {i} ({p['name']}): " + ", ".join(f"{a} {r['min']}..{r['max']}" for a, r in p["axes"].items())
                for i, p in enumerate(next(iter(engines.values()))["profiles"])]
    versions = sorted({e["version"] for e in engines.values()})
    notes = [(f"{name}: Triton's tensorrt backend loads a plan only with the TensorRT version that built it "
              f"({', '.join(versions)}): use the tritonserver release that ships it")]
    if "model.plan" in plans:
        notes.append(f"{plans['model.plan'][0]}: the manifest does not record the GPU it was built on, so it is written as "
                     "model.plan for every GPU; TensorRT refuses it on another architecture")
    extra = [f"cc_model_filenames {{ key: {quoted(cc_key(cc))} value: {quoted(p)} }}" for p, (_, cc) in plans.items() if cc]
    text = config_text(header_lines(manifest, sources), name, "tensorrt_plan", manifest.contract, batching, options,
                       instance_group_lines(options.instances, "KIND_GPU", profile_indices(engines)), extra)
    copies = {f"{options.version}/{p}": manifest.directory / f for p, (f, _) in plans.items()}
    return TritonModel(name, "tensorrt_plan", batching.max_batch_size, text, copies), notes


# ---- validation and writing -------------------------------------------------------------------
def validated_with_triton_schema(model: TritonModel) -> bool:
    """Parse the config with Triton's model_config.proto (from tritonclient); False when it is not installed."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return False
    try:
        text_format.Parse(model.config, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ConfigError(f"the config.pbtxt generated for {model.name!r} does not parse with Triton's schema: {e}") from None
    return True


def copy_durably(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def publish_model(repo: Path, model: TritonModel) -> Path:
    """Assemble the model directory beside its destination, then swap it in whole (a killed run leaves the old one)."""
    final = repo / model.name
    remove_stale_staging(final)
    staging = staging_dir_for(final)
    try:
        for rel, src in model.files.items():
            copy_durably(src, staging / rel)
        for folder in {(staging / rel).parent for rel in model.files}:
            fsync_dir(folder)
        (staging / "config.pbtxt").write_text(model.config)  # publish_dir fsyncs the files at the top
        publish_dir(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def checked_model_name(name: str, option: str) -> str:
    if not MODEL_NAME.match(name):
        raise ConfigError(f"{option} {name!r}: a Triton model name here is letters, digits, '_', '-', '.' "
                          "(not first), at most 128 characters")
    return name


def default_graph(manifest: Manifest, kind: str) -> tuple[str, str | None]:
    """The graph served when --graph is not given, and a note when that is not the manifest's default graph.

    The manifest's default was chosen by timing ONNX Runtime's CPU kernels, so a CPU instance serves it; a GPU (or
    auto) instance serves the plain graph, whose ops every execution provider runs as exported.
    """
    chosen = manifest.default_graph
    if kind == "cpu" or chosen == "plain":
        return chosen, None
    record = manifest.data["default_graph"]
    how = ", ".join(str(x) for x in (record.get("chosen_by"), record.get("cpu")) if x)
    return "plain", (f"serving the plain graph: the artifact's default graph {chosen!r} was chosen for ONNX Runtime on "
                     f"a CPU ({how}); --kind cpu serves it, --graph {chosen} serves it on any instance")


def check_options(options: TritonOptions) -> None:
    if options.graph is not None and options.graph not in GRAPHS:
        raise ConfigError(f"--graph must be one of {', '.join(GRAPHS)}, got {options.graph!r}")
    if options.kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {options.kind!r}")
    for what, value, low in (("--version", options.version, 1), ("--instances", options.instances, 1),
                             ("--max-queue-delay-us", options.max_queue_delay_us, 0)):
        if value < low:
            raise ConfigError(f"{what} must be >= {low}, got {value}")


def write_triton_repo(directory: str | Path, repo: str | Path, options: TritonOptions | None = None) -> TritonResult:
    """Write REPO/<name>/ (and REPO/<name>-tensorrt/ for datacenter engines) for the artifact in DIRECTORY.

    Everything is checked and every config generated and validated before the first model directory is written.
    """
    options = options or TritonOptions()
    check_options(options)
    manifest = read_manifest(directory)
    manifest.check_files()
    manifest.check_external_data()
    name = checked_model_name(options.name or manifest.data["name"], "--name" if options.name else "the manifest's name (choose another with --name)")
    batching = batching_for(manifest.contract)
    notes = [batching.reason] if batching.reason else []
    if options.graph is None:
        graph, note = default_graph(manifest, options.kind)
        options = replace(options, graph=graph)
        notes += [note] if note else []
    models = [onnx_model(manifest, name, options, batching)]
    if options.engines:
        engines, engine_notes = servable_engines(manifest, options.engine_files)
        notes += engine_notes
        if engines:
            trt_name = checked_model_name(options.trt_name or f"{name}-tensorrt", "--trt-name")
            if trt_name == name:
                raise ConfigError(f"--trt-name {trt_name!r} is the ONNX model's name too: choose another")
            model, trt_notes = tensorrt_model(manifest, trt_name, engines, options, batching)
            models.append(model)
            notes += trt_notes
    if manifest.dtype == "bfloat16":
        notes.append("bfloat16: ONNX Runtime's CPU kernels have no bfloat16 MatMul; the ONNX model runs on a GPU instance only")
    validated = all(validated_with_triton_schema(m) for m in models)
    if not validated:
        notes.append("configs not validated against Triton's schema: tritonclient is not installed "
                     "(pip install perceiver-export[triton])")
    repo = Path(repo)
    for model in models:
        publish_model(repo, model)
    return TritonResult(repo, models, notes, validated)


def server_command(repo: Path) -> str:
    """How to serve REPO with NVIDIA's container (pick the release whose TensorRT built any plan)."""
    return (f"docker run --gpus all --rm -p8000:8000 -p8001:8001 -v {Path(repo).resolve()}:/models "
            "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")
