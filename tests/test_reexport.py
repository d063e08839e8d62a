"""Re-export into an artifact directory: engines of the same model.onnx kept, everything else moved aside, never deleted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from perceiver_export.artifact.manifest import read_manifest
from perceiver_export.contract import AxisRange
from perceiver_export.engines.build import BuildOptions, build_engine
from perceiver_export.engines.flavor import installed_flavors
from perceiver_export.errors import ParityError
from perceiver_export.export.artifact_builder import export_artifact
from tests.conftest import REPO

ENGINE = "model.tensorrt_rtx.engine"
EXPORTED = ["manifest.json", "model.onnx", "model.ort.onnx", "weights.safetensors"]
needs_rtx = pytest.mark.skipif("tensorrt_rtx" not in installed_flavors(), reason="TensorRT-RTX is not installed (pip install tensorrt-rtx-cu13)")


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perceiver_export", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def exported_with_engine(tiny_spec, out, **kwargs):
    export_artifact(tiny_spec, out, seed=0, verify=False, **kwargs)
    build_engine(out, BuildOptions(flavor="tensorrt_rtx", compute_capabilities=["sm89"]))
    return read_manifest(out)


@needs_rtx
def test_reexport_keeps_the_engine_of_the_same_onnx_and_moves_bench_kserve_and_other_files_aside(tmp_path, tiny_spec):
    out = tmp_path / "tiny"
    before = exported_with_engine(tiny_spec, out)
    engine_bytes = (out / ENGINE).read_bytes()
    bench = cli("bench", out, "--backends", "onnxruntime", "--grid", "1:8:8:8", "--iterations", "1", "--seconds", "0",
                "--threads", "1")
    assert bench.returncode == 0, bench.stderr
    kserve = cli("kserve", out, "--image", "example.com/perceiver:1")
    assert kserve.returncode == 0, kserve.stderr
    kserve_text = (out / "inferenceservice.yaml").read_text()
    (out / "notes.txt").write_text("mine")

    r = cli("onnx", "--config", "perceiver-tiny", "--out", out, "--seed", "0", "--no-verify")
    assert r.returncode == 0, r.stderr
    assert f"kept from the previous artifact (built from the same model.onnx): {ENGINE}\n" in r.stdout
    assert (f"moved aside to {out}.previous/ with the previous artifact: bench/, inferenceservice.yaml, notes.txt\n"
            in r.stdout)

    after = read_manifest(out)
    after.check_files()  # the carried engine is listed with its hash
    assert sorted(p.name for p in out.iterdir()) == sorted([*EXPORTED, ENGINE])
    assert after.engines == {ENGINE: before.engines[ENGINE]} and (out / ENGINE).read_bytes() == engine_bytes
    assert after.data["files"][ENGINE] == before.data["files"][ENGINE]
    previous = tmp_path / "tiny.previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny", "tiny.previous"]
    assert [x["backend"] for x in json.loads((previous / "bench" / "bench.json").read_text())["results"]] == ["torch", "onnxruntime"]
    assert (previous / "inferenceservice.yaml").read_text() == kserve_text
    assert (previous / "notes.txt").read_text() == "mine"
    read_manifest(previous).check_files()  # the previous artifact is there whole, its engine too


@needs_rtx
def test_reexport_with_another_seed_moves_the_engine_aside_and_replaces_an_older_previous(tmp_path, tiny_spec):
    out = tmp_path / "tiny"
    before = exported_with_engine(tiny_spec, out)
    older = tmp_path / "tiny.previous"
    older.mkdir()
    (older / "older.txt").write_text("from an earlier re-export")

    result = export_artifact(tiny_spec, out, seed=1, verify=False)
    assert result.carried == [] and result.moved_aside == [ENGINE] and result.previous == older
    assert result.not_carried == {ENGINE: "built from a different model.onnx"}
    assert result.carryover_lines() == [
        f"moved aside to {older}/ with the previous artifact: {ENGINE} (built from a different model.onnx)"]
    assert sorted(p.name for p in out.iterdir()) == EXPORTED and read_manifest(out).engines == {}
    kept = read_manifest(older)
    kept.check_files()
    assert kept.engines == before.engines and not (older / "older.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny", "tiny.previous"]


@needs_rtx
def test_an_engine_built_for_other_axis_ranges_is_moved_aside_though_the_onnx_is_the_same(tmp_path, tiny_spec):
    out = tmp_path / "tiny"
    before = exported_with_engine(tiny_spec, out)
    wider = tiny_spec.with_axes({"q_len": AxisRange.parse("1:4:16", "--q-len")})
    result = export_artifact(wider, out, seed=0, verify=False)
    assert result.manifest.data["files"]["model.onnx"] == before.data["files"]["model.onnx"]  # same graph bytes
    assert result.not_carried == {ENGINE: "built for other input names, types or ranges"}
    assert result.moved_aside == [ENGINE] and not (out / ENGINE).exists()


def test_reexport_of_only_the_exports_own_files_keeps_no_previous(tmp_path, tiny_spec):
    out = tmp_path / "a"
    export_artifact(tiny_spec, out, seed=1, verify=False)
    result = export_artifact(tiny_spec, out, seed=2, verify=False)
    assert result.moved_aside == [] and result.previous is None and result.carryover_lines() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_failed_reexport_leaves_the_old_artifact_and_its_derived_files_as_they_were(tmp_path, tiny_spec):
    out = tmp_path / "tiny"
    export_artifact(tiny_spec, out, seed=0, verify=False)
    (out / "bench").mkdir()
    (out / "bench" / "bench.json").write_text("{}")
    listing = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    manifest = (out / "manifest.json").read_bytes()
    with pytest.raises(ParityError, match="was left as it was"):
        export_artifact(tiny_spec, out, seed=0, atol=0.0, rtol=0.0, time_graphs=False)  # no graph is exact: fails
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == listing
    assert (out / "manifest.json").read_bytes() == manifest and (out / "bench" / "bench.json").read_text() == "{}"
    assert not (tmp_path / "tiny.previous").exists()
