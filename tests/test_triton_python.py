"""`triton --backend python`: the repository it writes, and its model.py driven in-process.

Triton's `triton_python_backend_utils` lives in Triton's C++ stub and cannot be imported outside it, so these tests
put a small stand-in for it (tests/triton_stub/) into sys.modules: requests, tensors, responses and errors, what
model.py touches; the runner, the contract and the padding behind it are the real ones. tests/test_triton_server.py runs the same
repository on a real Triton.
"""

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from perceiver_export import runtime
from perceiver_export.artifact.manifest import read_manifest
from perceiver_export.cli.main import main
from perceiver_export.errors import ConfigError, InputError
from perceiver_export.serving import triton_python_model, triton_repo
from perceiver_export.serving.triton_repo import TritonOptions, write_triton_repo
from perceiver_export.verify.compare import TOLERANCES, compare
from tests.test_triton import add_datacenter_engine

TOL = TOLERANCES["float32"]


STUB_DIR = Path(__file__).with_name("triton_stub")


def fake_pb_utils() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("triton_python_backend_utils", STUB_DIR / "triton_python_backend_utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pb = fake_pb_utils()
Request = pb.Request


# ---- helpers ----------------------------------------------------------------------------------
def parsed(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def load_written_model(model_dir: Path, monkeypatch):
    """model.py as Triton loads it: the copied file, `initialize` given the config in Triton's JSON form."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.setattr(sys, "path", list(sys.path))  # model.py appends site-packages to it
    spec = importlib.util.spec_from_file_location("written_model", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json_format.MessageToDict(parsed(model_dir / "config.pbtxt"), preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(model_dir), "model_version": "1",
                      "model_instance_kind": "CPU", "model_name": model_dir.name})
    return model


class Recorder:
    """Wraps the runner's infer to see the batches model.py sends (the runner itself still runs)."""

    def __init__(self, runner):
        self.runner, self.calls = runner, []
        self.contract, self.manifest = runner.contract, runner.manifest

    def infer(self, feeds):
        self.calls.append({k: v.shape for k, v in feeds.items()})
        return self.runner.infer(feeds)


def request_arrays(rng, rows, q_len, k_len, v_len, mask="random"):
    d = 32
    arrays = {"q": rng.standard_normal((rows, q_len, d), dtype=np.float32),
              "k": rng.standard_normal((rows, k_len, d), dtype=np.float32),
              "v": rng.standard_normal((rows, v_len, d), dtype=np.float32)}
    if mask == "random":
        m = rng.random((rows, k_len + v_len)) < 0.7
        m[:, 0] = m[:, k_len] = True  # every row attends to something in k and in v
        arrays["mask"] = m
    return arrays


def assert_matches_solo(response, arrays, runner):
    assert response.error is None, response.error and response.error.message()
    [tensor] = response.output_tensors
    assert tensor.name() == "out"
    solo = runner.infer(arrays)
    result = compare(tensor.as_numpy(), solo, TOL.atol, TOL.rtol)
    assert result.passed, (result.max_abs, result.max_rel)
    assert tensor.as_numpy().shape == solo.shape


@pytest.fixture(scope="module")
def python_repo(tiny_fp32, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton-python") / "repo"
    result = write_triton_repo(tiny_fp32.directory, repo, TritonOptions(backend="python", max_queue_delay_us=2000))
    return result, repo / result.models[0].name


@pytest.fixture(scope="module")
def solo_runner(tiny_fp32):
    return runtime.load(tiny_fp32.directory)


# ---- the written repository -------------------------------------------------------------------
def test_python_repository_parses_with_triton_schema_and_has_every_field(tiny_fp32, tmp_path, capsys):
    code = main(["triton", str(tiny_fp32.directory), "--repo", str(tmp_path / "repo"), "--backend", "python",
                 "--name", "tiny-py", "--instances", "3", "--max-queue-delay-us", "500", "--preferred-batch-size", "2",
                 "--preferred-batch-size", "4", "--max-queue-size", "64", "--queue-timeout-us", "250000",
                 "--graph", "plain", "--threads", "2", "--artifact-path", "/artifacts/tiny",
                 "--site-packages", "/env/lib/python3.11/site-packages", "--site-packages", "/opt/pe"])
    assert code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"wrote {tmp_path / 'repo' / 'tiny-py'}/ (python, max_batch_size 4): config.pbtxt, 1/model.py" in out
    assert "configs validated with Triton's model_config.proto (tritonclient)" in out
    assert f"tritonserver --model-repository={(tmp_path / 'repo').resolve()} " in out
    model_dir = tmp_path / "repo" / "tiny-py"
    assert sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file()) == ["1/model.py", "config.pbtxt"]
    assert (model_dir / "1" / "model.py").read_bytes() == Path(triton_python_model.__file__).read_bytes()
    config = parsed(model_dir / "config.pbtxt")
    contract = read_manifest(tiny_fp32.directory).contract
    assert config.name == "tiny-py" and config.backend == "python" and config.platform == ""
    assert config.max_batch_size == contract.axes["batch"].max == 4
    inputs = {t.name: t for t in config.input}
    assert list(inputs) == ["q", "k", "v", "mask"]
    assert [list(inputs[n].dims) for n in inputs] == [[-1, 32], [-1, 32], [-1, 32], [-1]]
    assert [n for n, t in inputs.items() if t.optional] == ["mask"]
    assert [n for n, t in inputs.items() if t.allow_ragged_batch] == ["k", "v", "mask"]
    assert inputs["mask"].data_type == model_config_pb2.TYPE_BOOL
    assert [(o.name, list(o.dims), o.data_type) for o in config.output] == [("out", [-1, 32], model_config_pb2.TYPE_FP32)]
    batching = config.dynamic_batching
    assert batching.max_queue_delay_microseconds == 500
    assert list(batching.preferred_batch_size) == [2, 4]
    policy = batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (64, 250000)
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    [group] = config.instance_group
    assert (group.count, group.kind) == (3, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        "site_packages": "/env/lib/python3.11/site-packages:/opt/pe", "artifact": "/artifacts/tiny",
        "backend": "onnxruntime", "graph": "plain", "threads": "2"}


def test_default_parameters_name_this_interpreters_packages_and_the_artifacts_absolute_path(python_repo, tiny_fp32):
    import perceiver_export

    result, model_dir = python_repo
    params = {k: v.string_value for k, v in parsed(model_dir / "config.pbtxt").parameters.items()}
    assert params["artifact"] == str(tiny_fp32.directory.resolve())
    paths = params["site_packages"].split(":")
    numpy_home = str(Path(np.__file__).resolve().parent.parent)
    assert numpy_home in paths  # the venv's site-packages
    assert str(Path(perceiver_export.__file__).resolve().parent.parent) in paths  # this checkout, even when not installed
    assert params["backend"] == "onnxruntime" and "graph" not in params and "threads" not in params
    assert result.validated and [m.platform for m in result.models] == ["python"]


def test_optional_is_set_exactly_where_the_model_accepts_a_missing_mask(artifact_copy, tmp_path, monkeypatch):
    """Every config the writer produces: mask optional in the Python model (which serves a request without it),
    required in the ONNX Runtime and TensorRT models (whose graph, or backend, cannot)."""
    import onnxruntime as ort

    add_datacenter_engine(artifact_copy, "h100.engine", ["sm90"])
    repo = tmp_path / "repo"
    write_triton_repo(artifact_copy, repo)
    write_triton_repo(artifact_copy, repo, TritonOptions(backend="python", name="tiny-python"))
    configs = {p.parent.name: parsed(p) for p in sorted(repo.glob("*/config.pbtxt"))}
    assert sorted(configs) == ["perceiver-tiny", "perceiver-tiny-tensorrt", "tiny-python"]
    optional = {name: [t.name for t in c.input if t.optional] for name, c in configs.items()}
    assert optional == {"perceiver-tiny": [], "perceiver-tiny-tensorrt": [], "tiny-python": ["mask"]}
    ragged = {name: [t.name for t in c.input if t.allow_ragged_batch] for name, c in configs.items()}
    assert ragged == {"perceiver-tiny": [], "perceiver-tiny-tensorrt": [], "tiny-python": ["k", "v", "mask"]}
    assert "(the Python-backend model, `triton --backend python`, takes requests without it)" in (
        repo / "perceiver-tiny" / "config.pbtxt").read_text()

    arrays = request_arrays(np.random.default_rng(0), 1, 4, 5, 6, mask=None)
    # The ONNX model Triton's onnxruntime backend would run refuses a feed without mask ...
    session = ort.InferenceSession(str(repo / "perceiver-tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"Required inputs \(\['mask'\]\) are missing"):
        session.run(None, arrays)
    # ... and the Python model answers it.
    model = load_written_model(repo / "tiny-python", monkeypatch)
    [response] = model.execute([Request(**arrays)])
    assert_matches_solo(response, arrays, model.runner)


def test_the_onnxruntime_repository_says_why_mask_stays_required(tiny_fp32, tmp_path, capsys):
    assert main(["triton", str(tiny_fp32.directory), "--repo", str(tmp_path / "repo")]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert ("note: mask is required in the onnxruntime and tensorrt configs (the exported graph needs it, and Triton's "
            "tensorrt backend refuses optional inputs): send all True, or write the Python-backend model "
            "(--backend python), which takes requests without it") in out


@pytest.mark.parametrize("argv, message", [
    (["--runner", "torch"], "--runner is an option of the Python-backend model: add --backend python"),
    (["--artifact-path", "/a"], "--artifact-path is an option of the Python-backend model: add --backend python"),
    (["--backend", "python", "--runner", "torch", "--graph", "plain"],
     "--graph chooses an ONNX Runtime graph, not one of the torch runner"),
    (["--backend", "python", "--preferred-batch-size", "8"],
     "--preferred-batch-size 8: above max_batch_size 4 (the contract's batch max)"),
    (["--backend", "python", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["--backend", "python", "--max-queue-size", "-1"], "--max-queue-size must be >= 0, got -1"),
    (["--backend", "python", "--graph", "int8"], "has no 'int8' graph"),
    (["--backend", "python", "--runner", "tensorrt", "--threads", "2"], "--threads: the tensorrt runner takes no thread count"),
    (["--backend", "python", "--device", "cuda"], "--device is an option of the torch and tensorrt runners, not of onnxruntime"),
])
def test_bad_options_exit_3_with_the_message_and_write_nothing(tiny_fp32, tmp_path, capsys, argv, message):
    code = main(["triton", str(tiny_fp32.directory), "--repo", str(tmp_path / "repo"), *argv])
    assert code == 3  # a ConfigError
    assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "repo").exists()


def test_options_reach_the_runner_options_of_the_parameters(tiny_fp32, tmp_path):
    result = write_triton_repo(tiny_fp32.directory, tmp_path / "repo",
                               TritonOptions(backend="python", runner="torch", threads=1, device="cpu", kind="gpu"))
    config = parsed(tmp_path / "repo" / "perceiver-tiny" / "config.pbtxt")
    assert {k: v.string_value for k, v in config.parameters.items() if k not in ("site_packages", "artifact")} == {
        "backend": "torch", "threads": "1", "device": "cpu"}
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    with pytest.raises(ConfigError, match="--site-packages: a path may not contain ':'"):
        write_triton_repo(tiny_fp32.directory, tmp_path / "repo2", TritonOptions(backend="python", site_packages=["/a:/b"]))
    assert result.models[0].files == {"1/model.py": triton_repo.PYTHON_MODEL}


# ---- model.py in-process ----------------------------------------------------------------------
def test_site_packages_are_added_after_the_stubs_paths_with_their_pth_files(python_repo, tmp_path, monkeypatch):
    _, model_dir = python_repo
    site_dir, elsewhere = tmp_path / "site", tmp_path / "editable"
    (site_dir / "only_in_that_env").mkdir(parents=True)
    (site_dir / "only_in_that_env" / "__init__.py").write_text("WHERE = 'site'\n")
    (elsewhere / "named_by_a_pth").mkdir(parents=True)
    (elsewhere / "named_by_a_pth" / "__init__.py").write_text("WHERE = 'pth'\n")
    (site_dir / "__editable__.x.pth").write_text(f"{elsewhere}\n")  # how pip points at an editable install
    config = json_format.MessageToDict(parsed(model_dir / "config.pbtxt"), preserving_proto_field_name=True)
    config["parameters"]["site_packages"]["string_value"] += f":{site_dir}"
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("only_in_that_env", "named_by_a_pth"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    before = list(sys.path)
    model = triton_python_model.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(model_dir)})
    assert sys.path[:len(before)] == before  # the stub's own paths stay first
    assert sys.path[-2:] == [str(site_dir), str(elsewhere)]
    assert importlib.import_module("only_in_that_env").WHERE == "site"
    assert importlib.import_module("named_by_a_pth").WHERE == "pth"


def test_an_isolated_interpreter_finds_this_package_through_the_default_parameters(python_repo, tiny_fp32, tmp_path):
    """As Triton's stub runs model.py: `python -I` (PYTHONPATH ignored, no venv), only the config's parameters."""
    import perceiver_export

    base = getattr(sys, "_base_executable", sys.executable)
    if Path(base).resolve() == Path(sys.executable).resolve() and sys.prefix == sys.base_prefix:
        pytest.skip("not in a virtual environment: the base interpreter would find the packages by itself")
    _, model_dir = python_repo
    config = json_format.MessageToDict(parsed(model_dir / "config.pbtxt"), preserving_proto_field_name=True)
    driver = tmp_path / "stub.py"
    driver.write_text(f"""
import importlib.util, json, sys
sys.path.insert(0, {str(STUB_DIR)!r})  # Triton's stub provides triton_python_backend_utils
import triton_python_backend_utils as pb
spec = importlib.util.spec_from_file_location("model", {str(model_dir / "1" / "model.py")!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
model = module.TritonPythonModel()
model.initialize({{"model_config": {json.dumps(json.dumps(config))}, "model_repository": {str(model_dir)!r}}})
import numpy as np
import perceiver_export
rng = np.random.default_rng(1)
feeds = [{{"q": rng.standard_normal((1, 4, 32), dtype=np.float32), "k": rng.standard_normal((1, k, 32), dtype=np.float32),
          "v": rng.standard_normal((1, 25 - k, 32), dtype=np.float32)}} for k in (2, 20)]
responses = model.execute([pb.Request(**f) for f in feeds])
diff = max(float(np.abs(r.output_tensors[0].as_numpy() - model.runner.infer(f)).max()) for r, f in zip(responses, feeds))
print(json.dumps({{"package": perceiver_export.__file__, "diff": diff}}))
""")
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/nonexistent", "HOME": str(tmp_path)}
    done = subprocess.run([base, "-I", str(driver)], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(report["package"]).resolve() == Path(perceiver_export.__file__).resolve()
    assert report["diff"] <= TOL.atol


def test_batched_requests_of_k_v_lengths_1_to_24_equal_each_run_alone(python_repo, solo_runner, monkeypatch):
    _, model_dir = python_repo
    model = load_written_model(model_dir, monkeypatch)
    model.runner = Recorder(model.runner)
    rng = np.random.default_rng(22)
    lengths = list(range(1, 25))
    arrays = [request_arrays(rng, 1 + i % 2, 8 if i % 3 else 3, k, lengths[-1 - i], mask=None if i % 4 == 0 else "random")
              for i, k in enumerate(lengths)]
    responses = model.execute([Request(**a) for a in arrays])
    assert len(responses) == len(arrays)
    for response, a in zip(responses, arrays):
        assert_matches_solo(response, a, solo_runner)
    # Grouped by q_len (8 or 3), at most 4 rows a call, k and v padded to each call's longest with a mask.
    assert len(model.runner.calls) < len(arrays)
    assert max(c["q"][0] for c in model.runner.calls) == 4
    assert {c["q"][1] for c in model.runner.calls} == {8, 3}
    assert all("mask" in c for c in model.runner.calls if c["q"][0] > 2)
    assert sum(c["q"][0] for c in model.runner.calls) == sum(a["q"].shape[0] for a in arrays)


def test_requests_without_mask_are_batched_and_answered(python_repo, solo_runner, monkeypatch):
    _, model_dir = python_repo
    model = load_written_model(model_dir, monkeypatch)
    model.runner = Recorder(model.runner)
    rng = np.random.default_rng(7)
    arrays = [request_arrays(rng, 1, 5, k, v, mask=None) for k, v in ((1, 24), (24, 1), (9, 9), (3, 17))]
    responses = model.execute([Request(**a) for a in arrays])
    for response, a in zip(responses, arrays):
        assert_matches_solo(response, a, solo_runner)
    assert model.runner.calls == [{"q": (4, 5, 32), "k": (4, 24, 32), "v": (4, 24, 32), "mask": (4, 48)}]


def test_a_bad_request_gets_its_own_error_and_the_others_are_answered(python_repo, solo_runner, monkeypatch):
    _, model_dir = python_repo
    model = load_written_model(model_dir, monkeypatch)
    contract = solo_runner.contract
    rng = np.random.default_rng(3)
    good = [request_arrays(rng, 1, 6, 4, 10), request_arrays(rng, 1, 6, 12, 2, mask=None)]
    too_long = request_arrays(rng, 1, 6, 25, 3)
    wrong_dtype = {**request_arrays(rng, 1, 6, 4, 4), "k": rng.standard_normal((1, 4, 32))}
    bad_mask = {**request_arrays(rng, 1, 6, 4, 4), "mask": np.ones((1, 7), dtype=bool)}
    no_q = {k: v for k, v in request_arrays(rng, 1, 6, 4, 4).items() if k != "q"}
    requests = [good[0], too_long, wrong_dtype, good[1], bad_mask, no_q]
    responses = model.execute([Request(**a) for a in requests])
    assert_matches_solo(responses[0], good[0], solo_runner)
    assert_matches_solo(responses[3], good[1], solo_runner)
    for i in (1, 2, 4, 5):
        with pytest.raises(InputError) as expected:
            contract.check_inputs(requests[i])
        assert responses[i].output_tensors == []
        assert responses[i].error.message() == str(expected.value)
    assert "input 'q': required" in responses[5].error.message()
    assert "expected dtype float32, got float64" in responses[2].error.message()


def test_a_backend_failure_fails_only_its_batch(python_repo, solo_runner, monkeypatch):
    _, model_dir = python_repo
    model = load_written_model(model_dir, monkeypatch)
    real = model.runner

    class FailsOnQLen3(Recorder):
        def infer(self, feeds):
            if feeds["q"].shape[1] == 3:
                raise RuntimeError("device lost")
            return super().infer(feeds)

    model.runner = FailsOnQLen3(real)
    rng = np.random.default_rng(5)
    arrays = [request_arrays(rng, 1, 3, 4, 4), request_arrays(rng, 1, 8, 4, 4), request_arrays(rng, 1, 3, 9, 2)]
    responses = model.execute([Request(**a) for a in arrays])
    assert_matches_solo(responses[1], arrays[1], solo_runner)
    for i in (0, 2):
        assert responses[i].error.message() == "the backend failed on a batch of 2 request(s): RuntimeError: device lost"


@pytest.mark.parametrize("runner", ["torch", "openvino"])
def test_other_runners_serve_padded_batches_too(tiny_fp32, tmp_path, monkeypatch, solo_runner, runner):
    if runner == "openvino":
        pytest.importorskip("openvino")
    write_triton_repo(tiny_fp32.directory, tmp_path / "repo", TritonOptions(backend="python", runner=runner, threads=1))
    model = load_written_model(tmp_path / "repo" / "perceiver-tiny", monkeypatch)
    assert model.runner.backend == runner
    rng = np.random.default_rng(11)
    arrays = [request_arrays(rng, 1, 4, k, 25 - k) for k in (1, 12, 24)]
    for response, a in zip(model.execute([Request(**a) for a in arrays]), arrays):
        assert_matches_solo(response, a, solo_runner)
