"""`doctor`: what this machine can run, then a tiny model taken through every stage that can run here.

export → verify → engine build for this GPU → TensorRT runner → parity against eager → the same cases through
Polygraphy. Each step is ok, failed (with the error and what to do), not here (and why), or skipped after a failure.
Only the package's public pieces are called, exactly as a user would call them; the report is meant to be pasted
into a bug report.
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__, runtime
from .artifact.manifest import read_manifest
from .config import ModelSpec
from .engines.build import DEFAULT_RTX_TARGET, BuildOptions, build_engine
from .engines.compat import cuda_compute_capability
from .engines.flavor import FLAVORS, INSTALL_HINTS, RTX_COMPUTE_CAPABILITIES, installed_flavors
from .errors import ParityError
from .export.artifact_builder import export_artifact
from .export.versions import library_versions
from .verify.parity import require_parity, verify_artifact
from .verify.polygraphy import (
    CaseRecorder,
    as_onnxrt,
    engine_run_command,
    run_command,
    run_polygraphy,
    save_polygraphy_data,
)

SCHEMA, SCHEMA_VERSION = "perceiver-export/doctor", 1
OK, FAILED, NOT_HERE, SKIPPED = "ok", "failed", "not here", "skipped"
STEPS = ("export", "verify", "build", "run", "parity", "polygraphy")
# A small PerceiverLayer (models/perceiver-tiny.toml's sizes), written out so an installed wheel needs no models/ folder.
TINY = {"name": "doctor-tiny", "model": {"dim": 32, "heads": 2, "depth": 2, "dim_head": 16, "ff_mult": 2},
        "axes": {"batch": [1, 2, 4], "q_len": [1, 8, 16], "k_len": [1, 8, 24], "v_len": [1, 8, 24]}}
REPORT_FIX = "report it with this output (and `doctor --json`)"


@dataclass
class Step:
    name: str
    status: str
    detail: str = ""
    error: str | None = None  # "Type: message" of what failed
    fix: str | None = None  # what to do about a failure, or how to make a "not here" step run
    seconds: float = 0.0


@dataclass
class Backend:
    name: str
    version: str | None
    runs_here: bool
    detail: str  # providers, device, or why it cannot run here
    install: str | None = None  # what to install for it to run here
    builds_here: bool | None = None  # TensorRT flavors only


@dataclass
class DoctorReport:
    environment: dict
    gpu: dict
    backends: list[Backend]
    steps: list[Step] = field(default_factory=list)
    workdir: str | None = None

    @property
    def passed(self) -> bool:
        return all(s.status != FAILED for s in self.steps)

    @property
    def exit_code(self) -> int:
        """0: everything that can run here ran and passed; 1: a parity check failed; 3: another step failed."""
        failed = next((s for s in self.steps if s.status == FAILED), None)
        if failed is None:
            return 0
        return 1 if failed.error and failed.error.startswith(ParityError.__name__) else 3

    def as_dict(self) -> dict:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "passed": self.passed, "exit_code": self.exit_code,
                "environment": self.environment, "gpu": self.gpu, "backends": [asdict(b) for b in self.backends],
                "steps": [asdict(s) for s in self.steps], "workdir": self.workdir}


# ---- environment -------------------------------------------------------------------------------------


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return getattr(__import__(module), "__version__", "unknown")
    except Exception as e:  # an installed but broken package is worth reporting, not crashing on
        return f"broken: {type(e).__name__}: {e}"


def environment() -> dict:
    versions = library_versions()
    packages = {k: versions.get(k) for k in ("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "numpy") if k in versions}
    for flavor in FLAVORS:
        packages[flavor] = _version(flavor)
    packages["polygraphy"] = _version("polygraphy")
    packages["openvino"] = _version("openvino")
    try:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    except ImportError:
        providers = []
    import torch

    return {"perceiver-export": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "packages": packages, "onnxruntime_providers": providers, "torch_cuda": torch.version.cuda}


def _nvidia_smi() -> dict | None:
    """The first GPU nvidia-smi lists (name, compute capability, driver), or None without nvidia-smi or a GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = next(iter(out.stdout.strip().splitlines()), "")
    parts = [p.strip() for p in line.split(",")]
    if out.returncode != 0 or len(parts) != 3:
        return None
    return {"name": parts[0], "compute_capability": "sm" + parts[1].replace(".", ""), "driver": parts[2]}


def gpu_info() -> dict:
    """{"usable": bool, "name", "compute_capability", "driver", "reason"}: usable means torch can put tensors on it."""
    import torch

    smi = _nvidia_smi() or {}
    cc = cuda_compute_capability()
    if cc is not None:
        return {"usable": True, "name": torch.cuda.get_device_name(0), "compute_capability": cc,
                "driver": smi.get("driver"), "reason": None}
    if smi:
        reason = (f"nvidia-smi lists {smi['name']}, but torch {torch.__version__} is a CPU build: install a CUDA build of torch"
                  if torch.version.cuda is None else f"nvidia-smi lists {smi['name']}, but torch cannot use it (driver too old for CUDA {torch.version.cuda}?)")
        return {"usable": False, **smi, "reason": reason}
    what = "a CPU build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    return {"usable": False, "name": None, "compute_capability": None, "driver": None,
            "reason": f"no NVIDIA GPU (torch {torch.__version__}, {what}, sees no CUDA device; no nvidia-smi)"}


def backends(env: dict, gpu: dict) -> list[Backend]:
    p = env["packages"]
    out = [
        Backend("torch", p.get("torch"), True, "cpu" + (f" and cuda ({gpu['name']})" if gpu["usable"] else "")),
        Backend("onnxruntime", p.get("onnxruntime") or p.get("onnxruntime-gpu"), bool(env["onnxruntime_providers"]),
                ", ".join(env["onnxruntime_providers"]) or "not installed",
                None if env["onnxruntime_providers"] else "pip install 'perceiver-export[cpu]' (or [gpu])"),
        Backend("onnx-reference", p.get("onnx"), True, "ONNX's reference evaluator (slow; every dtype)"),
    ]
    out.append(_openvino(p.get("openvino")))
    for flavor in FLAVORS:
        version = p.get(flavor)
        runs, why = _flavor_runs(flavor, version, gpu)
        out.append(Backend(flavor, version, runs, why or f"runs on {gpu['name']}", None if version else INSTALL_HINTS[flavor],
                           builds_here=bool(version) and (flavor == "tensorrt_rtx" or gpu["usable"])))
    out.append(Backend("polygraphy", p.get("polygraphy"), bool(p.get("polygraphy")),
                       "NVIDIA's tool for the re-check and bisect commands" if p.get("polygraphy") else "not installed",
                       None if p.get("polygraphy") else "pip install polygraphy onnx-graphsurgeon"))
    return out


def _openvino(version: str | None) -> Backend:
    if version is None or version.startswith("broken"):
        return Backend("openvino", version, False, version or "not installed", "pip install 'perceiver-export[openvino]'")
    from .runtime.openvino.runner import bf16_unavailable_reason

    reason = bf16_unavailable_reason()
    bf16 = "openvino-bf16 runs here" if reason is None else f"no openvino-bf16: {reason}"
    return Backend("openvino", version, True, f"CPU, float32; {bf16}")


def _flavor_runs(flavor: str, version: str | None, gpu: dict) -> tuple[bool, str | None]:
    if not version:
        return False, "not installed"
    if not gpu["usable"]:
        return False, gpu["reason"]
    if flavor == "tensorrt_rtx" and gpu["compute_capability"] not in RTX_COMPUTE_CAPABILITIES:
        return False, (f"TensorRT-RTX does not target {gpu['compute_capability']} ({gpu['name']}; it targets "
                       f"{', '.join(RTX_COMPUTE_CAPABILITIES)}): {INSTALL_HINTS['tensorrt']}")
    return True, None


@dataclass(frozen=True)
class EnginePlan:
    flavor: str | None  # None: no flavor installed
    compute_capabilities: tuple[str, ...]
    runs: bool
    why_not: str | None  # why the engine cannot be built or cannot run here
    builds: bool = True


def engine_plan(gpu: dict, flavors: list[str]) -> EnginePlan:
    """Datacenter TensorRT for its own GPU; TensorRT-RTX for this GPU when it targets it, else cross-built for
    DEFAULT_RTX_TARGET (the `trt` command's and build_engine's default there)."""
    if "tensorrt" in flavors and gpu["usable"]:
        return EnginePlan("tensorrt", (), True, None)
    if "tensorrt_rtx" in flavors:
        runs, why = _flavor_runs("tensorrt_rtx", "installed", gpu)
        return EnginePlan("tensorrt_rtx", (gpu["compute_capability"],) if runs else (DEFAULT_RTX_TARGET,), runs, why)
    if "tensorrt" in flavors:
        return EnginePlan("tensorrt", (), False, f"datacenter TensorRT builds on the GPU it targets: {gpu['reason']}", builds=False)
    return EnginePlan(None, (), False, "no TensorRT flavor is installed", builds=False)


# ---- the checks --------------------------------------------------------------------------------------


class _Runner:
    """Runs the steps in order; after a failure the remaining steps are skipped, naming the one that failed."""

    def __init__(self, report: DoctorReport, on_step: Callable[[Step], None] | None):
        self.report, self.on_step, self.failed = report, on_step, None

    def step(self, name: str, body: Callable[[], str], fix: str, not_here: str | None = None, not_here_fix: str | None = None) -> bool:
        start = time.perf_counter()
        if self.failed:
            step = Step(name, SKIPPED, f"after {self.failed} failed")
        elif not_here:
            step = Step(name, NOT_HERE, not_here, fix=not_here_fix)
        else:
            try:
                step = Step(name, OK, body())
            except Exception as e:  # any failure is reported with what to do; the remaining steps are skipped
                message = next(iter(str(e).strip().splitlines()), "")[:1000]
                step = Step(name, FAILED, error=f"{type(e).__name__}: {message}", fix=fix)
                self.failed = name
        step.seconds = round(time.perf_counter() - start, 2)
        self.report.steps.append(step)
        if self.on_step:
            self.on_step(step)
        return step.status == OK


def run_doctor(workdir: str | Path | None = None, on_start: Callable[[DoctorReport], None] | None = None,
               on_step: Callable[[Step], None] | None = None) -> DoctorReport:
    """Check this machine. workdir keeps the tiny artifact (and Polygraphy's files); default: a temporary folder.

    on_start sees the report once the environment is known, on_step each step as it finishes.
    """
    env = environment()
    gpu = gpu_info()
    report = DoctorReport(env, gpu, backends(env, gpu))
    if on_start:
        on_start(report)
    with tempfile.TemporaryDirectory(prefix="perceiver-doctor-") as tmp:
        base = Path(workdir) if workdir else Path(tmp)
        report.workdir = str(base) if workdir else None
        _checks(report, base, on_step)
    return report


def worst_at_tolerance(results) -> str:
    """Each tolerance the parity cases were judged by, with its backends and their worst error: a bf16 or int8 row
    passes at its own tolerance, not at the dtype's, and the line must say which."""
    groups: dict[str, list] = {}
    for r in results:
        groups.setdefault(r.tolerance.describe(), []).append(r)
    parts = []
    for tolerance, rows in groups.items():
        worst = max(r.comparison.max_abs for r in rows)
        backends = ", ".join(dict.fromkeys(r.backend for r in rows))
        parts.append(f"{backends} worst max abs {worst:.1e} (judged at {tolerance})")
    return "; ".join(parts)


def _checks(report: DoctorReport, base: Path, on_step) -> None:
    gpu, run = report.gpu, _Runner(report, on_step)
    artifact = base / TINY["name"]
    recorder = CaseRecorder(failed_only=False)
    state: dict = {}

    def export() -> str:
        result = export_artifact(ModelSpec.from_dict(TINY, source="doctor"), artifact, verify=False)
        return f"{artifact.name}: {', '.join(result.manifest.data['files'])}"

    def verify() -> str:
        parity = verify_artifact(artifact, on_case=recorder)
        require_parity(parity)
        state["tolerance"] = parity.tolerance
        return (f"{len(parity.results) // len(parity.backends)} cases on {', '.join(parity.backends)} against eager float32: "
                f"{worst_at_tolerance(parity.results)}")

    plan = engine_plan(gpu, installed_flavors())

    def build() -> str:
        result = build_engine(artifact, BuildOptions(flavor=plan.flavor, compute_capabilities=plan.compute_capabilities))
        state["engine"] = result.path.name
        targets = ", ".join(result.entry["compute_capabilities"] or ["this GPU"])
        how = "built" if plan.runs else "cross-built (cannot run here)"
        return f"{plan.flavor} {result.entry['version']}: {result.path.name} {how} for {targets}"

    def run_engine() -> str:
        import numpy as np

        runner = runtime.load(artifact, backend="tensorrt")
        contract = runner.contract
        sizes = {a: r.opt for a, r in contract.axes.items()}
        feeds = {s.name: np.ones(contract.concrete_shape(s.name, sizes), dtype=np.float32) for s in contract.inputs if s.dtype != "bool"}
        out = runner.infer(feeds)
        return f"{runner.backend} deserialized on {gpu['name']} ({gpu['compute_capability']}); one call at opt shapes gave {out.shape}"

    def parity() -> str:
        result = verify_artifact(artifact, backends=["tensorrt"], write=False)
        require_parity(result)
        return f"{len(result.results)} cases against eager float32: {worst_at_tolerance(result.results)}"

    def polygraphy() -> str:
        manifest = read_manifest(artifact)
        files = save_polygraphy_data(manifest, recorder, base / "polygraphy")
        checks = [("--onnxrt", as_onnxrt(run_command(manifest, files, state["tolerance"])))]
        if plan.runs:
            checks.append(("--trt", run_command(manifest, files, state["tolerance"], rtx=plan.flavor == "tensorrt_rtx")))
            checks.append((f"--trt {state['engine']}", engine_run_command(manifest, state["engine"], files, state["tolerance"])))
        for what, command in checks:
            result = run_polygraphy(command)
            if result.returncode != 0:
                errors = [line.strip() for line in result.tail.splitlines()
                          if line.lstrip().startswith(("[!]", "[E]")) and "| Runtime:" not in line]
                why = errors[-1] if errors else (result.tail.splitlines() or [""])[-1]
                raise RuntimeError(f"polygraphy run {what} failed (exit {result.returncode}): {why} — the command: {command}")
        ran = ", ".join(w for w, _ in checks)
        rest = "" if plan.runs else "; --trt not here (see run)"
        return f"polygraphy run {ran}: {len(files.cases)} saved cases match the eager outputs{rest}"

    keep = "re-run with `doctor --keep DIR` to keep the artifact, then follow `python -m perceiver_export docs tensorrt-on-your-gpu`"
    run.step("export", export, f"check the versions above against pyproject.toml's ranges (torch>=2.6, onnx>=1.17, "
                               f"onnxscript>=0.2); {REPORT_FIX}")
    run.step("verify", verify, f"ONNX Runtime disagrees with eager PyTorch on this machine: {keep}; {REPORT_FIX}")
    install_any = "; or ".join(INSTALL_HINTS[f] for f in FLAVORS)
    run.step("build", build, f"the TensorRT ONNX parser or builder failed on an exported graph: {REPORT_FIX}",
             not_here=None if plan.builds else plan.why_not, not_here_fix=install_any if plan.flavor is None else _run_fix(plan, gpu))
    build_status = report.steps[-1].status
    cannot_run = plan.why_not if build_status in (OK, NOT_HERE) and not plan.runs else None
    run.step("run", run_engine, f"the engine built here did not run on this GPU: {REPORT_FIX}",
             not_here=cannot_run, not_here_fix=_run_fix(plan, gpu))
    run.step("parity", parity, f"the TensorRT engine disagrees with eager PyTorch: {keep}, and bisect it with Polygraphy",
             not_here=cannot_run and "the engine did not run here", not_here_fix=_run_fix(plan, gpu))
    has_polygraphy = bool(report.environment["packages"].get("polygraphy"))
    run.step("polygraphy", polygraphy, f"Polygraphy's own runner disagrees with the eager outputs, or did not run: {keep}",
             not_here=None if has_polygraphy else "polygraphy is not installed",
             not_here_fix="pip install polygraphy onnx-graphsurgeon")


def _run_fix(plan: EnginePlan, gpu: dict) -> str | None:
    if plan.flavor is None:
        return "; or ".join(INSTALL_HINTS[f] for f in FLAVORS)
    if not gpu["usable"]:
        return "run `python -m perceiver_export doctor` on a machine with an NVIDIA GPU and a CUDA build of torch"
    return INSTALL_HINTS["tensorrt"]
