"""`serve` against a real Triton (scripts/install_triton.sh) on the same artifact, runner and requests, at concurrency
1/4/16, fixed shapes and variable k/v lengths, both servers with the same batch limit and queue delay, driven over gRPC
by Triton's perf_analyzer (scripts/install_perf_analyzer.sh) or closed-loop tritonclient clients. Prints a Markdown
table (docs/serving.md "serve against Triton" holds one run's).

    PYTHONPATH=$PWD .venv/bin/python scripts/serve_vs_triton.py DIR [--client perf_analyzer|tritonclient]
        [--requests 100] [--threads 1] [--delay-ms 2] [--timeout-s 120]

Triton runs `triton DIR --backend python` (this package's runner in its Python backend, k/v padded exactly like
`serve`); `serve` runs its own DynamicBatcher. "fixed" is every length at the contract's opt; "variable" draws k_len
and v_len uniformly in 1..max for each of 32 distinct requests (q at opt). perf_analyzer (the default where it is
installed) measures count windows of at least `--requests` requests until three agree (perceiver_export/serving/
perf_analyzer.py; with variable lengths, windows of whole passes through the 32), each level bounded by
`--timeout-s`; tritonclient sends `--requests` requests after a short warm-up.
The mean batch is each server's own statistics over the level (inference_count / execution_count, before and after).
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
from perceiver_export.errors import ConfigError  # noqa: E402
from perceiver_export.serving import perf_analyzer as pa  # noqa: E402
from perceiver_export.serving.process import ServerProcess  # noqa: E402

TRITON = ROOT / ".deps" / "triton"
DATA_STEPS = 32  # perf_analyzer: distinct requests in its --input-data file


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


def perf_level(contract, url: str, model: str, shapes: str, concurrency: int, args, work: Path) -> dict:
    """One perf_analyzer level (its CSV's throughput and p50/p90). A level whose windows do not settle is tried once
    more with windows twice as long (perf_analyzer's own advice); one that still does not reads as NaN."""
    max_batch = int(grpcclient.InferenceServerClient(url).get_model_config(model, as_json=True)["config"]
                    .get("max_batch_size", 0))
    # Variable lengths: windows of whole passes through the 32 requests, so each window sends the same mix of
    # lengths (on perceiver-base a request costs 1x to 30x another; windows of 50 did not settle at one client).
    requests = args.requests if shapes == "fixed" else -(-args.requests // DATA_STEPS) * DATA_STEPS
    before = counts(url, model)
    row = None
    for window in (requests, 2 * requests):
        settings = pa.PerfSettings(concurrency=[concurrency], lengths="opt" if shapes == "fixed" else "variable",
                                   data_steps=DATA_STEPS, requests=window, max_trials=args.max_trials,
                                   stability_percent=args.stability, timeout_s=args.timeout_s)
        try:
            (row,) = pa.run_perf_analyzer(contract, model, url, settings, max_batch_size=max_batch,
                                          workdir=work)["results"]
            break
        except ConfigError as e:
            if "Failed to obtain stable measurement" not in str(e):
                print(f"  perf_analyzer failed: {str(e)[-300:].strip()}", flush=True)
                break
            print(f"  perf_analyzer: windows of {window} did not settle within {args.max_trials}", flush=True)
    after = counts(url, model)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    nan = float("nan")
    return {"req_s": row["rps"] if row else nan, "p50_ms": row["p50_ms"] if row else nan,
            "p90_ms": row["p90_ms"] if row else nan, "window": window,
            "mean_batch": inferences / executions if executions else nan}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="artifact directory")
    parser.add_argument("--client", choices=["perf_analyzer", "tritonclient"], default=None,
                        help="the load generator (default perf_analyzer where it is installed, else tritonclient)")
    parser.add_argument("--requests", type=int, default=100,
                        help="tritonclient: measured requests per level; perf_analyzer: requests per count window "
                             "(default 100)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--threads", type=int, default=1, help="runner threads in both servers (default 1)")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="queue delay of both batchers (default 2 ms)")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="perf_analyzer: limit per level (default 120)")
    parser.add_argument("--max-trials", type=int, default=10, help="perf_analyzer: count windows at most (default 10)")
    parser.add_argument("--stability", type=int, default=50,
                        help="perf_analyzer: three windows within this %% settle a level (default 50)")
    args = parser.parse_args()
    if args.client is None:
        try:
            pa.perf_analyzer_command()
            args.client = "perf_analyzer"
        except ConfigError as e:
            print(f"note: {e}; measuring with tritonclient instead", flush=True)
            args.client = "tritonclient"
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
                print(f"client {args.client}", flush=True)
                for shapes in ("fixed", "variable"):
                    reqs = requests_for(manifest.contract, shapes, args.requests)
                    for c in levels:
                        for target, url in (("serve", serve.grpc), ("Triton (Python backend)", triton_url)):
                            began = time.monotonic()
                            r = (perf_level(manifest.contract, url, model, shapes, c, args, Path(work))
                                 if args.client == "perf_analyzer" else level(url, model, reqs, c))
                            rows.append((shapes, c, target, r))
                            print(f"{shapes:8} c={c:<3} {target:24} {r['req_s']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                                  f"p90 {r['p90_ms']:7.2f} ms  mean batch {r['mean_batch']:.2f}  ({time.monotonic() - began:.0f} s)",
                                  flush=True)
        finally:
            stop(proc)
    window = args.client == "perf_analyzer"  # how many requests its count windows held
    print(f"\nclient {args.client}\n\n| shapes | concurrency | server | req/s | p50 / p90 ms | mean batch |"
          + (" window |" if window else "") + "\n|---|---|---|---|---|---|" + ("---|" if window else ""))
    for shapes, c, target, r in rows:
        print(f"| {shapes} | {c} | {target} | {r['req_s']:.1f} | {r['p50_ms']:.2f} / {r['p90_ms']:.2f} | "
              f"{r['mean_batch']:.2f} |" + (f" {r['window']} |" if window else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
