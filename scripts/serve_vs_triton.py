"""`serve` against a real Triton (scripts/install_triton.sh) on the same artifact, runner and requests: closed-loop
gRPC clients (tritonclient) at concurrency 1/4/16, fixed shapes and variable k/v lengths, both servers with the same
batch limit and queue delay. Prints a Markdown table (docs/serving.md "Serving with Triton" holds one run's).

    PYTHONPATH=$PWD .venv/bin/python scripts/serve_vs_triton.py DIR [--requests 96] [--threads 1] [--delay-ms 2]

Triton runs `triton DIR --backend python` (this package's runner in its Python backend, k/v padded exactly like
`serve`); `serve` runs its own DynamicBatcher. Each level sends `--requests` requests after a short warm-up; the mean
batch is each server's own statistics (Triton: inference_count / execution_count; serve: the same extension).
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from perceiver_export.artifact.manifest import read_manifest  # noqa: E402
from perceiver_export.serving.process import ServerProcess  # noqa: E402

TRITON = ROOT / ".deps" / "triton"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_triton(directory: Path, work: Path, args) -> tuple[subprocess.Popen, str]:
    env = dict(line.split("=", 1) for line in (TRITON / "env").read_text().splitlines() if "=" in line)
    repo = work / "repo"
    subprocess.run([sys.executable, "-m", "perceiver_export", "triton", str(directory), "--repo", str(repo),
                    "--backend", "python", "--kind", "cpu", "--site-packages", env["TRITON_STUB_SITE_PACKAGES"],
                    "--max-queue-delay-us", str(int(args.delay_ms * 1000)), "--threads", str(args.threads)],
                   check=True, capture_output=True)
    http, grpc, metrics = free_port(), free_port(), free_port()
    proc = subprocess.Popen([env["TRITON_SERVER"], "--model-repository", str(repo),
                             "--http-address", "127.0.0.1", "--http-port", str(http),
                             "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc),
                             "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics),
                             "--allow-sagemaker", "false", "--allow-vertex-ai", "false", "--exit-timeout-secs", "10"],
                            stdout=(work / "tritonserver.log").open("wb"), stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{grpc}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if grpcclient.InferenceServerClient(url).is_server_ready():
                return proc, url
        except Exception:  # noqa: BLE001 — not listening yet
            pass
        time.sleep(0.5)
    stop(proc)
    raise SystemExit(f"tritonserver did not start:\n{(work / 'tritonserver.log').read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def requests_for(contract, shapes: str, n: int, seed: int = 0) -> list[dict]:
    """n single-row requests: every length at the contract's opt ("fixed"), or k/v lengths 1..max ("variable")."""
    rng = np.random.default_rng(seed)
    axes = contract.axes
    dim = contract.spec("q").dims[-1]
    out = []
    for i in range(n):
        if shapes == "fixed":
            k_len, v_len = axes["k_len"].opt, axes["v_len"].opt
        else:
            k_len, v_len = int(rng.integers(1, axes["k_len"].max + 1)), int(rng.integers(1, axes["v_len"].max + 1))
        out.append({name: rng.standard_normal((1, n_, dim)).astype(np.float32)
                    for name, n_ in (("q", axes["q_len"].opt), ("k", k_len), ("v", v_len))})
    return out


def inputs(feeds: dict) -> list:
    result = []
    for name, a in feeds.items():
        i = grpcclient.InferInput(name, list(a.shape), "FP32")
        i.set_data_from_numpy(a)
        result.append(i)
    return result


def counts(url: str, model: str) -> tuple[int, int]:
    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def level(url: str, model: str, requests: list[dict], concurrency: int) -> dict:
    """Closed loop: `concurrency` clients, each sending its share back to back."""
    local = threading.local()
    latencies: list[float] = []
    lock = threading.Lock()

    def one(feeds: dict) -> None:
        local.client = getattr(local, "client", None) or grpcclient.InferenceServerClient(url)
        start = time.perf_counter()
        local.client.infer(model, inputs(feeds), client_timeout=60)
        with lock:
            latencies.append(time.perf_counter() - start)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, requests[: 2 * concurrency]))  # warm-up: one connection per client, runner warm
        latencies.clear()
        before = counts(url, model)
        start = time.perf_counter()
        list(pool.map(one, requests))
        wall = time.perf_counter() - start
    after = counts(url, model)
    ms = np.array(latencies) * 1000
    inferences, executions = after[0] - before[0], after[1] - before[1]
    return {"req_s": len(requests) / wall, "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_batch": inferences / executions if executions else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="artifact directory")
    parser.add_argument("--requests", type=int, default=96, help="measured requests per level (default 96)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--threads", type=int, default=1, help="runner threads in both servers (default 1)")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="queue delay of both batchers (default 2 ms)")
    args = parser.parse_args()
    if not (TRITON / "env").is_file():
        raise SystemExit(f"no Triton in {TRITON}: run scripts/install_triton.sh")
    manifest = read_manifest(args.dir)
    model = manifest.data["name"]
    levels = [int(c) for c in args.concurrency.split(",")]
    batch_max = manifest.contract.axes["batch"].max
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve-vs-triton-") as work:
        proc, triton_url = start_triton(args.dir, Path(work), args)
        try:
            with ServerProcess(args.dir, "--threads", str(args.threads), "--max-batch-size", str(batch_max),
                               "--max-queue-delay-ms", str(args.delay_ms)) as serve:
                for shapes in ("fixed", "variable"):
                    reqs = requests_for(manifest.contract, shapes, args.requests)
                    for c in levels:
                        for target, url in (("serve", serve.grpc), ("Triton (Python backend)", triton_url)):
                            r = level(url, model, reqs, c)
                            rows.append((shapes, c, target, r))
                            print(f"{shapes:8} c={c:<3} {target:24} {r['req_s']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                                  f"p90 {r['p90_ms']:7.2f} ms  mean batch {r['mean_batch']:.2f}", flush=True)
        finally:
            stop(proc)
    print("\n| shapes | concurrency | server | req/s | p50 / p90 ms | mean batch |\n|---|---|---|---|---|---|")
    for shapes, c, target, r in rows:
        print(f"| {shapes} | {c} | {target} | {r['req_s']:.1f} | {r['p50_ms']:.2f} / {r['p90_ms']:.2f} | {r['mean_batch']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
