"""Triton's system shared memory extension on `serve`: tritonclient's own shared memory utilities create POSIX
regions, register them over HTTP and gRPC, and inference reads its inputs from and writes its output into them —
answers equal to the same request sent in the body. Every misuse (unknown key, a path as key, a region past its
file, a tensor range past its region, an unregistered name) is a 400 / INVALID_ARGUMENT, never a 5xx."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from .served import Served, triton_inputs

MODEL = "perceiver-tiny"
CLIENTS = {"http": thttp, "grpc": tgrpc}


@pytest.fixture(scope="module")
def served(tiny_fp32):
    with Served(tiny_fp32.directory) as s:
        yield s


def client(protocol, server):
    return CLIENTS[protocol].InferenceServerClient(server.http if protocol == "http" else server.grpc)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inputs_from_and_output_into_shared_memory_equal_the_in_body_answer(served, protocol):
    module, c = CLIENTS[protocol], client(protocol, served)
    rng = np.random.default_rng(7)
    feeds = {n: rng.standard_normal((1, 8, 32)).astype(np.float32) for n in ("q", "k", "v")}
    expected = c.infer(MODEL, triton_inputs(module, feeds)).as_numpy("out")
    size = sum(a.nbytes for a in feeds.values())
    key = f"/perceiver_test_{protocol}"
    inputs_region = shm.create_shared_memory_region(f"in-{protocol}", key + "_in", size)
    output_region = shm.create_shared_memory_region(f"out-{protocol}", key + "_out", expected.nbytes)
    try:
        shm.set_shared_memory_region(inputs_region, list(feeds.values()))
        c.register_system_shared_memory(f"in-{protocol}", key + "_in", size)
        c.register_system_shared_memory(f"out-{protocol}", key + "_out", expected.nbytes)
        status = c.get_system_shared_memory_status(as_json=True) if protocol == "grpc" else c.get_system_shared_memory_status()
        assert f"in-{protocol}" in json.dumps(status)
        inputs, offset = [], 0
        for name, array in feeds.items():
            tensor = module.InferInput(name, list(array.shape), "FP32")
            tensor.set_shared_memory(f"in-{protocol}", array.nbytes, offset)
            inputs.append(tensor)
            offset += array.nbytes
        out = module.InferRequestedOutput("out")
        out.set_shared_memory(f"out-{protocol}", expected.nbytes)
        result = c.infer(MODEL, inputs, outputs=[out])
        got = shm.get_contents_as_numpy(output_region, np.float32, list(expected.shape))
        assert np.array_equal(got, expected)
        assert result.get_output("out") is not None
        # A tensor past its region, an unregistered region: 400 / INVALID_ARGUMENT naming them.
        bad = module.InferInput("q", [1, 8, 32], "FP32")
        bad.set_shared_memory(f"in-{protocol}", feeds["q"].nbytes, size - 16)
        with pytest.raises(InferenceServerException) as e:
            c.infer(MODEL, [bad] + inputs[1:])
        assert "outside shared memory region" in e.value.message()
        assert str(e.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
        c.unregister_system_shared_memory(f"in-{protocol}")
        with pytest.raises(InferenceServerException) as e:
            c.infer(MODEL, inputs)
        assert "is not registered" in e.value.message()
    finally:
        c.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(inputs_region)
        shm.destroy_shared_memory_region(output_region)
    assert "in-" not in json.dumps(c.get_system_shared_memory_status(as_json=True) if protocol == "grpc"
                                   else c.get_system_shared_memory_status())


@pytest.mark.parametrize("key,byte_size,message", [
    ("/perceiver_test_missing", 64, "cannot open key"),
    ("../../etc/passwd", 64, "is not a shared memory name"),
    ("/dev/shm/x", 64, "is not a shared memory name"),
    ("/perceiver_test_small", 4096, "past the end"),
    ("/perceiver_test_small", 0, "must be in 1.."),
])
def test_bad_registrations_are_400s(served, key, byte_size, message):
    region = shm.create_shared_memory_region("small", "/perceiver_test_small", 128)
    try:
        body = json.dumps({"key": key, "offset": 0, "byte_size": byte_size}).encode()
        request = urllib.request.Request(f"http://{served.http}/v2/systemsharedmemory/region/r/register", body,
                                         method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=10)
        assert e.value.code == 400
        assert message in json.loads(e.value.read())["error"]
        with pytest.raises(InferenceServerException) as e:
            tgrpc.InferenceServerClient(served.grpc).register_system_shared_memory("r", key, byte_size)
        assert str(e.value.status()) == "StatusCode.INVALID_ARGUMENT" and message in e.value.message()
    finally:
        shm.destroy_shared_memory_region(region)


def test_server_metadata_lists_system_shared_memory(served):
    meta = thttp.InferenceServerClient(served.http).get_server_metadata()
    assert "system_shared_memory" in meta["extensions"]
