"""Engine reproduction commands (`inspect`): trtexec / tensorrt_rtx and polygraphy convert lines from the manifest's entry,
and the printed `polygraphy convert` line building the same TensorRT-RTX engine as `trt`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perceiver_export.artifact.manifest import Manifest, read_manifest
from perceiver_export.engines.build import BuildOptions, build_engine
from perceiver_export.engines.commands import polygraphy_convert_command, trtexec_command
from perceiver_export.engines.flavor import installed_flavors
from perceiver_export.engines.profiles import parse_profile
from perceiver_export.verify.polygraphy import run_polygraphy
from tests.conftest import REPO
from tests.test_cli import cli
from tests.trt_capture import capture

needs_rtx = pytest.mark.skipif("tensorrt_rtx" not in installed_flavors(), reason="TensorRT-RTX is not installed (pip install tensorrt-rtx-cu13)")
needs_polygraphy = pytest.mark.skipif(__import__("importlib").util.find_spec("polygraphy") is None,
                                      reason="Polygraphy is a test dependency: pip install -e '.[test]'")

# ---- engine reproduction commands ------------------------------------------------------------------------

ENTRY = {
    "file": "model.tensorrt.engine", "flavor": "tensorrt", "version": "10.9.0", "compute_capabilities": ["sm90"], "tf32": True,
    "profiles": [
        {"name": "default", "shapes": {"q": {"min": [1, 1, 32], "opt": [2, 8, 32], "max": [4, 16, 32]},
                                       "mask": {"min": [1, 2], "opt": [2, 16], "max": [4, 48]}}},
        {"name": "short", "shapes": {"q": {"min": [1, 1, 32], "opt": [1, 4, 32], "max": [2, 8, 32]},
                                     "mask": {"min": [1, 2], "opt": [1, 8], "max": [2, 16]}}},
    ],
    "build": {"workspace_mib": None, "optimization_level": 3},
}


def _manifest(**entry) -> Manifest:
    e = {**ENTRY, **entry}
    return Manifest(Path("art"), {"onnx": {"file": "model.onnx"}, "engines": {e["file"]: e}})


def test_trtexec_command_restates_the_engine_entry():
    datacenter = trtexec_command(_manifest(), "model.tensorrt.engine")
    assert str(datacenter) == (
        "trtexec --onnx=art/model.onnx --saveEngine=art/model.tensorrt.trtexec.engine "
        "--minShapes=q:1x1x32,mask:1x2 --optShapes=q:2x8x32,mask:2x16 --maxShapes=q:4x16x32,mask:4x48 "
        "--minShapes=q:1x1x32,mask:1x2 --optShapes=q:1x4x32,mask:1x8 --maxShapes=q:2x8x32,mask:2x16 "
        "--stronglyTyped --builderOptimizationLevel=3 --skipInference")  # TF32 allowed: trtexec's default
    rtx = trtexec_command(_manifest(file="model.tensorrt_rtx.engine", flavor="tensorrt_rtx", tf32=False,
                                    compute_capabilities=["sm89", "sm120"], build={"workspace_mib": 256, "optimization_level": 2}),
                          "model.tensorrt_rtx.engine")
    assert rtx.argv[0] == "tensorrt_rtx" and "--stronglyTyped" not in rtx.argv  # RTX networks are always strongly typed
    assert rtx.argv[-5:] == ("--noTF32", "--memPoolSize=workspace:256M", "--builderOptimizationLevel=2",
                             "--computeCapabilities=89,120", "--skipInference")


def test_polygraphy_convert_command_restates_the_engine_entry():
    datacenter = polygraphy_convert_command(_manifest(), "model.tensorrt.engine")
    assert datacenter.env == {} and datacenter.argv[-1] == "--tf32"
    assert datacenter.argv.count("--trt-min-shapes") == 2 and "'q:[1,4,32]'" in str(datacenter)
    rtx = polygraphy_convert_command(_manifest(file="model.tensorrt_rtx.engine", flavor="tensorrt_rtx", tf32=False,
                                               compute_capabilities=["sm89", "sm120"]), "model.tensorrt_rtx.engine")
    assert str(rtx).startswith("POLYGRAPHY_USE_TENSORRT_RTX=1 polygraphy convert art/model.onnx --convert-to trt "
                               "-o art/model.tensorrt_rtx.polygraphy.engine --strongly-typed")
    i = rtx.argv.index("--compute-capabilities")
    assert rtx.argv[i + 1: i + 3] == ("8.9", "12.0")
    assert rtx.argv[-1].endswith("perceiver_export/engines/polygraphy_hooks.py:tf32_off") and Path(rtx.argv[-1].split(":")[0]).is_file()


@needs_rtx
@needs_polygraphy
def test_polygraphy_builds_the_same_rtx_engine_from_the_printed_command(tiny_fp32, tmp_path):
    """The `polygraphy convert` line `inspect` prints, run as printed, asks TensorRT-RTX for the same engine we built:
    I/O names and dtypes, every profile's min/opt/max, targets, TF32, strong typing, optimization level, workspace."""
    d = tmp_path / "a"
    shutil.copytree(tiny_fp32.directory, d)
    short = parse_profile("short:q_len=1:4:8,k_len=1:4:8", read_manifest(d).contract, 1)
    with capture("tensorrt_rtx") as ours:
        build_engine(d, BuildOptions(flavor="tensorrt_rtx", compute_capabilities=["sm89", "sm120"], profiles=[short], workspace_mib=256))
    command = polygraphy_convert_command(read_manifest(d), "model.tensorrt_rtx.engine")
    shown = cli("inspect", str(d))
    assert shown.returncode == 0 and str(command) in shown.stdout and str(trtexec_command(read_manifest(d), "model.tensorrt_rtx.engine")) in shown.stdout

    out = tmp_path / "polygraphy-build.json"
    env = {**os.environ, **command.env, "PYTHONPATH": str(REPO)}
    ran = subprocess.run([sys.executable, "-m", "tests.trt_capture", str(out), *command.argv], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    theirs = json.loads(out.read_text())
    assert len(ours) == len(theirs) == 1
    assert theirs[0] == ours[0]
    assert ours[0]["inputs"] == [["q", "FLOAT"], ["k", "FLOAT"], ["v", "FLOAT"], ["mask", "BOOL"]]
    assert ours[0]["profiles"][1]["mask"] == [[1, 2], [2, 12], [4, 32]] and ours[0]["tf32"] is False
    assert ours[0]["compute_capabilities"] == ["SM89", "SM120"] and ours[0]["workspace"] == 256 << 20
    engine = d / "model.tensorrt_rtx.polygraphy.engine"
    assert engine.stat().st_size > 1_000_000


@pytest.mark.gpu
@needs_rtx
@needs_polygraphy
def test_both_rtx_engines_declare_the_same_io_when_deserialized(tiny_fp32, tmp_path):
    """On a GPU TensorRT-RTX targets, the engines themselves are compared (CPU: see the test above)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with CUDA (none here)")
    from perceiver_export.engines.compat import cuda_compute_capability
    from perceiver_export.engines.flavor import RTX_COMPUTE_CAPABILITIES, import_flavor

    cc = cuda_compute_capability()
    if cc not in RTX_COMPUTE_CAPABILITIES:
        pytest.skip(f"TensorRT-RTX does not target this GPU ({cc})")
    d = tmp_path / "a"
    shutil.copytree(tiny_fp32.directory, d)
    build_engine(d, BuildOptions(flavor="tensorrt_rtx", compute_capabilities=[cc]))
    command = polygraphy_convert_command(read_manifest(d), "model.tensorrt_rtx.engine")
    assert run_polygraphy(command).returncode == 0
    trt = import_flavor("tensorrt_rtx").trt
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))

    def declared(path):
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        return [(n, engine.get_tensor_dtype(n).name, engine.get_tensor_mode(n).name,
                 [[list(s) for s in engine.get_tensor_profile_shape(n, p)] if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT else []
                  for p in range(engine.num_optimization_profiles)]) for n in names]

    assert declared(d / "model.tensorrt_rtx.engine") == declared(d / "model.tensorrt_rtx.polygraphy.engine")
