"""TensorRT engines: real TensorRT-RTX builds on this CPU machine, profiles, compatibility, every error path."""

import json
import shutil

import numpy as np
import onnx
import pytest

from perceiver_export import runtime
from perceiver_export.artifact.manifest import file_entry, read_manifest, sha256_of
from perceiver_export.contract import AxisRange
from perceiver_export.engines.build import BuildOptions, build_engine
from perceiver_export.engines.compat import EngineIncompatibleError, check_engine_compatible
from perceiver_export.engines.flavor import import_flavor, installed_flavors, parse_compute_capability
from perceiver_export.engines.profiles import Profile, ShapeError, parse_profile, select_profile
from perceiver_export.errors import ArtifactError, BackendUnavailableError, ConfigError, EngineBuildError, InputError
from perceiver_export.verify.parity import verify_artifact
from tests.conftest import openvino_backends, save_consistently

needs_rtx = pytest.mark.skipif("tensorrt_rtx" not in installed_flavors(), reason="TensorRT-RTX is not installed (pip install tensorrt-rtx-cu13)")


def _copy(src, tmp_path, name="a"):
    dst = tmp_path / name
    shutil.copytree(src.directory, dst)
    return dst


@pytest.fixture(scope="module")
def built_fp32(tiny_fp32, tmp_path_factory):
    if "tensorrt_rtx" not in installed_flavors():
        pytest.skip("TensorRT-RTX is not installed")
    d = _copy(tiny_fp32, tmp_path_factory.mktemp("eng32"))
    short = parse_profile("short:q_len=1:4:8,k_len=1:4:8,v_len=1:4:8", read_manifest(d).contract, 1)
    result = build_engine(d, BuildOptions(flavor="tensorrt_rtx", compute_capabilities=["sm89", "sm120"], profiles=[short]))
    return d, result


@needs_rtx
def test_fp32_engine_file_and_manifest_entry(built_fp32):
    d, result = built_fp32
    assert result.path == d / "model.tensorrt_rtx.engine" and result.path.stat().st_size > 1_000_000
    manifest = json.loads((d / "manifest.json").read_text())
    entry = manifest["engines"]["model.tensorrt_rtx.engine"]
    assert entry["flavor"] == "tensorrt_rtx" and entry["version"].startswith("1.")
    assert entry["compute_capabilities"] == ["sm89", "sm120"]
    assert entry["tf32"] is False and entry["precision"].startswith("float32")
    assert entry["plugins"] == []
    assert entry["onnx_sha256"] == {"model.onnx": sha256_of(d / "model.onnx")}
    assert manifest["files"]["model.tensorrt_rtx.engine"] == file_entry(result.path)
    assert entry["build"]["bytes"] == result.path.stat().st_size and entry["build"]["seconds"] > 0
    default, short = entry["profiles"]
    assert default["name"] == "default" and default["axes"]["k_len"] == {"min": 1, "opt": 8, "max": 24}
    assert default["shapes"]["mask"] == {"min": [1, 2], "opt": [2, 16], "max": [4, 48]}  # k_len + v_len in each
    assert short["shapes"]["mask"] == {"min": [1, 2], "opt": [2, 8], "max": [4, 16]}
    assert short["shapes"]["q"]["max"] == [4, 8, 32]
    read_manifest(d).check_files()  # the engine is hashed like every other file


@needs_rtx
def test_fp16_artifact_gives_a_smaller_fp16_engine(tiny_fp16, built_fp32, tmp_path):
    d = _copy(tiny_fp16, tmp_path)
    result = build_engine(d, BuildOptions(flavor="tensorrt_rtx", compute_capabilities=["sm89"]))
    assert result.entry["precision"].startswith("float16")
    fp32_bytes = built_fp32[1].entry["build"]["bytes"]
    assert result.entry["build"]["bytes"] < 0.8 * fp32_bytes  # half-size weights: precision came from the ONNX types


@needs_rtx
def test_rebuild_replaces_entry_and_tf32_is_recorded(tiny_fp32, tmp_path):
    d = _copy(tiny_fp32, tmp_path)
    build_engine(d, BuildOptions(flavor="tensorrt_rtx", compute_capabilities=["sm89"]))
    result = build_engine(d, BuildOptions(flavor="tensorrt_rtx", compute_capabilities=["sm120"], tf32=True, optimization_level=1, workspace_mib=256))
    manifest = read_manifest(d)
    entry = manifest.engines["model.tensorrt_rtx.engine"]
    assert entry["compute_capabilities"] == ["sm120"] and entry["tf32"] is True
    assert entry["build"]["optimization_level"] == 1 and entry["build"]["workspace_mib"] == 256
    assert result.path.is_file()
    manifest.check_files()


@needs_rtx
def test_changed_onnx_is_refused_before_parsing(tiny_fp32, tmp_path):
    d = _copy(tiny_fp32, tmp_path)
    with open(d / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match=r"model.onnx: damaged: .*the ONNX no longer matches what was exported and verified"):
        build_engine(d, BuildOptions(flavor="tensorrt_rtx"))
    assert not (d / "model.tensorrt_rtx.engine").exists()


@needs_rtx
def test_parser_failure_names_the_node(tiny_fp32, tmp_path):
    d = _copy(tiny_fp32, tmp_path)
    model = onnx.load(str(d / "model.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "Erf")
    node.op_type = "FooBarOp"
    save_consistently(model, d)
    with pytest.raises(EngineBuildError, match=rf"could not parse .*model.onnx: node '{node.name}' \(FooBarOp\): .*Plugin not found"):
        build_engine(d, BuildOptions(flavor="tensorrt_rtx"))


def test_missing_flavor_says_how_to_install(tiny_fp32, tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **kw):
        if name in ("tensorrt", "tensorrt_rtx"):
            raise ImportError(f"No module named '{name}'")
        return real(name, *a, **kw)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(BackendUnavailableError, match=r"'tensorrt' is not installed .*install NVIDIA TensorRT >= 10"):
        import_flavor("tensorrt")
    with pytest.raises(BackendUnavailableError, match=r"pip install tensorrt-rtx-cu13"):
        build_engine(_copy(tiny_fp32, tmp_path), BuildOptions(flavor="tensorrt_rtx"))


@needs_rtx
@pytest.mark.parametrize(
    "options,message",
    [
        (BuildOptions(flavor="tensorrt_rtx", engine_name="../x.engine"), r"--out must be a file name ending in .engine inside"),
        (BuildOptions(flavor="tensorrt_rtx", optimization_level=9), r"optimization level must be 0..5, got 9"),
        (BuildOptions(flavor="tensorrt_rtx", profiles=[Profile("default", {})]), r"profile names must be unique"),
    ],
)
def test_bad_build_options(tiny_fp32, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        build_engine(_copy(tiny_fp32, tmp_path), options)


def test_compute_capability_names():
    assert parse_compute_capability("SM89") == "sm89" and parse_compute_capability("8.6") == "sm86"
    assert parse_compute_capability("120") == "sm120"
    with pytest.raises(ConfigError, match="unknown compute capability 'sm90'; TensorRT-RTX targets sm75, sm80"):
        parse_compute_capability("sm90")


# ---- profiles: plain functions, no GPU ------------------------------------------------


@pytest.fixture
def contract(tiny_fp32):
    return tiny_fp32.manifest.contract


def test_parse_profile_inherits_unnamed_axes(contract):
    p = parse_profile("long:k_len=8:16:24, v-len=8:16:24", contract, 1)
    assert p.name == "long" and p.axes["k_len"] == AxisRange(8, 16, 24) and p.axes["v_len"] == AxisRange(8, 16, 24)
    assert p.axes["q_len"] == contract.axes["q_len"]
    assert parse_profile("q_len=1:2:4", contract, 3).name == "profile3"
    assert p.tensor_shapes(contract)["mask"] == ((1, 16), (2, 32), (4, 48))


@pytest.mark.parametrize(
    "text,message",
    [
        ("short:q_len=1:32:64", r"--profile short: q_len 1:32:64 is outside the artifact's range 1:8:16"),
        ("short:x_len=1:2:3", r"unknown axis 'x_len'; axes are batch, q_len, k_len, v_len"),
        ("short:q_len", r"expected axis=MIN:OPT:MAX, got 'q_len'"),
        ("short:q_len=4:2:8", r"--profile short q_len: axis range must satisfy 1 <= min <= opt <= max, got 4:2:8"),
        ("short:", r"no axis ranges given"),
        ("short:q_len=a:b:c", r"expected MIN:OPT:MAX integers"),
    ],
)
def test_malformed_or_inconsistent_profiles(contract, text, message):
    with pytest.raises(ConfigError, match=message):
        parse_profile(text, contract, 1)


def test_select_profile_picks_the_tightest_that_fits(contract):
    default = Profile("default", dict(contract.axes))
    short = parse_profile("short:q_len=1:4:8,k_len=1:4:8,v_len=1:4:8", contract, 1)
    profiles = [default, short]
    assert select_profile(profiles, {"batch": 2, "q_len": 4, "k_len": 3, "v_len": 8}) == 1
    assert select_profile(profiles, {"batch": 2, "q_len": 9, "k_len": 3, "v_len": 8}) == 0


def test_out_of_profile_error_lists_every_profile(contract):
    short = parse_profile("short:q_len=1:4:8", contract, 1)
    with pytest.raises(ShapeError) as err:
        select_profile([short, parse_profile("tiny:q_len=1:1:2,batch=1:1:1", contract, 2)], {"batch": 2, "q_len": 12, "k_len": 3, "v_len": 3})
    assert isinstance(err.value, InputError)
    assert str(err.value) == (
        "input shapes (batch=2, q_len=12, k_len=3, v_len=3) fit no optimization profile of this engine: "
        "#0 short: batch 1..4, q_len 1..8, k_len 1..24, v_len 1..24; #1 tiny: batch 1..1, q_len 1..2, k_len 1..24, v_len 1..24"
    )


# ---- compatibility: plain function, no GPU -------------------------------------------

ENTRY = {"file": "model.tensorrt_rtx.engine", "flavor": "tensorrt_rtx", "version": "1.7.1.116", "compute_capabilities": ["sm89", "sm120"]}


def test_compatible_engine_passes():
    check_engine_compatible(ENTRY, "tensorrt_rtx", "1.7.1.116", "sm120")
    check_engine_compatible({**ENTRY, "compute_capabilities": None}, "tensorrt_rtx", "1.7.1.116", "sm90")


@pytest.mark.parametrize(
    "flavor,version,cc,message",
    [
        ("tensorrt", "10.9.0", "sm90", r"was built with tensorrt_rtx, but this process runs tensorrt"),
        ("tensorrt_rtx", "1.8.0.1", "sm89", r"built with tensorrt_rtx 1.7.1.116, but 1.8.0.1 is installed; .*rebuild"),
        ("tensorrt_rtx", "1.7.1.116", "sm86", r"targets sm89, sm120, but this GPU is sm86: rebuild with --compute-capability sm86"),
    ],
)
def test_incompatible_engine_is_refused_with_reason(flavor, version, cc, message):
    with pytest.raises(EngineIncompatibleError, match=message):
        check_engine_compatible(ENTRY, flavor, version, cc)


@needs_rtx
def test_verify_and_runner_say_why_the_engine_does_not_run_here(built_fp32):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the engine runs (see test_tensorrt_runner_matches_onnxruntime)")
    d, _ = built_fp32
    with pytest.raises(BackendUnavailableError, match="the TensorRT runner needs an NVIDIA GPU with CUDA"):
        runtime.load(d, backend="tensorrt")
    report = verify_artifact(d, write=False)
    assert report.passed and report.backends == ["onnxruntime", "onnxruntime-optimized", *openvino_backends()]
    assert any("model.tensorrt_rtx.engine not run: the TensorRT runner needs an NVIDIA GPU" in n for n in report.notes)


@pytest.mark.gpu
@needs_rtx
def test_tensorrt_runner_matches_onnxruntime(built_fp32):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with CUDA (none here)")
    d, _ = built_fp32
    try:
        runner = runtime.load(d, backend="tensorrt")
    except EngineIncompatibleError as e:
        pytest.skip(f"this GPU is not a target of the engine: {e}")
    ort = runtime.load(d)
    rng = np.random.default_rng(0)
    for batch, q, k, v in ((1, 3, 5, 7), (4, 16, 24, 24), (2, 4, 3, 8)):
        feeds = [rng.standard_normal((batch, n, 32)).astype(np.float32) for n in (q, k, v)]
        mask = rng.random((batch, k + v)) > 0.3
        mask[0] = False
        np.testing.assert_allclose(runner(*feeds, mask), ort(*feeds, mask), atol=1e-4, rtol=1e-3)
    with pytest.raises(ShapeError):
        runner._infer({}, {"batch": 9, "q_len": 1, "k_len": 1, "v_len": 1})


@needs_rtx
@pytest.mark.parametrize("plugins,message", [(["my_plugin"], r"embeds plugin layers \['my_plugin'\] \(native code\)"),
                                             (None, r"does not say whether the engine embeds plugins")])
def test_engine_with_plugins_is_refused_unless_allowed(built_fp32, tmp_path, plugins, message):
    d = tmp_path / "p"
    shutil.copytree(built_fp32[0], d)
    manifest = json.loads((d / "manifest.json").read_text())
    entry = manifest["engines"]["model.tensorrt_rtx.engine"]
    if plugins is None:
        entry.pop("plugins")
    else:
        entry["plugins"] = plugins
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineIncompatibleError, match=message):
        runtime.load(d, backend="tensorrt")
    with pytest.raises(BackendUnavailableError, match="needs an NVIDIA GPU|could not deserialize"):  # allowed: next check
        runtime.load(d, backend="tensorrt", allow_plugins=True)


@needs_rtx
def test_truncated_engine_is_named_before_tensorrt_sees_it(built_fp32, tmp_path):
    d = tmp_path / "t"
    shutil.copytree(built_fp32[0], d)
    engine = d / "model.tensorrt_rtx.engine"
    engine.write_bytes(engine.read_bytes()[:4096])
    with pytest.raises(ArtifactError, match=r"model.tensorrt_rtx.engine: damaged: 4096 bytes, the manifest records \d+"):
        runtime.load(d, backend="tensorrt")
    with pytest.raises(ArtifactError, match=r"model.tensorrt_rtx.engine: damaged"):
        verify_artifact(d)
