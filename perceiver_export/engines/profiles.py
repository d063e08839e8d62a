"""Optimization profiles: axis ranges within the contract's, their tensor shapes, and picking one for an input.

Plain functions with no TensorRT import: they are tested without a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..contract import AxisRange, IOContract
from ..errors import ConfigError, InputError


class ShapeError(InputError):
    """The input's shapes fall outside every optimization profile of the engine."""


@dataclass(frozen=True)
class Profile:
    name: str
    axes: Mapping[str, AxisRange]

    def tensor_shapes(self, contract: IOContract) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """min/opt/max shape of every input under this profile (mask = k_len + v_len in each)."""
        scoped = IOContract(dict(self.axes), contract.inputs, contract.outputs)
        return {t.name: tuple(scoped.shape(t.name, w) for w in ("min", "opt", "max")) for t in contract.inputs}

    def contains(self, sizes: Mapping[str, int]) -> bool:
        return all(self.axes[a].min <= n <= self.axes[a].max for a, n in sizes.items())

    def describe(self) -> str:
        return ", ".join(f"{a} {r.min}..{r.max}" for a, r in self.axes.items())

    def to_dict(self, contract: IOContract) -> dict:
        return {
            "name": self.name,
            "axes": {a: {"min": r.min, "opt": r.opt, "max": r.max} for a, r in self.axes.items()},
            "shapes": {n: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for n, s in self.tensor_shapes(contract).items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "Profile":
        return cls(str(data["name"]), {a: AxisRange(int(r["min"]), int(r["opt"]), int(r["max"])) for a, r in data["axes"].items()})


def default_profile(contract: IOContract) -> Profile:
    return Profile("default", dict(contract.axes))


def parse_profile(text: str, contract: IOContract, index: int) -> Profile:
    """'[NAME:]axis=MIN:OPT:MAX,...'; axes left out keep the artifact's range. Must lie within it."""
    head, sep, rest = text.partition(":")
    if sep and "=" not in head:
        name, body = head.strip(), rest
    else:
        name, body = f"profile{index}", text
    if not name:
        raise ConfigError(f"--profile {text!r}: empty name")
    axes = dict(contract.axes)
    for part in filter(None, (p.strip() for p in body.split(","))):
        axis, eq, value = part.partition("=")
        axis = axis.strip().replace("-", "_")
        if not eq:
            raise ConfigError(f"--profile {text!r}: expected axis=MIN:OPT:MAX, got {part!r}")
        if axis not in contract.axes:
            raise ConfigError(f"--profile {text!r}: unknown axis {axis!r}; axes are {', '.join(contract.axes)}")
        rng = AxisRange.parse(value, f"--profile {name} {axis}")
        declared = contract.axes[axis]
        if rng.min < declared.min or rng.max > declared.max:
            raise ConfigError(
                f"--profile {name}: {axis} {rng} is outside the artifact's range {declared} "
                "(re-export with a wider range to build for it)"
            )
        axes[axis] = rng
    if body.strip() == "":
        raise ConfigError(f"--profile {text!r}: no axis ranges given")
    return Profile(name, axes)


def select_profile(profiles: Sequence[Profile], sizes: Mapping[str, int]) -> int:
    """Index of the tightest profile whose ranges hold `sizes` (smallest max shapes: kernels tuned closest);
    ShapeError listing every profile's bounds when none does."""
    fitting = [i for i, p in enumerate(profiles) if p.contains(sizes)]
    if fitting:
        return min(fitting, key=lambda i: math.prod(r.max for r in profiles[i].axes.values()))
    got = ", ".join(f"{a}={n}" for a, n in sizes.items())
    bounds = "; ".join(f"#{i} {p.name}: {p.describe()}" for i, p in enumerate(profiles))
    raise ShapeError(f"input shapes ({got}) fit no optimization profile of this engine: {bounds}")
