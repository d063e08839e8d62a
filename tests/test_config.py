"""Model specs under models/: loading by name or path, and clear errors."""

import pytest

from perceiver_export.config import load_spec
from perceiver_export.contract import AxisRange
from perceiver_export.errors import ConfigError


def test_reference_spec_is_perceiver_512_8_6_64():
    spec = load_spec("perceiver-base")
    assert {k: spec.model[k] for k in ("dim", "heads", "depth", "dim_head")} == {"dim": 512, "heads": 8, "depth": 6, "dim_head": 64}
    assert set(spec.axes) == {"batch", "q_len", "k_len", "v_len"}


def test_spec_by_path_and_axis_override(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('name = "m"\n[model]\ndim = 8\nheads = 1\ndepth = 1\n[axes]\nbatch = [1, 1, 2]\nq_len = [1, 2, 3]\nk_len = [1, 2, 3]\nv_len = [1, 2, 3]\n')
    spec = load_spec(path).with_axes({"q_len": AxisRange(2, 4, 8)})
    assert spec.contract("float16").shape("q", "max") == (2, 8, 8)
    assert spec.contract("float16").spec("q").dtype == "float16"


@pytest.mark.parametrize(
    "text,message",
    [
        ("[model]\ndim = 8\nheads = 1\n", r"\[model\] is missing \['depth'\]"),
        ("[model]\ndim = 8\nheads = 1\ndepth = 1\nwidth = 3\n", r"unknown \[model\] keys \['width'\]"),
        ("[model]\ndim = 8\nheads = 1\ndepth = 1\n[axes]\nbatch = [1, 1, 2]\n", r"\[axes\] is missing q_len"),
        ("[model]\ndim = 8\nheads = 1\ndepth = 1\n[axes]\nbatch = [2, 1, 2]\nq_len = [1,1,1]\nk_len = [1,1,1]\nv_len = [1,1,1]\n", r"\[axes\] batch: .*got 2:1:2"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_bad_specs_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_spec(path)


def test_unknown_spec_name_lists_known_ones():
    with pytest.raises(ConfigError, match="no model spec named 'nope'; known: perceiver-base, perceiver-tiny"):
        load_spec("nope")


def test_spec_can_name_a_user_module_with_io_sizes(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('module = "models.custom_layers:LatentCrossAttention"\n[model]\nquery_dim = 16\ncontext_dim = 24\n'
                    '[io]\ndim = 16\n[axes]\nbatch = [1, 1, 2]\nq_len = [1, 2, 3]\nk_len = [1, 2, 3]\nv_len = [1, 2, 3]\n')
    spec = load_spec(path)
    contract = spec.contract("float32")
    assert spec.module == "models.custom_layers:LatentCrossAttention" and spec.name == "mine"
    assert contract.spec("q").dims == ("batch", "q_len", 16) and contract.spec("v").dims == ("batch", "v_len", 24)
    assert contract.input_names == ("q", "k", "v", "mask") and contract.outputs == ()
    assert type(spec.build()).__name__ == "LatentCrossAttention"
    path.write_text(path.read_text().replace("[io]\ndim = 16", "[io]\nwidth = 16"))
    with pytest.raises(ConfigError, match=r"unknown \[io\] keys \['width'\]; it takes dim and context_dim"):
        load_spec(path)
