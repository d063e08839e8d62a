"""The bench grid: (batch, q_len, k_len, v_len) points from the artifact's ranges."""

from __future__ import annotations

from typing import Mapping

from ..contract import AXES, AxisRange
from ..errors import ConfigError

Point = tuple[int, int, int, int]  # batch, q_len, k_len, v_len


def default_grid(axes: Mapping[str, AxisRange]) -> list[Point]:
    """Sequence lengths from opt to max at the opt batch, then the largest point (every axis at max)."""
    b, q, k, v = (axes[a] for a in AXES)

    def mid(r: AxisRange) -> int:
        return max(r.opt, min(r.max, int((r.opt * r.max) ** 0.5)))

    points = [
        (b.opt, q.opt, k.opt, v.opt),
        (b.opt, mid(q), mid(k), mid(v)),
        (b.opt, q.max, k.max, v.max),
        (b.max, q.max, k.max, v.max),
    ]
    return list(dict.fromkeys(points))


def parse_grid(text: str, axes: Mapping[str, AxisRange]) -> list[Point]:
    """'B:Q:K:V,B:Q:K:V,...' within the artifact's ranges."""
    points = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            point = tuple(int(x) for x in part.split(":"))
        except ValueError:
            raise ConfigError(f"--grid: expected BATCH:Q_LEN:K_LEN:V_LEN, got {part!r}") from None
        if len(point) != 4:
            raise ConfigError(f"--grid: expected BATCH:Q_LEN:K_LEN:V_LEN, got {part!r}")
        for axis, n in zip(AXES, point):
            r = axes[axis]
            if not r.min <= n <= r.max:
                raise ConfigError(f"--grid {part}: {axis} {n} is outside the artifact's range [{r.min}, {r.max}]")
        points.append(point)
    if not points:
        raise ConfigError("--grid: no points given")
    return points
