"""Export: symbolic axes in the graph, onnx.checker, manifest content, external data, atomic publishing."""

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from safetensors.numpy import load_file

from perceiver_export.artifact.atomic import publish_dir, remove_stale_staging, staging_dir_for
from perceiver_export.artifact.manifest import sha256_of
from perceiver_export.errors import ConfigError
from perceiver_export.export.artifact_builder import export_artifact
from perceiver_export.export.onnx_graph import graph_dims
from perceiver_export.runtime import load


def test_graph_axes_are_symbolic_with_contract_names(tiny_fp32):
    model = onnx.load(str(tiny_fp32.directory / "model.onnx"))
    assert graph_dims(model) == {
        "q": ["batch", "q_len", 32],
        "k": ["batch", "k_len", 32],
        "v": ["batch", "v_len", 32],
        "mask": ["batch", "k_len + v_len"],
        "out": ["batch", "q_len", 32],
    }
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types == {"q": onnx.TensorProto.FLOAT, "k": onnx.TensorProto.FLOAT, "v": onnx.TensorProto.FLOAT, "mask": onnx.TensorProto.BOOL}
    assert model.opset_import[0].version == 18


def test_onnx_checker_passes_with_full_check(tiny_fp32):
    onnx.checker.check_model(str(tiny_fp32.directory / "model.onnx"), full_check=True)


def test_manifest_records_contract_files_versions_and_parity(tiny_fp32):
    d = tiny_fp32.directory
    manifest = json.loads((d / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["model.onnx", "model.ort.onnx", "weights.safetensors"]
    assert manifest["graphs"]["optimized"]["file"] == "model.ort.onnx"
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_of(d / name)
        assert entry["bytes"] == (d / name).stat().st_size
    q = manifest["contract"]["inputs"][0]
    assert q["name"] == "q" and q["dtype"] == "float32" and q["dims"] == ["batch", "q_len", 32]
    assert (q["min_shape"], q["opt_shape"], q["max_shape"]) == ([1, 1, 32], [2, 8, 32], [4, 16, 32])
    mask = manifest["contract"]["inputs"][3]
    assert mask["dims"] == ["batch", "k_len + v_len"] and mask["max_shape"] == [4, 48] and mask["optional"]
    assert manifest["contract"]["outputs"][0]["name"] == "out"
    assert manifest["opset"] == 18 and manifest["onnx"]["external_data"] is None
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime"}
    assert manifest["versions"]["torch"].startswith("2.")
    parity = manifest["parity"]
    assert parity["passed"] is True and parity["tolerance"] == {"atol": 1e-4, "rtol": 1e-3}
    assert len(parity["cases"]) >= 12
    assert all(c["max_abs"] < 1e-4 for c in parity["cases"] if c["backend"] != "openvino-bf16")  # bf16 compute: its own


def test_weights_file_is_exactly_the_exported_weights(tiny_fp32):
    weights = load_file(str(tiny_fp32.directory / "weights.safetensors"))
    graph = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tiny_fp32.directory / "model.onnx")).graph.initializer}
    from perceiver_export import PerceiverLayer

    assert set(weights) == set(PerceiverLayer(**tiny_fp32.manifest.model_config).state_dict())
    matrices = [g for g in graph.values() if g.ndim == 2]
    for name, w in weights.items():
        if w.ndim == 2:  # the exporter folds Linear weights into transposed initializers
            assert any(np.array_equal(g, w.T) for g in matrices), name


def test_fp16_export_keeps_layernorm_and_softmax_in_float32(tiny_fp16):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_fp16.directory / "model.onnx")))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    ops = Counter(n.op_type for n in model.graph.node)
    # 4 norms per block; the exporter merges the blocks' context norms while their weights are equal (fresh init).
    assert ops["LayerNormalization"] >= 2 * 3 and ops["Softmax"] == 2 * 2
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name
    assert types["q"] == types["out"] == onnx.TensorProto.FLOAT16
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert sum(types.get(n.output[0]) == onnx.TensorProto.FLOAT16 for n in matmuls) >= len(matmuls) - 2 * 2


def test_external_data_pair_is_hashed_and_runs(tmp_path, tiny_spec):
    result = export_artifact(tiny_spec, tmp_path / "ext", external_data="always", verify=False)
    d = result.directory
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["onnx"]["external_data"] == "model.onnx.data"
    assert sorted(manifest["files"]) == ["model.onnx", "model.onnx.data", "model.ort.onnx", "model.ort.onnx.data", "weights.safetensors"]
    assert manifest["parity"] is None
    graph = onnx.load(str(d / "model.onnx"), load_external_data=False).graph
    big = [i for i in graph.initializer if np.prod(i.dims) * 4 >= 1024]
    assert big and all(i.data_location == onnx.TensorProto.EXTERNAL for i in big)
    ends = [int(e.value) for i in big for e in i.external_data if e.key in ("offset", "length")]
    assert (d / "model.onnx.data").stat().st_size >= max(ends) > 10_000
    feeds = (np.ones((1, 2, 32), np.float32), np.ones((1, 3, 32), np.float32), np.ones((1, 4, 32), np.float32))
    plain, optimized = load(d, graph="plain")(*feeds), load(d, graph="optimized")(*feeds)
    assert plain.shape == (1, 2, 32)
    np.testing.assert_allclose(optimized, plain, atol=1e-5)


def test_custom_ranges_and_opset_reach_graph_and_manifest(tmp_path, tiny_spec):
    from perceiver_export.contract import AxisRange

    spec = tiny_spec.with_axes({"q_len": AxisRange(4, 4, 4), "k_len": AxisRange(2, 3, 40)})
    result = export_artifact(spec, tmp_path / "r", opset=20, verify=False)
    model = onnx.load(str(result.directory / "model.onnx"))
    dims = graph_dims(model)
    assert dims["q"] == ["batch", 4, 32]  # a fixed axis stays static
    assert dims["k"] == ["batch", "k_len", 32]
    assert model.opset_import[0].version == 20
    assert result.manifest.contract.axes["k_len"] == AxisRange(2, 3, 40)


def test_unsupported_opset_is_refused(tmp_path, tiny_spec):
    with pytest.raises(ConfigError, match="opset must be in 17..23, got 16"):
        export_artifact(tiny_spec, tmp_path / "x", opset=16, verify=False)


def test_checkpoint_mismatch_lists_keys(tmp_path, tiny_spec):
    import torch

    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"blocks.0.bogus": torch.zeros(1)}}, path)
    with pytest.raises(ConfigError, match=r"missing keys \['blocks.0.context_norm.bias'.*unexpected keys \['blocks.0.bogus'\]"):
        export_artifact(tiny_spec, tmp_path / "x", checkpoint=path, verify=False)


def test_checkpoint_weights_are_the_ones_exported(tmp_path, tiny_spec):
    import torch
    from safetensors.torch import save_file

    from perceiver_export import PerceiverLayer

    torch.manual_seed(123)
    state = PerceiverLayer(**tiny_spec.model).state_dict()
    save_file(state, tmp_path / "w.safetensors")
    result = export_artifact(tiny_spec, tmp_path / "ck", checkpoint=tmp_path / "w.safetensors", verify=False)
    exported = load_file(str(result.directory / "weights.safetensors"))
    assert all(np.array_equal(exported[k], v.numpy()) for k, v in state.items())
    assert result.manifest.data["checkpoint"].endswith("w.safetensors") and result.manifest.data["seed"] is None


def test_torch_checkpoint_with_code_is_refused(tmp_path, tiny_spec):
    import torch

    path = tmp_path / "evil.pt"
    import argparse

    torch.save({"obj": argparse.Namespace(a=1)}, path)  # an arbitrary object: unpickling it would run code
    with pytest.raises(ConfigError, match=r"weights_only=True"):
        export_artifact(tiny_spec, tmp_path / "x", checkpoint=path, verify=False)


def test_publish_replaces_whole_directory_and_leaves_no_staging(tmp_path):
    final = tmp_path / "art"
    final.mkdir()
    (final / "old.txt").write_text("old")
    staging = staging_dir_for(final)
    (staging / "new.txt").write_text("new")
    publish_dir(staging, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_stale_staging_of_dead_writers_is_removed(tmp_path):
    final = tmp_path / "art"
    dead = tmp_path / ".art.staging-999999999-abc"  # no such pid
    live = staging_dir_for(final)  # ours: alive
    dead.mkdir()
    remove_stale_staging(final)
    assert not dead.exists() and live.exists()


def test_reexport_over_existing_artifact_replaces_it_and_moves_other_files_aside(tmp_path, tiny_spec):
    out = tmp_path / "a"
    first = export_artifact(tiny_spec, out, seed=1, verify=False)
    h1 = first.manifest.data["files"]["model.onnx"]["sha256"]
    (out / "stray.bin").write_bytes(b"x")
    second = export_artifact(tiny_spec, out, seed=2, verify=False)
    assert second.manifest.data["files"]["model.onnx"]["sha256"] != h1
    assert not (out / "stray.bin").exists()
    assert second.moved_aside == ["stray.bin"] and (tmp_path / "a.previous" / "stray.bin").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "a.previous"]
