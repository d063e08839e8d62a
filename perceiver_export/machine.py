"""This machine as a measurement's context: the CPU's name and the vector extensions its kernels can use.

Bottom level (imports nothing of the package): export records it beside the default graph it timed, bench and
loadtest beside their figures.
"""

from __future__ import annotations

import platform
from pathlib import Path

SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str] | None:
    """Every feature flag of the CPU from /proc/cpuinfo; None where there is no such file (not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def cpu_simd_flags() -> list[str]:
    """The vector-extension flags that decide which reduced-precision kernels exist (Linux)."""
    have = cpu_flags() or set()
    return [f for f in SIMD_FLAGS if f in have]
