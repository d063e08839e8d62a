"""The parity grid: shapes and masks that cover an artifact's declared ranges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..contract import AxisRange, IOContract

MASKS = ("none", "random", "row-masked")


@dataclass(frozen=True)
class Case:
    name: str
    sizes: Mapping[str, int]  # axis -> length
    mask: str  # none | random | row-masked (random, with batch row 0 fully masked)

    @property
    def label(self) -> str:
        return " ".join(f"{a}={n}" for a, n in self.sizes.items())


def _odd_within(lo: int, hi: int, prefer: int) -> int:
    """An odd size in [lo, hi] near `prefer`, or `prefer` clamped where the range has none."""
    n = min(max(prefer, lo), hi)
    if n % 2 == 0:
        n = n + 1 if n + 1 <= hi else n - 1
    return max(n, lo)


def parity_cases(contract: IOContract) -> list[Case]:
    """Min and max of every axis (others at opt), odd unequal lengths, batch > 1, masks of each kind.

    A contract without a mask input gets every shape once: its mask kinds would be the same inputs.
    """
    axes = contract.axes
    opt = {a: r.opt for a, r in axes.items()}
    masked = any(spec.dtype == "bool" for spec in contract.inputs)

    def case(name: str, sizes: dict, mask: str) -> Case:
        return Case(name, sizes, mask if masked else "none")

    cases: list[Case] = [case("opt", opt, "none"), case("opt, random mask", opt, "random")]
    for axis, rng in axes.items():
        for which in ("min", "max"):
            size = getattr(rng, which)
            if size == rng.opt:
                continue
            mask = "random" if which == "max" else "none"
            cases.append(case(f"{axis} {which}", {**opt, axis: size}, mask))
    cases.append(case("all min", {a: r.min for a, r in axes.items()}, "random"))
    cases.append(case("all max", {a: r.max for a, r in axes.items()}, "random"))
    # q_len != k_len != v_len, all odd: catches any axis silently tied to another.
    q = _odd_within(axes["q_len"].min, axes["q_len"].max, axes["q_len"].opt + 1)
    k = _odd_within(axes["k_len"].min, axes["k_len"].max, axes["k_len"].opt + 3)
    v = _odd_within(axes["v_len"].min, axes["v_len"].max, axes["v_len"].opt + 5)
    batch = min(max(3, axes["batch"].min), axes["batch"].max)
    odd = {"batch": batch, "q_len": q, "k_len": k, "v_len": v}
    cases.append(case("odd lengths", odd, "random"))
    cases.append(case("fully-masked row", odd, "row-masked"))
    seen, unique = set(), []
    for c in cases:
        key = (tuple(c.sizes.items()), c.mask)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def case_inputs(contract: IOContract, case: Case, rng: np.random.Generator) -> dict[str, np.ndarray | None]:
    """float32 inputs for one case (callers round them to the artifact's dtype)."""
    feeds: dict[str, np.ndarray | None] = {}
    for spec in contract.inputs:
        shape = contract.concrete_shape(spec.name, case.sizes)
        if spec.dtype != "bool":
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32)
        elif case.mask == "none":
            feeds[spec.name] = None
        else:
            mask = rng.random(shape) < 0.7
            mask[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] = True  # every row attends somewhere
            if case.mask == "row-masked":
                mask[0] = False
            feeds[spec.name] = mask
    return feeds


def _transitions(before: Case, after: Case, axes: Mapping[str, AxisRange]) -> set[tuple[str, str]]:
    """(axis, "min->max" or "max->min") for each axis that jumps across its whole range from one case to the next."""
    jumps = set()
    for axis, r in axes.items():
        if before.sizes[axis] == r.min and after.sizes[axis] == r.max:
            jumps.add((axis, "min->max"))
        elif before.sizes[axis] == r.max and after.sizes[axis] == r.min:
            jumps.add((axis, "max->min"))
    return jumps


def run_order(cases: list[Case], contract: IOContract) -> list[Case]:
    """The order one runner goes through the grid: the case with the most axes at their min first, the others as
    given, then repeats until every axis has gone from its min straight to its max and from its max straight to its
    min between consecutive calls.

    Runners keep state across calls with different shapes (OpenVINO's compiled kernels, TensorRT's optimization
    profile, ONNX Runtime's memory arenas); shapes in one order only would hide a backend that is right for a shape
    on a fresh runner but wrong after another one. The first call goes at the minimum because length-1 axes are the
    ones kernels specialise for (OpenVINO 2026.4 does, see docs/openvino.md). A repeated case is named "... (again)".
    """
    axes = contract.axes
    needed = {(a, d) for a, r in axes.items() if r.min != r.max for d in ("min->max", "max->min")}
    first = max(cases, key=lambda c: sum(c.sizes[a] == r.min for a, r in axes.items()))
    order = [first] + [c for c in cases if c is not first]
    for before, after in zip(order, order[1:]):
        needed -= _transitions(before, after, axes)

    def sets_up(case: Case) -> int:  # how many needed jumps could start from this case
        return sum(case.sizes[a] == (axes[a].min if d == "min->max" else axes[a].max) for a, d in needed)

    while needed:
        gains = [len(_transitions(order[-1], c, axes) & needed) for c in cases]
        best = max(range(len(cases)), key=lambda i: (gains[i], sets_up(cases[i]) if not gains[i] else 0))
        needed -= _transitions(order[-1], cases[best], axes)
        order.append(cases[best])
    seen: set[str] = set()
    named = []
    for c in order:
        named.append(c if c.name not in seen else Case(f"{c.name} (again)", c.sizes, c.mask))
        seen.add(c.name)
    return named
