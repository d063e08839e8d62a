"""The I/O contract: derived shapes, and the one input check every runner shares."""

import numpy as np
import pytest
import torch

from perceiver_export.contract import AxisRange, IOContract
from perceiver_export.errors import ConfigError, InputError

AXES = {"batch": AxisRange(1, 2, 4), "q_len": AxisRange(1, 8, 16), "k_len": AxisRange(1, 8, 24), "v_len": AxisRange(2, 8, 24)}


@pytest.fixture
def contract():
    return IOContract.for_perceiver(32, "float32", AXES)


def feeds(batch=2, q=5, k=7, v=3, dim=32, dtype=np.float32, mask=True):
    out = {
        "q": np.zeros((batch, q, dim), dtype), "k": np.zeros((batch, k, dim), dtype), "v": np.zeros((batch, v, dim), dtype),
    }
    if mask:
        out["mask"] = np.ones((batch, k + v), bool)
    return out


def test_shapes_derive_from_axis_ranges(contract):
    assert contract.shape("q", "min") == (1, 1, 32)
    assert contract.shape("k", "opt") == (2, 8, 32)
    assert contract.shape("mask", "min") == (1, 3)  # k_len + v_len = 1 + 2
    assert contract.shape("mask", "max") == (4, 48)
    assert contract.spec("mask").dims == ("batch", "k_len + v_len")
    assert contract.concrete_shape("mask", {"batch": 3, "k_len": 5, "v_len": 6}) == (3, 11)


def test_manifest_round_trip(contract):
    data = contract.to_dict()
    assert data["inputs"][3]["max_shape"] == [4, 48]
    assert data["axes"]["v_len"] == {"min": 2, "opt": 8, "max": 24}
    assert IOContract.from_dict(data) == contract


def test_valid_inputs_return_axis_sizes(contract):
    assert contract.check_inputs(feeds()) == {"batch": 2, "q_len": 5, "k_len": 7, "v_len": 3}
    torch_feeds = {n: torch.from_numpy(a) for n, a in feeds(mask=False).items()}
    assert contract.check_inputs(torch_feeds)["k_len"] == 7


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda f: f.update(q=np.zeros((5, 32), np.float32)), "input 'q': expected rank 3 (batch, q_len, 32), got rank 2 with shape (5, 32)"),
        (lambda f: f.update(k=np.zeros((2, 7, 16), np.float32)), "input 'k': expected size 32 on axis 2 (batch, k_len, 32), got 16 (shape (2, 7, 16))"),
        (lambda f: f.update(v=np.zeros((2, 3, 32), np.float64)), "input 'v': expected dtype float32, got float64"),
        (lambda f: f.update(q=torch.zeros(2, 5, 32, dtype=torch.float16)), "input 'q': expected dtype float32, got float16"),
        (lambda f: f.update(q=np.zeros((2, 17, 32), np.float32)), "input 'q': q_len (axis 1) must be in [1, 16], got 17 (shape (2, 17, 32))"),
        (lambda f: f.update(v=np.zeros((2, 1, 32), np.float32), mask=np.ones((2, 8), bool)), "input 'v': v_len (axis 1) must be in [2, 24], got 1"),
        (lambda f: f.update(q=np.zeros((2, 0, 32), np.float32)), "input 'q': q_len (axis 1) must be in [1, 16], got 0"),
        (lambda f: f.update(mask=np.ones((2, 9), bool)), "input 'mask': expected k_len + v_len = 7 + 3 = 10 positions, got 9"),
        (lambda f: f.update(mask=np.ones((2, 10), np.float32)), "input 'mask': expected dtype bool, got float32"),
        (lambda f: f.update(k=np.zeros((3, 7, 32), np.float32)), "input 'k': batch (axis 0) is 3 but input 'q' has batch = 2"),
        (lambda f: f.update(q=[[0.0]]), "input 'q': expected a numpy array or torch tensor, got list"),
        (lambda f: f.update(q=torch.zeros(2, 5, 32, device="meta")), "input 'q': expected a tensor with data (cpu or cuda), got a meta tensor"),
        (lambda f: f.pop("k"), "input 'k': required ((batch, k_len, 32)), got nothing"),
        (lambda f: f.update(extra=np.zeros(1)), "unknown input 'extra': expected one of q, k, v, mask"),
    ],
)
def test_bad_inputs_raise_one_typed_error_naming_the_input(contract, change, message):
    f = feeds()
    change(f)
    with pytest.raises(InputError) as err:
        contract.check_inputs(f)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("text,expected", [("1:8:64", AxisRange(1, 8, 64)), ("4:32", AxisRange(4, 4, 32)), ("7", AxisRange(7, 7, 7))])
def test_axis_range_parse(text, expected):
    assert AxisRange.parse(text) == expected


@pytest.mark.parametrize("text,message", [("8:1:64", "1 <= min <= opt <= max"), ("0:1:2", "got 0:1:2"), ("a:b", "expected MIN:OPT:MAX integers"), ("1:2:3:4", "expected MIN:OPT:MAX")])
def test_axis_range_rejects_nonsense(text, message):
    with pytest.raises(ConfigError, match=message):
        AxisRange.parse(text, "--q-len")


def test_contract_rejects_unknown_dtype():
    with pytest.raises(ConfigError, match="dtype must be one of float32, float16, bfloat16, got 'int8'"):
        IOContract.for_perceiver(32, "int8", AXES)
