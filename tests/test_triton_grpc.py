"""Triton's ModelConfig, ModelStatistics and ModelStreamInfer as served by serving/triton_grpc.py, called with
tritonclient.grpc: a grpc.aio server in this process (on 127.0.0.1, an ephemeral port) with the handler and
small callbacks. kserve is never imported here: the stream's requests are read with Triton's own message class."""

import asyncio
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from perceiver_export.contract import AxisRange, IOContract
from perceiver_export.errors import ModelNotFoundError
from perceiver_export.serving.model_config import served_model_config
from perceiver_export.serving.statistics import InferenceStatistics
from perceiver_export.serving.triton_grpc import (extension_handler, serialized_descriptors, stream_response_bytes,
                                                  triton_messages)

AXES = {"batch": AxisRange(1, 2, 4), "q_len": AxisRange(1, 8, 16), "k_len": AxisRange(1, 8, 24), "v_len": AxisRange(1, 8, 24)}
CONFIG = served_model_config(IOContract.for_perceiver(32, "float32", AXES), "tiny", max_batch_size=4,
                             max_queue_delay_us=1000, max_queue_size=8, timeout_us=None, backend="onnxruntime")
STATS = InferenceStatistics("tiny")
STATS.record_batch(2, 10, 200, 30)
STATS.record_success(50, 5, 100, 15, 400, rows=2, now_ms=1_700_000_000_000)


class Fake:
    """The server's side: `infer` doubles an INT32 input "x", first sleeping x[1] ms; x[0] < 0 fails."""

    def __init__(self):
        self.active = self.most_active = self.calls = 0

    def config_for(self, name, version):
        if name != "tiny" or version not in ("", "1"):
            raise ModelNotFoundError(f"Model with name {name}{' version ' + version if version else ''} does not exist.")
        return CONFIG

    def stats_for(self, name, version):
        if name not in ("", "tiny"):
            raise ModelNotFoundError(f"Model with name {name} does not exist.")
        return STATS.as_json()

    async def infer(self, request):
        m = triton_messages()
        x = np.frombuffer(request.raw_input_contents[0], dtype=np.int32)
        self.calls += 1
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await asyncio.sleep(x[1] / 1e3)
            if x[0] < 0:
                raise ValueError(f"input 'x': {x[0]} is negative")
        finally:
            self.active -= 1
        out = m.ModelInferResponse.InferOutputTensor(name="y", datatype="INT32", shape=list(request.inputs[0].shape))
        return m.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id, outputs=[out],
                                    raw_output_contents=[(x * 2).astype(np.int32).tobytes()])


def start_server(fake, **handler_args):
    """A grpc.aio server on its own loop in a thread; returns (address, stop)."""
    from grpc import aio
    from grpc_interceptor import AsyncExceptionToStatusInterceptor  # what KServe's server puts before every handler

    loop = asyncio.new_event_loop()
    ready, box = threading.Event(), {}

    async def main():
        server = aio.server(interceptors=(AsyncExceptionToStatusInterceptor(),))
        server.add_generic_rpc_handlers((extension_handler(fake.config_for, fake.stats_for, fake.infer,
                                                           request_type=triton_messages().ModelInferRequest,
                                                           **handler_args),))
        box["port"] = server.add_insecure_port("127.0.0.1:0")
        box["stop"] = asyncio.Event()
        await server.start()
        ready.set()
        await box["stop"].wait()
        await server.stop(None)

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(10)

    def stop():
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(10)
        assert not thread.is_alive(), "the test server did not stop in 10 s"
        loop.close()

    return f"127.0.0.1:{box['port']}", stop


@pytest.fixture
def served():
    fake = Fake()
    address, stop = start_server(fake)
    fake.address = address
    client = grpcclient.InferenceServerClient(address)
    yield client, fake
    client.close()
    stop()


def inputs(*values):
    x = grpcclient.InferInput("x", [len(values)], "INT32")
    x.set_data_from_numpy(np.array(values, dtype=np.int32))
    return [x]


def stream(client, requests, timeout_s=10.0):
    """Send (id, values) on one stream; the (id, y or error text) answers in arrival order."""
    answers, done = [], threading.Event()

    def callback(result, error):
        if error is not None:
            answers.append((None, str(error)))
        else:
            answers.append((result.get_response().id, result.as_numpy("y").tolist()))
        if len(answers) == len(requests):
            done.set()

    client.start_stream(callback=callback)
    try:
        for request_id, values in requests:
            client.async_stream_infer("tiny", inputs(*values), request_id=request_id)
        assert done.wait(timeout_s), f"{len(answers)} of {len(requests)} answers in {timeout_s} s"
    finally:
        client.stop_stream()
    return answers


def test_model_config_is_the_served_dict_read_with_tritons_schema(served):
    client, _ = served
    response = client.get_model_config("tiny")
    assert response.config == json_format.ParseDict(CONFIG, model_config_pb2.ModelConfig())
    as_json = client.get_model_config("tiny", "1", as_json=True)["config"]
    assert as_json["max_batch_size"] == 4 and as_json["backend"] == "onnxruntime"
    assert [(t["name"], t.get("optional", False)) for t in as_json["input"]] == [
        ("q", False), ("k", False), ("v", False), ("mask", True)]
    assert as_json["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 8


def test_unknown_model_or_version_is_not_found(served):
    client, _ = served
    for args, message in ((("nope",), "Model with name nope does not exist."),
                          (("tiny", "2"), "Model with name tiny version 2 does not exist.")):
        with pytest.raises(InferenceServerException) as e:
            client.get_model_config(*args)
        assert e.value.status() == "StatusCode.NOT_FOUND" and message in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.get_inference_statistics("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_statistics_read_with_tritonclient(served):
    client, _ = served
    stats = client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
    assert stats["name"] == "tiny" and stats["inference_stats"]["success"] == {"count": "1", "ns": "400"}
    (model,) = client.get_inference_statistics("").model_stats
    assert (model.inference_count, model.execution_count, model.last_inference) == (2, 1, 1_700_000_000_000)
    assert model.inference_stats.queue.ns == 50 and [b.batch_size for b in model.batch_stats] == [2]


def test_stream_answers_concurrently_with_ids_and_errors_keep_it_open(served):
    client, fake = served
    start = time.monotonic()
    answers = stream(client, [("slow", (1, 300)), ("bad", (-1, 0)), ("fast", (3, 0)), ("mid", (4, 100))])
    took = time.monotonic() - start
    assert [a[0] for a in answers if a[0]] == ["fast", "mid", "slow"]  # as they finish, each with its request's id
    assert dict(a for a in answers if a[0]) == {"slow": [2, 600], "fast": [6, 0], "mid": [8, 200]}
    assert [a[1] for a in answers if a[0] is None] == ["input 'x': -1 is negative"]
    assert took < 0.3 + 0.1 + 1.0  # run together: not 0.3 + 0.1 s one after another plus slack only
    assert fake.calls == 4 and fake.most_active >= 2


def test_stream_caps_requests_in_flight():
    fake = Fake()
    address, stop = start_server(fake, max_in_flight=2)
    client = grpcclient.InferenceServerClient(address)
    try:
        answers = stream(client, [(f"r{i}", (i, 50)) for i in range(6)])
        assert sorted(a[0] for a in answers) == [f"r{i}" for i in range(6)]
        assert fake.most_active == 2 and fake.calls == 6
    finally:
        client.close()
        stop()


def test_descriptors_come_from_tritonclients_files_without_importing_them():
    import importlib.util
    from pathlib import Path

    folder = Path(next(iter(importlib.util.find_spec("tritonclient").submodule_search_locations))) / "grpc"
    (data,) = serialized_descriptors(folder / "service_pb2.py")
    assert data.startswith(b"\n\x12grpc_service.proto\x12\tinference")
    m = triton_messages()
    assert m.ModelConfigResponse.DESCRIPTOR.full_name == "inference.ModelConfigResponse"
    assert m.ModelConfigResponse is not grpcclient.service_pb2.ModelConfigResponse  # a private pool, not the default
    inner = m.ModelInferResponse(id="7", model_name="tiny").SerializeToString()
    parsed = grpcclient.service_pb2.ModelStreamInferResponse.FromString(stream_response_bytes(inner))
    assert (parsed.error_message, parsed.infer_response.id, parsed.infer_response.model_name) == ("", "7", "tiny")
    big = m.ModelInferResponse(raw_output_contents=[b"\0" * 300_000]).SerializeToString()  # a 3-byte varint length
    assert grpcclient.service_pb2.ModelStreamInferResponse.FromString(
        stream_response_bytes(big)).infer_response.raw_output_contents[0] == b"\0" * 300_000


def test_stream_error_carries_the_request_id_on_the_wire(served):
    import grpc

    _, fake = served
    channel = grpc.insecure_channel(fake.address)
    try:
        stub = grpcclient.service_pb2_grpc.GRPCInferenceServiceStub(channel)
        m = grpcclient.service_pb2

        def request(request_id, values):
            tensor = m.ModelInferRequest.InferInputTensor(name="x", datatype="INT32", shape=[len(values)])
            return m.ModelInferRequest(model_name="tiny", id=request_id, inputs=[tensor],
                                       raw_input_contents=[np.array(values, dtype=np.int32).tobytes()])

        responses = list(stub.ModelStreamInfer(iter([request("e1", (-5, 0)), request("ok", (2, 50))]), timeout=10))
    finally:
        channel.close()
    assert [(r.error_message, r.infer_response.id, r.infer_response.model_name) for r in responses] == [
        ("input 'x': -5 is negative", "e1", "tiny"), ("", "ok", "tiny")]
    assert np.frombuffer(responses[1].infer_response.raw_output_contents[0], dtype=np.int32).tolist() == [4, 100]
