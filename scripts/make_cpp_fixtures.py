"""Fixtures for the C++ tests (cpp/tests): a tiny artifact, inputs, Python's outputs and Python's error texts.

    python scripts/make_cpp_fixtures.py OUT_DIR

The C++ runtime must reproduce the Python ONNX Runtime runner's outputs on the parity grid for every graph of the
artifact (plain, optimized, int8: p{i}_out_{graph}.npy; p{i}_out.npy is plain's, p{i}_out_default.npy the manifest's
default graph's), start from the same default graph, and raise the same messages as the Python input check on the
same bad inputs and the same refusal of a graph the artifact does not have. A second artifact, of a
user's module whose output is (batch, k_len + v_len, dim) (models/custom_layers.py), shows the same
contract carrying another output shape to C++.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from perceiver_export import ArtifactError, BackendUnavailableError, InputError, runtime
from perceiver_export.config import load_spec
from perceiver_export.export.artifact_builder import export_artifact
from perceiver_export.verify.grid import case_inputs, parity_cases


def bad_inputs(rng) -> dict[str, dict[str, np.ndarray]]:
    def ok(batch=2, q=5, k=7, v=3):
        return {
            "q": rng.standard_normal((batch, q, 32)).astype(np.float32),
            "k": rng.standard_normal((batch, k, 32)).astype(np.float32),
            "v": rng.standard_normal((batch, v, 32)).astype(np.float32),
            "mask": np.ones((batch, k + v), bool),
        }

    cases = {}
    f = ok(); f["q"] = f["q"][0]; cases["wrong rank"] = f
    f = ok(); f["k"] = f["k"][:, :, :16].copy(); cases["wrong feature dim"] = f
    f = ok(); f["v"] = f["v"].astype(np.float16); cases["wrong dtype"] = f
    cases["length above range"] = ok(q=17)
    f = ok(); f["mask"] = np.ones((2, 9), bool); cases["mask wrong length"] = f
    f = ok(); f["mask"] = np.ones((2, 10), np.float32); cases["mask wrong dtype"] = f
    f = ok(); f["k"] = rng.standard_normal((3, 7, 32)).astype(np.float32); cases["batch disagrees"] = f
    cases["batch above range"] = ok(batch=5)
    return cases


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # Verified, so that the default graph is chosen by timing as in any export (with int8: every graph exists).
    result = export_artifact(load_spec("perceiver-tiny"), out / "artifact", int8=True)
    graphs = ["plain", *result.manifest.graphs]
    runners = {g: runtime.load(result.directory, threads=1, graph=g) for g in graphs}
    runner = runners["plain"]
    default = result.manifest.default_graph
    rng = np.random.default_rng(0)
    parity = []
    for i, case in enumerate(parity_cases(runner.contract)):
        feeds = case_inputs(runner.contract, case, rng)
        entry = {"name": case.name, "expected_by_graph": {}}
        for name, value in feeds.items():
            if value is not None:
                np.save(out / f"p{i}_{name}.npy", value)
                entry[name] = f"p{i}_{name}.npy"
        for graph, graph_runner in runners.items():
            expected = graph_runner.infer(feeds)
            np.save(out / f"p{i}_out_{graph}.npy", expected)
            entry["expected_by_graph"][graph] = f"p{i}_out_{graph}.npy"
            if graph == "plain":
                np.save(out / f"p{i}_out.npy", expected)
            if graph == default:
                np.save(out / f"p{i}_out_default.npy", expected)
        entry["expected"] = f"p{i}_out.npy"
        parity.append(entry)
    try:
        runtime.load(result.directory, graph="nope")
    except BackendUnavailableError as e:
        unknown_graph = {"graph": "nope", "message": str(e)}
    else:
        raise SystemExit("an unknown graph was accepted by Python")
    errors = []
    for i, (label, feeds) in enumerate(bad_inputs(rng).items()):
        try:
            runner.infer(feeds)
        except InputError as e:
            message = str(e)
        else:
            raise SystemExit(f"bad input {label!r} was accepted by Python")
        entry = {"name": label, "message": message}
        for name, value in feeds.items():
            np.save(out / f"e{i}_{name}.npy", value)
            entry[name] = f"e{i}_{name}.npy"
        errors.append(entry)
    damaged = []
    for label, damage in DAMAGE.items():
        copy = out / f"damaged-{label.replace(' ', '-')}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(result.directory, copy)
        graph, file = DAMAGED_GRAPH.get(label, ("plain", "model.onnx"))
        damage(copy / file)
        try:
            runtime.load(copy, graph=graph)
        except ArtifactError as e:
            damaged.append({"name": label, "artifact": copy.name, "graph": graph, "message": str(e)})
        else:
            raise SystemExit(f"damaged artifact {label!r} was accepted by Python")
    user_module(out, rng)
    cases = {"artifact": "artifact", "graphs": graphs, "default_graph": default, "unknown_graph": unknown_graph,
             "parity": parity, "errors": errors, "damaged": damaged}
    (out / "cases.json").write_text(json.dumps(cases, indent=1, ensure_ascii=False))
    print(f"wrote {len(parity)} parity cases for each of {', '.join(graphs)} (default {default}), {len(errors)} error and "
          f"{len(damaged)} damaged-artifact cases to {out}")


def user_module(out: Path, rng) -> None:
    """user-artifact/ and u_{q,k,v,mask,out}.npy: the 'odd lengths' case through Python's runner."""
    spec = load_spec("perceiver-tiny").with_module("models.custom_layers:ContextEncoder", {"dim": 32})
    result = export_artifact(spec, out / "user-artifact", verify=False, optimize=False)
    runner = runtime.load(result.directory, threads=1)
    case = next(c for c in parity_cases(runner.contract) if c.name == "odd lengths")
    feeds = case_inputs(runner.contract, case, rng)
    for name, value in feeds.items():
        np.save(out / f"u_{name}.npy", value)
    np.save(out / "u_out.npy", runner.infer(feeds))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {"truncated model.onnx": _truncate, "corrupted model.onnx": _flip, "missing model.onnx": Path.unlink,
          "corrupted model.ort.onnx": _flip, "truncated model.int8.onnx": _truncate}
DAMAGED_GRAPH = {"corrupted model.ort.onnx": ("optimized", "model.ort.onnx"),  # label -> the graph asked for, its file
                 "truncated model.int8.onnx": ("int8", "model.int8.onnx")}


if __name__ == "__main__":
    main(Path(sys.argv[1]))
