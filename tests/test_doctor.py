"""`doctor`: a truthful report of this machine and its exit code; failures show their error and what to do."""

import json
import types

import pytest
from rich.console import Console

from perceiver_export import doctor
from perceiver_export.cli.doctor_view import print_environment, print_step, print_verdict
from perceiver_export.doctor import FAILED, NOT_HERE, OK, SKIPPED, STEPS, engine_plan, run_doctor
from perceiver_export.engines.flavor import installed_flavors
from perceiver_export.errors import ParityError
from perceiver_export.verify.compare import Tolerance
from tests.test_cli import cli

NO_GPU = {"usable": False, "name": None, "compute_capability": None, "driver": None, "reason": "no NVIDIA GPU (test)"}


def gpu(cc: str) -> dict:
    return {"usable": True, "name": f"a {cc} GPU", "compute_capability": cc, "driver": "580.0", "reason": None}


def rendered(report) -> str:
    console = Console(record=True, width=200)
    print_environment(report, console)
    for step in report.steps:
        print_step(step, console)
    print_verdict(report, console)
    return console.export_text()


@pytest.fixture(scope="module")
def here():
    """doctor on this machine, in-process (the CLI runs it once more, below)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("these assertions describe a machine without a GPU; on a GPU, see test_doctor_cli")
    return run_doctor()


def test_report_on_a_cpu_machine_runs_what_can_run_and_says_why_not_the_rest(here):
    statuses = {s.name: s.status for s in here.steps}
    assert list(statuses) == list(STEPS)
    rtx = "tensorrt_rtx" in installed_flavors()
    assert statuses == {"export": OK, "verify": OK, "build": OK if rtx else NOT_HERE, "run": NOT_HERE, "parity": NOT_HERE,
                        "polygraphy": OK}
    steps = {s.name: s for s in here.steps}
    assert "against eager float32" in steps["verify"].detail and "onnxruntime" in steps["verify"].detail
    if rtx:
        assert "cross-built (cannot run here) for sm89" in steps["build"].detail
    assert steps["run"].detail.startswith("no NVIDIA GPU") and "NVIDIA GPU and a CUDA build of torch" in steps["run"].fix
    assert "polygraphy run --onnxrt: 16 saved cases match the eager outputs" in steps["polygraphy"].detail
    assert here.passed and here.exit_code == 0
    backends = {b.name: b for b in here.backends}
    assert backends["onnxruntime"].runs_here and "CPUExecutionProvider" in backends["onnxruntime"].detail
    assert not backends["tensorrt"].runs_here and (backends["tensorrt"].install or backends["tensorrt"].version)
    assert backends["tensorrt_rtx"].builds_here is rtx and not backends["tensorrt_rtx"].runs_here
    text = rendered(here)
    for line in ("GPU             none: no NVIDIA GPU", "✓ export", "– run        not here: no NVIDIA GPU",
                 "PASSED: everything that can run here ran and passed (not here: run, parity)"):
        assert line in text, line


def test_json_schema_is_stable(here):
    data = json.loads(json.dumps(here.as_dict()))
    assert list(data) == ["schema", "schema_version", "passed", "exit_code", "environment", "gpu", "backends", "steps", "workdir"]
    assert (data["schema"], data["schema_version"]) == ("perceiver-export/doctor", 1)
    assert list(data["environment"]) == ["perceiver-export", "python", "platform", "packages", "onnxruntime_providers", "torch_cuda"]
    assert {"torch", "onnx", "onnxscript", "onnxruntime", "tensorrt", "tensorrt_rtx", "polygraphy", "openvino"} <= set(data["environment"]["packages"])
    assert list(data["gpu"]) == ["usable", "name", "compute_capability", "driver", "reason"]
    assert [b["name"] for b in data["backends"]] == ["torch", "onnxruntime", "onnx-reference", "openvino", "tensorrt", "tensorrt_rtx",
                                                     "polygraphy"]
    assert all(list(b) == ["name", "version", "runs_here", "detail", "install", "builds_here"] for b in data["backends"])
    assert all(list(s) == ["name", "status", "detail", "error", "fix", "seconds"] for s in data["steps"])


def test_doctor_cli_exit_code_json_and_kept_files(tmp_path):
    r = cli("doctor", "--json", "--keep", str(tmp_path / "kept"))
    data = json.loads(r.stdout)
    assert r.returncode == data["exit_code"] == 0 and data["passed"], (r.stderr, data["steps"])
    assert data["workdir"] == str(tmp_path / "kept")
    assert (tmp_path / "kept" / "doctor-tiny" / "manifest.json").is_file()
    assert (tmp_path / "kept" / "polygraphy" / "inputs.json").is_file()


@pytest.fixture
def fast(monkeypatch):
    """The export and verify steps stubbed to succeed instantly; no TensorRT flavor, no Polygraphy: tests of the logic."""
    result = types.SimpleNamespace(manifest=types.SimpleNamespace(data={"files": {"model.onnx": {}}}), seconds=0.1)
    monkeypatch.setattr(doctor, "export_artifact", lambda *a, **k: result)
    parity = types.SimpleNamespace(tolerance=Tolerance(1e-4, 1e-3), backends=["onnxruntime"],
                                   results=[types.SimpleNamespace(backend="onnxruntime", tolerance=Tolerance(1e-4, 1e-3),
                                                                  comparison=types.SimpleNamespace(max_abs=1e-7))])
    monkeypatch.setattr(doctor, "verify_artifact", lambda *a, **k: parity)
    monkeypatch.setattr(doctor, "require_parity", lambda report: None)
    monkeypatch.setattr(doctor, "installed_flavors", lambda: [])
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda m: None if m in ("polygraphy", "tensorrt", "tensorrt_rtx") else real(m))


def test_nothing_to_build_or_run_is_not_a_failure_and_says_what_to_install(fast):
    report = run_doctor()
    assert [s.status for s in report.steps] == [OK, OK, NOT_HERE, NOT_HERE, NOT_HERE, NOT_HERE]
    build = report.steps[2]
    assert build.detail == "no TensorRT flavor is installed" and "pip install tensorrt-rtx-cu13" in build.fix
    assert report.steps[5].fix == "pip install polygraphy onnx-graphsurgeon"
    assert report.exit_code == 0
    assert "→ pip install polygraphy onnx-graphsurgeon" in rendered(report)


def test_a_failing_step_shows_its_error_and_fix_and_skips_the_rest(fast, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("onnxscript exploded\nsecond line")

    monkeypatch.setattr(doctor, "export_artifact", broken)
    report = run_doctor()
    export = report.steps[0]
    assert export.status == FAILED and export.error == "RuntimeError: onnxscript exploded"
    assert "torch>=2.6" in export.fix and "report it with this output" in export.fix
    assert [s.status for s in report.steps[1:]] == [SKIPPED] * 5 and report.steps[1].detail == "after export failed"
    assert not report.passed and report.exit_code == 3
    text = rendered(report)
    assert "✗ export     RuntimeError: onnxscript exploded" in text and "FAILED: export (exit 3)" in text


def test_a_parity_failure_exits_1(fast, monkeypatch):
    def mismatch(report):
        raise ParityError("3 of 14 parity cases failed; worst: onnxruntime 'all max'")

    monkeypatch.setattr(doctor, "require_parity", mismatch)
    report = run_doctor()
    assert report.steps[1].status == FAILED and report.steps[1].error.startswith("ParityError: 3 of 14")
    assert "doctor --keep DIR" in report.steps[1].fix
    assert report.exit_code == 1


def test_engine_plan_builds_for_this_gpu_where_a_flavor_targets_it():
    assert engine_plan(NO_GPU, ["tensorrt_rtx"]) == doctor.EnginePlan("tensorrt_rtx", ("sm89",), False, "no NVIDIA GPU (test)")
    assert engine_plan(gpu("sm86"), ["tensorrt_rtx"]) == doctor.EnginePlan("tensorrt_rtx", ("sm86",), True, None)
    hopper = engine_plan(gpu("sm90"), ["tensorrt_rtx"])  # measured: TensorRT-RTX refuses Hopper
    assert hopper.flavor == "tensorrt_rtx" and hopper.compute_capabilities == ("sm89",) and not hopper.runs
    assert hopper.why_not.startswith("TensorRT-RTX does not target sm90") and "install NVIDIA TensorRT >= 10" in hopper.why_not
    assert engine_plan(gpu("sm90"), ["tensorrt", "tensorrt_rtx"]) == doctor.EnginePlan("tensorrt", (), True, None)
    datacenter = engine_plan(NO_GPU, ["tensorrt"])
    assert not datacenter.builds and not datacenter.runs and "builds on the GPU it targets" in datacenter.why_not
    assert engine_plan(NO_GPU, []) == doctor.EnginePlan(None, (), False, "no TensorRT flavor is installed", builds=False)


def test_a_polygraphy_mismatch_shows_polygraphys_verdict(fast, monkeypatch):
    from perceiver_export.engines.commands import Command
    from perceiver_export.verify.polygraphy import PolygraphyRun

    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda m: "0.53.6" if m == "polygraphy" else (None if m.startswith("tensorrt") else real(m)))
    monkeypatch.setattr(doctor, "save_polygraphy_data", lambda manifest, recorder, d: types.SimpleNamespace(cases=[1] * 14))
    monkeypatch.setattr(doctor, "run_command", lambda *a, **k: Command(("polygraphy", "run", "m.onnx", "--trt")))
    monkeypatch.setattr(doctor, "read_manifest", lambda d: None)
    tail = "[E] Accuracy Summary | onnxrt-runner vs. eager-torch-float32 | Passed: 0/14 iterations | Pass Rate: 0.00%\n[E] FAILED | Runtime: 1.2s | Command: polygraphy run"
    monkeypatch.setattr(doctor, "run_polygraphy", lambda command: PolygraphyRun(1, tail))
    step = run_doctor().steps[-1]
    assert step.status == FAILED and step.error.startswith(
        "RuntimeError: polygraphy run --onnxrt failed (exit 1): [E] Accuracy Summary | onnxrt-runner vs. eager-torch-float32 | Passed: 0/14")
    assert "doctor --keep DIR" in step.fix


def test_verify_line_shows_the_tolerance_each_backend_was_judged_by(tiny_fp32):
    """A bf16-compute row passes at its own scale tolerance: the line says so, not the dtype's atol/rtol."""
    import numpy as np

    from perceiver_export.cli.doctor_view import print_step
    from perceiver_export.doctor import Step, worst_at_tolerance
    from perceiver_export.verify.compare import TOLERANCES, compare
    from perceiver_export.verify.parity import CaseResult, verify_artifact

    report = verify_artifact(tiny_fp32.directory, backends=["onnxruntime-optimized"], write=False)
    ref = np.linspace(-1, 1, 64, dtype=np.float32)
    bf16 = TOLERANCES["bf16-compute"]
    report.results.append(CaseResult("openvino-bf16", report.results[0].case,
                                     compare(ref + 9.1e-3, ref, bf16.atol, bf16.rtol, bf16.scale_atol), 0.01, bf16))
    line = worst_at_tolerance(report.results)
    worst = max(r.comparison.max_abs for r in report.results if r.backend == "onnxruntime-optimized")
    assert line == (f"onnxruntime-optimized worst max abs {worst:.1e} (judged at atol 0.0001, rtol 0.001); "
                    "openvino-bf16 worst max abs 9.1e-03 (judged at 0.05 × std(ref))")
    console = Console(record=True, width=300)
    print_step(Step("verify", OK, detail=f"16 cases against eager float32: {line}", seconds=1.0), console)
    assert "openvino-bf16 worst max abs 9.1e-03 (judged at 0.05 × std(ref))" in console.export_text()
