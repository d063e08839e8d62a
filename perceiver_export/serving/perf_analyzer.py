"""Triton's own load generator, perf_analyzer, pointed at `serve`: where its binary is, its command line from the I/O
contract, a bounded run (windows of N requests, a few at most, and a timeout) and its CSV report read back.

perf_analyzer (PyPI `perf-analyzer`) is one C++ binary built for glibc 2.38. Where the system's glibc is older
(Debian 12: 2.36) scripts/install_perf_analyzer.sh lays out the wheel and Debian 13's C runtime in
.deps/perf_analyzer, and the binary runs through that loader; `perf_analyzer_command()` finds either.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import IOContract, dim_terms
from ..errors import ConfigError

ENV = "PERCEIVER_PERF_ANALYZER"  # a command line (the binary, or a loader and the binary) that overrides the search
INSTALL_HINT = "run scripts/install_perf_analyzer.sh"
# The layout install_perf_analyzer.sh leaves beside a checkout (the wheel, trixie's libc6/libstdc++6/libgcc-s1).
DEPS = Path(__file__).resolve().parents[2] / ".deps" / "perf_analyzer"
TRIXIE_LIBS = "trixie/usr/lib/x86_64-linux-gnu"
WHEEL_BINARY = "wheel/perf_analyzer/bin/perf_analyzer"
SYSTEM_LIBS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")  # libssl, libcrypto, libz: the system's own
NUMPY_TYPES = {"float32": np.float32, "float16": np.float16, "bool": np.bool_}


def _runs(command: list[str]) -> bool:
    """perf_analyzer has no --help (bare, it prints its usage and exits 99); --version exits 0."""
    try:
        done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "Perf Analyzer Version" in done.stdout + done.stderr


def _candidates(deps: Path) -> list[tuple[str, list[str]]]:
    found = []
    loader, binary = deps / TRIXIE_LIBS / "ld-linux-x86-64.so.2", deps / WHEEL_BINARY
    if loader.exists() and binary.exists():
        libs = ":".join([str(deps / TRIXIE_LIBS), *SYSTEM_LIBS])
        found.append(("trixie loader", [str(loader), "--library-path", libs, str(binary)]))
    try:  # the wheel installed into this Python (a machine with glibc >= 2.38)
        import importlib.util

        spec = importlib.util.find_spec("perf_analyzer")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        wheel_bin = Path(spec.origin).parent / "bin" / "perf_analyzer"
        if wheel_bin.exists():
            found.append(("wheel", [str(wheel_bin)]))
    if binary.exists():
        found.append(("native", [str(binary)]))
    on_path = shutil.which("perf_analyzer")
    if on_path:
        found.append(("PATH", [on_path]))
    return found


_FOUND: dict[str, list[str]] = {}


def perf_analyzer_command(deps: Path = DEPS) -> list[str]:
    """The argv prefix that runs perf_analyzer here: $PERCEIVER_PERF_ANALYZER, else the first of .deps' loader
    layout, the wheel in this Python, the .deps binary run natively, `perf_analyzer` on PATH that really runs."""
    override = os.environ.get(ENV)
    if override:
        command = shlex.split(override)
        if not _runs(command):
            raise ConfigError(f"${ENV} ({override}) does not run perf_analyzer (`{override} --version` failed)")
        return command
    key = str(deps)
    if key not in _FOUND:
        tried = []
        for how, command in _candidates(deps):
            if _runs(command):
                _FOUND[key] = command
                break
            tried.append(f"{how}: {command[-1]}")
        else:
            where = f" (found but not running: {'; '.join(tried)})" if tried else ""
            raise ConfigError(f"perf_analyzer is not installed{where}: {INSTALL_HINT}, or set ${ENV}")
    return _FOUND[key]


@dataclass
class PerfSettings:
    protocol: str = "grpc"  # grpc | http
    concurrency: list[int] = field(default_factory=lambda: [1])
    batch: int = 1  # -b: rows per request
    # count_windows (Triton's own measurement): windows of at least `requests` requests until three agree within
    # `stability_percent` (throughput and mean latency), at most `max_trials` windows, so a level sends at most about
    # max_trials x requests; one that never settles fails (perf_analyzer exits 2, "Failed to obtain stable
    # measurement"). request_count: exactly `requests` requests, never unstable, but perf_analyzer 2.60 then divides
    # by whole seconds (1000 requests in 1.2 s read 500 infer/sec), so its throughput is only a floor.
    measurement: str = "count_windows"
    requests: int = 100
    max_trials: int = 10  # 6 failed to settle at times on a shared 2-core machine
    stability_percent: int = 50  # Triton's default 10 % is rarely met on a shared 2-core machine
    warmup: int = 4  # --warmup-request-count: sent before, not measured
    interval_ms: int = 500  # -p: a count window also lasts at least this long (2000 ms: 1422 requests for 3 x 40)
    streaming: bool = False  # --streaming: gRPC ModelStreamInfer
    mask: str = "omit"  # the optional mask: "omit" (not sent; the server attends to all) or "all-true" (sent, all True)
    data_steps: int = 4  # distinct requests in the --input-data file, sent round-robin
    # "opt": every step at the contract's opt lengths. "variable": each step draws its own k_len and v_len uniformly
    # in the contract's min..max (at most `max_kv`), q at opt; the file states each step's shapes, and the command line
    # has --shape only for the inputs whose shape does not vary.
    lengths: str = "opt"
    max_kv: int | None = None
    seed: int = 0
    timeout_s: float = 120.0  # the whole perf_analyzer process


def opt_sizes(contract: IOContract, batch: int) -> dict[str, int]:
    return {**{name: rng.opt for name, rng in contract.axes.items()}, "batch": batch}


def sent_inputs(contract: IOContract, mask: str) -> list:
    if mask not in ("omit", "all-true"):
        raise ConfigError(f"mask must be 'omit' or 'all-true', got {mask!r}")
    return [spec for spec in contract.inputs if not (spec.optional and mask == "omit")]


KV_AXES = ("k_len", "v_len")


def kv_range(contract: IOContract, max_kv: int | None) -> tuple[int, int]:
    """The k/v lengths variable data draws from: the contract's k_len and v_len range, capped at `max_kv`."""
    low = max(contract.axes[a].min for a in KV_AXES)
    high = min(contract.axes[a].max for a in KV_AXES)
    if max_kv is not None:
        if max_kv < low:
            raise ConfigError(f"max_kv {max_kv} is below the contract's k/v minimum {low}")
        high = min(high, max_kv)
    return low, high


def varying_inputs(contract: IOContract, mask: str) -> set[str]:
    """The sent inputs whose shape follows k_len or v_len (k, v and the mask): those variable data resizes."""
    return {spec.name for spec in sent_inputs(contract, mask)
            if any(t in KV_AXES for d in spec.dims if not isinstance(d, int) for t in dim_terms(d))}


def request_shapes(contract: IOContract, batch: int, max_batch_size: int, mask: str = "omit",
                   sizes: dict[str, int] | None = None) -> dict[str, list[int]]:
    """Each sent input's shape at the contract's opt sizes (or `sizes`), as perf_analyzer's --shape wants it: without
    the batch dim where the model config batches (max_batch_size > 0; -b gives it), with it where it does not."""
    sizes = {**opt_sizes(contract, batch), **(sizes or {})}
    shapes = {}
    for spec in sent_inputs(contract, mask):
        shape = list(contract.concrete_shape(spec.name, sizes))
        shapes[spec.name] = shape[1:] if max_batch_size > 0 else shape
    return shapes


def write_input_data(contract: IOContract, path: Path, batch: int, max_batch_size: int, settings: PerfSettings) -> Path:
    """perf_analyzer's --input-data JSON: `data_steps` requests of standard-normal q, k, v (seeded) and, with mask
    "all-true", a mask of True; an omitted optional input is simply absent (perf_analyzer sends only what the file
    names for an input the config marks optional). With lengths "variable" each step has its own k_len and v_len."""
    if settings.lengths not in ("opt", "variable"):
        raise ConfigError(f"lengths must be 'opt' or 'variable', got {settings.lengths!r}")
    gen = np.random.default_rng(settings.seed)
    low, high = kv_range(contract, settings.max_kv)
    steps = []
    for _ in range(settings.data_steps):
        drawn = ({axis: int(gen.integers(low, high + 1)) for axis in KV_AXES} if settings.lengths == "variable"
                 else None)
        # Where the config batches, perf_analyzer's data is one row and it stacks -b rows itself.
        shapes = request_shapes(contract, 1 if max_batch_size > 0 else batch, max_batch_size, settings.mask, drawn)
        step = {}
        for spec in sent_inputs(contract, settings.mask):
            dtype = NUMPY_TYPES.get(spec.dtype)
            if dtype is None:
                raise ConfigError(f"perf_analyzer data: input {spec.name} is {spec.dtype}; this sends float32, float16, bool")
            shape = shapes[spec.name]
            array = np.ones(shape, bool) if spec.dtype == "bool" else gen.standard_normal(shape).astype(dtype)
            step[spec.name] = {"b64": base64.b64encode(array.tobytes()).decode(), "shape": shape}
        steps.append(step)
    path.write_text(json.dumps({"data": steps}))
    return path


def build_command(contract: IOContract, model: str, url: str, settings: PerfSettings, *, max_batch_size: int,
                  csv_path: Path, data_path: Path | None = None, perf_analyzer: list[str] | None = None) -> list[str]:
    """perf_analyzer's command line for a model served with this contract. `max_batch_size` is the served config's
    (0: every dim explicit)."""
    if settings.protocol not in ("grpc", "http"):
        raise ConfigError(f"perf_analyzer protocol must be grpc or http, got {settings.protocol!r}")
    if settings.streaming and settings.protocol != "grpc":
        raise ConfigError("perf_analyzer --streaming needs gRPC")
    if max_batch_size > 0 and settings.batch > max_batch_size:
        raise ConfigError(f"batch {settings.batch} is above the served max_batch_size {max_batch_size}")
    if not contract.axes["batch"].min <= settings.batch <= contract.axes["batch"].max:
        raise ConfigError(f"batch {settings.batch} is outside the artifact's batch range "
                          f"[{contract.axes['batch'].min}, {contract.axes['batch'].max}]")
    if settings.lengths == "variable" and data_path is None:
        raise ConfigError("variable lengths need the --input-data file (write_input_data) that states each shape")
    levels = sorted(set(settings.concurrency))
    if not levels or levels[0] < 1:
        raise ConfigError(f"concurrency levels must be >= 1, got {settings.concurrency}")
    command = [*(perf_analyzer or perf_analyzer_command()), "-m", model, "-u", url, "-i", settings.protocol,
               "-b", str(settings.batch if max_batch_size > 0 else 1)]
    varying = varying_inputs(contract, settings.mask) if settings.lengths == "variable" else set()
    for name, shape in request_shapes(contract, settings.batch, max_batch_size, settings.mask).items():
        if name not in varying:  # a varying input's shape is each data step's own "shape"
            command += ["--shape", f"{name}:{','.join(map(str, shape))}"]
    if data_path is not None:
        command += ["--input-data", str(data_path)]
    # start:end:step covers evenly spaced levels only: 1, 4, 16, 64 are one invocation each (run_perf_analyzer).
    if len(levels) > 1:
        raise ConfigError(f"one concurrency level per perf_analyzer command line, got {levels}")
    command += ["--concurrency-range", str(levels[0])]
    if settings.measurement == "count_windows":
        command += ["--measurement-mode", "count_windows", "--measurement-request-count", str(settings.requests),
                    "-p", str(settings.interval_ms), "--max-trials", str(settings.max_trials),
                    "-s", str(settings.stability_percent)]
    elif settings.measurement == "request_count":
        command += ["--request-count", str(settings.requests)]
    else:
        raise ConfigError(f"measurement must be count_windows or request_count, got {settings.measurement!r}")
    command += ["--warmup-request-count", str(settings.warmup), "-f", str(csv_path)]
    if settings.streaming:
        command.append("--streaming")
    return command


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def parse_csv(text: str) -> list[dict]:
    """perf_analyzer's -f report: one row per concurrency; latencies there are microseconds, here milliseconds."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        row = {k.strip(): v for k, v in row.items() if k}
        def ms(column: str) -> float | None:
            value = _number(row.get(column))
            return None if value is None else round(value / 1e3, 3)

        rows.append({
            "concurrency": int(float(row["Concurrency"])),
            "rps": _number(row["Inferences/Second"]),
            "p50_ms": ms("p50 latency"), "p90_ms": ms("p90 latency"), "p95_ms": ms("p95 latency"),
            "p99_ms": ms("p99 latency"), "mean_ms": ms("Avg latency"),
            "client_send_ms": ms("Client Send"), "client_recv_ms": ms("Client Recv"),
            "server_queue_ms": ms("Server Queue"), "server_compute_ms": ms("Server Compute Infer"),
        })
    if not rows:
        raise ConfigError("perf_analyzer's CSV report has no rows")
    return rows


LEVEL = re.compile(r"^Request concurrency: (\d+)$", re.M)
CLIENT_FIGURES = {"requests": re.compile(r"^\s*Request count: (\d+)", re.M),
                  "mean_ms": re.compile(r"^\s*Avg latency: (\d+) usec", re.M)}


def parse_summary(output: str) -> dict[int, dict]:
    """What perf_analyzer prints per concurrency level and its CSV lacks: the measured request count and the mean
    latency."""
    found = {}
    starts = list(LEVEL.finditer(output))
    for i, m in enumerate(starts):
        block = output[m.end():starts[i + 1].start() if i + 1 < len(starts) else len(output)]
        figures = {}
        for key, pattern in CLIENT_FIGURES.items():
            hit = pattern.search(block)
            if hit:
                figures[key] = int(hit.group(1)) if key == "requests" else round(int(hit.group(1)) / 1e3, 3)
        found.setdefault(int(m.group(1)), {}).update(figures)  # it names a level once more before its figures
    return found


def served_max_batch_size(http: str, model: str) -> int:
    """The max_batch_size `serve` states in its model config (what perf_analyzer itself reads)."""
    with urllib.request.urlopen(f"http://{http}/v2/models/{model}/config", timeout=10) as answer:
        return int(json.loads(answer.read())["max_batch_size"])


def run_perf_analyzer(contract: IOContract, model: str, url: str, settings: PerfSettings, *, max_batch_size: int,
                      workdir: Path | None = None) -> dict:
    """Run perf_analyzer once per concurrency level (each bounded by `settings.timeout_s`); returns
    {"command", "results": [row per level], "output"} or raises ConfigError with perf_analyzer's own words."""
    perf_analyzer = perf_analyzer_command()
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="perf_analyzer-")) if own_dir else Path(workdir)
    try:
        data_path = write_input_data(contract, workdir / "input_data.json", settings.batch, max_batch_size, settings)
        results, outputs, commands = [], [], []
        deadline = time.monotonic() + settings.timeout_s
        for level in sorted(set(settings.concurrency)):
            csv_path = workdir / f"c{level}.csv"
            one = PerfSettings(**{**settings.__dict__, "concurrency": [level]})
            command = build_command(contract, model, url, one, max_batch_size=max_batch_size, csv_path=csv_path,
                                    data_path=data_path, perf_analyzer=perf_analyzer)
            commands.append(command)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConfigError(f"perf_analyzer stopped after its {settings.timeout_s:g} s limit")
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=left)
            except subprocess.TimeoutExpired as e:  # subprocess.run killed it
                out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                raise ConfigError(f"perf_analyzer did not finish within {settings.timeout_s:g} s "
                                  f"(concurrency {level}): {out[-2000:]}") from None
            output = done.stdout + done.stderr
            outputs.append(output)
            if done.returncode != 0 or not csv_path.exists():
                raise ConfigError(f"perf_analyzer exited {done.returncode} (concurrency {level}): {output.strip()[-3000:]}")
            summary = parse_summary(done.stdout)
            for row in parse_csv(csv_path.read_text()):
                figures = summary.get(row["concurrency"], {})
                row["requests"] = figures.get("requests")
                row["mean_ms"] = row["mean_ms"] if row["mean_ms"] is not None else figures.get("mean_ms")
                results.append(row)
        return {"command": commands, "results": results, "output": outputs}
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


__all__ = ["ENV", "INSTALL_HINT", "PerfSettings", "build_command", "kv_range", "parse_csv", "parse_summary",
           "perf_analyzer_command", "request_shapes", "run_perf_analyzer", "served_max_batch_size", "write_input_data"]
