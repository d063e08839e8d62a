"""Damaged artifacts, killed writers, concurrency and a soak run: failures are clear, nothing is lost or leaks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from perceiver_export import runtime
from perceiver_export.artifact.manifest import MAX_MANIFEST_BYTES
from perceiver_export.errors import ArtifactDamagedError, ArtifactError
from perceiver_export.runtime.arrays import to_numpy
from tests.conftest import REPO


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x55
    path.write_bytes(bytes(data))


def _edit_manifest(fn):
    def apply(d):
        m = json.loads((d / "manifest.json").read_text())
        fn(m)
        (d / "manifest.json").write_text(json.dumps(m))

    return apply


DAMAGE = {
    "truncated model.onnx": (lambda d: _truncate(d / "model.onnx"), r"model.onnx: damaged: \d+ bytes, the manifest records \d+"),
    "corrupted model.onnx": (lambda d: _flip(d / "model.onnx"), r"model.onnx: damaged: sha256 .* does not match"),
    "corrupted weights": (lambda d: _flip(d / "weights.safetensors"), r"weights.safetensors: damaged: sha256"),
    "truncated optimized graph": (lambda d: _truncate(d / "model.ort.onnx"), r"model.ort.onnx: damaged"),
    "listed file absent": (lambda d: (d / "weights.safetensors").unlink(), r"weights.safetensors: listed in the manifest but missing"),
    "manifest not JSON": (lambda d: (d / "manifest.json").write_text("{not json"), r"manifest.json: not valid JSON"),
    "manifest missing keys": (_edit_manifest(lambda m: m.pop("contract")), r"manifest.json: missing keys \['contract'\]"),
    "unknown schema version": (_edit_manifest(lambda m: m.update(schema_version=99)),
                               r"schema_version 99 is not supported \(this version reads 1 to 2\)"),
    "foreign schema": (_edit_manifest(lambda m: m.update(schema="something/else")), r"schema 'something/else' is not"),
    "file entry escapes": (_edit_manifest(lambda m: m["files"].update({"../x": {"sha256": "0" * 64, "bytes": 0}})),
                           r"file entry '../x' points outside the artifact"),
    "manifest too large": (lambda d: (d / "manifest.json").write_bytes(b" " * (MAX_MANIFEST_BYTES + 1)),
                           r"manifest.json: \d+ bytes, larger than the \d+ allowed"),
    "wrong type in manifest": (_edit_manifest(lambda m: m.update(opset="18")),
                               r"does not match the manifest schema at opset: '18' is not of type 'integer'"),
    "bad sha256 in manifest": (_edit_manifest(lambda m: m["files"]["model.onnx"].update(sha256="../../x")),
                               r"does not match the manifest schema at files/model.onnx/sha256"),
    "bad contract": (_edit_manifest(lambda m: m["contract"]["axes"].update(batch={"min": 4, "opt": 1, "max": 2})),
                     r"invalid I/O contract|axis range must satisfy"),
}


@pytest.mark.parametrize("fault", sorted(DAMAGE))
def test_damaged_artifact_is_named_before_any_backend_parses_it(artifact_copy, fault):
    damage, message = DAMAGE[fault]
    damage(artifact_copy)
    with pytest.raises(ArtifactError, match=message) as raised:
        runtime.load(artifact_copy)
    r = subprocess.run([sys.executable, "-m", "perceiver_export", "verify", str(artifact_copy)], capture_output=True,
                       text=True, cwd=REPO, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    if isinstance(raised.value, ArtifactDamagedError):  # a file that is not the manifest's: verification failed, 1
        assert r.returncode == 1 and "verification failed" in r.stderr, (r.returncode, r.stderr)
    else:  # an artifact verify cannot read at all: any other error, 3
        assert r.returncode == 3 and "error (" in r.stderr, (r.returncode, r.stderr)


def _wait_for(predicate, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_export_killed_mid_write_leaves_previous_artifact_intact(artifact_copy, tmp_path):
    before = (artifact_copy / "manifest.json").read_bytes()
    code = (
        "from perceiver_export.config import load_spec\n"
        "from perceiver_export.export.artifact_builder import export_artifact\n"
        f"export_artifact(load_spec('perceiver-tiny'), {str(artifact_copy)!r}, seed=9)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = lambda: list(artifact_copy.parent.glob(f".{artifact_copy.name}.staging-*/model.onnx"))  # noqa: E731
    try:
        assert _wait_for(staging), "the export never started writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (artifact_copy / "manifest.json").read_bytes() == before
    runner = runtime.load(artifact_copy)  # hashes checked: the previous artifact is whole
    assert runner(*(np.zeros((1, n, 32), np.float32) for n in (2, 3, 4))).shape == (1, 2, 32)


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt_rtx") is None, reason="TensorRT-RTX is not installed")
def test_engine_build_killed_mid_build_leaves_artifact_and_previous_engine_intact(artifact_copy):
    from perceiver_export.engines.build import BuildOptions, build_engine

    build_engine(artifact_copy, BuildOptions(flavor="tensorrt_rtx", compute_capabilities=["sm89"]))
    before = (artifact_copy / "manifest.json").read_bytes()
    code = (
        "import sys\n"
        "from perceiver_export.engines.build import BuildOptions, build_engine\n"
        "def progress(*a):\n    print('phase', a[1], flush=True)\n"
        f"build_engine({str(artifact_copy)!r}, BuildOptions(flavor='tensorrt_rtx', compute_capabilities=['sm120']), progress)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().startswith("phase"), "the build never started"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert (artifact_copy / "manifest.json").read_bytes() == before
    from perceiver_export.artifact.manifest import read_manifest

    manifest = read_manifest(artifact_copy)
    manifest.check_files()  # the previous engine still matches its recorded sha256
    assert manifest.engines["model.tensorrt_rtx.engine"]["compute_capabilities"] == ["sm89"]


def test_one_runner_shared_by_8_threads_matches_serial_calls(tiny_fp32):
    runner = runtime.load(tiny_fp32.directory)
    rng = np.random.default_rng(0)
    shapes = [(1, 1, 1, 1), (2, 8, 8, 8), (4, 16, 24, 24), (3, 5, 7, 2), (1, 16, 1, 24)]
    cases = []
    for b, q, k, v in shapes:
        feeds = [rng.standard_normal((b, n, 32)).astype(np.float32) for n in (q, k, v)]
        cases.append((feeds, rng.random((b, k + v)) > 0.3))
    serial = [runner(*f, m) for f, m in cases]
    mismatches, errors = [], []

    def work(t):
        try:
            for i in range(200):
                j = (t + i) % len(cases)
                if not np.array_equal(runner(*cases[j][0], cases[j][1]), serial[j]):
                    mismatches.append((t, i))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and mismatches == []  # 8 x 200 = 1600 calls, byte-identical to serial


def test_soak_10000_calls_shows_no_memory_growth(tiny_fp32):
    from perceiver_export.bench.measure import rss_bytes

    runner = runtime.load(tiny_fp32.directory, threads=1)
    feeds = [np.ones((2, n, 32), np.float32) for n in (8, 8, 8)]
    for _ in range(500):  # warm-up: arenas and caches reach their size
        runner(*feeds)
    start = rss_bytes()
    for _ in range(10_000):
        runner(*feeds)
    growth_mb = (rss_bytes() - start) / 2**20
    print(f"soak: RSS {start / 2**20:.1f} MB -> growth {growth_mb:+.2f} MB over 10,000 calls")
    assert growth_mb < 8.0


def test_nan_and_inf_propagate_to_the_affected_batch_rows_only(tiny_fp32):
    """Defined behaviour: non-finite inputs are not refused; they propagate through the rows they touch."""
    runner = runtime.load(tiny_fp32.directory)
    q, k, v = (np.random.default_rng(1).standard_normal((2, n, 32)).astype(np.float32) for n in (3, 4, 5))
    q[1, 0, 0] = np.nan
    k[1, 2, 3] = np.inf
    out = runner(q, k, v)
    assert np.isfinite(out[0]).all() and not np.isfinite(out[1]).all()
    assert to_numpy(out).dtype == np.float32


def test_non_contiguous_inputs_give_the_same_result(tiny_fp32):
    runner = runtime.load(tiny_fp32.directory)
    rng = np.random.default_rng(2)
    wide = rng.standard_normal((2, 6, 64)).astype(np.float32)
    q = wide[:, ::2, ::2]  # a strided view
    k, v = (rng.standard_normal((2, n, 32)).astype(np.float32) for n in (3, 4))
    assert not q.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(runner(q, k, v), runner(np.ascontiguousarray(q), k, v))
