"""How fast the command line answers when it has nothing to compute: help, version and argument errors.

    .venv/bin/python scripts/cli_startup_bench.py [--runs 10] [--limit 0.5]

Each case runs N times in a fresh `python -m perceiver_export` process (what a user waits for, interpreter start
included); it prints the median and the slowest wall time per case, the exit code, and which heavy modules the case
imported (read from `python -X importtime`, in one more run). Exits 1 if any median is over --limit seconds or a
case imports one of them. A benchmark, not a test: tests/test_cli_startup.py checks the imports without timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's package, for machine()
HEAVY = ("torch", "onnx", "onnxruntime", "onnxscript", "openvino", "tensorrt", "tensorrt_rtx", "numpy", "rich")
CASES = {
    "--help": ["--help"],
    "--version": ["--version"],
    "onnx --help": ["onnx", "--help"],
    "serve --help": ["serve", "--help"],
    "bad choice (serve --backend nope)": ["serve", "x", "--backend", "nope"],
    "inspect /nonexistent": ["inspect", "/nonexistent"],
}
# rich prints the error of a nonexistent artifact, as it prints every error of this package: allowed there.
ALLOWED = {"inspect /nonexistent": {"rich"}}


def run(args: list[str], *extra: str) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *extra, "-m", "perceiver_export", *args], check=False, capture_output=True,
                            text=True, cwd=REPO, env=env)
    return time.perf_counter() - start, result


def heavy_imports(args: list[str]) -> list[str]:
    _, result = run(args, "-X", "importtime")
    names = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    return sorted(names & set(HEAVY))


def machine() -> str:
    # perceiver_export.machine imports only the standard library; this process's imports are not the ones measured.
    from perceiver_export.machine import cpu_name, cpu_simd_flags

    simd = ", ".join(cpu_simd_flags()) or "no AVX"
    return f"{cpu_name()}, {os.cpu_count()} cores ({simd})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="fresh processes per case (default 10)")
    parser.add_argument("--limit", type=float, default=0.5, help="largest median allowed, seconds (default 0.5)")
    args = parser.parse_args()

    load = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    print(f"python -m perceiver_export, {args.runs} fresh processes per case, Python {platform.python_version()}")
    print(f"machine: {machine()}{load}")
    print(f"limit: median <= {args.limit} s; heavy: {', '.join(HEAVY)}")
    print(f"{'case':<36} {'exit':>4} {'median s':>9} {'max s':>7}  heavy modules imported")
    all_ok = True
    for name, argv in CASES.items():
        run(argv)  # warm the file cache: the first process after an install reads every .pyc from disk
        times, code = [], None
        for _ in range(args.runs):
            seconds, result = run(argv)
            times.append(seconds)
            code = result.returncode
        heavy = [m for m in heavy_imports(argv) if m not in ALLOWED.get(name, ())]
        median = statistics.median(times)
        ok = median <= args.limit and not heavy
        all_ok &= ok
        print(f"{name:<36} {code:>4} {median:>9.3f} {max(times):>7.3f}  {', '.join(heavy) or '-'}"
              + ("" if ok else "  <- over the limit" if heavy == [] else "  <- imports heavy modules"))
    print("PASSED" if all_ok else "FAILED")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
