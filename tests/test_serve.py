"""`serve`: a real server process on 127.0.0.1 answered by the real tritonclient, over HTTP and gRPC — outputs
equal to the runner's, bad input as 400 / INVALID_ARGUMENT naming the input, overload, timeouts, backend errors,
SIGTERM, disconnecting clients and 64 concurrent clients. Every load here is bounded in count and time."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
import tritonclient.http.aio as thttp_aio
from tritonclient.utils import InferenceServerException

from perceiver_export import runtime
from perceiver_export.verify.compare import TOLERANCES

from .served import REPO, Served, triton_inputs

MODEL = "perceiver-tiny"
FP32 = TOLERANCES["float32"]
CLIENTS = {"http": thttp, "grpc": tgrpc}


def feeds_of(rng, batch=1, q=8, k=8, v=8, mask=False, dtype=np.float32) -> dict:
    feeds = {"q": rng.standard_normal((batch, q, 32)).astype(dtype), "k": rng.standard_normal((batch, k, 32)).astype(dtype),
             "v": rng.standard_normal((batch, v, 32)).astype(dtype)}
    if mask:
        feeds["mask"] = rng.random((batch, k + v)) < 0.7
    return feeds


def close(a, b, tol=FP32) -> bool:
    return bool(np.all(np.abs(a.astype(np.float64) - b) <= tol.atol + tol.rtol * np.abs(b.astype(np.float64))))


def client(protocol: str, server: Served):
    return CLIENTS[protocol].InferenceServerClient(server.http if protocol == "http" else server.grpc)


def status_of(error: InferenceServerException) -> str:
    return str(error.status())


@pytest.fixture(scope="module")
def served(tiny_fp32):
    with Served(tiny_fp32.directory) as s:
        yield s


@pytest.fixture(scope="module")
def runner(tiny_fp32):
    return runtime.load(tiny_fp32.directory)


@pytest.fixture(scope="module")
def sleepy(tmp_path_factory):
    """A slow torch-backend artifact (each eager call sleeps 150 ms; a q starting with 999 fails its batch)."""
    from perceiver_export.config import load_spec
    from perceiver_export.export.artifact_builder import export_artifact

    spec = load_spec("perceiver-tiny").with_module("tests.user_layers:Sleepy", {"dim": 32, "ms": 150})
    return export_artifact(spec, tmp_path_factory.mktemp("sleepy") / "a", verify=False, optimize=False).directory


# ---- the protocol ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_health_metadata_and_readiness_come_from_the_contract(served, protocol):
    c = client(protocol, served)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
    meta = c.get_model_metadata(MODEL, as_json=True) if protocol == "grpc" else c.get_model_metadata(MODEL)
    tensors = {t["name"]: (t["datatype"], [int(n) for n in t["shape"]]) for t in meta["inputs"] + meta["outputs"]}
    assert tensors == {"q": ("FP32", [-1, -1, 32]), "k": ("FP32", [-1, -1, 32]), "v": ("FP32", [-1, -1, 32]),
                       "mask": ("BOOL", [-1, -1]), "out": ("FP32", [-1, -1, 32])}
    if protocol == "http":
        assert not c.is_model_ready("no-such-model")  # 404
    else:
        with pytest.raises(InferenceServerException, match="Model with name no-such-model does not exist"):
            c.is_model_ready("no-such-model")


@pytest.mark.parametrize("protocol,binary", [("http", True), ("http", False), ("grpc", True)])
def test_served_output_equals_the_runners(served, runner, protocol, binary):
    rng = np.random.default_rng(0)
    feeds = feeds_of(rng, batch=2, q=16, k=5, v=24, mask=True)
    c = client(protocol, served)
    inputs = []
    for name, array in feeds.items():
        tensor = CLIENTS[protocol].InferInput(name, list(array.shape), "BOOL" if name == "mask" else "FP32")
        tensor.set_data_from_numpy(array, **({"binary_data": binary} if protocol == "http" else {}))
        inputs.append(tensor)
    outputs = [thttp.InferRequestedOutput("out", binary_data=binary)] if protocol == "http" else None
    result = c.infer(MODEL, inputs, outputs=outputs)
    out = result.as_numpy("out")
    assert out.shape == (2, 16, 32) and out.dtype == np.float32
    assert close(out, runner.infer(feeds))
    response = result.get_response(as_json=True) if protocol == "grpc" else result.get_response()
    assert len(response["id"]) == 36  # filled in (a UUID): tritonclient sends none


def test_fp16_artifact_is_served_as_fp16(tiny_fp16):
    reference = runtime.load(tiny_fp16.directory)
    feeds = feeds_of(np.random.default_rng(1), batch=2, q=8, k=3, v=9, dtype=np.float16)
    with Served(tiny_fp16.directory) as s:
        for protocol in CLIENTS:
            c = client(protocol, s)
            meta = c.get_model_metadata(MODEL, as_json=True) if protocol == "grpc" else c.get_model_metadata(MODEL)
            assert [t["datatype"] for t in meta["inputs"]] == ["FP16", "FP16", "FP16", "BOOL"]
            out = c.infer(MODEL, triton_inputs(CLIENTS[protocol], feeds)).as_numpy("out")
            assert out.dtype == np.float16 and close(out, reference.infer(feeds), TOLERANCES["float16"])


# ---- bad input: 400 / INVALID_ARGUMENT with this package's message, never a 500, never a crash ---------------
BAD = {
    "unknown input": (lambda f: {**f, "extra": f["q"]}, "unknown input 'extra': expected one of q, k, v, mask"),
    "missing input": (lambda f: {"q": f["q"], "k": f["k"]}, "input 'v': required ((batch, v_len, 32)), got nothing"),
    "wrong datatype": (lambda f: {**f, "q": f["q"].astype(np.float16)}, "input 'q': expected datatype FP32, got FP16"),
    "wrong rank": (lambda f: {**f, "k": f["k"][0]}, "input 'k': expected rank 3 (batch, k_len, 32), got rank 2"),
    "wrong feature dim": (lambda f: {**f, "v": f["v"][:, :, :16]}, "input 'v': expected size 32 on axis 2"),
    "length above the range": (lambda f: {**f, "k": np.zeros((1, 25, 32), np.float32)},
                               "input 'k': k_len (axis 1) must be in [1, 24], got 25"),
    "wrong mask length": (lambda f: {**f, "mask": np.ones((1, 15), bool)},
                          "input 'mask': expected k_len + v_len = 8 + 8 = 16 positions, got 15"),
    "batch sizes disagree": (lambda f: {**f, "v": np.concatenate([f["v"]] * 2)},
                             "input 'v': batch (axis 0) is 2 but input 'q' has batch = 1"),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_400_naming_the_input(served, runner, protocol, case):
    make, message = BAD[case]
    good = feeds_of(np.random.default_rng(2))
    c = client(protocol, served)
    with pytest.raises(InferenceServerException) as e:
        c.infer(MODEL, triton_inputs(CLIENTS[protocol], make(good)))
    assert message in e.value.message()
    assert status_of(e.value) == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")
    assert close(c.infer(MODEL, triton_inputs(CLIENTS[protocol], good)).as_numpy("out"), runner.infer(good))


def post(server: Served, body: bytes, headers: dict | None = None, path: str = f"/v2/models/{MODEL}/infer"):
    conn = http.client.HTTPConnection(*server.http.split(":"), timeout=30)
    conn.request("POST", path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def binary_request(tensors: list[tuple[str, str, list[int], bytes]], sizes: list[int] | None = None):
    """An inference request in the binary extension; `sizes` overrides each binary_data_size."""
    inputs = [{"name": n, "datatype": t, "shape": s, "parameters": {"binary_data_size": size}}
              for (n, t, s, _), size in zip(tensors, sizes or [len(b) for *_, b in tensors])]
    header = json.dumps({"inputs": inputs}).encode()
    return header + b"".join(b for *_, b in tensors), {"Inference-Header-Content-Length": str(len(header))}


RAW_BAD = {
    "malformed JSON": (lambda: (b'{"inputs": [', {}), "malformed request: not valid JSON"),
    "not an inference request": (lambda: (b'{"instances": []}', {}), "expected a JSON object with an 'inputs' list"),
    "binary size disagrees with the shape": (
        lambda: binary_request([("q", "FP32", [1, 8, 32], bytes(1000))]),
        "input 'q': binary data is 1000 bytes but shape (1, 8, 32) of FP32 needs 1024 bytes"),
    "huge declared shape, tiny body": (
        lambda: binary_request([("q", "FP32", [1, 4, 320000000], bytes(64))]),
        "input 'q': binary data is 64 bytes but shape (1, 4, 320000000) of FP32 needs 5120000000 bytes"),
    "binary_data_size past the body": (
        lambda: binary_request([("q", "FP32", [1, 8, 32], bytes(1024))], sizes=[1 << 40]),
        "input 'q': binary_data_size is 1099511627776 bytes but only 1024 bytes of binary data are left"),
    "JSON data count disagrees": (
        lambda: (json.dumps({"inputs": [{"name": "q", "datatype": "FP32", "shape": [1, 2, 32], "data": [1.0] * 3}]}).encode(), {}),
        "input 'q': JSON data has 3 values but shape (1, 2, 32) needs 64"),
    "negative shape": (
        lambda: (json.dumps({"inputs": [{"name": "q", "datatype": "FP32", "shape": [1, -8, 32], "data": []}]}).encode(), {}),
        "input 'q': shape (1, -8, 32) has a negative size"),
}


@pytest.mark.parametrize("case", list(RAW_BAD))
def test_malformed_http_requests_are_400s(served, case):
    make, message = RAW_BAD[case]
    status, data = post(served, *make())
    assert status == 400, data
    assert message in json.loads(data)["error"]
    status, _ = post(served, *binary_request([(n, "FP32", [1, 4, 32], bytes(512)) for n in "qkv"]))
    assert status == 200


@pytest.mark.parametrize("declared,raw,message", [
    ([1, 8, 32], bytes(100), "input 'q': binary data is 100 bytes but shape (1, 8, 32) of FP32 needs 1024 bytes"),
    ([4294967297, 4, 32], bytes(512), "needs 2199023256064 bytes"),
])
def test_malformed_grpc_requests_are_invalid_argument(served, declared, raw, message):
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    import grpc

    with grpc.insecure_channel(served.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        for name, shape, data in (("q", declared, raw), ("k", [1, 4, 32], bytes(512)), ("v", [1, 4, 32], bytes(512))):
            tensor = request.inputs.add()
            tensor.name, tensor.datatype = name, "FP32"
            tensor.shape.extend(shape)
            request.raw_input_contents.append(data)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()


def test_metrics_count_requests_and_batches(served):
    feeds = feeds_of(np.random.default_rng(3))
    thttp.InferenceServerClient(served.http).infer(MODEL, triton_inputs(thttp, feeds))
    text = urllib.request.urlopen(f"http://{served.http}/metrics", timeout=10).read().decode()
    for series in ('perceiver_requests_total{model="perceiver-tiny",protocol="http",status="ok"}',
                   'perceiver_requests_total{model="perceiver-tiny",protocol="http",status="invalid_argument"}',
                   'perceiver_request_seconds_bucket{le="0.001",model="perceiver-tiny",protocol="http"}',
                   'perceiver_batch_size_bucket{le="1.0",model="perceiver-tiny"}',
                   'perceiver_queue_depth{model="perceiver-tiny"} 0.0'):
        assert series in text, series


# ---- load and faults -------------------------------------------------------------------------------------
def test_full_queue_answers_503_at_once_and_every_request_is_answered(sleepy):
    """24 concurrent requests against a queue of 2 and one request at a time (150 ms each)."""
    feeds = feeds_of(np.random.default_rng(4))
    with Served(sleepy, "--name", MODEL, "--backend", "torch", "--max-batch-size", "1", "--max-queue", "2") as s:
        answers: list[tuple[int, float]] = []
        lock = threading.Lock()
        body, headers = binary_request([(n, "FP32", list(a.shape), a.tobytes()) for n, a in feeds.items()])

        def one():
            start = time.monotonic()
            status, _ = post(s, body, headers)
            with lock:
                answers.append((status, time.monotonic() - start))

        threads = [threading.Thread(target=one) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(answers) == 24  # sent = answered
        statuses = sorted(a for a, _ in answers)
        assert set(statuses) == {200, 503}, statuses
        rejected = [t for status, t in answers if status == 503]
        assert max(rejected) < 2.0, f"slowest 503 took {max(rejected):.2f} s"  # not queued behind the work
        print(f"overload: {statuses.count(200)} answered 200, {len(rejected)} answered 503, slowest 503 {max(rejected) * 1e3:.0f} ms")

        async def flood():
            async with tgrpc_aio.InferenceServerClient(s.grpc) as c:
                return await asyncio.gather(*(c.infer(MODEL, triton_inputs(tgrpc, feeds)) for _ in range(12)),
                                            return_exceptions=True)

        results = asyncio.run(flood())
        assert len(results) == 12
        refused = [r for r in results if isinstance(r, InferenceServerException)]
        assert refused and all(status_of(r) == "StatusCode.UNAVAILABLE" and "queue full" in r.message() for r in refused)
        assert all(r.as_numpy("out").shape == (1, 8, 32) for r in results if r not in refused)
        assert tgrpc.InferenceServerClient(s.grpc).is_server_ready()


def test_timeout_answers_504_and_a_failing_batch_fails_only_itself(sleepy):
    rng = np.random.default_rng(5)
    feeds = feeds_of(rng)
    with Served(sleepy, "--name", MODEL, "--backend", "torch", "--max-batch-size", "1", "--timeout-ms", "50") as s:
        for protocol, expected in (("http", "504"), ("grpc", "StatusCode.DEADLINE_EXCEEDED")):
            with pytest.raises(InferenceServerException) as e:
                client(protocol, s).infer(MODEL, triton_inputs(CLIENTS[protocol], feeds))
            assert status_of(e.value) == expected and "no answer within the request timeout of 50 ms" in e.value.message()
    with Served(sleepy, "--name", MODEL, "--backend", "torch", "--max-batch-size", "1") as s:
        poisoned = dict(feeds, q=feeds["q"].copy())
        poisoned["q"][0, 0, 0] = 999
        for protocol, expected in (("http", "500"), ("grpc", "StatusCode.INTERNAL")):
            c = client(protocol, s)
            with pytest.raises(InferenceServerException) as e:
                c.infer(MODEL, triton_inputs(CLIENTS[protocol], poisoned))
            assert status_of(e.value) == expected
            assert "simulated backend failure on this batch" in e.value.message()
            assert c.infer(MODEL, triton_inputs(CLIENTS[protocol], feeds)).as_numpy("out").shape == (1, 8, 32)


def test_sigterm_drains_queued_and_in_flight_requests_then_exits_0(sleepy):
    feeds = feeds_of(np.random.default_rng(6))
    body, headers = binary_request([(n, "FP32", list(a.shape), a.tobytes()) for n, a in feeds.items()])
    with Served(sleepy, "--name", MODEL, "--backend", "torch", "--max-batch-size", "1") as s:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(post(s, body, headers)[0])) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.4)  # six requests: one running, five queued (150 ms each)
        start = time.monotonic()
        s.proc.send_signal(15)
        time.sleep(0.1)
        ready = urllib.request.Request(f"http://{s.http}/v2/health/ready")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(ready, timeout=5)
        assert e.value.code == 503  # readiness false while it drains
        assert post(s, body, headers)[0] == 503  # no new requests taken
        for t in threads:
            t.join(30)
        code = s.proc.wait(30)
        elapsed = time.monotonic() - start
    assert sorted(answers) == [200] * 6  # every queued and in-flight request finished
    assert code == 0
    assert elapsed < 5.0, f"exit took {elapsed:.1f} s"
    print(f"SIGTERM with 6 requests of 150 ms pending: exit 0 after {elapsed:.2f} s")


def test_clients_that_disconnect_mid_request_leak_nothing(served):
    """2,000 requests whose clients go away (half before sending the body, half before reading the answer), after
    1,000 of the same as a warm-up; RSS is read once the server has drained what they left queued."""
    feeds = feeds_of(np.random.default_rng(7), batch=4, q=16, k=24, v=24)
    body, headers = binary_request([(n, "FP32", list(a.shape), a.tobytes()) for n, a in feeds.items()])
    host, port = served.http.split(":")
    head = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: {served.http}\r\nContent-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {headers['Inference-Header-Content-Length']}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()

    def hang_up(n: int) -> None:
        for i in range(n):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(head + (body[: len(body) // 2] if i % 2 else body))

    def drained() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(f"http://{served.http}/metrics", timeout=10).read().decode()
            if re.search(r'^perceiver_queue_depth\{model="perceiver-tiny"\} 0\.0$', text, re.M):
                return
            time.sleep(0.05)

    def abandon(n: int) -> None:
        """n abandoned requests, 50 at a time: abandoned clients do not wait, so without a pause their requests
        would pile up and RSS would measure that pile's high-water mark rather than what stays behind."""
        for _ in range(n // 50):
            hang_up(50)
            drained()

    abandon(1000)  # warm-up: allocator pools, ONNX Runtime's arena at these shapes
    time.sleep(0.5)
    before = served.rss_mb()
    deadline = time.monotonic() + 120
    sent = 0
    while sent < 2000 and time.monotonic() < deadline:
        abandon(500)
        sent += 500
    time.sleep(0.5)
    after = served.rss_mb()
    print(f"disconnect soak: RSS {before:.1f} MB -> {after:.1f} MB over {sent:,} abandoned requests")
    assert sent == 2000
    assert after - before < 8, f"RSS grew {after - before:.1f} MB"
    assert thttp.InferenceServerClient(served.http).is_server_ready()


def test_64_concurrent_clients_x_200_requests_all_equal_the_runner(served, runner):
    """12,800 requests of mixed shapes and masks from 64 clients (32 HTTP, 32 gRPC): 0 errors, every answer
    equal to the runner's answer for that request."""
    rng = np.random.default_rng(8)
    plans = [[feeds_of(rng, batch=int(rng.integers(1, 3)), q=int(rng.choice([1, 8, 16])), k=int(rng.integers(1, 25)),
                       v=int(rng.integers(1, 25)), mask=bool(rng.random() < 0.5)) for _ in range(200)] for _ in range(64)]
    answers: dict[tuple[int, int], np.ndarray] = {}
    errors: list[str] = []

    async def client_loop(i: int, plan: list[dict]):
        grpc = i % 2 == 1
        module, aio = (tgrpc, tgrpc_aio) if grpc else (thttp, thttp_aio)
        async with aio.InferenceServerClient(served.grpc if grpc else served.http) as c:
            for j, feeds in enumerate(plan):
                try:
                    result = await c.infer(MODEL, triton_inputs(module, feeds))
                    answers[i, j] = result.as_numpy("out")
                except Exception as e:  # noqa: BLE001 — counted, and the test fails on any
                    errors.append(f"{type(e).__name__}: {e}")

    async def main():
        await asyncio.wait_for(asyncio.gather(*(client_loop(i, p) for i, p in enumerate(plans))), 600)

    start = time.monotonic()
    asyncio.run(main())
    seconds = time.monotonic() - start
    assert errors == [] and len(answers) == 64 * 200
    mismatched = [(i, j) for (i, j), out in answers.items() if not close(out, runner.infer(plans[i][j]))]
    assert mismatched == []
    print(f"64 clients x 200 requests: 12,800 answers in {seconds:.1f} s, 0 errors, 0 mismatches")


def test_the_reference_artifact_is_served_with_the_runners_answer(tmp_path_factory):
    """perceiver-base (PerceiverLayer(512, 8, 6, 64)), as `python -m perceiver_export onnx` writes it, served."""
    from perceiver_export.config import load_spec
    from perceiver_export.export.artifact_builder import export_artifact

    directory = export_artifact(load_spec("perceiver-base"), tmp_path_factory.mktemp("base") / "perceiver-base",
                                verify=False, optimize=False).directory
    reference = runtime.load(directory)
    rng = np.random.default_rng(9)
    feeds = {"q": rng.standard_normal((2, 32, 512), dtype=np.float32), "k": rng.standard_normal((2, 40, 512), dtype=np.float32),
             "v": rng.standard_normal((2, 24, 512), dtype=np.float32), "mask": rng.random((2, 64)) < 0.8}
    page = (REPO / "docs" / "serving.md").read_text()
    example = re.search(r"<!-- client-example -->\n```python\n(.*?)```", page, re.S).group(1)
    with Served(directory) as s:
        for protocol in CLIENTS:
            out = client(protocol, s).infer("perceiver-base", triton_inputs(CLIENTS[protocol], feeds)).as_numpy("out")
            assert out.shape == (2, 32, 512) and close(out, reference.infer(feeds))
        scope = {}
        exec(compile(example.replace('"127.0.0.1:8080"', repr(s.http)), "docs-serving-client-example", "exec"), scope)
        assert scope["out"].shape == (2, 32, 512)
        assert close(scope["out"], reference.infer({n: scope[n] for n in ("q", "k", "v", "mask")}))


def test_http_listener_is_a_tcp_socket_so_responses_go_out_without_nagle_delays():
    """asyncio sets TCP_NODELAY only on connections of sockets made with proto IPPROTO_TCP; with proto 0 every small
    response waited ~40 ms for a delayed ACK (header and body are two writes)."""
    from perceiver_export.serving.server import _listening_socket

    with _listening_socket("127.0.0.1", 0) as sock:
        assert (sock.family, sock.type, sock.proto) == (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
