"""The default ONNX Runtime graph is chosen by measurement: the fastest graph verified at the artifact's tolerance,
never one slower than plain, never int8; the runner follows the manifest; inspect and bench show and re-make it."""

from __future__ import annotations

import json
import shutil

import pytest

from perceiver_export import runtime
from perceiver_export.artifact.manifest import read_manifest
from perceiver_export.export import graph_choice
from perceiver_export.export.graph_choice import CHOSEN_BY, choose_fastest, describe, verified_graphs
from tests.test_cli import cli


@pytest.mark.parametrize("median_ms,chosen", [
    ({"plain": 1.00, "optimized": 0.97}, "optimized"),
    ({"plain": 1.00, "optimized": 1.03}, "plain"),  # the measurement: fused, 2-4% slower at large shapes
    ({"plain": 1.00, "optimized": 1.00}, "plain"),  # a tie is not a reason to leave the portable graph
    ({"plain": 1.00, "optimized": 1.2, "int8": 0.5}, "plain"),  # int8 changes the numbers: never the default
    ({"plain": 1.00, "optimized": 0.99, "other": 0.98}, "other"),
    ({"plain": 1.00}, "plain"),
])
def test_the_fastest_graph_wins_and_none_slower_than_plain(median_ms, chosen):
    assert choose_fastest(median_ms) == chosen


def test_export_records_the_choice_with_each_verified_graphs_median(tiny_fp32):
    entry = tiny_fp32.manifest.data["default_graph"]
    assert entry["chosen_by"] == CHOSEN_BY
    assert set(entry["median_ms"]) == {"plain", "optimized"} and all(ms > 0 for ms in entry["median_ms"].values())
    assert entry["graph"] == choose_fastest(entry["median_ms"])
    assert entry["shape"] == {"batch": 2, "q_len": 8, "k_len": 8, "v_len": 8}  # perceiver-tiny's opt
    assert entry["threads"] >= 1 and entry["cpu"] and isinstance(entry["simd"], list)
    assert read_manifest(tiny_fp32.directory).default_graph == entry["graph"]


def test_the_runner_follows_the_manifest(artifact_copy):
    for graph in ("plain", "optimized"):
        path = artifact_copy / "manifest.json"
        data = json.loads(path.read_text())
        data["default_graph"] = {"graph": graph, "chosen_by": "this test"}
        path.write_text(json.dumps(data))
        assert runtime.load(artifact_copy).graph == graph
        assert runtime.load(artifact_copy, graph="plain").graph == "plain"  # asked for: always that one


def test_only_graphs_verified_at_the_artifacts_tolerance_are_candidates(tiny_fp32):
    manifest = read_manifest(tiny_fp32.directory)
    assert verified_graphs(manifest) == ["plain", "optimized"]
    data = json.loads(json.dumps(manifest.data))
    for case in data["parity"]["cases"]:
        if case["backend"] == "onnxruntime-optimized":
            case["tolerance"] = {"atol": 1.0, "rtol": 1.0}  # passed, but only at a looser tolerance
    manifest.data = data
    assert verified_graphs(manifest) == ["plain"]


def test_no_verify_or_no_timing_leaves_plain_saying_why(tmp_path, tiny_spec):
    from perceiver_export.export.artifact_builder import export_artifact

    result = export_artifact(tiny_spec, tmp_path / "a", verify=False)
    assert result.manifest.data["default_graph"] == {"graph": "plain", "chosen_by": "plain: not timed (--no-verify)"}
    assert runtime.load(result.directory).graph == "plain"
    result = export_artifact(tiny_spec, tmp_path / "b", time_graphs=False)
    assert result.manifest.data["default_graph"]["chosen_by"] == "plain: not timed (--no-time-graphs)"


def test_a_slower_optimized_graph_is_not_the_default(artifact_copy, monkeypatch):
    monkeypatch.setattr(graph_choice, "time_graphs", lambda manifest, graphs, threads, budget_s=0: {"plain": 1.0, "optimized": 1.03})
    manifest = read_manifest(artifact_copy)
    entry = graph_choice.choose_default_graph(manifest, threads=1)
    assert entry["graph"] == "plain" and entry["median_ms"] == {"plain": 1.0, "optimized": 1.03}
    assert describe(entry).startswith("plain (median at batch 2, q_len 8, k_len 8, v_len 8: plain 1 ms, optimized 1.03 ms; 1 thread;")


def test_inspect_shows_the_choice_and_bench_re_chooses_it(artifact_copy):
    shown = cli("inspect", str(artifact_copy))
    assert shown.returncode == 0, shown.stderr
    assert "graphs: plain (model.onnx), optimized (model.ort.onnx)" in shown.stdout
    assert "default graph: " in shown.stdout and "(median at batch 2, q_len 8, k_len 8, v_len 8: plain " in shown.stdout
    path = artifact_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["default_graph"] = {"graph": "plain", "chosen_by": "hand-edited"}
    path.write_text(json.dumps(data))
    r = cli("bench", str(artifact_copy), "--choose-default", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "default graph: " in r.stdout and "(was plain)" in r.stdout
    entry = json.loads(path.read_text())["default_graph"]
    assert entry["chosen_by"] == CHOSEN_BY and entry["threads"] == 1 and set(entry["median_ms"]) == {"plain", "optimized"}


def test_a_version_1_artifact_is_re_chosen_and_written_as_version_2(tmp_path):
    from tests.test_manifest_versions import FIXTURE

    copy = tmp_path / "v1"
    shutil.copytree(FIXTURE, copy)
    r = cli("bench", str(copy), "--choose-default", "--threads", "1")
    assert r.returncode == 0, r.stderr
    data = json.loads((copy / "manifest.json").read_text())
    assert data["schema_version"] == 2
    # The kept artifact has only the plain graph: nothing to time against.
    assert data["default_graph"] == {"graph": "plain", "chosen_by": "plain: the only verified graph"}
