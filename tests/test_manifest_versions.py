"""Manifest schema versions: an artifact of the current version kept as it was written (tests/fixtures/artifact-v1)
keeps loading and passing parity; a newer or an older version is refused with what to do; an upgrade step, where
one exists, reads an older version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from perceiver_export import runtime
from perceiver_export.artifact import manifest as manifest_module
from perceiver_export.artifact.manifest import SCHEMA_VERSION, read_manifest
from perceiver_export.errors import ArtifactError
from perceiver_export.verify.parity import verify_artifact

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "artifact-v1"


@pytest.fixture
def copy(tmp_path) -> Path:
    dst = tmp_path / "artifact"
    shutil.copytree(FIXTURE, dst)
    return dst


def rewrite(directory: Path, **changes) -> None:
    path = directory / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_the_kept_version_1_artifact_loads_and_passes_parity(copy):
    manifest = read_manifest(copy)
    assert manifest.data["schema_version"] == 2 == SCHEMA_VERSION  # upgraded in memory
    assert manifest.data["default_graph"] == {"graph": "plain", "chosen_by": "schema 1 rule"}
    assert json.loads((copy / "manifest.json").read_text())["schema_version"] == 1
    manifest.check_files()
    report = verify_artifact(copy, write=False)
    assert report.passed
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 4, 32), dtype=np.float32) for n in "qkv"}
    out = runtime.load(copy).infer(feeds)
    assert out.shape == (1, 4, 32)
    assert np.allclose(out, runtime.load(copy, backend="torch").infer(feeds), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("version,message", [
    (SCHEMA_VERSION + 1, r"schema_version 3 is not supported \(this version reads 1 to 2\): the artifact was written by a "
                         r"newer perceiver-export than this one \(0\.1\.0\); upgrade it \(`pip install -U perceiver-export`\)"),
    (0, r"schema_version 0 is not supported \(this version reads 1 to 2\): the artifact was written by an older "
        r"perceiver-export that this one \(0\.1\.0\) cannot read; re-export the model"),
    ("1", r"schema_version must be an integer, got '1'"),
])
def test_other_versions_are_refused_saying_what_to_do(copy, version, message):
    rewrite(copy, schema_version=version)
    with pytest.raises(ArtifactError, match=message):
        read_manifest(copy)


def test_an_upgrade_step_reads_an_older_version(copy, monkeypatch):
    """Version 0 did not exist; a step from it stands in for the one a future schema change adds."""
    rewrite(copy, schema_version=0, name="old-name")
    monkeypatch.setitem(manifest_module.UPGRADES, 0, lambda d: {**d, "schema_version": 1, "name": "upgraded"})
    manifest = read_manifest(copy)
    assert (manifest.data["schema_version"], manifest.data["name"]) == (2, "upgraded")  # then on through UPGRADES[1]
    assert json.loads((copy / "manifest.json").read_text())["schema_version"] == 0  # read in memory, not rewritten


def test_refusals_name_the_versions_the_upgrade_chain_reaches(monkeypatch):
    assert manifest_module.readable_versions() == "1 to 2"  # the C++ runtime's words too (test_cpp_hostile_inputs)
    monkeypatch.setitem(manifest_module.UPGRADES, 0, lambda d: d)
    assert manifest_module.readable_versions() == "0 to 2"
    monkeypatch.setattr(manifest_module, "UPGRADES", {})
    assert manifest_module.readable_versions() == "2"


@pytest.mark.parametrize("graphs,default", [({}, "plain"), ({"optimized": {"file": "model.ort.onnx"}}, "optimized"),
                                            ({"int8": {"file": "model.int8.onnx"}}, "plain")])
def test_version_1_default_graph_is_its_own_rule(graphs, default):
    """Version 1 had no default_graph: its runner took the optimized graph where there was one, never int8."""
    upgraded = manifest_module.UPGRADES[1]({"schema_version": 1, "graphs": graphs})
    assert upgraded["schema_version"] == 2
    assert upgraded["default_graph"] == {"graph": default, "chosen_by": "schema 1 rule"}


def test_a_default_graph_the_artifact_does_not_have_is_refused(copy):
    path = copy / "manifest.json"
    data = read_manifest(copy).data
    path.write_text(json.dumps({**data, "default_graph": {"graph": "optimized", "chosen_by": "hand-edited"}}))
    with pytest.raises(ArtifactError, match=r"default_graph 'optimized' is not one of its graphs \(plain\)"):
        read_manifest(copy)
