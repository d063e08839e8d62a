"""Polygraphy interop (verify/polygraphy.py): saved inputs and eager outputs in its formats, and the commands `verify`
prints, run by Polygraphy itself on ONNX Runtime: passing on a good graph, failing on a damaged one, bisecting it."""

import re
import shlex
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest

from perceiver_export.artifact.manifest import read_manifest
from perceiver_export.engines.commands import Command
from perceiver_export.errors import BackendUnavailableError, ConfigError
from perceiver_export.verify.compare import TOLERANCES
from perceiver_export.verify.parity import verify_artifact
from perceiver_export.verify.polygraphy import (
    CaseRecorder,
    as_onnxrt,
    polygraphy_available,
    reduce_commands,
    run_polygraphy,
    save_polygraphy_data,
)
from tests.conftest import save_consistently
from tests.test_cli import cli

polygraphy = pytest.importorskip("polygraphy", reason="Polygraphy is a test dependency: pip install -e '.[test]'")


def damage(directory: Path) -> None:
    """Shift every 7th weight of the largest initializer and re-hash: a graph that loads but computes something else."""
    model = onnx.load(str(directory / "model.onnx"))
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    arr = onnx.numpy_helper.to_array(biggest).copy()
    arr.flat[::7] += 0.05
    biggest.CopyFrom(onnx.numpy_helper.from_array(arr, biggest.name))
    save_consistently(model, directory)


def printed(stdout: str, title: str) -> Command:
    """The command printed on the line after `title`, parsed back as a shell would (env prefix included)."""
    lines = stdout.splitlines()
    line = lines[next(i for i, text in enumerate(lines) if text.startswith(title)) + 1].strip()
    words = shlex.split(line)
    n = next(i for i, w in enumerate(words) if not re.fullmatch(r"[A-Z_]+=.*", w))
    return Command(tuple(words[n:]), dict(w.split("=", 1) for w in words[:n]))


TRT_CHECK = "re-check with Polygraphy and TensorRT"


def test_saved_inputs_and_printed_command_pass_on_onnxrt_and_fail_on_a_damaged_graph(artifact_copy, tmp_path):
    saved = tmp_path / "pg"
    good = cli("verify", str(artifact_copy), "--no-write", "--save-inputs", str(saved))
    assert good.returncode == 0, good.stderr
    assert f"wrote all 16 parity case(s) for Polygraphy to {saved}/" in good.stdout
    command = printed(good.stdout, TRT_CHECK)
    assert command.argv[:4] == ("polygraphy", "run", str(artifact_copy / "model.onnx"), "--trt")
    for flag, value in (("--atol", "0.0001"), ("--rtol", "0.001"), ("--load-inputs", str(saved / "inputs.json")),
                        ("--load-outputs", str(saved / "eager.json"))):
        assert command.argv[command.argv.index(flag) + 1] == value
    opt = command.argv.index("--trt-opt-shapes")
    assert command.argv[opt + 1: opt + 5] == ("q:[2,8,32]", "k:[2,8,32]", "v:[2,8,32]", "mask:[2,16]")
    assert str(as_onnxrt(command)) in good.stdout  # the ONNX Runtime line printed is this one

    # The files are Polygraphy's own formats, read back with its own API; the mask is always there.
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    feeds = load_json(str(saved / "inputs.json"))
    assert len(feeds) == 16 and all(set(f) == {"q", "k", "v", "mask"} for f in feeds)
    assert all(f["mask"].dtype == np.bool_ and f["mask"].shape == (f["k"].shape[0], f["k"].shape[1] + f["v"].shape[1]) for f in feeds)
    assert feeds[1]["mask"].all()  # the "opt, no mask" case (run_order puts "all min" first): all True, as the runners fill it in
    results = RunResults.load(str(saved / "eager.json"))
    (runner, iterations), = results.items()
    assert runner == "eager-torch-float32" and len(iterations) == 16 and iterations[0]["out"].dtype == np.float32

    ran = run_polygraphy(as_onnxrt(command))
    assert ran.returncode == 0, ran.tail
    assert "PASSED" in ran.tail and "16/16 iterations" in ran.tail

    damage(artifact_copy)
    bad = cli("verify", str(artifact_copy), "--no-write")
    assert bad.returncode == 1 and "parity FAILED" in bad.stdout
    failing = artifact_copy.parent / f"{artifact_copy.name}.polygraphy"
    assert f"wrote the failing 16 parity case(s) for Polygraphy to {failing}/" in bad.stdout
    ran = run_polygraphy(as_onnxrt(printed(bad.stdout, TRT_CHECK)))
    assert ran.returncode != 0 and "FAILED" in ran.tail, ran.tail
    ran = run_polygraphy(as_onnxrt(command))  # the good artifact's saved outputs against the damaged graph: fails too
    assert ran.returncode != 0


def test_printed_bisect_recipe_narrows_a_damaged_graph(artifact_copy, tmp_path):
    """Polygraphy's `debug reduce` line, checking on ONNX Runtime against the undamaged graph's layerwise outputs,
    bisects the damaged graph down to a few nodes (on TensorRT, the same lines compare TensorRT with ONNX Runtime)."""
    recorder = CaseRecorder(failed_only=False)
    manifest = read_manifest(artifact_copy)
    verify_artifact(manifest, write=False, on_case=recorder)
    files = save_polygraphy_data(manifest, recorder, tmp_path / "good")
    sanitize, golden, merge, reduce = reduce_commands(manifest, files, TOLERANCES["float32"])
    for command in (sanitize, golden, merge):
        ran = run_polygraphy(command)
        assert ran.returncode == 0, f"{command}\n{ran.tail}"
    broken = tmp_path / "broken"
    shutil.copytree(artifact_copy, broken)
    damage(broken)
    broken_static = tmp_path / "broken-static.onnx"
    ran = run_polygraphy(Command(tuple(str(broken_static) if a == str(files.directory / "static.onnx") else a
                                       for a in reduce_commands(read_manifest(broken), files, TOLERANCES["float32"])[0].argv)))
    assert ran.returncode == 0, ran.tail
    argv = tuple(str(broken_static) if a == str(files.directory / "static.onnx") else a for a in as_onnxrt(reduce).argv)
    ran = run_polygraphy(Command(argv))
    assert ran.returncode == 0, ran.tail
    reduced = onnx.load(str(files.directory / "reduced.onnx"))
    static = onnx.load(str(broken_static))
    assert 0 < len(reduced.graph.node) <= len(static.graph.node) // 20


def test_save_inputs_says_what_to_install_without_polygraphy(tiny_fp32, monkeypatch):
    for name in ("polygraphy", "polygraphy.comparator", "polygraphy.comparator.struct", "polygraphy.json", "polygraphy.logger"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackendUnavailableError, match=r"Polygraphy is not installed .*pip install polygraphy"):
        polygraphy_available(tiny_fp32.manifest)
    with pytest.raises(ConfigError, match="Polygraphy's JSON data has no bfloat16 arrays"):
        polygraphy_available(types.SimpleNamespace(dtype="bfloat16"))


def test_as_onnxrt_drops_tensorrt_options_with_their_values():
    command = Command(("polygraphy", "run", "m.onnx", "--trt", "--strongly-typed", "--trt-min-shapes", "q:[1,2]", "k:[1,3]",
                       "--pool-limit", "workspace:16M", "--load-inputs", "i.json", "--atol", "1e-4"), {"POLYGRAPHY_USE_TENSORRT_RTX": "1"})
    assert as_onnxrt(command) == Command(("polygraphy", "run", "m.onnx", "--onnxrt", "--load-inputs", "i.json", "--atol", "1e-4"))
