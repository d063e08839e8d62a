"""OpenVINO: right answers through shape changes on one compiled model (the workaround, proven needed), bf16 at its
own tolerance, settings recorded, and a clear error where OpenVINO or bf16 is missing."""

import importlib.util
import re
import shutil
import sys

import numpy as np
import pytest

from perceiver_export import runtime
from perceiver_export.errors import BackendUnavailableError
from perceiver_export.verify.grid import case_inputs, parity_cases
from perceiver_export.verify.parity import verify_artifact
from tests.conftest import REPO, openvino_backends

pytest.importorskip("openvino")
from perceiver_export.runtime.openvino import runner as ov_runner  # noqa: E402

needs_bf16 = pytest.mark.skipif("openvino-bf16" not in openvino_backends(), reason="this CPU has no avx512_bf16/amx_bf16")


def repro():
    spec = importlib.util.spec_from_file_location("openvino_shape_repro", REPO / "scripts" / "openvino_shape_repro.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproducer_fails_without_the_workaround_and_passes_with_it():
    r = repro()
    assert r.max_errors({}, (1, 16))[-1] > 1.0  # the bug: if this starts passing, OpenVINO fixed it (see docs/openvino.md)
    assert r.max_errors({}, (16, 1, 16))[-1] < 1e-5  # a first call with S >= 16 does not trigger it
    assert max(r.max_errors(ov_runner.SHAPE_CHANGE_WORKAROUND, (1, 16))) < 1e-5
    assert max(r.max_errors({"CPU_RUNTIME_CACHE_CAPACITY": "0"}, (1, 16))) < 1e-5  # the other workaround


def test_docs_carry_the_reproducer_verbatim():
    page = (REPO / "docs" / "openvino.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert (REPO / "scripts" / "openvino_shape_repro.py").read_text() in blocks


@pytest.mark.parametrize("precision", ["f32", pytest.param("bf16", marks=needs_bf16)])
def test_artifact_is_wrong_after_q_len_1_without_the_workaround_and_right_with_it(tiny_fp32, precision):
    manifest = tiny_fp32.manifest
    cases = {c.name: c for c in parity_cases(manifest.contract)}
    rng = np.random.default_rng(0)
    short, long = (case_inputs(manifest.contract, cases[n], rng) for n in ("q_len min", "q_len max"))
    ref = runtime.load(manifest, backend="torch", dtype="float32")(**long)

    def error_after_short(**options) -> float:
        runner = runtime.load(manifest, backend="openvino", precision=precision, threads=2, **options)
        runner(**short)
        return float(np.abs(runner(**long) - ref).max() / ref.std())

    assert not error_after_short(workaround=False) < 0.5  # off by the output's scale, or NaN
    assert error_after_short() < (0.05 if precision == "bf16" else 1e-5)


def test_shape_sequence_parity_in_f32_and_bf16(tiny_fp32, tmp_path):
    d = tmp_path / "a"
    shutil.copytree(tiny_fp32.directory, d)
    backends = openvino_backends()
    report = verify_artifact(d, backends=backends, write=False)
    assert report.passed, [(r.backend, r.case.name, r.comparison.max_abs) for r in report.failures]
    assert any(n.startswith("openvino compiled with INFERENCE_PRECISION_HINT=f32, INFERENCE_NUM_THREADS=") for n in report.notes)
    order = [r.case.name for r in report.results if r.backend == "openvino"]
    assert order[0] == "all min" and order[-2:] == ["all max (again)", "all min (again)"]
    assert [r.case.name for r in report.results if r.backend == backends[-1]] == order  # every backend, same order
    f32 = [r for r in report.results if r.backend == "openvino"]
    assert all(r.tolerance.as_dict() == {"atol": 1e-4, "rtol": 1e-3} for r in f32)
    if "openvino-bf16" in backends:
        bf16 = [r for r in report.results if r.backend == "openvino-bf16"]
        assert all(r.tolerance.as_dict() == {"atol": 0.0, "rtol": 0.0, "scale_atol": 0.05} for r in bf16)
        assert 1e-4 < max(r.comparison.max_abs_over_scale for r in bf16) < 0.05  # bf16 really ran, within tolerance


def test_settings_are_explicit_and_recorded(tiny_fp32):
    runner = runtime.load(tiny_fp32.directory, backend="openvino", threads=1)
    assert runner.backend == "openvino" and runner.precision == "f32"
    assert runner.compile_config == {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "1",
                                     "PERFORMANCE_HINT": "LATENCY", **ov_runner.SHAPE_CHANGE_WORKAROUND}
    # OpenVINO took them: its own default precision is bf16 on CPUs with bf16 instructions
    assert str(runner.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
    assert int(runner.compiled.get_property("INFERENCE_NUM_THREADS")) == 1


def test_missing_openvino_is_backend_unavailable(tiny_fp32, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    monkeypatch.delitem(sys.modules, "perceiver_export.runtime.openvino.runner")
    for backend in ("openvino", "openvino-bf16"):
        with pytest.raises(BackendUnavailableError, match=r"openvino is not installed .*perceiver-export\[openvino\]"):
            runtime.load(tiny_fp32.directory, backend=backend)
    report = verify_artifact(tiny_fp32.manifest, write=False, check_files=False)
    assert not any(b.startswith("openvino") for b in report.backends)
    assert any(n.startswith("openvino not run: openvino is not installed") for n in report.notes)


def test_bf16_refused_with_the_reason_on_a_cpu_without_bf16(tiny_fp32, monkeypatch):
    monkeypatch.setattr(ov_runner, "cpu_flags", lambda: {"avx2", "avx512f"})
    with pytest.raises(BackendUnavailableError, match="no bfloat16 instructions .avx512_bf16/amx_bf16"):
        runtime.load(tiny_fp32.directory, backend="openvino-bf16")
    assert runtime.load(tiny_fp32.directory, backend="openvino").backend == "openvino"  # float32 still runs


def test_bench_lists_a_missing_openvino_as_skipped_with_the_reason(tiny_fp32, monkeypatch):
    from perceiver_export.bench.backends import prepare

    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.delitem(sys.modules, "perceiver_export.runtime.openvino.runner")
    with pytest.raises(BackendUnavailableError, match="openvino is not installed"):
        prepare(tiny_fp32.manifest, "openvino", threads=1)


def test_non_float32_artifacts_are_refused(tiny_fp16):
    with pytest.raises(BackendUnavailableError, match="takes float32 artifacts"):
        runtime.load(tiny_fp16.directory, backend="openvino")


def test_serve_takes_openvino_with_its_threads(tiny_fp32):
    from perceiver_export.serving.server import ServeOptions, load_runner

    runner = load_runner(tiny_fp32.directory, ServeOptions(backend="openvino", threads=1))
    assert runner.backend == "openvino" and runner.compile_config["INFERENCE_NUM_THREADS"] == "1"
