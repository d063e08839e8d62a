"""Runners: one interface, one input check before any backend, numpy and torch inputs."""

import numpy as np
import pytest
import torch

from perceiver_export import runtime
from perceiver_export.errors import BackendUnavailableError, InputError


def sample(batch=2, q=5, k=7, v=3, dim=32, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((batch, n, dim)).astype(dtype) for n in (q, k, v))


@pytest.fixture(scope="module")
def ort_runner(tiny_fp32):
    return runtime.load(tiny_fp32.directory, backend="onnxruntime", threads=1)


@pytest.fixture(scope="module")
def torch_runner(tiny_fp32):
    return runtime.load(tiny_fp32.directory, backend="torch")


def test_onnxruntime_matches_torch_with_and_without_mask(ort_runner, torch_runner):
    q, k, v = sample()
    mask = np.random.default_rng(1).random((2, 10)) > 0.3
    for m in (None, mask):
        out = ort_runner(q, k, v, m)
        assert out.shape == (2, 5, 32) and out.dtype == np.float32
        np.testing.assert_allclose(out, torch_runner(q, k, v, m), atol=1e-5, rtol=1e-4)


def test_no_mask_means_all_true(ort_runner):
    q, k, v = sample()
    np.testing.assert_array_equal(ort_runner(q, k, v), ort_runner(q, k, v, np.ones((2, 10), bool)))


def test_torch_tensors_in_numpy_out(ort_runner, torch_runner):
    q, k, v = sample()
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    for runner in (ort_runner, torch_runner):
        out = runner(tq, tk, tv, torch.ones(2, 10, dtype=torch.bool))
        assert isinstance(out, np.ndarray)
        np.testing.assert_allclose(out, runner(q, k, v), atol=1e-6)


def test_bad_input_is_refused_before_the_backend_runs(ort_runner, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the backend was called")

    monkeypatch.setattr(ort_runner.session, "run", never)
    q, k, v = sample()
    with pytest.raises(InputError, match=r"input 'v': expected dtype float32, got float64"):
        ort_runner(q, k, v.astype(np.float64))
    with pytest.raises(InputError, match=r"input 'mask': expected k_len \+ v_len = 7 \+ 3 = 10 positions, got 11"):
        ort_runner(q, k, v, np.ones((2, 11), bool))
    with pytest.raises(InputError, match=r"input 'k': k_len \(axis 1\) must be in \[1, 24\], got 25"):
        ort_runner(*sample(k=25))


def test_fp16_runner_takes_fp16_and_refuses_fp32(tiny_fp16):
    runner = runtime.load(tiny_fp16.directory)
    out = runner(*sample(dtype=np.float16))
    assert out.dtype == np.float16 and out.shape == (2, 5, 32)
    with pytest.raises(InputError, match="input 'q': expected dtype float16, got float32"):
        runner(*sample())


def test_bf16_artifact_runs_on_torch_and_reference_and_onnxruntime_says_why_not(tiny_bf16):
    import ml_dtypes

    q, k, v = sample(dtype=ml_dtypes.bfloat16)
    a = runtime.load(tiny_bf16.directory, backend="torch")(q, k, v)
    b = runtime.load(tiny_bf16.directory, backend="onnx-reference")(q, k, v)
    assert a.dtype == b.dtype == ml_dtypes.bfloat16
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=0.1)
    with pytest.raises(BackendUnavailableError, match="takes float32 and float16 artifacts; for bfloat16 use"):
        runtime.load(tiny_bf16.directory, backend="onnxruntime")


def test_unknown_backend_and_missing_provider(tiny_fp32):
    with pytest.raises(BackendUnavailableError, match="unknown backend 'tensorflow'; choose one of onnxruntime, torch"):
        runtime.load(tiny_fp32.directory, backend="tensorflow")
    with pytest.raises(BackendUnavailableError, match="has no NoSuchExecutionProvider; available: .*CPUExecutionProvider"):
        runtime.load(tiny_fp32.directory, providers=["NoSuchExecutionProvider"])


def test_runner_records_providers(ort_runner):
    assert ort_runner.providers[-1] == "CPUExecutionProvider"
