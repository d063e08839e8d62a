"""Artifact modes: every write ends with the modes open()/mkdir give under the umask, so another user can serve it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from perceiver_export.artifact.atomic import atomic_write_text, publish_dir, staging_dir_for
from perceiver_export.engines.build import BuildOptions, build_engine
from perceiver_export.engines.flavor import installed_flavors
from perceiver_export.export.artifact_builder import export_artifact
from perceiver_export.serving.triton_repo import write_triton_repo

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534  # uid of nobody and gid of nogroup on Debian and most Linux distributions


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def modes_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


def expected(root: Path, mask: int) -> dict[str, int]:
    return {str(p.relative_to(root.parent)): (0o777 if p.is_dir() else 0o666) & ~mask for p in [root, *root.rglob("*")]}


def test_umask_is_read_without_changing_it(umask):
    from perceiver_export.artifact.atomic import current_umask

    assert current_umask() == umask
    assert os.umask(umask) == umask  # still what the test set


def test_atomic_writes_and_published_directories_have_the_umask_modes(umask, tmp_path):
    atomic_write_text(tmp_path / "f.txt", "x")
    final = tmp_path / "d"
    staging = staging_dir_for(final)
    (staging / "sub").mkdir()
    (staging / "sub" / "g").write_bytes(b"y")
    os.chmod(staging / "sub" / "g", 0o600)  # as safetensors writes its files
    publish_dir(staging, final)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o666 & ~umask
    assert modes_under(final) == {"d": 0o777 & ~umask, "d/sub": 0o777 & ~umask, "d/sub/g": 0o666 & ~umask}


def test_exported_artifact_engine_bench_triton_repo_and_kserve_manifest_have_the_umask_modes(umask, tmp_path, tiny_spec):
    out = tmp_path / "tiny"
    export_artifact(tiny_spec, out, verify=False, time_graphs=False)
    if "tensorrt_rtx" in installed_flavors():
        build_engine(out, BuildOptions(flavor="tensorrt_rtx", compute_capabilities=["sm89"]))
        assert (out / "model.tensorrt_rtx.engine").is_file()
    # In a process of its own, as the CLI: kserve's and tritonclient's protos cannot share one descriptor pool.
    subprocess.run([sys.executable, "-m", "perceiver_export", "kserve", str(out), "--image", "example.com/perceiver:1"],
                   check=True, capture_output=True, cwd=REPO, timeout=300)  # a child inherits the umask
    bench = [sys.executable, "-m", "perceiver_export", "bench", str(out), "--backends", "onnxruntime", "--grid", "1:8:8:8",
             "--iterations", "1", "--seconds", "0", "--threads", "1"]
    subprocess.run(bench, check=True, capture_output=True, cwd=REPO, timeout=300)
    write_triton_repo(out, tmp_path / "triton")
    assert {"manifest.json", "model.onnx", "weights.safetensors", "inferenceservice.yaml"} <= {p.name for p in out.iterdir()}
    assert {"bench.json", "bench.png"} <= {p.name for p in (out / "bench").iterdir()}
    assert modes_under(out) == expected(out, umask)
    repo = tmp_path / "triton"
    assert any(p.name == "config.pbtxt" for p in repo.rglob("*")) and len(list(repo.rglob("*"))) >= 3
    assert modes_under(repo) == expected(repo, umask)


# ---- another user serves what root exported ------------------------------------------------------------------
def _drop_to_nobody() -> list[str] | None:
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    return None


def _env() -> dict[str, str]:
    paths = dict.fromkeys([str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def _python_for_nobody(drop: list[str]) -> str | None:
    """This interpreter when nobody may run it, else the system's of the same version (the venv may point into
    /root, which is 0700), with this environment's packages on PYTHONPATH."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in dict.fromkeys([sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]):
        probe = subprocess.run([*drop, python, "-c", "import perceiver_export, onnxruntime"], env=_env(), cwd="/",
                               capture_output=True, timeout=120)
        if probe.returncode == 0:
            return python
    return None


@pytest.fixture(scope="module")
def as_nobody():
    if os.geteuid() != 0:
        pytest.skip("needs root: the test exports as root and serves as nobody")
    drop = _drop_to_nobody()
    if drop is None:
        pytest.skip("neither setpriv nor runuser is installed (util-linux)")
    python = _python_for_nobody(drop)
    if python is None:
        pytest.skip(f"nobody can run neither {sys.executable} nor a system Python {sys.version_info.major}."
                    f"{sys.version_info.minor} with these packages")
    return [*drop, python]


def _uids(pid: int) -> set[int]:
    """Real uid of the process, or of its children where it is runuser waiting for one."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    pids = [int(c) for c in children] if Path(f"/proc/{pid}/comm").read_text().strip() == "runuser" else [pid]
    return {int(next(line for line in Path(f"/proc/{p}/status").read_text().splitlines()
                     if line.startswith("Uid:")).split()[1]) for p in pids}


@pytest.fixture
def public_copy(tiny_fp32):
    """The root-exported artifact, copied with its modes (copytree keeps them) under a directory nobody can enter:
    pytest's own temporary directories are 0700."""
    parent = Path(tempfile.mkdtemp(prefix="perceiver-modes-"))
    os.chmod(parent, 0o755)
    dst = parent / "tiny"
    shutil.copytree(tiny_fp32.directory, dst)
    yield dst
    shutil.rmtree(parent)


def test_nobody_loads_an_artifact_exported_by_root(as_nobody, public_copy):
    code = ("import numpy as np; from perceiver_export import runtime; import sys\n"
            "r = runtime.load(sys.argv[1])\n"
            "y = r(*(np.ones((1, n, 32), np.float32) for n in (2, 3, 4)))\n"
            "print('shape', y.shape, 'finite', bool(np.isfinite(y).all()))\n")
    run = subprocess.run([*as_nobody, "-c", code, str(public_copy)], env=_env(), cwd="/", capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "shape (1, 2, 32) finite True" in run.stdout


def test_nobody_serves_an_artifact_exported_by_root(as_nobody, public_copy, tmp_path):
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*as_nobody, "-m", "perceiver_export", "serve", str(public_copy), "--host", "127.0.0.1",
                                 "--http-port", "0", "--grpc-port", "0"], env=_env(), cwd="/", stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        port = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"on\s+http://127\.0\.0\.1:(\d+)\s+and\s+grpc", log.read_text(errors="replace"))
            if m:
                port = m.group(1)
                break
            time.sleep(0.2)
        assert port, f"serve did not start as nobody (exit {proc.poll()}):\n{log.read_text(errors='replace')[-3000:]}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=30) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/perceiver-tiny", timeout=30) as r:
            assert json.load(r)["name"] == "perceiver-tiny"
        assert _uids(proc.pid) == {NOBODY}  # the server (setpriv's exec, or runuser's child) is nobody
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
