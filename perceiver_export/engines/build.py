"""`trt` command's work: parse DIR/model.onnx with TensorRT, add profiles from the contract, build, record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from ..artifact.atomic import atomic_write_bytes
from ..artifact.manifest import Manifest, file_entry, read_manifest
from ..errors import ArtifactError, ConfigError, EngineBuildError
from .compat import cuda_compute_capability
from .flavor import RTX_COMPUTE_CAPABILITIES, Flavor, import_flavor
from .profiles import Profile, default_profile


# TensorRT-RTX's target when none is asked for and no GPU it supports is visible (an Ada GPU, the RTX 40 series).
DEFAULT_RTX_TARGET = "sm89"


@dataclass
class BuildOptions:
    flavor: str = "auto"
    compute_capabilities: Sequence[str] = ()  # TensorRT-RTX's targets; empty: see target_compute_capabilities
    profiles: Sequence[Profile] = ()  # in addition to the default profile (the manifest's ranges)
    workspace_mib: int | None = None
    optimization_level: int | None = None
    cache: Path | None = None
    tf32: bool = False  # off by default: a float32 engine then computes in float32 and keeps fp32 parity
    engine_name: str | None = None


@dataclass
class BuildResult:
    path: Path
    entry: dict
    seconds: float
    notes: list[str] = field(default_factory=list)


def engine_file_name(flavor: str) -> str:
    return f"model.{flavor}.engine"


def _make_logger(flavor: Flavor):
    trt = flavor.trt

    class CollectingLogger(trt.ILogger):
        """Keeps TensorRT's errors and warnings so they can be shown with the failure they explain."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.WARNING and "cudaError 35" not in msg:
                # Without a GPU every API error is followed by an unrelated CUDA-driver line; it is noise here.
                self.messages.append(f"[{severity.name}] {msg}")

    return CollectingLogger()


def _make_progress_monitor(flavor: Flavor, callback):
    trt = flavor.trt

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            callback("start", phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            callback("step", phase_name, None, step)
            return True

        def phase_finish(self, phase_name):
            callback("finish", phase_name, None, 0)

    return Monitor()


def parse_onnx(flavor: Flavor, builder, logger, onnx_path: Path):
    trt = flavor.trt
    network = builder.create_network(flavor.network_flags())
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)) or network.num_layers == 0:
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            where = f"node {e.node_name()!r} ({e.node_operator()})" if e.node() >= 0 else "model"
            errors.append(f"{where}: {e.desc()}")
        detail = "; ".join(errors) or "the parser produced an empty network"
        raise EngineBuildError(f"{flavor.name} {flavor.version} could not parse {onnx_path}: {detail}")
    return network, parser


def build_engine(directory: str | Path, options: BuildOptions, progress: Callable | None = None) -> BuildResult:
    """Build a serialized engine from DIR/model.onnx and record it in DIR/manifest.json (both written atomically)."""
    manifest = read_manifest(directory)
    try:
        manifest.check_files(manifest.onnx_files)
    except ArtifactError as e:
        raise ArtifactError(f"{e}; the ONNX no longer matches what was exported and verified: re-export it") from None
    manifest.check_external_data()
    contract = manifest.contract
    flavor = import_flavor(options.flavor)
    trt = flavor.trt
    notes: list[str] = []

    profiles = [default_profile(contract), *options.profiles]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise ConfigError(f"profile names must be unique, got {names}")
    engine_name = options.engine_name or engine_file_name(flavor.name)
    if Path(engine_name).name != engine_name or not engine_name.endswith(".engine"):
        raise ConfigError(f"--out must be a file name ending in .engine inside {manifest.directory}, got {engine_name!r}")

    logger = _make_logger(flavor)
    builder = trt.Builder(logger)
    network, _parser = parse_onnx(flavor, builder, logger, manifest.onnx_path)
    plugin_types = {getattr(trt.LayerType, t) for t in ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3") if hasattr(trt.LayerType, t)}
    plugins = [network.get_layer(i).name for i in range(network.num_layers) if network.get_layer(i).type in plugin_types]
    config = builder.create_builder_config()
    targets, note = target_compute_capabilities(flavor, options.compute_capabilities)
    if note:
        notes.append(note)
    flavor.set_compute_capabilities(config, targets if flavor.targets_compute_capabilities else [])
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.optimization_level is not None:
        if not 0 <= options.optimization_level <= 5:
            raise ConfigError(f"optimization level must be 0..5, got {options.optimization_level}")
        config.builder_optimization_level = options.optimization_level
    if options.tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    if progress is not None:
        config.progress_monitor = _make_progress_monitor(flavor, progress)
    for profile in profiles:
        p = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.tensor_shapes(contract).items():
            p.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(p) < 0:
            raise EngineBuildError(f"{flavor.name} rejected profile {profile.name!r}: " + "; ".join(logger.messages[-3:]))

    cache_loaded = False
    if options.cache is not None:
        if flavor.has_build_cache():
            if options.cache.is_file():
                flavor.load_timing_cache(config, options.cache.read_bytes())
                cache_loaded = True
        else:
            notes.append(
                f"{flavor.name} has no build-time cache (its timing cache is a no-op); "
                f"{options.cache} is recorded as the runner's runtime cache"
            )

    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise EngineBuildError(f"{flavor.name} {flavor.version} failed to build: " + "; ".join(logger.messages[-5:]))
    if options.cache is not None and flavor.has_build_cache():
        atomic_write_bytes(options.cache, flavor.save_timing_cache(config))

    path = manifest.directory / engine_name
    atomic_write_bytes(path, bytes(plan))
    entry = {
        "file": engine_name,
        "flavor": flavor.name,
        "version": flavor.version,
        "compute_capabilities": targets or None,
        "precision": f"{manifest.dtype} (from the ONNX types; strongly typed)",
        "tf32": bool(config.get_flag(trt.BuilderFlag.TF32)),
        "plugins": plugins,  # plugin layers run native code when the engine loads; the runner refuses them by default
        "profiles": [p.to_dict(contract) for p in profiles],
        "onnx_sha256": {name: manifest.data["files"][name]["sha256"] for name in manifest.onnx_files},
        "build": {
            "workspace_mib": options.workspace_mib,
            "optimization_level": config.builder_optimization_level,
            "cache": str(options.cache) if options.cache else None,
            "cache_loaded": cache_loaded,
            "seconds": round(seconds, 3),
            "bytes": path.stat().st_size,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "warnings": [m for m in logger.messages if m.startswith("[WARNING]")][:20],
    }
    _record(manifest, engine_name, path, entry)
    return BuildResult(path, entry, seconds, notes)


def target_compute_capabilities(flavor: Flavor, requested: Sequence[str] = ()) -> tuple[list[str], str | None]:
    """The GPUs an engine is built for, and a note when they were chosen rather than asked for; the one default both
    `build_engine` and the `trt` command use.

    TensorRT-RTX: the requested ones, else this machine's GPU when TensorRT-RTX supports it, else DEFAULT_RTX_TARGET.
    Datacenter TensorRT builds for the GPU it runs on (it takes no targets: `set_compute_capabilities` refuses them).
    """
    requested = list(dict.fromkeys(requested))
    gpu = cuda_compute_capability()
    if not flavor.targets_compute_capabilities:
        if requested:
            flavor.set_compute_capabilities(None, requested)  # raises, naming the option
        return ([gpu] if gpu else []), None
    if requested:
        return requested, None
    if gpu in RTX_COMPUTE_CAPABILITIES:
        return [gpu], f"no target given (--compute-capability, compute_capabilities= in Python): building for this GPU, {gpu}"
    why = f"this GPU is {gpu}, which TensorRT-RTX does not target" if gpu else "no CUDA GPU is visible here"
    return [DEFAULT_RTX_TARGET], (f"no target given (--compute-capability, compute_capabilities= in Python): building for "
                                  f"{DEFAULT_RTX_TARGET} ({why})")


def _record(manifest: Manifest, engine_name: str, path: Path, entry: dict) -> None:
    """The engine file is in place; now the manifest (one atomic replace) starts listing it."""
    manifest.data.setdefault("engines", {})[engine_name] = entry
    manifest.data["files"][engine_name] = file_entry(path)
    manifest.write()
