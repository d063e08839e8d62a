"""`serve` under hostile and careless clients: overload with timeouts, keep-alive after errors, model control,
request limits (size, slow clients, idle connections, huge JSON bodies), non-finite inputs, the spec's version
and routing details, and ~150 malformed requests. A 5xx caused by a client is a bug. Each load here is bounded
in count and time; every server is a subprocess on 127.0.0.1 with ephemeral ports."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import select
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from .served import Served, triton_inputs
from .test_serve import MODEL, binary_request, close, feeds_of, post, runner, sleepy, status_of  # noqa: F401 — fixtures

SLEEPY = ("--name", MODEL, "--backend", "torch", "--max-batch-size", "1")


@pytest.fixture(scope="module")
def served(tiny_fp32):
    with Served(tiny_fp32.directory) as s:
        yield s


# ---- helpers ---------------------------------------------------------------------------------------------
def error_of(data: bytes) -> str:
    """The message of an `{"error": "..."}` body; fails the test on any other body."""
    try:
        body = json.loads(data)
    except ValueError:
        raise AssertionError(f"not a JSON body: {data[:300]!r}") from None
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return body["error"]


def request(server: Served, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one request on a fresh connection."""
    conn = http.client.HTTPConnection(*server.http.split(":"), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def binary_body(feeds: dict) -> tuple[bytes, dict]:
    return binary_request([(n, "BOOL" if a.dtype == bool else "FP32", list(a.shape), a.tobytes()) for n, a in feeds.items()])


def json_body(feeds: dict, **extra) -> bytes:
    inputs = [{"name": n, "datatype": "BOOL" if a.dtype == bool else "FP32", "shape": list(a.shape),
               "data": a.ravel().tolist()} for n, a in feeds.items()]
    return json.dumps({"inputs": inputs, **extra}).encode()


def metric(server: Served, protocol: str, status: str) -> float:
    text = urllib.request.urlopen(f"http://{server.http}/metrics", timeout=10).read().decode()
    m = re.search(rf'^perceiver_requests_total\{{model="{MODEL}",protocol="{protocol}",status="{status}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def read_response(sock: socket.socket, timeout: float) -> tuple[int, dict, bytes]:
    """The HTTP response that arrives on a raw socket within `timeout` seconds."""
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def closed_by_peer(sock: socket.socket, within: float) -> float | None:
    """Seconds until the server closes the connection (EOF or reset), or None if it stays open `within` s."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < within:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
    return None


class Sampler(threading.Thread):
    """Calls `probe()` every `period` s until stopped; keeps what each call returned."""

    def __init__(self, probe, period: float = 0.02):
        super().__init__(daemon=True)
        self.probe, self.period, self.values, self.stop = probe, period, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.values.append(self.probe())
            time.sleep(self.period)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join(10)


def live_latency(server: Served):
    """A probe: the seconds /v2/health/live took to answer (inf when it did not answer 200 within 5 s)."""
    def probe() -> float:
        start = time.monotonic()
        try:
            status, _, _ = request(server, "GET", "/v2/health/live")
        except OSError:
            return float("inf")
        return time.monotonic() - start if status == 200 else float("inf")
    return probe


# ---- 1. overload with timeouts: one answer per request, from the protocol's statuses ----------------------
@pytest.mark.parametrize("artifact", ["tiny", "sleepy"])
def test_overload_with_timeouts_answers_every_request_once(tiny_fp32, sleepy, artifact):
    """64 keep-alive HTTP clients, then 64 gRPC clients, against a queue of 4 and a 200 ms timeout (~6 s each)."""
    directory, options = (tiny_fp32.directory, ()) if artifact == "tiny" else (sleepy, SLEEPY)
    feeds = feeds_of(np.random.default_rng(10), batch=4, q=16, k=24, v=24)
    body, headers = binary_body(feeds)
    with Served(directory, *options, "--max-queue", "4", "--timeout-ms", "200") as s:
        host, port = s.http.split(":")
        answers: list[tuple[int, bytes]] = []
        errors: list[str] = []
        sent = [0]
        lock = threading.Lock()
        stop_at = time.monotonic() + 6

        def http_client():
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            for _ in range(100):
                if time.monotonic() > stop_at:
                    break
                with lock:
                    sent[0] += 1
                try:
                    conn.request("POST", f"/v2/models/{MODEL}/infer", body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    with lock:
                        answers.append((response.status, data))
                except Exception as e:  # noqa: BLE001 — a reset or a dropped request: counted, the test fails on any
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    conn.close()
            conn.close()

        threads = [threading.Thread(target=http_client) for _ in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        statuses = [status for status, _ in answers]
        counts = {c: statuses.count(c) for c in sorted(set(statuses))}
        print(f"\n{artifact} http: sent {sent[0]}, answers {counts}, errors {len(errors)}")
        assert errors == [], errors[:5]
        assert len(answers) == sent[0]
        assert set(statuses) <= {200, 503, 504}, [(st, d[:200]) for st, d in answers if st not in (200, 503, 504)][:5]
        for status, data in answers:
            if status == 504:
                assert "no answer within the request timeout of 200 ms" in error_of(data)
            elif status == 503:
                error_of(data)
        assert metric(s, "http", "deadline_exceeded") == counts.get(504, 0)
        assert metric(s, "http", "ok") == counts.get(200, 0)

        async def grpc_client(results: list):
            async with tgrpc_aio.InferenceServerClient(s.grpc) as c:
                for _ in range(100):
                    if time.monotonic() > grpc_stop_at:
                        break
                    try:
                        await c.infer(MODEL, triton_inputs(tgrpc, feeds))
                        results.append("StatusCode.OK")
                    except InferenceServerException as e:
                        results.append(status_of(e))
                        if status_of(e) == "StatusCode.DEADLINE_EXCEEDED":
                            assert "no answer within the request timeout of 200 ms" in e.message()
                    except Exception as e:  # noqa: BLE001
                        results.append(f"{type(e).__name__}: {e}")

        async def flood():
            per_client = [[] for _ in range(64)]
            await asyncio.wait_for(asyncio.gather(*(grpc_client(r) for r in per_client)), 60)
            return [r for rs in per_client for r in rs]

        grpc_stop_at = time.monotonic() + 6
        results = asyncio.run(flood())
        grpc_counts = {c: results.count(c) for c in sorted(set(results))}
        print(f"{artifact} grpc: {len(results)} answers {grpc_counts}")
        assert set(results) <= {"StatusCode.OK", "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}, grpc_counts
        assert metric(s, "grpc", "deadline_exceeded") == grpc_counts.get("StatusCode.DEADLINE_EXCEEDED", 0)
        if artifact == "sleepy":  # 150 ms per request, one at a time: a queue of 4 cannot all finish in 200 ms
            assert counts.get(504, 0) > 0 and grpc_counts.get("StatusCode.DEADLINE_EXCEEDED", 0) > 0
        assert thttp.InferenceServerClient(s.http).is_server_ready()


# ---- 2. keep-alive after a 500 or a 504 ------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["500", "504"])
def test_an_error_keeps_the_connection_usable_or_closes_it(sleepy, failure):
    """A failing batch (a q starting with 999), or a request that times out queued behind three others (150 ms
    each, 200 ms timeout; on e3d63ee that timeout raised inside the batcher and went out as a bare 500), then a
    good request on the same http.client connection once the queue is empty."""
    feeds = feeds_of(np.random.default_rng(11))
    poisoned = dict(feeds, q=feeds["q"].copy())
    poisoned["q"][0, 0, 0] = 999
    timeout = ("--timeout-ms", "200") if failure == "504" else ()
    with Served(sleepy, *SLEEPY, *timeout) as s:
        conn = http.client.HTTPConnection(*s.http.split(":"), timeout=30)
        conn.auto_open = 0  # the second request must go out on this very socket, or the error must have said close
        conn.connect()
        ahead = [threading.Thread(target=post, args=(s, *binary_body(feeds))) for _ in range(3 if timeout else 0)]
        for t in ahead:
            t.start()
        time.sleep(0.05)
        conn.request("POST", f"/v2/models/{MODEL}/infer", *binary_body(poisoned if failure == "500" else feeds))
        first = conn.getresponse()
        data = first.read()
        for t in ahead:
            t.join(30)
        time.sleep(0.6)  # the timed-out requests' batches still run: let the queue empty
        expected = "simulated backend failure on this batch" if failure == "500" else "no answer within the request timeout"
        assert first.status == int(failure), (first.status, data[:300])
        assert expected in error_of(data)
        if (first.getheader("connection") or "").lower() == "close":
            return
        conn.request("POST", f"/v2/models/{MODEL}/infer", *binary_body(feeds))
        second = conn.getresponse()
        assert second.status == 200, second.read()[:300]
        conn.close()


# ---- 3. model control ------------------------------------------------------------------------------------
def test_model_control_is_refused_unless_explicit(tiny_fp32, runner):
    """Its own server: where unloading is (wrongly) allowed, it must not take the model from the other tests."""
    with Served(tiny_fp32.directory) as served:
        model_control_is_refused(served, runner)


def model_control_is_refused(served, runner):
    feeds = feeds_of(np.random.default_rng(12))
    for action in ("unload", "load"):
        status, _, data = request(served, "POST", f"/v2/repository/models/{MODEL}/{action}", b"{}",
                                  {"Content-Type": "application/json"})
        assert status == 400, data
        assert "--model-control-mode explicit" in error_of(data)
    c = tgrpc.InferenceServerClient(served.grpc)
    for call in (c.unload_model, c.load_model):
        with pytest.raises(InferenceServerException) as e:
            call(MODEL)
        assert status_of(e.value) == "StatusCode.FAILED_PRECONDITION"
        assert "--model-control-mode explicit" in e.value.message()
    assert c.is_model_ready(MODEL) and thttp.InferenceServerClient(served.http).is_model_ready(MODEL)
    assert close(c.infer(MODEL, triton_inputs(tgrpc, feeds)).as_numpy("out"), runner.infer(feeds))
    extensions = json.loads(request(served, "GET", "/v2")[2])["extensions"]
    assert "model_repository" not in extensions, extensions


def test_explicit_model_control_unloads_and_loads_over_both_protocols(tiny_fp32, runner):
    feeds = feeds_of(np.random.default_rng(13), batch=2, q=8, k=5, v=7, mask=True)
    body, headers = binary_body(feeds)
    with Served(tiny_fp32.directory, "--model-control-mode", "explicit") as s:
        g = tgrpc.InferenceServerClient(s.grpc)
        assert "model_repository" in json.loads(request(s, "GET", "/v2")[2])["extensions"]
        for protocol in ("http", "grpc"):
            if protocol == "http":
                status, _, data = request(s, "POST", f"/v2/repository/models/{MODEL}/unload")
                assert status == 200, data
            else:
                g.unload_model(MODEL)
            status, _, data = request(s, "GET", f"/v2/models/{MODEL}/ready")
            assert status == 400, data
            assert g.is_model_ready(MODEL) is False
            status, data = post(s, body, headers)
            assert status == 503 and "unloaded" in error_of(data), (status, data[:300])
            with pytest.raises(InferenceServerException) as e:
                g.infer(MODEL, triton_inputs(tgrpc, feeds))
            assert status_of(e.value) == "StatusCode.UNAVAILABLE" and "unloaded" in e.value.message()
            if protocol == "http":
                status, _, data = request(s, "POST", f"/v2/repository/models/{MODEL}/load")
                assert status == 200, data
            else:
                g.load_model(MODEL)
            assert g.is_model_ready(MODEL) and request(s, "GET", f"/v2/models/{MODEL}/ready")[0] == 200
            assert close(g.infer(MODEL, triton_inputs(tgrpc, feeds)).as_numpy("out"), runner.infer(feeds))
            out = thttp.InferenceServerClient(s.http).infer(MODEL, triton_inputs(thttp, feeds)).as_numpy("out")
            assert close(out, runner.infer(feeds))


# ---- 4. the v1 protocol is not served --------------------------------------------------------------------
@pytest.mark.parametrize("payload", [b"{}", b'{"instances": [1]}'])
def test_v1_predict_is_a_4xx_with_an_error_body(served, payload):
    status, _, data = request(served, "POST", f"/v1/models/{MODEL}:predict", payload, {"Content-Type": "application/json"})
    assert 400 <= status < 500, (status, data[:300])
    error_of(data)


# ---- 5. limits -------------------------------------------------------------------------------------------
def head(server: Served, extra: str, path: str = f"/v2/models/{MODEL}/infer") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {server.http}\r\nContent-Type: application/json\r\n{extra}\r\n").encode()


def test_a_content_length_above_the_limit_is_a_413_before_the_body(served):
    host, port = served.http.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(head(served, "Content-Length: 2000000000\r\n"))
        status, _, data = read_response(sock, 2.0)
        elapsed = time.monotonic() - start
    assert status == 413 and elapsed < 2.0, (status, data[:300])
    error_of(data)


def test_a_chunked_body_growing_past_the_limit_is_a_413(served):
    """64 KiB chunks, at most 64 MiB or 15 s; the answer must be a 413 before the body ends."""
    host, port = served.http.split(":")
    chunk = b"%x\r\n" % 65536 + b"[" * 65536 + b"\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head(served, "Transfer-Encoding: chunked\r\n"))
        deadline, sent, answered = time.monotonic() + 15, 0, False
        while sent < 64 << 20 and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                answered = True
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                answered = True
                break
            sent += 65536
        if not answered:
            sock.sendall(b"0\r\n\r\n")
        status, _, data = read_response(sock, 30)
    print(f"\nchunked: answered {status} after {sent / 2**20:.1f} MiB")
    assert status == 413 and answered, (status, sent, data[:300])
    error_of(data)


def test_a_grpc_message_above_the_limit_is_resource_exhausted(served):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(served.grpc, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = service_pb2.ModelInferRequest(model_name=MODEL)
        for name, length in (("q", 131072), ("k", 8), ("v", 8)):  # q: 16 MiB
            tensor = req.inputs.add()
            tensor.name, tensor.datatype = name, "FP32"
            tensor.shape.extend([1, length, 32])
            req.raw_input_contents.append(bytes(length * 32 * 4))
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.value.code(), e.value.details())


def test_slow_clients_are_cut_off_while_others_are_answered(tiny_fp32):
    feeds = feeds_of(np.random.default_rng(14))
    body, headers = binary_body(feeds)
    with Served(tiny_fp32.directory, "--request-timeout-s", "2") as s:
        host, port = s.http.split(":")
        answered: list[tuple[int, float]] = []

        def other_client():
            start = time.monotonic()
            status, _ = post(s, body, headers)
            return status, time.monotonic() - start

        with Sampler(other_client, 0.1) as others:
            # Headers one byte at a time, every 0.5 s: ~200 bytes would take 100 s.
            with socket.create_connection((host, int(port)), timeout=10) as slow:
                start, cut = time.monotonic(), None
                for byte in head(s, f"Content-Length: {len(body)}\r\n"):
                    try:
                        slow.sendall(bytes([byte]))
                    except (BrokenPipeError, ConnectionResetError):
                        cut = time.monotonic() - start
                        break
                    if select.select([slow], [], [], 0.5)[0]:
                        cut = time.monotonic() - start
                        break
                    if time.monotonic() - start > 8:
                        break
            # A body that stalls after its first 10 bytes.
            with socket.create_connection((host, int(port)), timeout=10) as stalled:
                stalled.sendall(head(s, f"Content-Length: {len(body)}\r\n") + body[:10])
                stall_cut = closed_by_peer(stalled, 8)
            answered = list(others.values)
    print(f"\nslow headers cut after {cut} s, stalled body after {stall_cut} s; "
          f"{len(answered)} other requests, slowest {max(t for _, t in answered):.3f} s")
    assert cut is not None and cut < 4.5, cut
    assert stall_cut is not None and stall_cut < 4.5, stall_cut
    assert all(status == 200 for status, _ in answered) and max(t for _, t in answered) < 1.0, answered


def test_an_idle_keep_alive_connection_is_closed_after_keep_alive_s(tiny_fp32):
    with Served(tiny_fp32.directory, "--keep-alive-s", "1") as s:
        host, port = s.http.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"GET /v2/health/live HTTP/1.1\r\nHost: {s.http}\r\n\r\n".encode())
            status, _, _ = read_response(sock, 5)
            assert status == 200
            idle = closed_by_peer(sock, 5)
    assert idle is not None and 0.5 < idle < 3.0, idle


def big_json_body(megabytes: int) -> bytes:
    """An inference request whose q holds `megabytes` MB of JSON numbers (its shape says as many values)."""
    values = megabytes * 1_000_000 // 4 // 32 * 32  # "0.5," is 4 bytes
    prefix = json.dumps({"inputs": [{"name": "q", "datatype": "FP32", "shape": [1, values // 32, 32], "data": [0]}]})
    prefix, suffix = prefix.split("[0]")
    return prefix.encode() + b"[" + b"0.5," * (values - 1) + b"0.5]" + suffix.encode()


# Polls /v2/health/live every 20 ms for argv[2] seconds and prints each latency: run as its own process, so that
# the test process building and sending 50 MB (and holding its GIL) is not counted as the server's stall.
LIVE_POLLER = """
import http.client, sys, time
host, port = sys.argv[1].split(":")
c = http.client.HTTPConnection(host, int(port), timeout=5)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    t = time.perf_counter()
    c.request("GET", "/v2/health/live")
    ok = c.getresponse().read() and True
    print(time.perf_counter() - t, flush=True)
    time.sleep(0.02)
"""


def test_a_50_mb_json_body_is_decoded_without_stalling_or_ballooning(tiny_fp32):
    import subprocess
    import sys

    body = big_json_body(50)
    with Served(tiny_fp32.directory, "--max-request-bytes", "60000000") as s:
        time.sleep(0.5)
        idle = s.rss_mb()
        poller = subprocess.Popen([sys.executable, "-c", LIVE_POLLER, s.http, "8"], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)
            with Sampler(s.rss_mb) as rss:
                status, _, data = request(s, "POST", f"/v2/models/{MODEL}/infer", body, {"Content-Type": "application/json"})
                time.sleep(0.2)
            out, _ = poller.communicate(timeout=30)
        finally:
            if poller.poll() is None:
                poller.kill()
                poller.wait(10)
    live = [float(line) for line in out.split()]
    print(f"\n50 MB JSON: {status}, RSS idle {idle:.0f} MB peak {max(rss.values):.0f} MB, "
          f"/v2/health/live slowest {max(live) * 1e3:.0f} ms over {len(live)} polls")
    assert poller.returncode == 0 and len(live) > 50, (poller.returncode, len(live))
    assert status == 400, (status, data[:300])
    error_of(data)
    assert max(live) < 0.100, sorted(live)[-5:]
    assert max(rss.values) <= idle + 200, (idle, max(rss.values))


def test_a_50_mb_body_over_the_default_limit_costs_at_most_twice_the_limit(served):
    body = big_json_body(50)
    idle = served.rss_mb()
    host, port = served.http.split(":")
    with Sampler(served.rss_mb) as rss:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head(served, f"Content-Length: {len(body)}\r\n"))
            try:
                sock.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed before the body ended: as it may
            status, _, data = read_response(sock, 30)
        time.sleep(0.2)
    assert status == 413, (status, data[:300])
    message = error_of(data)
    assert "--max-request-bytes" in message, message
    limit = min(int(n) for n in re.findall(r"\d+", message) if 1000 <= int(n) < len(body))
    print(f"\ndefault limit {limit:,} bytes; RSS idle {idle:.0f} MB, peak {max(rss.values):.0f} MB")
    assert max(rss.values) <= idle + 2 * limit / 2**20, (idle, max(rss.values), limit)


# ---- 6. non-finite inputs --------------------------------------------------------------------------------
def json_with(feeds: dict, name: str, index: int, token: str) -> bytes:
    """A JSON request for `feeds` whose input `name` has the JSON text `token` at flat index `index`."""
    obj = json.loads(json_body(feeds))
    next(i for i in obj["inputs"] if i["name"] == name)["data"][index] = "@@"
    return json.dumps(obj).replace('"@@"', token).encode()


@pytest.mark.parametrize("token", ['"nan"', '"inf"', '"NaN"', '"Infinity"', "null", "1e39"])
def test_a_non_finite_json_value_is_a_400_naming_input_and_index(served, token):
    feeds = feeds_of(np.random.default_rng(15))
    status, _, data = request(served, "POST", f"/v2/models/{MODEL}/infer", json_with(feeds, "q", 5, token),
                              {"Content-Type": "application/json"})
    assert status == 400, (status, data[:300])
    message = error_of(data)
    assert "input 'q'" in message and "index 5" in message, message


def test_non_finite_binary_inputs_are_refused_unless_allowed(served, tiny_fp32):
    feeds = feeds_of(np.random.default_rng(16))
    for name, index, value in (("q", 5, np.nan), ("k", 7, np.inf), ("v", 0, -np.inf)):
        bad = {n: a.copy() for n, a in feeds.items()}
        bad[name].reshape(-1)[index] = value
        status, data = post(served, *binary_body(bad))
        assert status == 400, (status, data[:300])
        message = error_of(data)
        assert f"input '{name}'" in message and f"index {index}" in message, message
        with pytest.raises(InferenceServerException) as e:
            tgrpc.InferenceServerClient(served.grpc).infer(MODEL, triton_inputs(tgrpc, bad))
        assert status_of(e.value) == "StatusCode.INVALID_ARGUMENT"
        assert f"input '{name}'" in e.value.message() and f"index {index}" in e.value.message()
    # A finite request's JSON answer holds numbers only (orjson writes a NaN or Inf as `null`).
    status, _, data = request(served, "POST", f"/v2/models/{MODEL}/infer",
                              json_body(feeds, parameters={"binary_data_output": False}), {"Content-Type": "application/json"})
    assert status == 200 and b"null" not in data and b"NaN" not in data
    bad = {n: a.copy() for n, a in feeds.items()}
    bad["q"].reshape(-1)[5] = np.nan
    with Served(tiny_fp32.directory, "--allow-non-finite") as s:
        status, data = post(s, *binary_body(bad))
        assert status == 200, (status, data[:300])


# ---- 7. the spec's details: versions, routes, methods, extensions ----------------------------------------
def test_versions_routes_and_methods_answer_as_the_spec_says(served):
    status, _, data = request(served, "GET", f"/v2/models/{MODEL}/versions/1")
    assert status == 200 and json.loads(data)["name"] == MODEL, (status, data[:300])
    assert request(served, "GET", f"/v2/models/{MODEL}/versions/1/ready")[0] == 200
    assert json.loads(request(served, "GET", f"/v2/models/{MODEL}")[2])["versions"] == ["1"]
    feeds = feeds_of(np.random.default_rng(17))
    answers = {}
    for method, path, body in (("GET", f"/v2/models/{MODEL}/versions/2", None),
                               ("GET", f"/v2/models/{MODEL}/versions/2/ready", None),
                               ("POST", f"/v2/models/{MODEL}/versions/999/infer", json_body(feeds)),
                               ("GET", "/nope", None),
                               ("POST", f"/v2/models/{MODEL}/bogus", b"{}"),
                               ("GET", f"/v2/models/{MODEL}/infer", None)):
        status, _, data = request(served, method, path, body)
        try:
            error_of(data)
            answers[f"{method} {path}"] = status
        except AssertionError:
            answers[f"{method} {path}"] = (status, data[:120])
    assert answers == {f"GET /v2/models/{MODEL}/versions/2": 404, f"GET /v2/models/{MODEL}/versions/2/ready": 404,
                       f"POST /v2/models/{MODEL}/versions/999/infer": 404, "GET /nope": 404,
                       f"POST /v2/models/{MODEL}/bogus": 404, f"GET /v2/models/{MODEL}/infer": 405}
    extensions = json.loads(request(served, "GET", "/v2")[2])["extensions"]
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(extensions), extensions
    assert "model_repository" not in extensions, extensions


def test_grpc_model_versions_other_than_1_are_not_found(served, runner):
    c = tgrpc.InferenceServerClient(served.grpc)
    feeds = feeds_of(np.random.default_rng(18))
    for version in ("", "1"):
        assert c.get_model_metadata(MODEL, model_version=version).name == MODEL
        assert c.is_model_ready(MODEL, model_version=version)
        assert close(c.infer(MODEL, triton_inputs(tgrpc, feeds), model_version=version).as_numpy("out"), runner.infer(feeds))
    for version in ("999", "../../1"):
        for call in (lambda: c.get_model_metadata(MODEL, model_version=version),
                     lambda: c.is_model_ready(MODEL, model_version=version),
                     lambda: c.infer(MODEL, triton_inputs(tgrpc, feeds), model_version=version)):
            with pytest.raises(InferenceServerException) as e:
                call()
            assert status_of(e.value) == "StatusCode.NOT_FOUND", (version, status_of(e.value), e.value.message())


# ---- 8. ~150 malformed requests: every answer a 4xx with an error body ------------------------------------
def malformed_requests(feeds: dict) -> list[tuple[str, str, str, bytes, dict]]:
    """(label, method, path, body, headers): each a client's mistake, none a valid request."""
    infer = f"/v2/models/{MODEL}/infer"
    js = {"Content-Type": "application/json"}
    good = json_body(feeds)
    cases = []
    for cut in np.linspace(1, len(good) - 1, 30).astype(int):
        cases.append((f"truncated at {cut}", "POST", infer, good[:cut], js))

    def mutated(label, change):
        obj = json.loads(good)
        change(obj)
        cases.append((label, "POST", infer, json.dumps(obj).encode(), js))

    wrong = [None, 1, 1.5, True, "x", [], {}, [1], ["x"], {"a": 1}]
    for value in wrong:
        mutated(f"inputs = {value!r}", lambda o, v=value: o.__setitem__("inputs", v))
        mutated(f"name = {value!r}", lambda o, v=value: o["inputs"][0].__setitem__("name", v))
        mutated(f"datatype = {value!r}", lambda o, v=value: o["inputs"][0].__setitem__("datatype", v))
        mutated(f"shape = {value!r}", lambda o, v=value: o["inputs"][0].__setitem__("shape", v))
        if value is not None:
            mutated(f"data = {value!r}", lambda o, v=value: o["inputs"][1].__setitem__("data", v))
        if not isinstance(value, dict) and value not in (None, []):  # an empty list of parameters: harmless
            mutated(f"parameters = {value!r}", lambda o, v=value: o["inputs"][0].__setitem__("parameters", v))
            mutated(f"request parameters = {value!r}", lambda o, v=value: o.__setitem__("parameters", v))
            mutated(f"outputs = {value!r}", lambda o, v=value: o.__setitem__("outputs", v if isinstance(v, list) and v else [v]))
    for shape in ([1, 8, 2**40], [2**62, 2**62, 32], [-1, 8, 32], [1, -8, -32], [0, 8, 32], [1, 0, 32], [1, 8, 32, 1], [],
                  [1, 8, 32.0], [1, "8", 32], [9223372036854775807, 1, 32]):
        mutated(f"shape {shape}", lambda o, s=shape: o["inputs"][0].__setitem__("shape", s))
    for dtype in ("FP64", "FP16", "BF16", "INT32", "BOOL", "BYTES", "fp32 ", "UINT8"):
        mutated(f"datatype {dtype}", lambda o, d=dtype: o["inputs"][0].__setitem__("datatype", d))
    mutated("input given twice", lambda o: o["inputs"].append(dict(o["inputs"][0])))
    mutated("no inputs", lambda o: o.__setitem__("inputs", []))
    mutated("unknown output", lambda o: o.__setitem__("outputs", [{"name": "nope"}]))
    mutated("ragged data", lambda o: o["inputs"][0].__setitem__("data", [[1.0] * 32] * 7 + [[1.0] * 31]))
    mutated("nested strings", lambda o: o["inputs"][0].__setitem__("data", [[["x"] * 32] * 8]))
    mutated("bool data for FP32", lambda o: o["inputs"][0].__setitem__("data", [True] * 256))
    mutated("number data for BOOL mask", lambda o: o["inputs"].append(
        {"name": "mask", "datatype": "BOOL", "shape": [1, 16], "data": [1] * 16}))

    body, headers = binary_body(feeds)
    header_length = int(headers["Inference-Header-Content-Length"])
    octet = {"Content-Type": "application/octet-stream"}
    for value in ("abc", "-1", "0", "1e3", str(len(body) + 1), str(2**70), " ", "12, 13"):
        cases.append((f"Inference-Header-Content-Length {value!r}", "POST", infer, body,
                      {**octet, "Inference-Header-Content-Length": value}))
    for label, sizes in (("binary_data_size short", [1023, 1024, 1024]), ("binary_data_size long", [1025, 1024, 1024]),
                         ("binary_data_size -1", [-1, 1024, 1024]), ("binary_data_size past the body", [1024, 1024, 2**40])):
        raw, hdr = binary_request([(n, "FP32", list(a.shape), a.tobytes()) for n, a in feeds.items()], sizes=sizes)
        cases.append((label, "POST", infer, raw, {**octet, **hdr}))
    cases.append(("binary trailing bytes", "POST", infer, body + b"xx", {**octet, **headers}))
    cases.append(("binary bytes without the header", "POST", infer, body[header_length:], octet))
    for content_type, data in (("text/plain", b"hello"), ("application/x-www-form-urlencoded", b"a=1&b=2"),
                               ("multipart/form-data; boundary=x", b"--x\r\n\r\nhi\r\n--x--\r\n"),
                               ("application/json", b""), ("application/json", b"\xff\xfe\x00garbage"),
                               ("application/json", b"[" * 100000), ("application/json", b'"just a string"'),
                               ("application/json", b"[1, 2, 3]"), ("application/json", b"null"),
                               ("application/json; charset=utf-16", good.decode().encode("utf-16"))):
        cases.append((f"{content_type} body {data[:12]!r}", "POST", infer, data, {"Content-Type": content_type}))
    cases.append(("giant header", "POST", infer, good, {**js, "X-Padding": "a" * 200_000}))
    cases.append(("many headers", "POST", infer, good, {**js, **{f"X-H{i}": "v" * 8 for i in range(10000)}}))
    for path in (f"/v2/models/{MODEL}/versions/0/infer", f"/v2/models/{MODEL}%00/infer", "/v2/models//infer",
                 f"/v2/repository/models/{MODEL}/load", "/v1/models/x:predict", f"/v2/models/{MODEL}/generate",
                 f"/v2/models/{MODEL}/versions/1/ready/x"):
        cases.append((f"POST {path}", "POST", path, b"\x00not json", js))
    return cases


def test_malformed_requests_are_4xx_errors_and_the_server_stays_live(served):
    feeds = feeds_of(np.random.default_rng(19))
    cases = malformed_requests(feeds)
    assert len(cases) >= 150, len(cases)
    bad: list[str] = []
    deadline = time.monotonic() + 90
    for i, (label, method, path, body, headers) in enumerate(cases):
        assert time.monotonic() < deadline
        try:
            status, _, data = request(served, method, path, body, headers)
        except (http.client.HTTPException, OSError) as e:
            bad.append(f"{label}: {type(e).__name__}: {e}")
            continue
        try:
            error_of(data)
            ok = 400 <= status < 500
        except AssertionError:
            ok = False
        if not ok:
            bad.append(f"{label}: {status} {data[:160]!r}")
        if i % 25 == 0:
            assert request(served, "GET", "/v2/health/live")[0] == 200, f"not live after {label}"
    print(f"\n{len(cases)} malformed requests, {len(bad)} not answered with a 4xx error body")
    assert request(served, "GET", "/v2/health/live")[0] == 200
    assert bad == [], "\n".join(bad)
