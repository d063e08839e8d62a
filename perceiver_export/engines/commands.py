"""Command lines that rebuild a manifest's engine with NVIDIA's own tools: trtexec (tensorrt_rtx) and polygraphy.

Each restates what `trt` recorded in the engine's entry — every profile's min/opt/max per input, strong typing
(precision comes from the ONNX types), TF32, workspace, optimization level and, for TensorRT-RTX, the target compute
capabilities — so a user can rebuild the engine without this package and compare. Plain functions, no TensorRT import.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..artifact.manifest import Manifest

# Polygraphy imports TensorRT-RTX instead of TensorRT when this is set (polygraphy/mod/trt_importer.py).
POLYGRAPHY_RTX_ENV = {"POLYGRAPHY_USE_TENSORRT_RTX": "1"}
# Polygraphy's TensorRT-RTX config leaves TF32 at the builder's default (on); `trt` clears it unless --tf32.
TF32_OFF_HOOK = f"{Path(__file__).with_name('polygraphy_hooks.py')}:tf32_off"

Shapes = Mapping[str, Mapping[str, Sequence[int]]]  # input -> {"min": [...], "opt": [...], "max": [...]}


@dataclass(frozen=True)
class Command:
    """An argv plus the environment variables it needs; str() is the shell line a user pastes."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return "".join(f"{k}={shlex.quote(v)} " for k, v in self.env.items()) + shlex.join(self.argv)


def polygraphy_shape_args(profiles: Iterable[Shapes]) -> list[str]:
    """`--trt-min-shapes q:[1,1,32] ... --trt-opt-shapes ... --trt-max-shapes ...`, one triple per profile."""
    args: list[str] = []
    for shapes in profiles:
        for which in ("min", "opt", "max"):
            args.append(f"--trt-{which}-shapes")
            args += [f"{name}:[{','.join(map(str, s[which]))}]" for name, s in shapes.items()]
    return args


def trtexec_shape_args(profiles: Iterable[Shapes]) -> list[str]:
    """`--minShapes=q:1x1x32,k:... --optShapes=... --maxShapes=...`, repeated per profile as trtexec wants."""
    args: list[str] = []
    for shapes in profiles:
        for which in ("min", "opt", "max"):
            args.append(f"--{which}Shapes=" + ",".join(f"{name}:{'x'.join(map(str, s[which]))}" for name, s in shapes.items()))
    return args


def _entry(manifest: Manifest, name: str) -> dict:
    return manifest.engines[name]


def _profiles(entry: Mapping) -> list[Shapes]:
    return [p["shapes"] for p in entry["profiles"]]


def _rebuilt_name(name: str, tool: str) -> str:
    """Beside the artifact's engine, never over it: that one is hashed in the manifest."""
    return f"{Path(name).stem}.{tool}.engine"


def trtexec_command(manifest: Manifest, name: str, out: str | Path | None = None) -> Command:
    """trtexec (datacenter TensorRT) or tensorrt_rtx (TensorRT-RTX's trtexec) rebuilding engine `name`."""
    entry = _entry(manifest, name)
    rtx = entry["flavor"] == "tensorrt_rtx"
    out = out or manifest.directory / _rebuilt_name(name, "trtexec")
    argv = ["tensorrt_rtx" if rtx else "trtexec", f"--onnx={manifest.onnx_path}", f"--saveEngine={out}"]
    argv += trtexec_shape_args(_profiles(entry))
    if not rtx:
        argv.append("--stronglyTyped")  # TensorRT-RTX networks are always strongly typed
    if not entry["tf32"]:
        argv.append("--noTF32")  # trtexec allows TF32 unless told not to
    if entry["build"].get("workspace_mib"):
        argv.append(f"--memPoolSize=workspace:{entry['build']['workspace_mib']}M")
    argv.append(f"--builderOptimizationLevel={entry['build']['optimization_level']}")
    if rtx and entry.get("compute_capabilities"):
        argv.append("--computeCapabilities=" + ",".join(cc.removeprefix("sm") for cc in entry["compute_capabilities"]))
    argv.append("--skipInference")
    return Command(tuple(argv))


def polygraphy_convert_command(manifest: Manifest, name: str, out: str | Path | None = None) -> Command:
    """`polygraphy convert model.onnx --convert-to trt ...` rebuilding engine `name` (TensorRT-RTX: through the env switch)."""
    entry = _entry(manifest, name)
    rtx = entry["flavor"] == "tensorrt_rtx"
    out = out or manifest.directory / _rebuilt_name(name, "polygraphy")
    argv = ["polygraphy", "convert", str(manifest.onnx_path), "--convert-to", "trt", "-o", str(out), "--strongly-typed"]
    argv += polygraphy_shape_args(_profiles(entry))
    argv += ["--builder-optimization-level", str(entry["build"]["optimization_level"])]
    if entry["build"].get("workspace_mib"):
        argv += ["--pool-limit", f"workspace:{entry['build']['workspace_mib']}M"]
    if rtx:
        if entry.get("compute_capabilities"):
            argv += ["--compute-capabilities", *(_dotted(cc) for cc in entry["compute_capabilities"])]
        if not entry["tf32"]:
            argv += ["--trt-config-postprocess-script", TF32_OFF_HOOK]
    elif entry["tf32"]:
        argv.append("--tf32")
    return Command(tuple(argv), POLYGRAPHY_RTX_ENV if rtx else {})


def _dotted(cc: str) -> str:
    """sm89 -> 8.9, sm120 -> 12.0 (Polygraphy's major.minor form)."""
    digits = cc.removeprefix("sm")
    return f"{digits[:-1]}.{digits[-1]}"
