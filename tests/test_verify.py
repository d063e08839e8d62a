"""Parity: the grid covers the ranges, statistics are right, damaged or tampered artifacts fail."""

import json

import numpy as np
import onnx
import pytest

from perceiver_export.contract import AxisRange, IOContract
from perceiver_export.errors import ArtifactError, ParityError
from perceiver_export.verify.compare import compare
from perceiver_export.verify.grid import case_inputs, parity_cases, run_order
from perceiver_export.verify.parity import require_parity, verify_artifact
from tests.conftest import openvino_backends, save_consistently


def test_grid_covers_min_max_of_each_axis_odd_lengths_and_masks():
    axes = {"batch": AxisRange(1, 2, 4), "q_len": AxisRange(1, 8, 16), "k_len": AxisRange(1, 8, 24), "v_len": AxisRange(1, 8, 24)}
    contract = IOContract.for_perceiver(32, "float32", axes)
    cases = parity_cases(contract)
    for axis, rng in axes.items():
        assert {c.sizes[axis] for c in cases} >= {rng.min, rng.max}
    assert {c.mask for c in cases} == {"none", "random", "row-masked"}
    odd = [c for c in cases if c.name == "odd lengths"][0].sizes
    assert odd["q_len"] % 2 and odd["k_len"] % 2 and odd["v_len"] % 2
    assert len({odd["q_len"], odd["k_len"], odd["v_len"]}) == 3 and odd["batch"] > 1
    row = [c for c in cases if c.mask == "row-masked"][0]
    feeds = case_inputs(contract, row, np.random.default_rng(0))
    assert feeds["mask"].shape == (3, odd["k_len"] + odd["v_len"])
    assert not feeds["mask"][0].any() and feeds["mask"][1:].any(axis=1).all()


@pytest.mark.parametrize("ranges", [
    {"batch": (1, 2, 4), "q_len": (1, 8, 16), "k_len": (1, 8, 24), "v_len": (1, 8, 24)},
    {"batch": (1, 1, 8), "q_len": (1, 32, 256), "k_len": (1, 32, 512), "v_len": (1, 32, 512)},  # min == opt
    {"batch": (2, 2, 2), "q_len": (4, 4, 4), "k_len": (1, 8, 24), "v_len": (3, 8, 24)},  # fixed axes
])
def test_run_order_starts_at_the_minimum_and_jumps_across_every_axis_both_ways(ranges):
    axes = {a: AxisRange(*r) for a, r in ranges.items()}
    contract = IOContract.for_perceiver(32, "float32", axes)
    cases = parity_cases(contract)
    order = run_order(cases, contract)
    assert all(order[0].sizes[a] == r.min for a, r in axes.items())
    for axis, r in axes.items():
        if r.min == r.max:
            continue
        pairs = {(a.sizes[axis], b.sizes[axis]) for a, b in zip(order, order[1:])}
        assert (r.min, r.max) in pairs and (r.max, r.min) in pairs, axis
    assert {c.name for c in cases} <= {c.name for c in order}  # the whole grid, then repeats, named as such
    assert len({c.name for c in order}) == len(order) and len(order) <= len(cases) + 4
    assert all(c.name.endswith(" (again)") for c in order[len(cases):])


def test_compare_reports_statistics_and_required_tolerances():
    ref = np.array([1.0, -2.0, 0.0, 4.0], np.float32)
    out = np.array([1.001, -2.0, 0.0005, 3.99], np.float32)
    c = compare(out, ref, atol=1e-4, rtol=1e-3)
    assert c.max_abs == pytest.approx(0.01, rel=1e-4)
    assert c.max_rel == pytest.approx(0.0025, rel=1e-3)  # 0.01 / 4; the miss at ref == 0 has no relative error
    assert not c.passed
    # 0.01 - 1e-3 * 4 = 0.006 is the smallest atol that passes at rtol 1e-3
    assert c.required_atol == pytest.approx(0.006, rel=1e-3)
    assert compare(out, ref, atol=c.required_atol * 1.0001, rtol=1e-3).passed
    assert c.required_rtol == float("inf")  # 0.0005 off a reference of exactly 0: only atol can cover it
    c = compare(out, ref, atol=6e-4, rtol=1e-3)
    assert c.required_rtol == pytest.approx((0.01 - 6e-4) / 4, rel=1e-3)
    assert compare(out, ref, atol=6e-4, rtol=c.required_rtol * 1.0001).passed


def test_compare_fails_on_nan():
    c = compare(np.array([np.nan, 1.0]), np.array([0.0, 1.0]), atol=1.0, rtol=1.0)
    assert c.nonfinite == 1 and not c.passed and c.as_dict()["max_abs"] is None


def test_fp16_parity_passes_with_documented_tolerance(tiny_fp16):
    report = tiny_fp16.report
    assert report.passed and report.tolerance.as_dict() == {"atol": 2e-2, "rtol": 1e-2}
    worst = max(r.comparison.max_abs for r in report.results)
    assert 1e-5 < worst < 2e-2  # half precision really ran: not bit-exact, within tolerance


def test_bf16_parity_uses_the_reference_evaluator_and_passes(tiny_bf16):
    report = tiny_bf16.report
    assert report.backends == ["onnx-reference"] and report.passed
    assert "no bfloat16 MatMul" in report.notes[0]
    assert 1e-3 < max(r.comparison.max_abs for r in report.results) < 1.5e-1


def test_verify_rewrites_parity_into_manifest(artifact_copy):
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    manifest["parity"] = None
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    report = verify_artifact(artifact_copy, seed=3)
    assert report.passed
    stored = json.loads((artifact_copy / "manifest.json").read_text())["parity"]
    assert stored["passed"] and stored["seed"] == 3 and len(stored["cases"]) == len(report.results)


def test_corrupted_onnx_is_reported_before_any_backend_parses_it(artifact_copy):
    path = artifact_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model.onnx: damaged: sha256 .* does not match the manifest's"):
        verify_artifact(artifact_copy)


def test_missing_and_truncated_files_are_named(artifact_copy):
    (artifact_copy / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="weights.safetensors: listed in the manifest but missing"):
        verify_artifact(artifact_copy)


def test_tampered_weights_with_consistent_hashes_fail_parity(artifact_copy):
    """A model that is not what eager computes must fail even when its files are internally consistent."""
    path = artifact_copy / "model.onnx"
    model = onnx.load(str(path))
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    arr = onnx.numpy_helper.to_array(biggest).copy()
    arr.flat[:: 7] += 0.05
    biggest.CopyFrom(onnx.numpy_helper.from_array(arr, biggest.name))
    save_consistently(model, artifact_copy)
    report = verify_artifact(artifact_copy)
    assert not report.passed and report.failures
    assert min(r.comparison.max_abs for r in report.results if r.backend == "onnxruntime") > 1e-3
    # every reader of model.onnx fails; model.ort.onnx was not touched
    assert {r.backend for r in report.failures} == {"onnxruntime", *openvino_backends()}
    with pytest.raises(ParityError, match=r"of \d+ parity cases failed; worst: (onnxruntime|openvino)"):
        require_parity(report)
    assert json.loads((artifact_copy / "manifest.json").read_text())["parity"]["passed"] is False


def test_export_that_fails_parity_leaves_previous_artifact_and_keeps_the_rejected_one(tmp_path, tiny_spec):
    from perceiver_export.export.artifact_builder import export_artifact

    out = tmp_path / "a"
    good = export_artifact(tiny_spec, out, verify=False)
    before = (out / "manifest.json").read_text()
    # An impossible tolerance: a real float32 graph never matches eager bit for bit everywhere.
    with pytest.raises(ParityError, match="was left as it was, the failing artifact is in") as err:
        export_artifact(tiny_spec, out, seed=5, atol=0.0, rtol=0.0)
    assert err.value.report is not None and not err.value.report.passed
    assert (out / "manifest.json").read_text() == before
    assert good.manifest.data["files"]["model.onnx"]["sha256"] == json.loads(before)["files"]["model.onnx"]["sha256"]
    assert (tmp_path / "a.rejected" / "manifest.json").is_file()


def test_external_data_outside_the_artifact_is_refused(tmp_path, tiny_spec):
    from perceiver_export import runtime
    from perceiver_export.export.artifact_builder import export_artifact

    d = export_artifact(tiny_spec, tmp_path / "a", external_data="always", optimize=False, verify=False).directory
    model = onnx.load(str(d / "model.onnx"), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = "../../etc/passwd"
    save_consistently(model, d)
    with pytest.raises(ArtifactError, match=r"points to external data '../../etc/passwd' outside the artifact"):
        runtime.load(d)
