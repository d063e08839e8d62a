"""Triton model repositories: configs from the I/O contract, parsed with Triton's own schema; engines; failures."""

import json
import shutil
import sys

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from perceiver_export.artifact.manifest import file_entry, read_manifest, sha256_of
from perceiver_export.cli.main import main
from perceiver_export.contract import AxisRange, IOContract
from perceiver_export.engines.build import BuildOptions, build_engine
from perceiver_export.engines.flavor import installed_flavors
from perceiver_export.engines.profiles import default_profile, parse_profile
from perceiver_export.errors import ArtifactError, ConfigError
from perceiver_export.export.artifact_builder import export_artifact
from perceiver_export.serving import triton_repo
from perceiver_export.serving.triton_repo import TritonOptions, batching_for, triton_dims, write_triton_repo
from tests.conftest import save_consistently

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32, onnx.TensorProto.FLOAT16: model_config_pb2.TYPE_FP16,
                  onnx.TensorProto.BOOL: model_config_pb2.TYPE_BOOL}


def parsed(path) -> model_config_pb2.ModelConfig:
    """A config.pbtxt read with Triton's model_config.proto: one that does not parse fails the test."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def tensors(section) -> dict:
    return {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in section}


def files_under(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def copy_of(result, tmp_path, name="a"):
    dst = tmp_path / name
    shutil.copytree(result.directory, dst)
    return dst


def add_datacenter_engine(directory, file, compute_capabilities=None, profiles=None, version="10.13.3.9"):
    """Record a `tensorrt`-flavor engine as engines/build.py does (datacenter TensorRT is not installable here,
    so the plan is stand-in bytes, hashed like any file). build.py records the build GPU's compute capability for
    it, or None when torch sees no CUDA GPU at build time."""
    manifest = read_manifest(directory)
    contract = manifest.contract
    path = directory / file
    path.write_bytes(b"plan of " + file.encode())
    manifest.data.setdefault("engines", {})[file] = {
        "file": file, "flavor": "tensorrt", "version": version, "compute_capabilities": compute_capabilities,
        "precision": f"{manifest.dtype} (from the ONNX types; strongly typed)", "tf32": False, "plugins": [],
        "profiles": [p.to_dict(contract) for p in profiles or [default_profile(contract)]],
        "onnx_sha256": {n: manifest.data["files"][n]["sha256"] for n in manifest.onnx_files},
        "build": {"workspace_mib": None, "optimization_level": 3, "cache": None, "cache_loaded": False, "seconds": 1.0,
                  "bytes": path.stat().st_size, "created": "2025-01-01T00:00:00+00:00"},
        "warnings": [],
    }
    manifest.data["files"][file] = file_entry(path)
    manifest.write()


@pytest.fixture(scope="module")
def with_external_data(tiny_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("external") / "artifact"
    return export_artifact(tiny_spec, out, external_data="always", verify=False, optimize=False)


@pytest.fixture(scope="module")
def batch_from_two(tiny_spec, tmp_path_factory):
    """A tiny artifact whose batch axis is 2:2:4 (not verified: only its contract matters here)."""
    out = tmp_path_factory.mktemp("batch2") / "artifact"
    return export_artifact(tiny_spec.with_axes({"batch": AxisRange(2, 2, 4)}), out, verify=False, optimize=False)


def test_fp32_model_directory_config_and_graph(tiny_fp32, tmp_path):
    d, repo = tiny_fp32.directory, tmp_path / "repo"
    result = write_triton_repo(d, repo)
    model = repo / "perceiver-tiny"
    assert [p.name for p in repo.iterdir()] == ["perceiver-tiny"]  # no staging left behind, no TensorRT model
    assert files_under(model) == ["1/model.onnx", "config.pbtxt"]
    assert (model / "1/model.onnx").read_bytes() == (d / "model.onnx").read_bytes()
    assert result.validated and [m.name for m in result.models] == ["perceiver-tiny"]

    config = parsed(model / "config.pbtxt")
    contract = tiny_fp32.manifest.contract
    assert config.name == "perceiver-tiny" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == contract.axes["batch"].max == 4
    assert tensors(config.input) == {
        "q": ("TYPE_FP32", [-1, 32]), "k": ("TYPE_FP32", [-1, 32]), "v": ("TYPE_FP32", [-1, 32]), "mask": ("TYPE_BOOL", [-1]),
    }
    assert [t.name for t in config.input] == ["q", "k", "v", "mask"] and not any(t.optional for t in config.input)
    assert tensors(config.output) == {"out": ("TYPE_FP32", [-1, 32])}
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 100
    assert len(config.instance_group) == 1 and config.instance_group[0].count == 1
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO  # left out: Triton picks

    text = (model / "config.pbtxt").read_text()
    assert f"sha256 {sha256_of(d / 'model.onnx')}" in text
    assert "#   batch: 1 / 2 / 4\n#   q_len: 1 / 8 / 16\n#   k_len: 1 / 8 / 24\n#   v_len: 1 / 8 / 24\n" in text
    assert "# Triton does not enforce these ranges" in text and "proven only inside them" in text
    assert "send all True to attend to everything" in text

    graph = onnx.load(str(model / "1/model.onnx"), load_external_data=False).graph
    for section, values in ((config.input, graph.input), (config.output, graph.output)):
        by_name = {v.name: v.type.tensor_type for v in values}
        for t in section:
            assert ONNX_TO_TRITON[by_name[t.name].elem_type] == t.data_type
            assert len(by_name[t.name].shape.dim) == len(t.dims) + 1  # + the batch dim Triton adds


def test_external_data_keeps_its_name_and_the_served_graph_runs(with_external_data, tmp_path):
    import numpy as np
    import onnxruntime as ort

    from perceiver_export import runtime

    d = with_external_data.directory
    assert with_external_data.manifest.onnx_files == ["model.onnx", "model.onnx.data"]
    write_triton_repo(d, tmp_path / "repo")
    version = tmp_path / "repo/perceiver-tiny/1"
    assert files_under(version) == ["model.onnx", "model.onnx.data"]
    assert (version / "model.onnx.data").read_bytes() == (d / "model.onnx.data").read_bytes()
    # What Triton's onnxruntime backend does with the version directory, and what a client sends (mask all True).
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, n, 32), dtype=np.float32) for n in (5, 7, 3))
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    (served,) = session.run(["out"], {"q": q, "k": k, "v": v, "mask": np.ones((2, 10), dtype=bool)})
    np.testing.assert_array_equal(served, runtime.load(d, backend="onnxruntime", graph="plain")(q, k, v))


def test_fp16_artifact_gives_fp16_types_and_bool_mask(tiny_fp16, tmp_path):
    write_triton_repo(tiny_fp16.directory, tmp_path / "repo")
    config = parsed(tmp_path / "repo/perceiver-tiny/config.pbtxt")
    assert tensors(config.input)["q"] == ("TYPE_FP16", [-1, 32])
    assert tensors(config.input)["mask"] == ("TYPE_BOOL", [-1])
    assert tensors(config.output) == {"out": ("TYPE_FP16", [-1, 32])}


def test_batch_min_above_one_writes_the_batch_dim_and_no_batching(batch_from_two, tmp_path):
    result = write_triton_repo(batch_from_two.directory, tmp_path / "repo")
    config = parsed(tmp_path / "repo/perceiver-tiny/config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert tensors(config.input) == {
        "q": ("TYPE_FP32", [-1, -1, 32]), "k": ("TYPE_FP32", [-1, -1, 32]), "v": ("TYPE_FP32", [-1, -1, 32]),
        "mask": ("TYPE_BOOL", [-1, -1]),
    }
    assert tensors(config.output) == {"out": ("TYPE_FP32", [-1, -1, 32])}
    assert any("batch min is 2" in n and "cannot enforce a lower bound" in n for n in result.notes)
    assert "parity with eager PyTorch was not verified" in (tmp_path / "repo/perceiver-tiny/config.pbtxt").read_text()


def test_fixed_axes_are_written_as_sizes_and_a_fixed_batch_above_one_explicitly():
    axes = {"batch": AxisRange(2, 2, 2), "q_len": AxisRange(16, 16, 16), "k_len": AxisRange(4, 4, 4), "v_len": AxisRange(1, 2, 8)}
    contract = IOContract.for_perceiver(32, "float32", axes)
    assert batching_for(contract).max_batch_size == 0
    assert triton_dims(contract, contract.spec("q"), batched=False) == [2, 16, 32]
    assert triton_dims(contract, contract.spec("mask"), batched=False) == [2, -1]  # k fixed, v not: k + v varies
    one = IOContract.for_perceiver(32, "float32", {**axes, "batch": AxisRange(1, 1, 8), "v_len": AxisRange(3, 3, 3)})
    assert batching_for(one).max_batch_size == 8
    assert triton_dims(one, one.spec("mask"), batched=True) == [7]


def test_options_name_version_graph_instances_kind_and_batching(tiny_fp32, tmp_path):
    d, repo = tiny_fp32.directory, tmp_path / "repo"
    assert "optimized" in tiny_fp32.manifest.graphs
    rc = main(["triton", str(d), "--repo", str(repo), "--name", "tiny", "--version", "3", "--graph", "optimized",
               "--instances", "2", "--kind", "cpu", "--max-queue-delay-us", "500"])
    assert rc == 0 and files_under(repo) == ["tiny/3/model.onnx", "tiny/config.pbtxt"]
    assert (repo / "tiny/3/model.onnx").read_bytes() == (d / "model.ort.onnx").read_bytes()
    config = parsed(repo / "tiny/config.pbtxt")
    assert config.name == "tiny" and config.dynamic_batching.max_queue_delay_microseconds == 500
    group = config.instance_group[0]
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert f"sha256 {sha256_of(d / 'model.ort.onnx')}" in (repo / "tiny/config.pbtxt").read_text()

    assert main(["triton", str(d), "--repo", str(repo), "--name", "tiny", "--no-dynamic-batching", "--kind", "gpu"]) == 0
    config = parsed(repo / "tiny/config.pbtxt")
    assert not config.HasField("dynamic_batching") and config.max_batch_size == 4
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


@pytest.mark.skipif("tensorrt_rtx" not in installed_flavors(), reason="TensorRT-RTX is not installed (pip install tensorrt-rtx-cu13)")
def test_tensorrt_rtx_engine_is_skipped_with_the_reason(tiny_fp32, tmp_path, capsys):
    d = copy_of(tiny_fp32, tmp_path)
    build_engine(d, BuildOptions(flavor="tensorrt_rtx", compute_capabilities=["sm89"]))
    repo = tmp_path / "repo"
    assert main(["triton", str(d), "--repo", str(repo)]) == 0
    assert [p.name for p in repo.iterdir()] == ["perceiver-tiny"]
    out = " ".join(capsys.readouterr().out.split())
    assert ("note: model.tensorrt_rtx.engine skipped: it was built with tensorrt_rtx (TensorRT for RTX), which Triton's "
            "tensorrt backend cannot load (it links datacenter TensorRT)") in out


def test_datacenter_engine_as_build_py_records_it_becomes_model_plan(artifact_copy, tmp_path):
    d = artifact_copy
    contract = read_manifest(d).contract
    short = parse_profile("short:q_len=1:4:8,k_len=1:4:8,v_len=1:4:8", contract, 1)
    add_datacenter_engine(d, "model.tensorrt.engine", None, [default_profile(contract), short])
    result = write_triton_repo(d, tmp_path / "repo")
    model = tmp_path / "repo/perceiver-tiny-tensorrt"
    assert files_under(model) == ["1/model.plan", "config.pbtxt"]
    assert (model / "1/model.plan").read_bytes() == (d / "model.tensorrt.engine").read_bytes()
    config = parsed(model / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 4 and not config.cc_model_filenames
    group = config.instance_group[0]
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and list(group.profile) == ["0", "1"]
    onnx_config = parsed(tmp_path / "repo/perceiver-tiny/config.pbtxt")
    assert tensors(config.input) == tensors(onnx_config.input) and tensors(config.output) == tensors(onnx_config.output)
    assert f"sha256 {sha256_of(d / 'model.tensorrt.engine')}" in (model / "config.pbtxt").read_text()
    assert "# Profile 1 (short): batch 1..4, q_len 1..8, k_len 1..8, v_len 1..8\n" in (model / "config.pbtxt").read_text()
    assert any("does not record the GPU it was built on" in n for n in result.notes)
    assert any("only with the TensorRT version that built it (10.13.3.9)" in n for n in result.notes)


def test_datacenter_engines_per_compute_capability(artifact_copy, tmp_path):
    d = artifact_copy
    add_datacenter_engine(d, "h100.engine", ["sm90"])
    add_datacenter_engine(d, "l4.engine", ["sm89"])
    repo = tmp_path / "repo"
    assert main(["triton", str(d), "--repo", str(repo), "--trt-name", "tiny-trt"]) == 0
    model = repo / "tiny-trt"
    assert files_under(model) == ["1/model.sm89.plan", "1/model.sm90.plan", "config.pbtxt"]
    assert (model / "1/model.sm90.plan").read_bytes() == (d / "h100.engine").read_bytes()
    assert (model / "1/model.sm89.plan").read_bytes() == (d / "l4.engine").read_bytes()
    config = parsed(model / "config.pbtxt")
    assert dict(config.cc_model_filenames) == {"9.0": "model.sm90.plan", "8.9": "model.sm89.plan"}
    assert list(config.instance_group[0].profile) == ["0"]

    assert main(["triton", str(d), "--repo", str(tmp_path / "one"), "--engine", "l4.engine"]) == 0
    assert dict(parsed(tmp_path / "one/perceiver-tiny-tensorrt/config.pbtxt").cc_model_filenames) == {"8.9": "model.sm89.plan"}
    assert main(["triton", str(d), "--repo", str(tmp_path / "none"), "--no-engines"]) == 0
    assert [p.name for p in (tmp_path / "none").iterdir()] == ["perceiver-tiny"]


def test_engine_conflicts_are_errors_before_anything_is_written(artifact_copy, tmp_path):
    d, repo = artifact_copy, tmp_path / "repo"
    contract = read_manifest(d).contract
    add_datacenter_engine(d, "a.engine", ["sm90"])
    add_datacenter_engine(d, "b.engine", ["sm90"])
    with pytest.raises(ConfigError, match=r"engines a.engine and b.engine both target compute capability 9.0; .*pick one with --engine"):
        write_triton_repo(d, repo)
    assert not repo.exists()
    assert write_triton_repo(d, repo, TritonOptions(engine_files=["b.engine"])).models[1].files == {"1/model.sm90.plan": d / "b.engine"}

    short = parse_profile("short:q_len=1:4:8", contract, 1)
    add_datacenter_engine(d, "c.engine", ["sm89"], [default_profile(contract), short])
    with pytest.raises(ConfigError, match=r"engines a.engine and c.engine have different optimization profiles"):
        write_triton_repo(d, tmp_path / "other", TritonOptions(engine_files=["a.engine", "c.engine"]))
    with pytest.raises(ConfigError, match=r"--engine nope.engine: not an engine of .* \(it has: a.engine, b.engine, c.engine\)"):
        write_triton_repo(d, tmp_path / "other", TritonOptions(engine_files=["nope.engine"]))
    assert not (tmp_path / "other").exists()


def test_missing_artifact_exits_3_with_the_message(tmp_path, capsys):
    assert main(["triton", str(tmp_path / "nope"), "--repo", str(tmp_path / "repo")]) == 3
    assert "error (ArtifactError):" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_missing_artifact_message(tmp_path):
    with pytest.raises(ArtifactError, match=r"nope: not an artifact directory \(it does not exist\)"):
        write_triton_repo(tmp_path / "nope", tmp_path / "repo")


def test_damaged_file_is_refused_and_the_published_model_stays(artifact_copy, tmp_path):
    repo = tmp_path / "repo"
    write_triton_repo(artifact_copy, repo)
    before = {f: (repo / f).read_bytes() for f in files_under(repo)}
    with open(artifact_copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match=r"model.onnx: damaged"):
        write_triton_repo(artifact_copy, repo)
    assert {f: (repo / f).read_bytes() for f in files_under(repo)} == before
    assert [p.name for p in repo.iterdir()] == ["perceiver-tiny"]


def test_graph_that_disagrees_with_the_contract_is_refused(artifact_copy, tmp_path):
    model = onnx.load(str(artifact_copy / "model.onnx"))
    model.graph.input[3].name = "attention_mask"
    save_consistently(model, artifact_copy)
    with pytest.raises(ArtifactError, match=r"graph inputs \['attention_mask'\] are not in the manifest's contract"):
        write_triton_repo(artifact_copy, tmp_path / "repo")
    model.graph.input[3].name = "mask"
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    save_consistently(model, artifact_copy)
    with pytest.raises(ArtifactError, match=r"input 'q' is FLOAT16 in the graph but float32 in the contract"):
        write_triton_repo(artifact_copy, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_int8_graph_that_was_not_exported_is_an_error(tiny_fp32, tmp_path, capsys):
    assert main(["triton", str(tiny_fp32.directory), "--repo", str(tmp_path / "repo"), "--graph", "int8"]) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert "error (ConfigError): --graph int8:" in err and "has no 'int8' graph (it has: plain, optimized); export with --int8" in err


def test_rerun_replaces_our_model_and_leaves_the_others(tiny_fp32, tmp_path):
    repo = tmp_path / "repo"
    write_triton_repo(tiny_fp32.directory, repo)
    (repo / "perceiver-tiny/1/stale.txt").write_text("from an older run")
    (repo / "other/1").mkdir(parents=True)
    (repo / "other/config.pbtxt").write_text('name: "other"\n')
    stale_staging = repo / ".perceiver-tiny.staging-999999999-x"  # left by a killed run (no such process)
    stale_staging.mkdir()
    write_triton_repo(tiny_fp32.directory, repo, TritonOptions(version=2))
    assert files_under(repo / "perceiver-tiny") == ["2/model.onnx", "config.pbtxt"]
    assert (repo / "other/config.pbtxt").read_text() == 'name: "other"\n'
    assert sorted(p.name for p in repo.iterdir()) == ["other", "perceiver-tiny"]


def test_failed_copy_leaves_the_previous_model_whole(tiny_fp32, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    write_triton_repo(tiny_fp32.directory, repo)
    before = (repo / "perceiver-tiny/config.pbtxt").read_text()

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(triton_repo, "copy_durably", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_triton_repo(tiny_fp32.directory, repo, TritonOptions(version=5))
    assert (repo / "perceiver-tiny/config.pbtxt").read_text() == before
    assert sorted(p.name for p in repo.iterdir()) == ["perceiver-tiny"]


def test_without_tritonclient_the_config_is_written_with_a_note(tiny_fp32, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # `from tritonclient.grpc import ...` now fails
    result = write_triton_repo(tiny_fp32.directory, tmp_path / "repo")
    assert not result.validated
    assert any("not validated against Triton's schema" in n and "pip install perceiver-export[triton]" in n for n in result.notes)
    monkeypatch.undo()
    assert parsed(tmp_path / "repo/perceiver-tiny/config.pbtxt").max_batch_size == 4


def test_bad_options_are_config_errors(tiny_fp32, tmp_path):
    for options, message in ((TritonOptions(version=0), "--version must be >= 1"),
                             (TritonOptions(name="../up"), "--name '../up': a Triton model name"),
                             (TritonOptions(instances=0), "--instances must be >= 1")):
        with pytest.raises(ConfigError, match=message):
            write_triton_repo(tiny_fp32.directory, tmp_path / "repo", options)
    assert not (tmp_path / "repo").exists()


def test_cli_end_to_end(tiny_fp32, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["triton", str(tiny_fp32.directory), "--repo", str(repo)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"wrote {repo}/perceiver-tiny/ (onnxruntime_onnx, max_batch_size 4): config.pbtxt, 1/model.onnx" in out
    assert "configs validated with Triton's model_config.proto" in out
    assert f"-v {repo.resolve()}:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models" in out
    assert json.loads((tiny_fp32.directory / "manifest.json").read_text()).get("engines") is None  # the artifact is untouched


@pytest.mark.parametrize("kind,served,noted", [("cpu", "model.ort.onnx", False), ("auto", "model.onnx", True),
                                               ("gpu", "model.onnx", True)])
def test_default_graph_is_the_manifests_choice_on_a_cpu_instance_and_plain_elsewhere(artifact_copy, tmp_path, kind, served, noted):
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    manifest["default_graph"] = {"graph": "optimized", "chosen_by": "median ms at the opt shape on this machine", "cpu": "Test CPU"}
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    result = write_triton_repo(artifact_copy, tmp_path / "repo", TritonOptions(kind=kind))
    assert (tmp_path / "repo/perceiver-tiny/1/model.onnx").read_bytes() == (artifact_copy / served).read_bytes()
    note = ("serving the plain graph: the artifact's default graph 'optimized' was chosen for ONNX Runtime on a CPU "
            "(median ms at the opt shape on this machine, Test CPU); --kind cpu serves it, --graph optimized serves it on any instance")
    assert (note in result.notes) == noted


def test_repo_configs_are_their_json_form_and_mark_no_input_optional(artifact_copy, tmp_path):
    # The contract's optional mask stays required here: the exported graph needs it (ONNX Runtime refuses a feed
    # without it) and Triton's tensorrt backend refuses to load a model with an optional input. `serve` marks it
    # optional (tests/test_model_config.py), since it fills an absent mask itself.
    from google.protobuf import json_format

    add_datacenter_engine(artifact_copy, "h100.engine", ["sm90"])
    result = write_triton_repo(artifact_copy, tmp_path / "repo")
    contract = read_manifest(artifact_copy).contract
    assert {t.name for t in contract.inputs if t.optional} == {"mask"}
    assert [m.platform for m in result.models] == ["onnxruntime_onnx", "tensorrt_plan"]
    for model in result.models:
        config = parsed(tmp_path / "repo" / model.name / "config.pbtxt")
        assert config == json_format.ParseDict(model.settings, model_config_pb2.ModelConfig())
        assert [t.name for t in config.input] == ["q", "k", "v", "mask"]
        assert [t.name for t in config.input if t.optional] == []
    assert result.models[1].settings["cc_model_filenames"] == {"9.0": "model.sm90.plan"}
