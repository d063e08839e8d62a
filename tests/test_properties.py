"""Property-based tests (hypothesis) over the runners that run here: valid shapes agree with eager PyTorch,
invalid inputs of every class get this package's typed error naming the input — never a crash or a raw message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perceiver_export import runtime
from perceiver_export.errors import InputError

RUNNERS = ("onnxruntime", "onnxruntime-plain", "torch")
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def runners(tiny_fp32):
    d = tiny_fp32.directory
    return {
        "onnxruntime": runtime.load(d),
        "onnxruntime-plain": runtime.load(d, graph="plain"),
        "torch": runtime.load(d, backend="torch"),
        "eager": runtime.load(d, backend="torch", dtype="float32"),
    }


@st.composite
def valid_inputs(draw):
    batch = draw(st.integers(1, 4))
    q, k, v = draw(st.integers(1, 16)), draw(st.integers(1, 24)), draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    feeds = {name: rng.standard_normal((batch, n, 32)).astype(np.float32) for name, n in (("q", q), ("k", k), ("v", v))}
    mask_kind = draw(st.sampled_from(["none", "random", "row-masked", "all-false"]))
    if mask_kind != "none":
        mask = rng.random((batch, k + v)) < 0.6
        if mask_kind == "row-masked":
            mask[draw(st.integers(0, batch - 1))] = False
        elif mask_kind == "all-false":
            mask[:] = False
        feeds["mask"] = mask
    as_torch = draw(st.booleans())
    if as_torch:
        feeds = {n: torch.from_numpy(a) for n, a in feeds.items()}
    return feeds


@SETTINGS
@given(feeds=valid_inputs())
def test_valid_shapes_in_range_agree_with_eager(runners, feeds):
    ref = runners["eager"].infer(feeds)
    assert np.isfinite(ref).all()
    for name in RUNNERS:
        out = runners[name].infer(feeds)
        assert out.shape == ref.shape == tuple(feeds["q"].shape)
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-3, err_msg=name)


def _bad(kind, rng):
    f = {n: rng.standard_normal((2, L, 32)).astype(np.float32) for n, L in (("q", 5), ("k", 7), ("v", 3))}
    f["mask"] = np.ones((2, 10), bool)
    victim = {"rank": "q", "feature": "k", "dtype": "v", "zero": "q", "above": "k", "mask-length": "mask",
              "mask-dtype": "mask", "batch": "v", "torch-dtype": "q", "meta": "k", "not-array": "v"}[kind]
    if kind == "rank":
        f["q"] = f["q"][0]
    elif kind == "feature":
        f["k"] = f["k"][:, :, :31]
    elif kind == "dtype":
        f["v"] = f["v"].astype(rng.choice([np.float64, np.float16, np.int32]))
    elif kind == "zero":
        f["q"] = f["q"][:, :0]
    elif kind == "above":
        f["k"] = rng.standard_normal((2, 25, 32)).astype(np.float32)
        f["mask"] = np.ones((2, 28), bool)
    elif kind == "mask-length":
        f["mask"] = np.ones((2, int(rng.choice([9, 11, 1]))), bool)
    elif kind == "mask-dtype":
        f["mask"] = np.ones((2, 10), rng.choice([np.float32, np.int64, np.uint8]))
    elif kind == "batch":
        f["v"] = rng.standard_normal((3, 3, 32)).astype(np.float32)
    elif kind == "torch-dtype":
        f["q"] = torch.zeros(2, 5, 32, dtype=torch.float64)
    elif kind == "meta":
        f["k"] = torch.zeros(2, 7, 32, device="meta")
    elif kind == "not-array":
        f["v"] = [[1.0] * 32] * 3
    return f, victim


KINDS = ["rank", "feature", "dtype", "zero", "above", "mask-length", "mask-dtype", "batch", "torch-dtype", "meta", "not-array"]


@SETTINGS
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31 - 1), runner=st.sampled_from(RUNNERS))
def test_invalid_inputs_get_the_typed_error_naming_the_input(runners, kind, seed, runner):
    feeds, victim = _bad(kind, np.random.default_rng(seed))
    with pytest.raises(InputError) as err:
        runners[runner].infer(feeds)
    assert f"input {victim!r}" in str(err.value), (kind, str(err.value))


# ---- the C++ command-line tool (built by scripts/test.sh, which passes its path) -------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402

PERCEIVER_RUN = os.environ.get("PERCEIVER_RUN")
needs_cpp = pytest.mark.skipif(not (PERCEIVER_RUN and os.path.exists(PERCEIVER_RUN)),
                               reason="the C++ tool is not built: run scripts/test.sh (it sets PERCEIVER_RUN)")
CPP_SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _run_cpp(directory, feeds, tmp):
    args = [PERCEIVER_RUN, str(directory)]
    for name, value in feeds.items():
        path = tmp / f"{name}.npy"
        np.save(path, value)
        args += [f"--{name}", str(path)]
    out = tmp / "out.npy"
    args += ["--out", str(out)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60), out


@needs_cpp
@CPP_SETTINGS
@given(feeds=valid_inputs())
def test_cpp_tool_agrees_with_eager_on_valid_shapes(runners, tiny_fp32, tmp_path_factory, feeds):
    feeds = {n: (v.numpy() if isinstance(v, torch.Tensor) else v) for n, v in feeds.items()}
    tmp = tmp_path_factory.mktemp("cpp")
    result, out = _run_cpp(tiny_fp32.directory, feeds, tmp)
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(out), runners["eager"].infer(feeds), atol=1e-4, rtol=1e-3)


@needs_cpp
@CPP_SETTINGS
@given(kind=st.sampled_from(["rank", "feature", "dtype", "zero", "above", "mask-length", "mask-dtype", "batch"]),
       seed=st.integers(0, 2**31 - 1))
def test_cpp_tool_refuses_invalid_inputs_with_the_python_message(runners, tiny_fp32, tmp_path_factory, kind, seed):
    feeds, victim = _bad(kind, np.random.default_rng(seed))
    if any(isinstance(v, np.ndarray) and v.dtype in (np.float64, np.int32, np.int64, np.uint8) for v in feeds.values()):
        return  # .npy types the tool does not read; it says so itself (covered by ctest)
    with pytest.raises(InputError) as err:
        runners["onnxruntime"].infer(feeds)
    result, _ = _run_cpp(tiny_fp32.directory, feeds, tmp_path_factory.mktemp("cpp"))
    assert result.returncode == 3
    assert result.stderr.strip() == f"error (InputError): {err.value}"
