"""Exporting a user's own module (`--model package.module:Class`): outputs read from the exported program,
unused and absent masks, and a clear error for each way a module can fail the call contract."""

import json
import re
import shlex
import shutil

import numpy as np
import pytest
import torch

from perceiver_export import runtime
from perceiver_export.artifact.weights import save_weights
from perceiver_export.cli.main import main
from perceiver_export.config import load_spec
from perceiver_export.errors import BackendUnavailableError, ConfigError, DynamicAxisError, InputError, ParityError
from perceiver_export.export.artifact_builder import export_artifact
from perceiver_export.verify.parity import require_parity, verify_artifact
from tests.conftest import REPO
from tests.test_cli import cli

EXAMPLES = "models.custom_layers"


def spec_for(module: str, **args):
    return load_spec("perceiver-tiny").with_module(module, args)


@pytest.fixture(scope="module")
def context_encoder(tmp_path_factory):
    """Output (batch, k_len + v_len, dim); takes a mask and ignores it."""
    return export_artifact(spec_for(f"{EXAMPLES}:ContextEncoder", dim=32), tmp_path_factory.mktemp("ce") / "a")


@pytest.fixture(scope="module")
def cross_attention(tmp_path_factory):
    """k and v wider (48) than q (32); the mask parameter is called context_mask."""
    spec = spec_for(f"{EXAMPLES}:LatentCrossAttention", query_dim=32, context_dim=48)
    return export_artifact(spec, tmp_path_factory.mktemp("ca") / "a")


def test_output_axes_come_from_the_exported_program(context_encoder):
    manifest = context_encoder.manifest
    out = manifest.data["contract"]["outputs"][0]
    assert out["dims"] == ["batch", "k_len + v_len", 32] and out["max_shape"] == [4, 48, 32]
    assert out["doc"] == f"output of {EXAMPLES}:ContextEncoder"
    assert manifest.data["model"] == {"class": f"{EXAMPLES}:ContextEncoder", "config": {"dim": 32}}
    assert manifest.data["name"] == "context-encoder"
    assert context_encoder.report.passed and len(context_encoder.report.results) >= 11


def test_an_ignored_mask_stays_an_input_every_runner_takes(context_encoder):
    assert [t.name for t in context_encoder.manifest.contract.inputs] == ["q", "k", "v", "mask"]
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((3, n, 32), dtype=np.float32) for n in (5, 7, 9))
    mask = rng.random((3, 16)) < 0.5
    outs = [runtime.load(context_encoder.directory, backend=b)(q, k, v, m) for b in ("onnxruntime", "torch") for m in (None, mask)]
    assert all(o.shape == (3, 16, 32) for o in outs)
    np.testing.assert_allclose(outs[0], outs[1], atol=0)  # the graph ignores the mask too
    np.testing.assert_allclose(outs[0], outs[2], atol=1e-5)
    with pytest.raises(InputError, match=r"input 'mask': expected k_len \+ v_len = 7 \+ 9 = 16 positions, got 15"):
        runtime.load(context_encoder.directory)(q, k, v, mask[:, :15])


def test_context_dim_and_differently_named_parameters(cross_attention):
    contract = cross_attention.manifest.contract
    assert contract.spec("q").dims == ("batch", "q_len", 32) and contract.spec("k").dims == ("batch", "k_len", 48)
    assert contract.outputs[0].dims == ("batch", "q_len", 32)
    assert cross_attention.report.passed
    masked = [r for r in cross_attention.report.results if r.case.mask != "none"]
    assert masked and all(r.comparison.passed for r in masked)
    q = np.zeros((1, 4, 32), np.float32)
    with pytest.raises(InputError, match=r"input 'k': expected size 48 on axis 2 \(batch, k_len, 48\), got 32"):
        runtime.load(cross_attention.directory)(q, np.zeros((1, 3, 32), np.float32), np.zeros((1, 3, 48), np.float32))


def test_module_without_a_mask_parameter(tmp_path):
    result = export_artifact(spec_for("tests.user_layers:NoMask", dim=32), tmp_path / "a")
    contract = result.manifest.contract
    assert contract.input_names == ("q", "k", "v") and result.report.passed
    # Every shape of the grid once: without a mask input its mask kinds would repeat the same inputs.
    cases = [r.case for r in result.report.results if r.backend == "onnxruntime"]
    assert {c.mask for c in cases} == {"none"} and len({tuple(c.sizes.items()) for c in cases}) == 12
    assert len(cases) == 12 + sum(c.name.endswith(" (again)") for c in cases)  # run_order's repeats
    q, k, v = (np.ones((2, n, 32), np.float32) for n in (3, 4, 5))
    assert runtime.load(result.directory)(q, k, v).shape == (2, 3, 32)
    with pytest.raises(InputError, match=r"unknown input 'mask': expected one of q, k, v"):
        runtime.load(result.directory)(q, k, v, np.ones((2, 9), bool))


def test_engine_builds_with_an_ignored_mask_input(context_encoder, tmp_path):
    from perceiver_export.engines.build import BuildOptions, build_engine
    from perceiver_export.engines.flavor import installed_flavors

    if "tensorrt_rtx" not in installed_flavors():
        pytest.skip("TensorRT-RTX is not installed (pip install tensorrt-rtx-cu13)")
    d = tmp_path / "a"
    shutil.copytree(context_encoder.directory, d)
    result = build_engine(d, BuildOptions(flavor="tensorrt_rtx", compute_capabilities=["sm89"]))
    shapes = result.entry["profiles"][0]["shapes"]
    assert shapes["mask"] == {"min": [1, 2], "opt": [2, 16], "max": [4, 48]}


def test_triton_config_of_a_user_module_follows_its_contract(context_encoder, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from perceiver_export.serving.triton_repo import write_triton_repo

    write_triton_repo(context_encoder.directory, tmp_path / "repo")
    config = text_format.Parse((tmp_path / "repo" / "context-encoder" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.max_batch_size == 4
    assert [(t.name, list(t.dims)) for t in config.input] == [("q", [-1, 32]), ("k", [-1, 32]), ("v", [-1, 32]), ("mask", [-1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("out", [-1, 32])]  # (batch, k_len + v_len, 32)


def test_bench_counts_a_user_modules_flops(context_encoder, tmp_path):
    from perceiver_export.bench.flops import counted_flops
    from perceiver_export.bench.run import BenchSettings, run_bench

    d = tmp_path / "a"
    shutil.copytree(context_encoder.directory, d)
    data = run_bench(d, BenchSettings(backends=["torch", "onnxruntime"], grid=[(2, 8, 8, 8)], min_iters=1, max_iters=2, seconds=0.01))
    rows = {r["backend"]: r for r in data["results"]}
    # MultiheadAttention over 16 context tokens and 8 latents, dim 32, and the 32 -> 64 -> 32 feed-forward:
    # in/out projections 2*2*(16*32*32 + 2*8*32*32 + 16*32*32), scores and mix 2*2*16*8*32, FF 2*2*16*32*64 ...
    model = runtime.load(d, backend="torch").model
    feeds = {"q": np.zeros((2, 8, 32), np.float32), "k": np.zeros((2, 8, 32), np.float32), "v": np.zeros((2, 8, 32), np.float32)}
    expected = 2 * 2 * (16 * 32 * 32 + 2 * 8 * 32 * 32 + 16 * 32 * 32) + 2 * 2 * 2 * 16 * 8 * 32 + 2 * 2 * 2 * 16 * 32 * 64
    assert counted_flops(model, feeds) == expected
    assert rows["torch"]["flops"] == rows["onnxruntime"]["flops"] == expected
    assert rows["onnxruntime"]["max_abs_error_over_std"] < 1e-4


# ---- errors, each naming what went wrong ------------------------------------------------------------


@pytest.mark.parametrize(
    "module,args,message",
    [
        ("no_such_package.layers:Thing", {}, r"cannot import 'no_such_package.layers': ModuleNotFoundError"),
        ("tests.user_layers:Missing", {}, r"has no attribute 'Missing'; its nn.Module classes: .*Exploding.*NoMask"),
        ("json:dumps", {}, r"is not a torch.nn.Module subclass"),
        ("not a reference", {}, r"expected package.module:Class"),
        ("tests.user_layers:NoMask", {"dim": 32, "heads": 2}, r"unknown constructor argument\(s\) \['heads'\]; NoMask takes \['dim'\]"),
    ],
)
def test_import_and_arguments_errors(module, args, message):
    with pytest.raises(ConfigError, match=message):
        load_spec("perceiver-tiny").with_module(module, args)


def test_constructor_failure_quotes_the_call(tmp_path):
    spec = spec_for("tests.user_layers:Exploding", dim=32)
    with pytest.raises(ConfigError, match=re.escape('Exploding(**{"dim": 32}) failed: ValueError: dim 32 is not a multiple of 7')):
        export_artifact(spec, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_call_contract_and_feature_size_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"forward\(q, context\) does not follow the call contract forward\(q, k, v, mask=None\)"):
        export_artifact(spec_for("tests.user_layers:TwoArguments"), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"cannot tell the feature size of q, k and v .*: pass --dim N"):
        export_artifact(spec_for("tests.user_layers:Unsized", width=32), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"the module returns 2 tensors .*; the call contract has one output tensor"):
        export_artifact(spec_for("tests.user_layers:TwoOutputs", dim=32), tmp_path / "a")


def test_specialised_axis_names_input_axis_and_the_range_that_works(tmp_path):
    spec = spec_for("tests.user_layers:FixedLatents", dim=32)
    with pytest.raises(DynamicAxisError) as info:
        export_artifact(spec, tmp_path / "a")
    assert info.value.problems == [
        "input 'q' axis 1 (q_len): the module specialises it to the constant 8 (declared range [1, 16]); "
        "export it fixed with --q-len 8, or make the module accept any q_len"
    ]
    # What the message suggests does export, and passes parity.
    from perceiver_export.contract import AxisRange

    result = export_artifact(spec.with_axes({"q_len": AxisRange.parse("8")}), tmp_path / "b")
    assert result.report.passed and result.manifest.contract.spec("q").dims == ("batch", "q_len", 32)


def test_narrowed_axis_says_what_range_does_work(tmp_path):
    spec = spec_for("tests.user_layers:ShortContext", dim=32)
    with pytest.raises(DynamicAxisError, match=re.escape(
        "input 'k' axis 1 (k_len): the module only works for k_len in [1, 12], not the declared [1, 24]; "
        "export with --k-len 1:8:12"
    )):
        export_artifact(spec, tmp_path / "a")
    from perceiver_export.contract import AxisRange

    assert export_artifact(spec.with_axes({"k_len": AxisRange(1, 8, 12)}), tmp_path / "b").report.passed


def test_tied_axes_are_refused(tmp_path):
    with pytest.raises(DynamicAxisError, match=r"input 'v' axis 1 \(v_len\): the module ties it to another axis \(v_len = k_len\)"):
        export_artifact(spec_for("tests.user_layers:PairedKV", dim=32), tmp_path / "a")


def test_checkpoint_that_does_not_match_lists_missing_and_unexpected_keys(tmp_path):
    other = torch.nn.Sequential(torch.nn.Linear(32, 32))
    path = tmp_path / "other.safetensors"
    save_weights(other, path)
    with pytest.raises(ConfigError, match=r"does not match the model: missing keys \['attn.in_proj_bias', 'attn.in_proj_weight', "
                                          r"'attn.out_proj.bias', 'attn.out_proj.weight'\], unexpected keys \['0.bias', '0.weight'\]"):
        export_artifact(spec_for("tests.user_layers:NoMask", dim=32), tmp_path / "a", checkpoint=path)


def test_checkpoint_weights_are_the_ones_exported(tmp_path):
    torch.manual_seed(123)
    trained = __import__("tests.user_layers", fromlist=["NoMask"]).NoMask(32)
    path = tmp_path / "trained.pt"
    torch.save(trained.state_dict(), path)
    result = export_artifact(spec_for("tests.user_layers:NoMask", dim=32), tmp_path / "a", checkpoint=path)
    q, k, v = (torch.randn(2, n, 32) for n in (3, 4, 5))
    with torch.no_grad():
        expected = trained.eval()(q, k, v).numpy()
    np.testing.assert_allclose(runtime.load(result.directory)(q.numpy(), k.numpy(), v.numpy()), expected, atol=1e-5)


def test_verify_needs_the_module_importable(context_encoder, tmp_path):
    d = tmp_path / "a"
    shutil.copytree(context_encoder.directory, d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["model"]["class"] = "gone_package.layers:ContextEncoder"
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailableError, match=r"cannot be rebuilt here: .*cannot import 'gone_package.layers'"):
        verify_artifact(d)
    assert runtime.load(d).contract.outputs[0].dims[1] == "k_len + v_len"  # ONNX Runtime needs no Python module


def test_a_backend_that_crashes_fails_parity_instead_of_aborting(context_encoder, tmp_path, monkeypatch):
    from perceiver_export.runtime.onnxrt.runner import OnnxRuntimeRunner

    original = OnnxRuntimeRunner._infer

    def crash_on_long_k(self, feeds, sizes):
        if sizes["k_len"] > 20:
            raise RuntimeError("kernel failed\nsecond line")
        return original(self, feeds, sizes)

    monkeypatch.setattr(OnnxRuntimeRunner, "_infer", crash_on_long_k)
    report = verify_artifact(context_encoder.directory, write=False)
    crashed = [r for r in report.results if r.comparison.error]
    assert crashed and all(r.case.sizes["k_len"] > 20 for r in crashed)
    assert {r.comparison.error for r in crashed} == {"RuntimeError: kernel failed"}
    assert len(report.failures) == len(crashed) and not report.passed
    with pytest.raises(ParityError, match=r"worst: onnxruntime '.*' \(.*\) failed to run: RuntimeError: kernel failed"):
        require_parity(report)


# ---- the command line ----------------------------------------------------------------------------------


def test_cli_errors_exit_3_with_the_message(tmp_path):
    assert main(["onnx", "--config", "perceiver-tiny", "--model", f"{EXAMPLES}:ContextEncoder", "--model-args", "[32]",
                 "--out", str(tmp_path / "a")]) == 3
    assert main(["onnx", "--config", "perceiver-tiny", "--dim", "64", "--out", str(tmp_path / "a")]) == 3  # ours: dim is in its spec
    assert main(["onnx", "--config", "perceiver-tiny", "--model-args", "{}", "--out", str(tmp_path / "a")]) == 3
    assert not (tmp_path / "a").exists()
    result = cli("onnx", "--config", "perceiver-tiny", "--model", "tests.user_layers:ShortContext", "--model-args", '{"dim": 32}',
                 "--out", str(tmp_path / "b"))
    assert result.returncode == 3
    assert "error (DynamicAxisError): ShortContext cannot be exported over the declared ranges" in result.stderr
    assert "export with --k-len 1:8:12" in result.stderr.replace("\n", " ")
    assert not (tmp_path / "b").exists()


def test_docs_example_runs_as_written(tmp_path):
    """The command on the docs' "Exporting your own module" page is run verbatim (with --out added)."""
    page = (REPO / "docs" / "user-modules.md").read_text()
    command = next(line for line in page.splitlines() if line.startswith("python -m perceiver_export onnx"))
    args = shlex.split(command)[3:]
    result = cli(*args, "--out", str(tmp_path / "readme"))
    assert result.returncode == 0, result.stderr
    assert "parity PASSED" in result.stdout
    manifest = json.loads((tmp_path / "readme" / "manifest.json").read_text())
    assert manifest["contract"]["outputs"][0]["dims"][1] == "k_len + v_len"
