"""`python -m perceiver_export loadtest DIR`: closed-loop clients (tritonclient, or Triton's perf_analyzer) against a
real `serve` process.

One run measures, on the same requests: the direct runner call (the baseline), the server with batching off
(`--max-batch-size 1`) and on — two server processes taking turns chunk by chunk, so that drift in the machine's
speed moves both alike — over gRPC and HTTP (binary data), at each concurrency; p50/p90/p99 latency,
requests/s and the mean batch size read from the server's own /metrics. Clients and server share this machine,
so figures are ratios within one run; the targets are checked and reported, never asserted by tests.
With `client="perf_analyzer"` the same two servers are driven by perf_analyzer (perf_analyzer.py) at the same
concurrencies, one level at a time on each server in turn, every request at the contract's opt sizes.
"""

from __future__ import annotations

import asyncio
import json
import platform
import re
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..artifact.manifest import read_manifest
from ..contract import AxisRange
from ..errors import ConfigError
from ..figures import DPI, FIG_WIDTH_IN, STYLE
from .process import ServerProcess
from .protocol import WIRE_TYPES
from .server import ServeOptions, load_runner


# --client: which load generators drive the servers; "both" runs each on the same servers, requests and run.
CLIENTS = {"tritonclient": ("tritonclient",), "perf_analyzer": ("perf_analyzer",), "both": ("tritonclient", "perf_analyzer")}


@dataclass
class LoadSettings:
    requests: int = 200  # per protocol, concurrency and mode
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    protocols: list[str] = field(default_factory=lambda: ["grpc", "http"])
    q_len: int | None = None  # default: the contract's opt
    k_len: str | None = None  # "MIN:MAX" drawn uniformly; default 1:2*opt within the range
    v_len: str | None = None
    max_batch_size: int | None = None  # batching on: default the contract's batch max
    max_queue_delay_ms: float = 0.0
    threads: int | None = None
    backend: str = "onnxruntime"
    graph: str | None = None
    seed: int = 0
    timeout_s: float = 600.0  # the whole run stops by itself
    client: str = "tritonclient"  # "perf_analyzer" (Triton's load generator; scripts/install_perf_analyzer.sh), or "both"
    perf_stability: int = 50  # perf_analyzer's -s: three count windows within this % settle a level


def request_plan(contract, settings: LoadSettings) -> tuple[list[dict], dict]:
    """The requests every configuration sends (batch 1, q_len fixed, k and v lengths uniform in their ranges)."""
    axes = contract.axes
    q_len = settings.q_len or axes["q_len"].opt
    ranges = {}
    for axis, text in (("k_len", settings.k_len), ("v_len", settings.v_len)):
        rng = AxisRange.parse(text, f"--{axis.replace('_', '-')}") if text else AxisRange(1, 1, min(axes[axis].max, 2 * axes[axis].opt))
        if not axes[axis].min <= rng.min <= rng.max <= axes[axis].max:
            raise ConfigError(f"--{axis.replace('_', '-')} {rng.min}:{rng.max} is outside the artifact's {axis} range "
                              f"[{axes[axis].min}, {axes[axis].max}]")
        ranges[axis] = (rng.min, rng.max)
    if not axes["q_len"].min <= q_len <= axes["q_len"].max:
        raise ConfigError(f"--q-len {q_len} is outside the artifact's q_len range [{axes['q_len'].min}, {axes['q_len'].max}]")
    gen = np.random.default_rng(settings.seed)
    dtype = np.dtype({"float32": np.float32, "float16": np.float16}[contract.dtype]) if contract.dtype != "bfloat16" else None
    if dtype is None:
        raise ConfigError("loadtest sends float32 or float16 tensors; this artifact is bfloat16")
    plan = []
    for _ in range(settings.requests):
        sizes = {"batch": 1, "q_len": q_len, **{a: int(gen.integers(lo, hi + 1)) for a, (lo, hi) in ranges.items()}}
        feeds = {}
        for spec in contract.inputs:
            if spec.optional:
                continue
            shape = contract.concrete_shape(spec.name, sizes)
            feeds[spec.name] = gen.standard_normal(shape).astype(dtype)
        plan.append(feeds)
    return plan, {"q_len": q_len, **{a: list(r) for a, r in ranges.items()}}


def _summary(latencies_ms: list[float], seconds: float) -> dict:
    lat = np.asarray(latencies_ms)
    return {"requests": len(lat), "seconds": round(seconds, 3), "rps": round(len(lat) / seconds, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p90_ms": round(float(np.percentile(lat, 90)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3), "mean_ms": round(float(lat.mean()), 3)}


def measure_direct(directory: Path, plan: list[dict], settings: LoadSettings, full_batch: int) -> tuple[dict, object]:
    """The runner called in this process on the same requests, and one full padded batch at the longest lengths."""
    runner = load_runner(directory, ServeOptions(backend=settings.backend, graph=settings.graph, threads=settings.threads))
    for feeds in plan[:3]:
        runner.infer(feeds)
    latencies = []
    start = time.perf_counter()
    for feeds in plan:
        t0 = time.perf_counter()
        runner.infer(feeds)
        latencies.append((time.perf_counter() - t0) * 1e3)
    direct = _summary(latencies, time.perf_counter() - start)
    longest = {name: np.concatenate([max(plan, key=lambda f: f[name].shape[1])[name]] * full_batch)
               for name in plan[0]}
    runner.infer(longest)
    batch_ms = []
    for _ in range(20):
        t0 = time.perf_counter()
        runner.infer(longest)
        batch_ms.append((time.perf_counter() - t0) * 1e3)
    return {"direct": direct, "full_batch": {"rows": full_batch, "shapes": {n: list(a.shape) for n, a in longest.items()},
                                            "p50_ms": round(float(np.percentile(batch_ms, 50)), 3),
                                            "p99_ms": round(float(np.percentile(batch_ms, 99)), 3)},
            "backend": runner.backend}, runner


def _batch_totals(http: str) -> tuple[float, float]:
    """(rows, backend calls) so far, from the server's perceiver_batch_size histogram (no samples before its first
    call: 0, 0)."""
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=10).read().decode()
    total = re.search(r"^perceiver_batch_size_sum\{[^}]*\} (\S+)$", text, re.M)
    count = re.search(r"^perceiver_batch_size_count\{[^}]*\} (\S+)$", text, re.M)
    return (float(total.group(1)), float(count.group(1))) if total and count else (0.0, 0.0)


def _client_modules(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
        import tritonclient.grpc.aio as aio
    else:
        import tritonclient.http as module
        import tritonclient.http.aio as aio
    return module, aio


def _url(server: ServerProcess, protocol: str) -> str:
    return server.grpc if protocol == "grpc" else server.http


async def _closed_loop(server: ServerProcess, model: str, protocol: str, concurrency: int, inputs: list,
                       latencies: list[float], errors: list[str]) -> float:
    """`concurrency` clients sending `inputs` back to back (asyncio clients; for one client the blocking one, whose
    own cost per call is about half the asyncio one's); returns the wall time."""
    module, aio = _client_modules(protocol)

    def record(t0: float, error: Exception | None) -> None:
        latencies.append((time.perf_counter() - t0) * 1e3)
        if error is not None:
            errors.append(f"{type(error).__name__}: {error}")

    if concurrency == 1:
        client = module.InferenceServerClient(_url(server, protocol))
        start = time.perf_counter()
        for tensors in inputs:
            t0, error = time.perf_counter(), None
            try:
                client.infer(model, tensors)
            except Exception as e:  # noqa: BLE001 — reported, not hidden
                error = e
            record(t0, error)
        seconds = time.perf_counter() - start
        client.close()
        return seconds
    pending = iter(inputs)
    async with aio.InferenceServerClient(_url(server, protocol)) as client:
        async def worker():
            for tensors in pending:
                t0, error = time.perf_counter(), None
                try:
                    await client.infer(model, tensors)
                except Exception as e:  # noqa: BLE001 — reported, not hidden
                    error = e
                record(t0, error)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


def _triton_inputs(module, plan: list[dict]) -> list[list]:
    out = []
    for feeds in plan:
        tensors = []
        for name, array in feeds.items():
            t = module.InferInput(name, list(array.shape), WIRE_TYPES[array.dtype.name])
            t.set_data_from_numpy(array)
            tensors.append(t)
        out.append(tensors)
    return out


def measure_level(servers: dict[str, ServerProcess], model: str, protocol: str, concurrency: int, plan: list[dict],
                  runner) -> list[dict]:
    """One protocol and concurrency on every server, in alternating chunks of the plan (and, for one client, direct
    runner calls on the same chunk first), so that a machine whose speed drifts moves all of them alike. A chunk
    holds at least 4 requests per client, so that the closed loop runs at its concurrency, not at a chunk's end."""
    chunks = max(1, min(4, len(plan) // (4 * concurrency)))
    module, _ = _client_modules(protocol)
    inputs = _triton_inputs(module, plan)
    for server in servers.values():  # connections and first-call costs outside the timing
        module.InferenceServerClient(_url(server, protocol)).infer(model, inputs[0])
    stats = {mode: {"latencies": [], "errors": [], "seconds": 0.0, "before": _batch_totals(s.http)}
             for mode, s in servers.items()}
    direct: list[float] = []
    for chunk in np.array_split(np.arange(len(plan)), chunks):
        if runner is not None and concurrency == 1:
            for i in chunk:
                t0 = time.perf_counter()
                runner.infer(plan[i])
                direct.append((time.perf_counter() - t0) * 1e3)
        for mode, server in servers.items():
            st = stats[mode]
            st["seconds"] += asyncio.run(_closed_loop(server, model, protocol, concurrency, [inputs[i] for i in chunk],
                                                      st["latencies"], st["errors"]))
    results = []
    for mode, server in servers.items():
        st = stats[mode]
        after = _batch_totals(server.http)
        calls = after[1] - st["before"][1]
        result = {"mode": mode, "protocol": protocol, **_summary(st["latencies"], st["seconds"]),
                  "concurrency": concurrency, "errors": len(st["errors"]),
                  "first_error": st["errors"][0] if st["errors"] else None,
                  "mean_batch": round((after[0] - st["before"][0]) / calls, 2) if calls else None}
        if direct:
            result["direct_p50_ms"] = round(float(np.percentile(direct, 50)), 3)
        results.append(result)
    return results


def measure_level_perf_analyzer(servers: dict[str, ServerProcess], model: str, protocol: str, concurrency: int,
                                contract, settings: LoadSettings, deadline: float) -> list[dict]:
    """One protocol and concurrency on every server in turn, each a perf_analyzer run of exactly `settings.requests`
    requests; the mean batch from each server's /metrics as above."""
    from .perf_analyzer import PerfSettings, run_perf_analyzer, served_max_batch_size

    results = []
    for mode, server in servers.items():
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConfigError(f"loadtest stopped after its {settings.timeout_s:g} s limit")
        perf = PerfSettings(protocol=protocol, concurrency=[concurrency], requests=settings.requests,
                            seed=settings.seed, timeout_s=left, stability_percent=settings.perf_stability)
        before = _batch_totals(server.http)
        run = run_perf_analyzer(contract, model, _url(server, protocol), perf,
                                max_batch_size=served_max_batch_size(server.http, model))
        after = _batch_totals(server.http)
        calls = after[1] - before[1]
        row = run["results"][0]
        results.append({"mode": mode, "protocol": protocol, "client": "perf_analyzer", "concurrency": concurrency,
                        "requests": row["requests"], "rps": row["rps"], "p50_ms": row["p50_ms"],
                        "p90_ms": row["p90_ms"], "p99_ms": row["p99_ms"], "mean_ms": row["mean_ms"],
                        "server_queue_ms": row["server_queue_ms"], "server_compute_ms": row["server_compute_ms"],
                        "errors": 0, "first_error": None,  # perf_analyzer stops at a failed request (raised above)
                        "mean_batch": round((after[0] - before[0]) / calls, 2) if calls else None,
                        "command": run["command"][0]})
    return results


def run_loadtest(directory: str | Path, settings: LoadSettings, progress: Callable[[str], None] = lambda m: None) -> dict:
    from ..machine import cpu_name, cpu_simd_flags

    if settings.client not in CLIENTS:
        raise ConfigError(f"--client must be one of {', '.join(CLIENTS)}, got {settings.client!r}")
    clients = CLIENTS[settings.client]
    directory = Path(directory)
    manifest = read_manifest(directory)
    contract = manifest.contract
    if "perf_analyzer" in clients:
        from .perf_analyzer import perf_analyzer_command

        if settings.q_len or settings.k_len or settings.v_len:
            raise ConfigError(f"--client {settings.client} sends every request at the contract's opt sizes (as "
                              "perf_analyzer does); --q-len, --k-len and --v-len are the tritonclient client's")
        perf_analyzer_command()  # not installed: say so before any server starts
        # the direct baseline on the requests perf_analyzer sends: every length at its opt
        opt = {axis: contract.axes[axis].opt for axis in ("q_len", "k_len", "v_len")}
        plan, shapes = request_plan(contract, LoadSettings(**{**asdict(settings), "q_len": opt["q_len"],
                                                               "k_len": f"{opt['k_len']}:{opt['k_len']}",
                                                               "v_len": f"{opt['v_len']}:{opt['v_len']}"}))
    else:
        plan, shapes = request_plan(contract, settings)
    max_batch = min(settings.max_batch_size or contract.axes["batch"].max, contract.axes["batch"].max)
    progress("direct runner calls")
    direct, runner = measure_direct(directory, plan, settings, max_batch)
    model = manifest.data["name"]
    common = ["--backend", settings.backend, "--max-queue", str(max(256, 4 * max(settings.concurrency))),
              "--max-queue-delay-ms", str(settings.max_queue_delay_ms)]
    common += ["--graph", settings.graph] if settings.graph else []
    common += ["--threads", str(settings.threads)] if settings.threads else []
    deadline = time.monotonic() + settings.timeout_s
    runs = []
    # Both servers run at once and take turns chunk by chunk (an idle one only waits on its sockets).
    with ServerProcess(directory, *common, "--max-batch-size", "1") as off, \
            ServerProcess(directory, *common, "--max-batch-size", str(max_batch)) as on:
        for protocol in settings.protocols:
            for concurrency in settings.concurrency:
                if time.monotonic() > deadline:
                    raise ConfigError(f"loadtest stopped after its {settings.timeout_s:g} s limit")
                both = {"batching off": off, "batching on": on}
                for client in clients:  # with both, the same requests from each client in turn, on the same servers
                    progress(f"{protocol}, concurrency {concurrency} ({client})")
                    if client == "perf_analyzer":
                        runs += measure_level_perf_analyzer(both, model, protocol, concurrency, contract, settings,
                                                            deadline)
                    else:
                        runs += [{**r, "client": "tritonclient"}
                                 for r in measure_level(both, model, protocol, concurrency, plan, runner)]
    data = {
        "schema": "perceiver-export/loadtest", "version": 1, "perceiver_export": __version__,
        "client": settings.client,
        "artifact": {"name": model, "dtype": contract.dtype, "directory": str(directory)},
        "machine": {"cpu": cpu_name(), "simd": cpu_simd_flags(), "python": platform.python_version()},
        "settings": {**asdict(settings), "max_batch_size": max_batch, "shapes": shapes},
        "backend": direct["backend"], "direct": direct["direct"], "full_batch": direct["full_batch"], "runs": runs,
    }
    data["targets"] = evaluate_targets(data)
    return data


def _run(data: dict, mode: str, protocol: str, concurrency: int, client: str | None = None) -> dict | None:
    return next((r for r in data["runs"] if (r["mode"], r["protocol"], r["concurrency"]) == (mode, protocol, concurrency)
                 and client in (None, r.get("client", "tritonclient"))), None)


def run_clients(data: dict) -> list[str]:
    """The clients whose runs `data` holds, in run order."""
    return list(dict.fromkeys(r.get("client", "tritonclient") for r in data["runs"]))


def evaluate_targets(data: dict) -> list[dict]:
    """The issue's targets as ratios from this run: serving overhead, batching throughput, p99 at 16."""
    targets = []
    direct = data["direct"]["p50_ms"]
    clients = run_clients(data)
    for client in clients:
        who = f"{client}: " if len(clients) > 1 else ""
        for protocol, limit in (("grpc", 1.10), ("http", 1.25)):
            run = _run(data, "batching off", protocol, 1, client)
            if run:
                ratio = run["p50_ms"] / run.get("direct_p50_ms", direct)
                targets.append({"target": f"{who}{protocol} p50 at concurrency 1 <= {limit} x the direct call's "
                                          "(interleaved)", "value": round(ratio, 3), "met": ratio <= limit})
        for protocol in data["settings"]["protocols"]:
            worst = None
            for c in data["settings"]["concurrency"]:
                on, off = _run(data, "batching on", protocol, c, client), _run(data, "batching off", protocol, c, client)
                if on and off:
                    ratio = on["rps"] / off["rps"]
                    worst = ratio if worst is None else min(worst, ratio)
            if worst is not None:
                targets.append({"target": f"{who}{protocol}: throughput with batching >= without, every concurrency "
                                          "(worst ratio)", "value": round(worst, 3), "met": worst >= 1.0})
            on16 = _run(data, "batching on", protocol, 16, client)
            if on16:
                bound = data["settings"]["max_queue_delay_ms"] + 2 * data["full_batch"]["p99_ms"]
                targets.append({"target": f"{who}{protocol}: p99 at concurrency 16 with batching <= max queue delay + "
                                          f"2 x full-batch p99 ({bound:.1f} ms)", "value": on16["p99_ms"],
                                "met": on16["p99_ms"] <= bound})
    return targets


def print_loadtest(data: dict, console) -> None:
    from rich.table import Table

    d = data["direct"]
    console.print(f"{data['artifact']['name']} on {data['backend']}, client {data.get('client', 'tritonclient')}, {data['machine']['cpu']} "
                  f"({', '.join(data['machine']['simd'])}); direct runner p50 {d['p50_ms']:.2f} ms, "
                  f"full batch of {data['full_batch']['rows']} p99 {data['full_batch']['p99_ms']:.2f} ms")
    table = Table("client", "mode", "protocol", "clients", "req/s", "p50 ms", "p90 ms", "p99 ms", "mean batch", "errors")
    for r in data["runs"]:
        table.add_row(r.get("client", "tritonclient"), r["mode"], r["protocol"], str(r["concurrency"]), f"{r['rps']:.1f}",
                      f"{r['p50_ms']:.2f}",
                      f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}", str(r["mean_batch"]), str(r["errors"]))
    console.print(table)
    for t in data["targets"]:
        console.print(f"  {'met' if t['met'] else '[bold red]missed[/]'}: {t['target']}: {t['value']}")


def write_loadtest(data: dict, out: Path) -> tuple[Path, Path]:
    import matplotlib.pyplot as plt

    from ..artifact.atomic import atomic_path, atomic_write_text

    json_path, png_path = out / "loadtest.json", out / "loadtest.png"
    atomic_write_text(json_path, json.dumps(data, indent=1) + "\n")
    fig = loadtest_figure(data)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return json_path, png_path


def loadtest_figure(data: dict):
    """Requests/s above p99 latency against concurrent clients, batching on and off, per protocol (figures.py sizes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        fig, (ax_rps, ax_p99) = plt.subplots(2, 1, figsize=(FIG_WIDTH_IN, 7.2), sharex=True)
        run_by = run_clients(data)
        for client in run_by:
            for mode, style in (("batching off", "--"), ("batching on", "-")):
                for protocol, marker in (("grpc", "o"), ("http", "s")):
                    runs = [r for r in data["runs"] if r["mode"] == mode and r["protocol"] == protocol
                            and r.get("client", "tritonclient") == client]
                    if not runs:
                        continue
                    c = [r["concurrency"] for r in runs]
                    label = f"{client + ', ' if len(run_by) > 1 else ''}{protocol}, {mode}"
                    ax_rps.plot(c, [r["rps"] for r in runs], style, marker=marker, label=label)
                    ax_p99.plot(c, [r["p99_ms"] for r in runs], style, marker=marker, label=label)
        for ax, title in ((ax_rps, "requests/s"), (ax_p99, "p99 latency (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_title(title)
            ax.grid(alpha=0.3)
        clients = sorted({r["concurrency"] for r in data["runs"]})
        ax_p99.set_xticks(clients, [str(c) for c in clients])  # 1, 4, 16, 64 rather than 2^0 ... 2^6
        ax_p99.minorticks_off()
        ax_p99.set_xlabel("concurrent clients")
        ax_rps.axhline(1e3 / data["direct"]["p50_ms"], color="grey", lw=0.8, label="direct runner, 1 client")
        ax_rps.legend()
        fig.suptitle(f"{data['artifact']['name']} served ({data['backend']}), client {data.get('client', 'tritonclient')}, "
                     f"{data['machine']['cpu']}")
        fig.tight_layout()
    return fig
