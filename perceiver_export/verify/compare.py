"""Comparing one output against the reference: statistics and the tolerance that would have passed."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Pass when |out - ref| <= atol + rtol * |ref| + scale_atol * std(ref), elementwise.

    scale_atol expresses an error relative to the output's scale, for int8 graphs whose error
    does not shrink with |ref|.
    """

    atol: float
    rtol: float
    scale_atol: float = 0.0

    def describe(self) -> str:
        """As a reader checks it: "atol 0.0001, rtol 0.001", or "0.05 × std(ref)" for a scale tolerance."""
        parts = [f"atol {self.atol:g}", f"rtol {self.rtol:g}"] if self.atol or self.rtol or not self.scale_atol else []
        return ", ".join(parts + ([f"{self.scale_atol:g} × std(ref)"] if self.scale_atol else []))

    def as_dict(self) -> dict:
        d = {"atol": self.atol, "rtol": self.rtol}
        if self.scale_atol:
            d["scale_atol"] = self.scale_atol
        return d


# Defaults against an eager float32 reference; README "Tolerances" says why.
TOLERANCES = {
    "float32": Tolerance(1e-4, 1e-3),
    "float16": Tolerance(2e-2, 1e-2),
    "bfloat16": Tolerance(1.5e-1, 5e-2),
    # A float32 TensorRT engine built with TF32 allowed: 10-bit mantissa matmuls, fp16's unit roundoff.
    "tf32": Tolerance(2e-2, 1e-2),
    # A float32 graph computed in bfloat16 (OpenVINO's bf16 inference precision): 8-bit mantissa matmuls, so like
    # int8 the error follows the output's scale, not |ref|; measured about 0.01 x std on perceiver-base.
    "bf16-compute": Tolerance(0.0, 0.0, 0.05),
    # int8 weights (dynamic quantization): max error at most a tenth of the output's standard deviation.
    "int8": Tolerance(0.0, 0.0, 0.1),
}


@dataclass(frozen=True)
class Comparison:
    max_abs: float
    max_rel: float
    p99_abs: float
    mean_abs: float
    required_atol: float  # smallest atol that passes at the given rtol
    required_rtol: float  # smallest rtol that passes at the given atol
    nonfinite: int  # NaN/Inf in the output where the reference is finite
    scale: float  # standard deviation of the reference
    max_abs_over_scale: float
    passed: bool
    error: str | None = None  # the backend raised, or gave the wrong shape: no numbers to compare

    @classmethod
    def failed_run(cls, error: str) -> "Comparison":
        inf = float("inf")
        return cls(inf, inf, inf, inf, inf, inf, 0, 0.0, inf, False, error)

    def as_dict(self) -> dict:
        """JSON-safe: an infinite statistic (NaN in the output) is written as null."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def compare(out: np.ndarray, ref: np.ndarray, atol: float, rtol: float, scale_atol: float = 0.0) -> Comparison:
    """Elementwise |out - ref| <= atol + rtol * |ref| (numpy.allclose's rule) + scale_atol * std(ref), plus statistics.

    required_atol/required_rtol are the smallest atol (at this rtol) and rtol (at this atol) that pass,
    with the scale term folded into atol.
    """
    if out.shape != ref.shape:
        return Comparison.failed_run(f"output shape {out.shape} differs from the reference's {ref.shape}")
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    nonfinite = int(np.count_nonzero(~np.isfinite(out) & np.isfinite(ref)))
    with np.errstate(invalid="ignore"):
        diff = np.abs(out - ref)
    # NaN where the reference has NaN, or the same infinity, agrees (NaN/Inf propagate: README); any other
    # non-finite difference is a miss no tolerance covers.
    agree = (out == ref) | (np.isnan(out) & np.isnan(ref))
    diff = np.where(agree, 0.0, np.where(np.isfinite(diff), diff, np.inf))
    finite_ref = ref[np.isfinite(ref)]
    scale = float(finite_ref.std()) if finite_ref.size else 0.0
    atol = atol + scale_atol * scale
    mag = np.where(np.isfinite(ref), np.abs(ref), 0.0)
    nonzero = mag > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        # Relative error is undefined where the reference is exactly 0; rtol can never cover such a miss.
        rel = np.where(nonzero, diff / mag, 0.0)
        need_rtol = np.where(nonzero, (diff - atol) / mag, np.where(diff > atol, np.inf, 0.0))
    required_atol = float(np.max(diff - rtol * mag, initial=0.0))
    required_rtol = float(np.max(need_rtol, initial=0.0))
    passed = nonfinite == 0 and bool(np.all(diff <= atol + rtol * mag))
    return Comparison(
        max_abs=float(diff.max(initial=0.0)),
        max_rel=float(rel.max(initial=0.0)),
        p99_abs=float(np.quantile(diff, 0.99, method="higher")) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        required_atol=max(required_atol, 0.0),
        required_rtol=max(required_rtol, 0.0),
        nonfinite=nonfinite,
        scale=scale,
        max_abs_over_scale=float(diff.max(initial=0.0)) / scale if scale > 0 else float("inf"),
        passed=passed,
    )
