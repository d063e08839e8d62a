"""The command line end to end, through real subprocesses: exit codes and what a user reads."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "perceiver_export", *args], capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=600)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    result = cli("onnx", "--config", "perceiver-tiny", "--out", str(out), "--k-len", "1:6:20", "--seed", "7")
    return out, result


def test_onnx_exports_and_verifies(exported):
    out, result = exported
    assert result.returncode == 0, result.stderr
    assert "parity PASSED" in result.stdout
    assert "fully-masked row" in result.stdout and "need atol" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["contract"]["axes"]["k_len"] == {"min": 1, "opt": 6, "max": 20}
    assert manifest["seed"] == 7 and manifest["parity"]["passed"]


def test_verify_passes_then_fails_on_damaged_artifact(exported, tmp_path):
    import shutil

    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    ok = cli("verify", str(copy), "--no-write")
    assert ok.returncode == 0 and "parity PASSED" in ok.stdout
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 64)
    bad = cli("verify", str(copy))
    assert bad.returncode == 1  # README: a file whose sha256 is not the manifest's fails verification, as parity does
    assert "verification failed:" in bad.stderr and "model.onnx: damaged" in bad.stderr


def test_verify_exits_1_when_parity_fails(exported, tmp_path):
    import shutil

    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    result = cli("verify", str(copy), "--atol", "0", "--rtol", "0")
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "parity FAILED" in result.stdout


def test_usage_and_config_errors_have_exit_codes(tmp_path):
    assert cli("onnx", "--dtype", "int8").returncode == 2
    r = cli("onnx", "--config", "nope", "--out", str(tmp_path / "x"))
    assert r.returncode == 3 and "no model spec named 'nope'" in r.stderr
    r = cli("onnx", "--config", "perceiver-tiny", "--q-len", "8:1:4", "--out", str(tmp_path / "x"))
    assert r.returncode == 3 and "--q-len: axis range must satisfy 1 <= min <= opt <= max, got 8:1:4" in r.stderr
    r = cli("verify", str(tmp_path / "missing"))
    assert r.returncode == 3 and "not an artifact directory" in r.stderr
    assert not (tmp_path / "x").exists()


def test_default_output_is_artifacts_under_the_working_directory(tmp_path):
    """`onnx` with no --out writes artifacts/<name>/ relative to where it runs (here a temp dir, never the repo's)."""
    r = cli("onnx", "--config", "perceiver-tiny", "--no-verify", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "artifacts" / "perceiver-tiny" / "manifest.json").is_file()
    assert json.loads((tmp_path / "artifacts" / "perceiver-tiny" / "manifest.json").read_text())["parity"] is None


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorrt_rtx") is None, reason="TensorRT-RTX is not installed (pip install tensorrt-rtx-cu13)"
)
def test_trt_builds_engine_and_inspect_shows_it(exported, tmp_path):
    import shutil

    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    r = cli("trt", str(copy), "--compute-capability", "sm89", "--profile", "short:q_len=1:4:8,k_len=1:4:8", "--opt-level", "2")
    assert r.returncode == 0, r.stderr
    assert "building with tensorrt_rtx" in r.stdout and "2 profile(s)" in r.stdout
    entry = json.loads((copy / "manifest.json").read_text())["engines"]["model.tensorrt_rtx.engine"]
    assert entry["compute_capabilities"] == ["sm89"] and entry["build"]["optimization_level"] == 2
    shown = cli("inspect", str(copy))
    assert shown.returncode == 0
    for text in ("mask", "batch, k_len + v_len", "MatMul", "engine model.tensorrt_rtx.engine: tensorrt_rtx",
                 "targets sm89", "short", "1/4/8", "per-layer information needs the engine deserialized",
                 "tensorrt_rtx --onnx=", "--computeCapabilities=89", "POLYGRAPHY_USE_TENSORRT_RTX=1 polygraphy convert"):
        assert text in shown.stdout, text
    bad = cli("trt", str(copy), "--profile", "q_len=1:4:99")
    assert bad.returncode == 3 and "q_len 1:4:99 is outside the artifact's range 1:8:16" in bad.stderr
    bad = cli("trt", str(copy), "--compute-capability", "sm90")
    assert bad.returncode == 3 and "unknown compute capability 'sm90'" in bad.stderr


def test_docs_cpp_example_is_the_one_ctest_builds():
    example = (REPO / "cpp" / "examples" / "embed.cpp").read_text().rstrip("\n")
    assert example in (REPO / "docs" / "cpp.md").read_text()


def test_readme_python_example_runs(tiny_fp32, capsys):
    """README's example, on the tiny artifact (dim 32, lengths within its ranges) instead of perceiver-base."""
    import re

    block = re.search(r"<!-- readme-example -->\n```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    for old, new in (('"artifacts/perceiver-base"', repr(str(tiny_fp32.directory))), ("(32, 40, 24)", "(16, 20, 12)"),
                     ("40 + 24", "20 + 12"), ("512", "32"), (":256]", ":16]")):
        assert old in block
        block = block.replace(old, new)
    scope: dict = {}
    exec(compile(block, "README-example", "exec"), scope)
    assert scope["out"].shape == (2, 16, 32)
    assert capsys.readouterr().out.strip() == "input 'v': expected size 32 on axis 2 (batch, v_len, 32), got 16 (shape (2, 12, 16))"
