"""The command line answers --help, --version and argument errors without importing torch, ONNX or a runtime.

Each case runs `python -X importtime -m perceiver_export ...` as a user would; the modules it imported are read from
importtime's lines on stderr. How long it takes is measured by scripts/cli_startup_bench.py, not here.
"""

import os
import subprocess
import sys

import pytest

from perceiver_export import __version__
from tests.conftest import REPO

HEAVY = {"torch", "onnx", "onnxruntime", "onnxscript", "openvino", "tensorrt", "tensorrt_rtx", "numpy"}


def run_cli(*args):
    """(exit code, stdout, stderr without importtime's lines, top-level modules imported)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONSTARTUP", None)
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "perceiver_export", *args], capture_output=True,
                            text=True, cwd=REPO, env=env, timeout=120, check=False)
    lines = result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines if line.startswith("import time:") and "|" in line}
    imported.discard("package")  # importtime's header line
    stderr = "\n".join(line for line in lines if not line.startswith("import time:"))
    return result.returncode, result.stdout, stderr, imported


def test_importtime_lines_are_read():
    """The probe itself: a command that does import torch shows it (else every assertion below would pass vacuously)."""
    code, _, _, imported = run_cli("onnx", "--config", "no-such-spec")
    assert code == 3 and "torch" in imported


def test_help_lists_every_command_without_heavy_imports():
    code, out, _, imported = run_cli("--help")
    assert code == 0
    assert out.startswith("usage: python -m perceiver_export")
    for command in ("onnx", "verify", "trt", "inspect", "bench", "serve", "loadtest", "kserve", "triton", "rayserve",
                    "rayservice", "doctor"):
        assert command in out
    assert not imported & HEAVY, imported & HEAVY
    assert "rich" not in imported


def test_version_without_heavy_imports():
    code, out, _, imported = run_cli("--version")
    assert (code, out) == (0, f"perceiver-export {__version__}\n")
    assert not imported & (HEAVY | {"rich"})


@pytest.mark.parametrize("command, option", [("serve", "--max-batch-size"), ("onnx", "--wide"), ("verify", "--wide"),
                                             ("bench", "--wide"), ("trt", "--compute-capability")])
def test_subcommand_help_without_heavy_imports(command, option):
    code, out, _, imported = run_cli(command, "--help")
    assert code == 0 and f"usage: python -m perceiver_export {command}" in out and option in out
    assert not imported & (HEAVY | {"rich"})


@pytest.mark.parametrize("args, message", [
    (("serve", "x", "--backend", "nope"), "argument --backend: invalid choice: 'nope'"),
    (("verify",), "the following arguments are required: dir"),
    (("frobnicate",), "argument command: invalid choice: 'frobnicate'"),
    (("bench", "x", "--iterations", "many"), "argument --iterations: invalid int value: 'many'"),
])
def test_usage_errors_exit_2_without_heavy_imports(args, message):
    code, out, err, imported = run_cli(*args)
    assert code == 2 and out == ""
    assert message in err and "usage: python -m perceiver_export" in err
    assert not imported & (HEAVY | {"rich"})


@pytest.mark.parametrize("command", ["inspect", "verify", "trt", "bench", "serve", "triton", "loadtest"])
def test_nonexistent_artifact_exits_3_without_heavy_imports(command, tmp_path):
    missing = tmp_path / "missing"
    code, out, err, imported = run_cli(command, str(missing))
    assert code == 3 and out == ""
    assert f"error (ArtifactError): {missing}: not an artifact directory (it does not exist)" in " ".join(err.split())
    assert not imported & HEAVY, imported & HEAVY


def test_public_names_still_import(tiny_fp32):
    """The lazy exports resolve: what README's and docs/python-api.md's examples import; every lazy name is in __all__
    and imported under TYPE_CHECKING (what type checkers and the API docs read)."""
    import ast
    import inspect

    import perceiver_export
    from perceiver_export import InputError, PerceiverLayer, runtime
    from perceiver_export.model import PerceiverLayer as Defined

    assert PerceiverLayer is Defined and issubclass(InputError, perceiver_export.PerceiverExportError)
    assert runtime.load(tiny_fp32.directory).contract.axes
    lazy = set(perceiver_export._LAZY)
    assert {"PerceiverLayer"} <= lazy <= set(perceiver_export.__all__) <= set(dir(perceiver_export))
    for name in perceiver_export.__all__:
        getattr(perceiver_export, name)
    tree = ast.parse(inspect.getsource(perceiver_export))
    typed = {alias.name for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
             for sub in node.body if isinstance(sub, ast.ImportFrom) for alias in sub.names}
    assert typed == lazy
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        perceiver_export.nothing_here  # noqa: B018
