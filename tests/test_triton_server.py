"""A real Triton Inference Server (scripts/install_triton.sh: the tritonserver and Python backend bundled in PyPI's
nvidia-pytriton) loads the repositories `triton` writes: the Python-backend model answers over HTTP and gRPC like the
in-process runner, batches unequal k/v lengths exactly, refuses bad input with Triton's errors and shuts down on
SIGTERM; the ONNX Runtime-platform model parses and is refused for its missing backend, in Triton's own words."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pytest

from perceiver_export import runtime
from perceiver_export.verify.compare import TOLERANCES, compare

ROOT = Path(__file__).resolve().parent.parent
TRITON = ROOT / ".deps" / "triton"
SERVER = TRITON / "bin" / "tritonserver"
if not SERVER.is_file():
    pytest.skip(f"no Triton server in {TRITON}: run scripts/install_triton.sh (setup.sh with WITH_TRITON=1)",
                allow_module_level=True)

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

PYTHON_MODEL = "perceiver-tiny"
ORT_MODEL = "perceiver-tiny-ort"
START_S = 120  # bounded start-up: the stub's interpreter imports onnxruntime on 2 shared cores
EXIT_S = 10  # Triton's own bound on waiting for in-flight requests and connections at shutdown
STOP_S = 30  # ours: SIGKILL past it
TOL = TOLERANCES["float32"]


def stub_site_packages() -> str:
    """The stub environment's site-packages, as install_triton.sh recorded it in .deps/triton/env."""
    env = dict(line.split("=", 1) for line in (TRITON / "env").read_text().splitlines() if "=" in line)
    return env["TRITON_STUB_SITE_PACKAGES"]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_repo(artifact: Path, repo: Path, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "perceiver_export", "triton", str(artifact), "--repo", str(repo),
                             "--kind", "cpu", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


class Triton:
    """One tritonserver process on 127.0.0.1, stopped by its PID."""

    def __init__(self, repo: Path, log: Path):
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.log = log
        self.clients: list = []
        self.proc = subprocess.Popen(
            [str(SERVER), "--model-repository", str(repo),
             "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
             "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
             "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
             "--allow-sagemaker", "false", "--allow-vertex-ai", "false",
             # The ONNX Runtime model fails to load (no backend in the wheel): the server keeps serving the others.
             "--exit-on-error", "false", "--strict-readiness", "false", "--exit-timeout-secs", str(EXIT_S)],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=log.parent)

    def http(self):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{self.http_port}", network_timeout=60.0)
        self.clients.append(client)
        return client

    def grpc(self):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")
        self.clients.append(client)
        return client

    def close_clients(self) -> None:
        """Triton's shutdown waits (up to --exit-timeout-secs) for open HTTP connections: the tests' own close here."""
        for client in self.clients:
            client.close()
        self.clients.clear()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, model: str) -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tritonserver exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                index = {m["name"]: m for m in self.http().get_model_repository_index()}
            except Exception:  # noqa: BLE001 — not listening yet
                index = {}
            state = index.get(model, {})
            if state.get("state") == "READY":
                return
            if state.get("state") == "UNAVAILABLE":
                raise AssertionError(f"{model} failed to load: {state.get('reason')}")
            time.sleep(0.5)
        raise AssertionError(f"{model} not ready within {START_S} s:\n{self.log_text()[-4000:]}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL past STOP_S; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def triton(tiny_fp32, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton-repo")
    # A long queue delay so that concurrent requests meet in Triton's batcher on these slow, shared cores.
    write_repo(tiny_fp32.directory, repo, "--backend", "python", "--name", PYTHON_MODEL,
               "--site-packages", stub_site_packages(), "--max-queue-delay-us", "100000", "--threads", "1")
    write_repo(tiny_fp32.directory, repo, "--name", ORT_MODEL)
    server = Triton(repo, repo.parent / "tritonserver.log")
    try:
        server.wait_ready(PYTHON_MODEL)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def runner(tiny_fp32):
    return runtime.load(tiny_fp32.directory)


def feeds(rng, batch: int, q_len: int, k_len: int, v_len: int, mask: bool = True) -> dict:
    out = {name: rng.standard_normal((batch, n, 32)).astype(np.float32)
           for name, n in (("q", q_len), ("k", k_len), ("v", v_len))}
    if mask:
        m = rng.random((batch, k_len + v_len)) < 0.8
        m[:, 0] = True  # every row attends somewhere
        out["mask"] = m
    return out


def http_inputs(f: dict) -> list:
    inputs = []
    for name, a in f.items():
        i = httpclient.InferInput(name, list(a.shape), "BOOL" if a.dtype == bool else "FP32")
        i.set_data_from_numpy(a)
        inputs.append(i)
    return inputs


def grpc_inputs(f: dict) -> list:
    inputs = []
    for name, a in f.items():
        i = grpcclient.InferInput(name, list(a.shape), "BOOL" if a.dtype == bool else "FP32")
        i.set_data_from_numpy(a)
        inputs.append(i)
    return inputs


def assert_close(out: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert out.shape == ref.shape, (what, out.shape, ref.shape)
    c = compare(out, ref, TOL.atol, TOL.rtol)
    assert c.passed, f"{what}: max |diff| {c.max_abs:g} over fp32's {TOL.describe()}"


def model_stats(server: Triton) -> dict:
    return server.http().get_inference_statistics(PYTHON_MODEL)["model_stats"][0]


def test_server_and_model_ready_over_http_and_grpc(triton):
    http, grpc = triton.http(), triton.grpc()
    assert http.is_server_live() and grpc.is_server_live()
    assert http.is_model_ready(PYTHON_MODEL) and grpc.is_model_ready(PYTHON_MODEL)
    config = http.get_model_config(PYTHON_MODEL)
    assert config["backend"] == "python" and config["max_batch_size"] == 4
    inputs = {i["name"]: i for i in config["input"]}
    assert inputs["mask"]["optional"] is True
    assert [inputs[n].get("allow_ragged_batch", False) for n in ("q", "k", "v", "mask")] == [False, True, True, True]


def test_binds_loopback_only(triton):
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True)
    if ss.returncode != 0:
        pytest.skip(f"ss: {ss.stderr.strip()}")
    mine = [line.split() for line in ss.stdout.splitlines() if f"pid={triton.proc.pid}," in line]
    ports = {local.rsplit(":", 1)[1] for _, _, _, local, *_ in mine}
    assert ports == {str(p) for p in (triton.http_port, triton.grpc_port, triton.metrics_port)}, mine
    for _, _, _, local, *_ in mine:
        assert local.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]"), local


def test_parity_with_in_process_runner_over_http_and_grpc(triton, runner):
    f = feeds(np.random.default_rng(0), 2, 8, 8, 8)
    ref = runner.infer(f)
    http_out = triton.http().infer(PYTHON_MODEL, http_inputs(f)).as_numpy("out")
    grpc_out = triton.grpc().infer(PYTHON_MODEL, grpc_inputs(f)).as_numpy("out")
    assert http_out.dtype == np.float32 and http_out.shape == (2, 8, 32)
    assert_close(http_out, ref, "HTTP")
    assert_close(grpc_out, ref, "gRPC")


def test_request_without_mask_attends_everywhere(triton, runner):
    rng = np.random.default_rng(1)
    f = feeds(rng, 1, 4, 5, 7, mask=False)
    out = triton.http().infer(PYTHON_MODEL, http_inputs(f)).as_numpy("out")
    assert_close(out, runner.infer(f), "no mask")
    assert_close(out, runner.infer({**f, "mask": np.ones((1, 12), bool)}), "no mask vs all-True mask")


def test_variable_lengths_batched_exactly(triton, runner):
    """48 concurrent requests over HTTP and gRPC, k and v lengths 1..24: Triton batches them (fewer executions than
    requests, batch sizes above 1) and every answer equals that request's solo run."""
    rng = np.random.default_rng(2)
    requests = [feeds(rng, 1, 8, 1 + i % 24, 1 + (7 * i) % 24) for i in range(48)]
    solo = [runner.infer(f) for f in requests]
    before = model_stats(triton)
    local = threading.local()

    def ask(i: int) -> np.ndarray:
        if i % 2:
            local.grpc = getattr(local, "grpc", None) or triton.grpc()
            return local.grpc.infer(PYTHON_MODEL, grpc_inputs(requests[i]), client_timeout=120).as_numpy("out")
        local.http = getattr(local, "http", None) or triton.http()
        return local.http.infer(PYTHON_MODEL, http_inputs(requests[i])).as_numpy("out")

    with ThreadPoolExecutor(16) as pool:  # tritonclient's clients are not shared between threads
        futures = [pool.submit(ask, i) for i in range(len(requests))]
        finished, late = wait(futures, timeout=180)
        assert not late, f"{len(late)} of {len(requests)} unanswered within 180 s"
        results = {i: f.result() for i, f in enumerate(futures)}
    for i, f in enumerate(requests):
        assert_close(results[i], solo[i], f"request {i} (k_len {f['k'].shape[1]}, v_len {f['v'].shape[1]})")
    after = model_stats(triton)
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert inferences == len(requests)
    assert executions < inferences, f"{executions} executions for {inferences} inferences: nothing batched"
    sizes = {int(b["batch_size"]) for b in after["batch_stats"]}
    assert max(sizes) > 1, sizes


def test_bad_input_refused_with_triton_error(triton):
    rng = np.random.default_rng(3)
    wrong_dim = feeds(rng, 1, 8, 8, 8)
    wrong_dim["k"] = rng.standard_normal((1, 8, 31)).astype(np.float32)
    with pytest.raises(InferenceServerException) as http_error:
        triton.http().infer(PYTHON_MODEL, http_inputs(wrong_dim))
    with pytest.raises(InferenceServerException) as grpc_error:
        triton.grpc().infer(PYTHON_MODEL, grpc_inputs(wrong_dim))
    for e in (http_error.value, grpc_error.value):
        # Triton's own shape check, against config.pbtxt's dims [-1, 32].
        assert "unexpected shape for input 'k'" in e.message(), e.message()
        assert "[1,8,31]" in e.message().replace(" ", ""), e.message()
    # A mask whose length disagrees with k_len + v_len passes Triton's check (ragged) and is refused by the contract.
    wrong_mask = {**feeds(rng, 1, 8, 3, 4, mask=False), "mask": np.ones((1, 9), bool)}
    with pytest.raises(InferenceServerException) as mask_error:
        triton.http().infer(PYTHON_MODEL, http_inputs(wrong_mask))
    assert "'mask'" in mask_error.value.message() and "got 9" in mask_error.value.message(), mask_error.value.message()
    assert triton.http().is_model_ready(PYTHON_MODEL)  # still serving


def test_onnxruntime_repository_parsed_then_refused_for_missing_backend(triton):
    """Triton parses the ONNX Runtime-platform config (it names the backend it auto-completed), then says the wheel
    has no such backend: the repository's format is proven by Triton, the missing backend stated."""
    index = {m["name"]: m for m in triton.http().get_model_repository_index()}
    assert index[PYTHON_MODEL]["state"] == "READY"
    ort = index[ORT_MODEL]
    assert ort["state"] == "UNAVAILABLE"
    assert "unable to find backend library for backend 'onnxruntime'" in ort["reason"], ort
    assert "unable to find backend library for backend 'onnxruntime'" in triton.log_text()
    assert not triton.http().is_model_ready(ORT_MODEL)


def test_zz_sigterm_stops_the_server(triton):
    """Last in the module: with its clients gone, the server's PID gets SIGTERM and exits cleanly well within
    Triton's exit timeout, its Python-backend model unloaded."""
    triton.close_clients()
    triton.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    rc = triton.proc.wait(STOP_S)
    took = time.monotonic() - start
    log = triton.log_text()
    assert "Exit timeout expired" not in log and took < EXIT_S, (took, log[-2000:])
    assert rc == 0, (rc, log[-2000:])
    assert f"successfully unloaded '{PYTHON_MODEL}'" in log, log[-2000:]
    with pytest.raises(ConnectionRefusedError):
        triton.http().is_server_live()
