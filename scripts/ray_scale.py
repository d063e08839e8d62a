"""The Ray Serve application's scale and overhead, on a real two-node Ray cluster (tests/ray_cluster.py: head and
worker in network namespaces, each node pinned to its own core), measured in one run:

- scale: throughput of closed-loop gRPC clients (tritonclient) with 1 replica, then 2 (one per node), the same
  requests, 1 runner thread per replica; the ratio 2 / 1;
- overhead: one client's latency through Ray (HTTP proxy or gRPC proxy -> replica) against `serve` on the host's
  loopback, same artifact, runner thread count and requests.

    PYTHONPATH=$PWD .venv/bin/python scripts/ray_scale.py DIR [--clients 8] [--requests 200]

Prints a Markdown table (docs/serving.md "From one machine to a cluster" holds one run's). Needs root (network
namespaces) and Ray Serve (`pip install 'perceiver-export[ray]'`).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from perceiver_export.artifact.manifest import read_manifest  # noqa: E402
from perceiver_export.machine import cpu_flags, cpu_name  # noqa: E402
from perceiver_export.serving.process import ServerProcess  # noqa: E402
from tests.ray_cluster import RayCluster  # noqa: E402
from tests.served import triton_inputs  # noqa: E402


def requests_for(contract, n: int, kv_len: int | None, seed: int = 0) -> list[dict]:
    """n single-row requests at the contract's opt lengths (k and v at `kv_len` when given)."""
    rng = np.random.default_rng(seed)
    axes, dim = contract.axes, contract.spec("q").dims[-1]
    lengths = {"q": axes["q_len"].opt, "k": kv_len or axes["k_len"].opt, "v": kv_len or axes["v_len"].opt}
    return [{name: rng.standard_normal((1, n_, dim)).astype(np.float32) for name, n_ in lengths.items()}
            for _ in range(n)]


def closed_loop(url: str, model: str, requests: list[dict], clients: int) -> dict:
    """`clients` threads sending `requests` between them back to back, after one warm-up request each."""
    latencies: list[float] = []
    lock = threading.Lock()
    index = [0]

    def worker():
        c = grpcclient.InferenceServerClient(url)
        c.infer(model, triton_inputs(grpcclient, requests[0]), client_timeout=120)
        barrier.wait()
        while True:
            with lock:
                if index[0] >= len(requests):
                    return
                feeds = requests[index[0]]
                index[0] += 1
            start = time.perf_counter()
            c.infer(model, triton_inputs(grpcclient, feeds), client_timeout=120)
            with lock:
                latencies.append(time.perf_counter() - start)

    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"req_s": len(latencies) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="artifact directory")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients for the scale levels (default 8)")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per level (default 200)")
    parser.add_argument("--kv-len", type=int, help="k and v lengths (default: the contract's opt)")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="the batchers' queue delay (default 2 ms)")
    args = parser.parse_args()
    if os.cpu_count() < 2:
        raise SystemExit("needs two cores: one per node")
    directory = args.dir.resolve()
    manifest = read_manifest(directory)
    model = manifest.data["name"]
    requests = requests_for(manifest.contract, args.requests, args.kv_len)
    flags = ("--threads", "1", "--max-queue-delay-ms", str(args.delay_ms))
    rows = []
    with RayCluster(head_cpus=1, worker_cpus=1, pin=("0", "1")) as cluster:
        for replicas in (1, 2):
            cluster.deploy(directory, *flags, "--replicas", str(replicas))
            placed = sorted(r["node_ip"] for r in cluster.model_replicas())
            r = closed_loop(cluster.grpc, model, requests, args.clients)
            rows.append((f"Ray Serve, {replicas} replica{'s' * (replicas > 1)} ({', '.join(placed)})", args.clients, r))
            print(rows[-1], flush=True)
        cluster.deploy(directory, *flags, "--replicas", "1")
        ray_one = closed_loop(cluster.grpc, model, requests[: max(50, args.requests // 2)], 1)
        rows.append(("Ray Serve, 1 replica", 1, ray_one))
        print(rows[-1], flush=True)
    with ServerProcess(directory, "--threads", "1", "--max-queue-delay-ms", str(args.delay_ms)) as served:
        serve_one = closed_loop(served.grpc, model, requests[: max(50, args.requests // 2)], 1)
    rows.append(("serve (127.0.0.1)", 1, serve_one))
    scale = rows[1][2]["req_s"] / rows[0][2]["req_s"]
    overhead = ray_one["p50_ms"] - serve_one["p50_ms"]
    found = cpu_flags() or set()
    flags = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16") if f in found)
    lengths = {k: v.shape[1] for k, v in requests[0].items()}
    print(f"\n{model} (q/k/v lengths {lengths['q']}/{lengths['k']}/{lengths['v']}), {cpu_name()}, "
          f"{os.cpu_count()} cores, flags: {flags}")
    print("\n| server | clients | req/s | p50 / p90 ms |\n|---|---|---|---|")
    for name, clients, r in rows:
        print(f"| {name} | {clients} | {r['req_s']:.1f} | {r['p50_ms']:.2f} / {r['p90_ms']:.2f} |")
    print(f"\n2 replicas / 1 replica: {scale:.2f}x; Ray's path adds {overhead:.2f} ms at p50 for one client "
          f"({ray_one['p50_ms']:.2f} against serve's {serve_one['p50_ms']:.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
