"""The parity grid: shapes and masks that cover an artifact's declared ranges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..contract import IOContract

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
