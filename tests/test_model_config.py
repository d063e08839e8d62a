"""Triton's ModelConfig from the I/O contract: the JSON form `serve` answers and the text form `triton` writes are
one derivation, and both read back with Triton's own model_config.proto."""

import json

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from perceiver_export.contract import AxisRange, IOContract
from perceiver_export.errors import ConfigError
from perceiver_export.serving.model_config import (config_pbtxt, dynamic_batching_config, model_config,
                                                   served_model_config)

AXES = {"batch": AxisRange(1, 2, 8), "q_len": AxisRange(1, 8, 16), "k_len": AxisRange(1, 8, 24), "v_len": AxisRange(1, 8, 24)}
CONTRACT = IOContract.for_perceiver(32, "float32", AXES)


def served(contract=CONTRACT, **kw):
    args = {"max_batch_size": 4, "max_queue_delay_us": 2000, "max_queue_size": 256, "timeout_us": 500_000,
            "backend": "onnxruntime"}
    return served_model_config(contract, "tiny", **{**args, **kw})


def test_served_config_is_tritons_json_with_the_servers_knobs():
    config = served()
    assert config == {
        "name": "tiny",
        "backend": "onnxruntime",
        "max_batch_size": 4,
        "input": [
            {"name": "q", "data_type": "TYPE_FP32", "dims": [-1, 32]},
            {"name": "k", "data_type": "TYPE_FP32", "dims": [-1, 32]},
            {"name": "v", "data_type": "TYPE_FP32", "dims": [-1, 32]},
            {"name": "mask", "data_type": "TYPE_BOOL", "dims": [-1], "optional": True},
        ],
        "output": [{"name": "out", "data_type": "TYPE_FP32", "dims": [-1, 32]}],
        "instance_group": [{"name": "tiny", "kind": "KIND_CPU", "count": 1}],
        "version_policy": {"latest": {"num_versions": 1}},
        "dynamic_batching": {
            "max_queue_delay_microseconds": 2000,
            "default_queue_policy": {"timeout_action": "REJECT", "default_timeout_microseconds": 500000,
                                     "max_queue_size": 256},
        },
    }
    # Integers stay JSON numbers (protobuf's json_format would write int64 fields as strings).
    text = json.dumps(config)
    assert '"max_queue_delay_microseconds": 2000' in text and '"default_timeout_microseconds": 500000' in text


def test_served_config_parses_with_tritons_schema_and_marks_exactly_the_contracts_optional_inputs():
    config = served()
    from_json = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    from_text = text_format.Parse(config_pbtxt(config), model_config_pb2.ModelConfig())
    assert from_json == from_text
    optional = {t.name for t in CONTRACT.inputs if t.optional}
    assert optional == {"mask"}
    assert {t.name for t in from_json.input if t.optional} == optional
    policy = from_json.dynamic_batching.default_queue_policy
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (256, 500000)
    assert from_json.max_batch_size == 4 and from_json.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_without_a_timeout_or_a_queue_limit_there_is_no_queue_policy():
    assert dynamic_batching_config(100) == {"max_queue_delay_microseconds": 100}
    assert served(timeout_us=None)["dynamic_batching"]["default_queue_policy"] == {"timeout_action": "REJECT",
                                                                                   "max_queue_size": 256}
    assert dynamic_batching_config(0, preferred_batch_size=[2, 4])["preferred_batch_size"] == [2, 4]


def test_a_contract_triton_cannot_batch_is_served_with_explicit_batch_dims_and_no_dynamic_batching():
    two = IOContract.for_perceiver(32, "float32", {**AXES, "batch": AxisRange(2, 2, 4)})
    config = served(two)
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert config["input"][0]["dims"] == [-1, -1, 32] and config["input"][3]["dims"] == [-1, -1]


def test_batcher_without_batching_still_says_the_batch_dim_is_triton_s():
    config = served(max_batch_size=1)
    assert config["max_batch_size"] == 1 and config["input"][0]["dims"] == [-1, 32]


def test_pbtxt_writer_quotes_strings_leaves_enums_bare_and_writes_maps_as_entries():
    config = model_config(CONTRACT, 'odd "name"', platform="tensorrt_plan", max_batch_size=8,
                          instance_group=[{"count": 2, "kind": "KIND_GPU", "profile": ["0", "1"]}],
                          extra={"cc_model_filenames": {"9.0": "model.sm90.plan", "8.9": "model.sm89.plan"}})
    text = config_pbtxt(config, ["# made here"], {"mask": "a note"})
    assert text.startswith('# made here\n\nname: "odd \\"name\\""\nplatform: "tensorrt_plan"\nmax_batch_size: 8\n')
    assert '    # a note\n    name: "mask"\n    data_type: TYPE_BOOL\n    dims: [ -1 ]\n' in text
    assert '    profile: [ "0", "1" ]\n' in text and 'cc_model_filenames { key: "9.0" value: "model.sm90.plan" }' in text
    parsed = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert parsed == json_format.ParseDict(config, model_config_pb2.ModelConfig())
    assert dict(parsed.cc_model_filenames) == {"9.0": "model.sm90.plan", "8.9": "model.sm89.plan"}
    assert not any(t.optional for t in parsed.input)  # optional_inputs defaults to off
    with pytest.raises(ConfigError, match=r"config field ratio: cannot write float 0.5"):
        config_pbtxt({"name": "x", "ratio": 0.5})
