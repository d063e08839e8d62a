"""What a user scripting the CLI relies on: which artifact a path names, the documented exit codes, --json documents,
hints that name flags and pages that ship, and the same engine target from Python and from the command line."""

import ast
import importlib.util
import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from perceiver_export.cli.json_output import SCHEMAS
from tests.conftest import REPO
from tests.test_cli import cli

RTX = importlib.util.find_spec("tensorrt_rtx") is not None


def damage(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 64)


def document(result, schema: str) -> dict:
    """stdout is one JSON document and nothing else, valid under its documented schema."""
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMAS[schema])
    return doc


# ---- which artifact a path names ---------------------------------------------------------------

def test_a_file_inside_an_artifact_names_it_and_the_command_says_so(artifact_copy):
    r = cli("inspect", str(artifact_copy / "model.onnx"), "--json")
    assert r.returncode == 0, r.stderr
    assert f"using artifact {artifact_copy} (the directory of model.onnx)" in r.stderr
    assert document(r, "inspect")["directory"] == str(artifact_copy)
    (artifact_copy / "bench").mkdir()
    (artifact_copy / "bench" / "bench.json").write_text("{}")
    r = cli("inspect", str(artifact_copy / "bench" / "bench.json"), "--json")
    assert r.returncode == 0 and f"using artifact {artifact_copy} (which holds bench/bench.json)" in r.stderr


def test_a_file_outside_any_artifact_is_refused_with_the_fix(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not an artifact")
    for command in ("inspect", "verify", "bench", "serve", "triton"):
        r = cli(command, str(tmp_path / "model.onnx"))
        assert r.returncode == 3, (command, r.stderr)
        said = " ".join(r.stderr.split())
        assert "model.onnx: a file, not in an artifact (no manifest.json beside it or in any folder above)" in said
        assert "python -m perceiver_export onnx --config NAME --out DIR" in said


def test_artifact_dir_for_resolves_in_one_place(artifact_copy, tmp_path):
    from perceiver_export.artifact.locate import artifact_dir_for

    assert artifact_dir_for(artifact_copy) == (artifact_copy, None)
    assert artifact_dir_for(artifact_copy / "manifest.json") == (artifact_copy, f"using artifact {artifact_copy} (the directory of manifest.json)")
    assert artifact_dir_for(tmp_path / "missing") == (tmp_path / "missing", None)  # read_manifest says it does not exist


# ---- exit codes, one test per documented code ------------------------------------------------------

def test_exit_0_on_success_and_1_when_a_file_is_damaged(artifact_copy):
    ok = cli("verify", str(artifact_copy), "--backends", "onnxruntime", "--no-write", "--json")
    assert ok.returncode == 0, ok.stderr
    doc = document(ok, "verify")
    assert doc["passed"] and doc["exit_code"] == 0 and doc["files"] == {"intact": True, "error": None}
    damage(artifact_copy / "model.onnx")
    bad = cli("verify", str(artifact_copy), "--json")
    assert bad.returncode == 1
    doc = document(bad, "verify")
    assert not doc["passed"] and doc["exit_code"] == 1 and doc["parity"] is None
    assert "model.onnx: damaged: sha256" in doc["files"]["error"] and "verification failed:" in bad.stderr
    assert not (artifact_copy.parent / "copy.polygraphy").exists()


def test_exit_1_when_parity_fails(artifact_copy):
    r = cli("verify", str(artifact_copy), "--backends", "onnxruntime", "--atol", "0", "--rtol", "0", "--no-write", "--json")
    assert r.returncode == 1
    doc = document(r, "verify")
    assert doc["exit_code"] == 1 and not doc["passed"] and not doc["parity"]["passed"] and doc["files"]["intact"]
    assert any(not c["passed"] for c in doc["parity"]["cases"])


def test_exit_2_on_a_bad_command_line_and_3_on_any_other_error(tmp_path):
    assert cli("verify").returncode == 2
    assert cli("inspect", str(tmp_path), "--bogus").returncode == 2
    r = cli("verify", str(tmp_path / "missing"))
    assert r.returncode == 3 and "not an artifact directory (it does not exist)" in r.stderr


def test_readme_states_the_exit_codes_the_code_uses():
    from perceiver_export.cli import main

    text = " ".join((REPO / "README.md").read_text().split())
    assert (main.EXIT_OK, main.EXIT_PARITY, main.EXIT_USAGE, main.EXIT_ERROR) == (0, 1, 2, 3)
    assert "Exit codes: 0 success, 1 verification failed (a parity case, or for `verify` a file whose sha256" in text


# ---- verify covers every ONNX Runtime graph --------------------------------------------------------

def test_verify_backends_onnxruntime_checks_every_graph_the_manifest_lists(artifact_copy):
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    graphs = ["onnxruntime"] + [f"onnxruntime-{g}" for g in manifest["graphs"]]
    assert len(graphs) >= 2  # the tiny export writes the optimized graph
    r = cli("verify", str(artifact_copy), "--backends", "onnxruntime", "--no-write", "--json")
    assert r.returncode == 0, r.stderr
    doc = document(r, "verify")
    assert doc["parity"]["backends"] == graphs
    assert {c["backend"] for c in doc["parity"]["cases"]} == set(graphs)


# ---- --json -----------------------------------------------------------------------------------------

def test_inspect_json(tiny_fp32):
    r = cli("inspect", str(tiny_fp32.directory), "--json")
    assert r.returncode == 0, r.stderr
    doc = document(r, "inspect")
    assert doc["name"] == "perceiver-tiny" and doc["dtype"] == "float32"
    assert doc["graphs"]["plain"] == "model.onnx" and doc["ops"]["MatMul"] > 0
    assert doc["contract"]["axes"]["q_len"] == {"min": 1, "opt": 8, "max": 16}
    assert doc["parity"]["passed"] and doc["engines"] == {}


def test_bench_json(artifact_copy):
    r = cli("bench", str(artifact_copy), "--backends", "onnxruntime", "--grid", "1:4:4:4", "--iterations", "1",
            "--seconds", "0.01", "--warmup", "0", "--json")
    assert r.returncode == 0, r.stderr
    doc = document(r, "bench")
    assert {x["backend"] for x in doc["results"]} == {"torch", "onnxruntime"}
    assert all((x["batch"], x["q_len"], x["k_len"], x["v_len"]) == (1, 4, 4, 4) for x in doc["results"])
    assert doc["files"]["json"] == str(artifact_copy / "bench" / "bench.json")
    assert json.loads((artifact_copy / "bench" / "bench.json").read_text())["results"] == doc["results"]
    assert "wrote" in r.stderr


@pytest.mark.skipif(not RTX, reason="TensorRT-RTX is not installed (pip install tensorrt-rtx-cu13)")
def test_trt_json_and_the_same_default_target_as_python(tiny_fp32, tmp_path):
    """Python's BuildOptions() and the CLI's `trt DIR` pick one target on this GPU-less machine (engines/ decides)."""
    import torch

    from perceiver_export.engines.build import DEFAULT_RTX_TARGET, BuildOptions, build_engine

    assert not torch.cuda.is_available()
    py, sh = tmp_path / "py", tmp_path / "cli"
    shutil.copytree(tiny_fp32.directory, py)
    shutil.copytree(tiny_fp32.directory, sh)
    result = build_engine(py, BuildOptions(flavor="tensorrt_rtx", optimization_level=0))
    r = cli("trt", str(sh), "--flavor", "tensorrt_rtx", "--opt-level", "0", "--json")
    assert r.returncode == 0, r.stderr
    doc = document(r, "trt")
    assert result.entry["compute_capabilities"] == doc["engine"]["compute_capabilities"] == [DEFAULT_RTX_TARGET] == ["sm89"]
    note = "no target given (--compute-capability, compute_capabilities= in Python): building for sm89 (no CUDA GPU is visible here)"
    assert result.notes == doc["notes"] == [note]
    assert doc["path"] == str(sh / "model.tensorrt_rtx.engine") and doc["engine"]["tf32"] is False
    assert "building with tensorrt_rtx" in r.stderr and "for sm89" in r.stderr


# ---- hints name flags; help and messages point at pages that ship -----------------------------------

def _message_strings(path: Path) -> list[str]:
    """String constants of a module that are not docstrings (messages, help texts, f-string parts)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_message_or_help_points_at_a_repository_path():
    import re

    from perceiver_export.cli.main import build_parser

    repo_path = re.compile(r"docs/[\w.-]+\.md|README")
    found = [f"{p.relative_to(REPO)}: {s!r}" for p in sorted((REPO / "perceiver_export").rglob("*.py"))
             for s in _message_strings(p) if repo_path.search(s)]
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():
        found += [f"{action.prog} {a.option_strings}: {a.help}" for a in action._actions if a.help and repo_path.search(a.help)]
    assert found == []


def test_the_several_engines_hint_names_the_cli_flag_and_python_keyword(tmp_path):
    from perceiver_export.artifact.manifest import Manifest
    from perceiver_export.errors import BackendUnavailableError
    from perceiver_export.runtime.trt.runner import pick_engine

    manifest = Manifest(tmp_path, {"engines": {"a.engine": {}, "b.engine": {}}})
    with pytest.raises(BackendUnavailableError, match=r"several engines \(a.engine, b.engine\): choose one with --engine NAME "
                                                      r"\(engine=NAME in Python\)"):
        pick_engine(manifest, None)


def test_docs_command_prints_the_pages_help_texts_point_at():
    listed = cli("docs")
    assert listed.returncode == 0 and "parity" in listed.stdout and "tensorrt-on-your-gpu" in listed.stdout
    page = cli("docs", "parity")
    assert page.returncode == 0 and page.stdout == (REPO / "docs" / "parity.md").read_text()
    cli_page = cli("docs", "cli")
    assert "### verify --json" in cli_page.stdout and "<!-- json-schemas -->" not in cli_page.stdout
    bad = cli("docs", "nope")
    assert bad.returncode == 3 and "no documentation page 'nope'; the topics are:" in " ".join(bad.stderr.split())

