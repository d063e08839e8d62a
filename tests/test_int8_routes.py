"""int8 routes: each written and verified, the fastest that passes kept and recorded; calibration inputs checked."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from perceiver_export.errors import ConfigError, InputError
from perceiver_export.export.artifact_builder import export_artifact
from perceiver_export.export.calibration import CalibrationReader, read_calibration
from perceiver_export.export.int8_routes import applicable_routes, route_score


def _calibration(path, rng, batch=4, q=8, k=8, v=8, dim=32, **extra):
    arrays = {"q": rng.standard_normal((batch, q, dim), dtype=np.float32),
              "k": rng.standard_normal((batch, k, dim), dtype=np.float32),
              "v": rng.standard_normal((batch, v, dim), dtype=np.float32), **extra}
    np.savez(path, **arrays)
    return path


def test_every_route_is_verified_and_the_fastest_passing_one_is_kept(tmp_path, tiny_spec, capsys):
    cal = _calibration(tmp_path / "cal.npz", np.random.default_rng(1), batch=8, q=16, k=24, v=24)
    result = export_artifact(tiny_spec, tmp_path / "a", int8=True, calibration=[cal])
    assert result.report.passed
    graphs = result.manifest.graphs
    assert set(graphs) == {"optimized", "int8"}
    entry = graphs["int8"]
    routes = entry["selection"]["routes"]
    assert set(routes) == {"dynamic", "dynamic-fused", "matmulnbits8", "static-qdq"}
    passed = {r: o for r, o in routes.items() if o["passed"]}
    assert entry["route"] in passed
    # Each passed route was timed at the opt and the max shape; the kept one has the best score over both.
    assert all(set(o["median_ms"]) == {"opt", "max"} and min(o["median_ms"].values()) > 0 for o in passed.values())
    medians = {label: {r: o["median_ms"][label] for r, o in passed.items()} for label in ("opt", "max")}
    assert entry["route"] == min(passed, key=lambda r: route_score(r, medians))
    assert all(0 < o["worst_max_abs_over_std"] for o in routes.values() if o["worst_max_abs_over_std"] is not None)
    assert all(o["worst_max_abs_over_std"] <= 0.1 for o in passed.values())
    assert entry["selection"]["shapes"] == {"opt": {"batch": 2, "q_len": 8, "k_len": 8, "v_len": 8},
                                            "max": {"batch": 4, "q_len": 16, "k_len": 24, "v_len": 24}}
    # Only the kept graph is in the artifact, under its final name, hashed; the report calls it onnxruntime-int8.
    files = sorted(p.name for p in result.directory.iterdir())
    assert [f for f in files if f.startswith("model.int8")] == ["model.int8.onnx"]
    assert "model.int8.onnx" in result.manifest.data["files"]
    assert {r.backend for r in result.report.results} == {"onnxruntime", "onnxruntime-optimized", "onnxruntime-int8"}
    assert f"int8 route kept: {entry['route']}" in result.report.notes
    stored = json.loads((result.directory / "manifest.json").read_text())
    assert stored["graphs"]["int8"]["route"] == entry["route"]
    from perceiver_export import runtime

    runtime.load(result.directory, graph="int8")  # re-reads and re-hashes every file
    from perceiver_export.cli.main import main

    assert main(["inspect", str(result.directory)]) == 0
    assert f"int8 (model.int8.onnx, route {entry['route']})" in capsys.readouterr().out


def test_a_named_route_is_the_only_one_written(tmp_path, tiny_spec):
    result = export_artifact(tiny_spec, tmp_path / "a", int8=True, int8_routes=["matmulnbits8"])
    entry = result.manifest.graphs["int8"]
    assert entry["route"] == "matmulnbits8" and list(entry["selection"]["routes"]) == ["matmulnbits8"]
    ops = {n.op_type for n in onnx.load(str(result.directory / "model.int8.onnx")).graph.node}
    assert "MatMulNBits" in ops
    assert entry["settings"] == {"bits": 8, "block_size": 32, "symmetric": True, "accuracy_level": 4}


def test_unverified_export_writes_the_dynamic_route_only(tmp_path, tiny_spec):
    result = export_artifact(tiny_spec, tmp_path / "a", int8=True, verify=False)
    assert result.manifest.graphs["int8"]["route"] == "dynamic" and "selection" not in result.manifest.graphs["int8"]
    with pytest.raises(ConfigError, match="choosing between routes needs their parity results"):
        export_artifact(tiny_spec, tmp_path / "b", int8=True, verify=False, int8_routes=["dynamic", "matmulnbits8"])


def test_route_requests_are_checked():
    assert applicable_routes(None, True, False) == ["dynamic", "dynamic-fused", "matmulnbits8"]
    assert applicable_routes(None, False, True) == ["dynamic", "matmulnbits8", "static-qdq"]
    with pytest.raises(ConfigError, match="unknown route 'fp4'; choose from dynamic, dynamic-fused, matmulnbits8, static-qdq"):
        applicable_routes(["fp4"], True, False)
    with pytest.raises(ConfigError, match="static-qdq needs calibration inputs"):
        applicable_routes(["static-qdq"], True, False)
    with pytest.raises(ConfigError, match="dynamic-fused quantizes the optimized graph: drop --no-optimize"):
        applicable_routes(["dynamic-fused"], False, False)


def test_calibration_without_int8_and_bad_calibration_files_are_refused(tmp_path, tiny_spec, tiny_fp32):
    rng = np.random.default_rng(0)
    good = _calibration(tmp_path / "good.npz", rng)
    with pytest.raises(ConfigError, match="choose how the int8 graph is made: add --int8"):
        export_artifact(tiny_spec, tmp_path / "a", calibration=[good])
    contract = tiny_fp32.manifest.contract
    wide = _calibration(tmp_path / "wide.npz", rng, dim=64)
    with pytest.raises(InputError, match=r"--calibration .*wide.npz: input 'q': expected size 32 on axis 2 .* got 64"):
        read_calibration([wide], contract)
    long = _calibration(tmp_path / "long.npz", rng, k=600)
    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, q=np.zeros((4, 8, 32), np.float32), k=np.zeros((3, 8, 32), np.float32), v=np.zeros((4, 8, 32), np.float32))
    with pytest.raises(InputError, match="every input needs the same number of samples .first axis., got q 4, k 3, v 4"):
        read_calibration([uneven], contract)
    with pytest.raises(InputError, match=r"input 'k': k_len \(axis 1\) must be in \[1, 24\], got 600"):
        read_calibration([long], contract)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ConfigError, match="text.npz: not a readable .npz file"):
        read_calibration([tmp_path / "text.npz"], contract)
    with pytest.raises(ConfigError, match="missing.npz: no such file"):
        read_calibration([tmp_path / "missing.npz"], contract)
    # A file without the optional mask gets the all-True mask it stands for; batches come one at a time.
    sets = read_calibration([good], contract)
    assert sets[0]["mask"].shape == (4, 16) and sets[0]["mask"].all()
    reader = CalibrationReader(sets, batch=3)
    shapes = []
    while (b := reader.get_next()) is not None:
        shapes.append(b["q"].shape)
    assert shapes == [(3, 8, 32), (1, 8, 32)]


def test_route_score_weighs_both_shapes():
    medians = {"opt": {"a": 1.0, "b": 2.0}, "max": {"a": 40.0, "b": 10.0}}
    assert route_score("a", medians) == pytest.approx(2.0)  # sqrt(1 x 4)
    assert route_score("b", medians) == pytest.approx(2 ** 0.5)  # sqrt(2 x 1): b is kept
    assert route_score("a", {}) == 0.0

