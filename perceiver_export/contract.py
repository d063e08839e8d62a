"""The I/O contract: input/output names, dtypes, symbolic axes and their min/opt/max ranges.

It is the single source of truth for shapes. The exporter derives torch.export dynamic
shapes from it, the manifest stores it, every runner checks its inputs against it, and
later consumers (TensorRT profiles, the C++ runtime, serving configs) read it from the
manifest. It depends on nothing but numpy-like `.shape` / `.dtype` attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError, InputError

# The axes a Perceiver layer's inputs vary along, in the order users see them.
AXES = ("batch", "q_len", "k_len", "v_len")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class AxisRange:
    """Inclusive bounds of one symbolic axis plus the size backends should optimise for."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not (isinstance(self.min, int) and isinstance(self.opt, int) and isinstance(self.max, int)):
            raise ConfigError(f"axis range needs integers, got {self.min!r}:{self.opt!r}:{self.max!r}")
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(
                f"axis range must satisfy 1 <= min <= opt <= max, got {self.min}:{self.opt}:{self.max}"
            )

    @classmethod
    def parse(cls, text: str, axis: str = "axis") -> "AxisRange":
        """Parse 'MIN:OPT:MAX' (or 'MIN:MAX', opt = min, or a single fixed size)."""
        try:
            parts = [int(p) for p in str(text).split(":")]
        except ValueError:
            raise ConfigError(f"{axis}: expected MIN:OPT:MAX integers, got {text!r}") from None
        if len(parts) == 1:
            parts = parts * 3
        elif len(parts) == 2:
            parts = [parts[0], parts[0], parts[1]]
        elif len(parts) != 3:
            raise ConfigError(f"{axis}: expected MIN:OPT:MAX, got {text!r}")
        try:
            return cls(*parts)
        except ConfigError as e:
            raise ConfigError(f"{axis}: {e}") from None

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


def dim_terms(dim: int | str) -> tuple[str, ...]:
    """The axis names a symbolic dim adds up; () for a fixed size."""
    if isinstance(dim, int):
        return ()
    return tuple(t.strip() for t in dim.split("+"))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    dims: tuple[int | str, ...]
    optional: bool = False
    doc: str = ""


@dataclass(frozen=True)
class IOContract:
    axes: Mapping[str, AxisRange]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    _by_name: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {t.name: t for t in self.inputs + self.outputs})
        for spec in self.inputs + self.outputs:
            for d in spec.dims:
                for term in dim_terms(d):
                    if term not in self.axes:
                        raise ConfigError(f"{spec.name}: dim {d!r} names unknown axis {term!r}")

    # ---- construction -------------------------------------------------------------
    @classmethod
    def for_call(cls, dim: int, dtype: str, axes: Mapping[str, AxisRange], *, context_dim: int | None = None,
                 mask: bool = True) -> "IOContract":
        """The inputs of `forward(q, k, v, mask=None)`; outputs come later, from the exported program."""
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        missing = [a for a in AXES if a not in axes]
        if missing:
            raise ConfigError(f"missing axis ranges: {', '.join(missing)}")
        for what, n in (("dim", dim), ("context_dim", context_dim if context_dim is not None else dim)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ConfigError(f"{what} must be a positive integer, got {n!r}")
        context_dim = dim if context_dim is None else context_dim
        inputs = [
            TensorSpec("q", dtype, ("batch", "q_len", dim), doc="latent queries"),
            TensorSpec("k", dtype, ("batch", "k_len", context_dim), doc="first half of the context"),
            TensorSpec("v", dtype, ("batch", "v_len", context_dim), doc="second half of the context"),
        ]
        if mask:
            inputs.append(TensorSpec(
                "mask", "bool", ("batch", "k_len + v_len"), optional=True,
                doc="True = attend to that context position; omitted = attend to all",
            ))
        return cls(axes={a: axes[a] for a in AXES}, inputs=tuple(inputs), outputs=())

    @classmethod
    def for_perceiver(cls, dim: int, dtype: str, axes: Mapping[str, AxisRange]) -> "IOContract":
        """The contract of PerceiverLayer.forward(q, k, v, mask=None) -> out (batch, q_len, dim)."""
        return cls.for_call(dim, dtype, axes).with_outputs(
            (TensorSpec("out", dtype, ("batch", "q_len", dim), doc="updated latents"),)
        )

    def with_outputs(self, outputs: tuple[TensorSpec, ...]) -> "IOContract":
        return IOContract(self.axes, self.inputs, tuple(outputs))

    def spec(self, name: str) -> TensorSpec:
        return self._by_name[name]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def dtype(self) -> str:
        """The floating dtype of the model's activations."""
        return self.inputs[0].dtype

    # ---- derived shapes -----------------------------------------------------------
    def dim_bound(self, dim: int | str, which: str) -> int:
        """min/opt/max of one dim: a fixed size, or the sum of its axes' bounds."""
        if isinstance(dim, int):
            return dim
        return sum(getattr(self.axes[t], which) for t in dim_terms(dim))

    def shape(self, name: str, which: str) -> tuple[int, ...]:
        """The min, opt or max shape of a tensor, as TensorRT profiles want it."""
        return tuple(self.dim_bound(d, which) for d in self.spec(name).dims)

    def concrete_shape(self, name: str, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """A tensor's shape for given axis sizes."""
        return tuple(
            d if isinstance(d, int) else sum(sizes[t] for t in dim_terms(d)) for d in self.spec(name).dims
        )

    # ---- the one input check every runner shares ----------------------------------
    def check_inputs(self, feeds: Mapping[str, Any]) -> dict[str, int]:
        """Check named inputs (numpy arrays or torch tensors) and return the axis sizes.

        Raises InputError naming the input, what was expected and what came.
        """
        unknown = sorted(set(feeds) - set(self.input_names))
        if unknown:
            raise InputError(
                f"unknown input {unknown[0]!r}: expected one of {', '.join(self.input_names)}"
            )
        sizes: dict[str, tuple[int, str]] = {}  # axis -> (size, which input set it)
        sums: list[tuple[str, str, int]] = []
        for spec in self.inputs:
            value = feeds.get(spec.name)
            if value is None:
                if spec.optional:
                    continue
                raise InputError(f"input {spec.name!r}: required ({self.describe(spec)}), got nothing")
            shape, dtype = _shape_and_dtype(spec.name, value)
            if len(shape) != len(spec.dims):
                raise InputError(
                    f"input {spec.name!r}: expected rank {len(spec.dims)} {self.describe(spec)}, "
                    f"got rank {len(shape)} with shape {shape}"
                )
            if dtype != spec.dtype:
                raise InputError(f"input {spec.name!r}: expected dtype {spec.dtype}, got {dtype}")
            for i, (d, n) in enumerate(zip(spec.dims, shape)):
                if isinstance(d, int):
                    if n != d:
                        raise InputError(
                            f"input {spec.name!r}: expected size {d} on axis {i} {self.describe(spec)}, "
                            f"got {n} (shape {shape})"
                        )
                    continue
                terms = dim_terms(d)
                if len(terms) > 1:
                    sums.append((spec.name, d, n))
                    continue
                axis = terms[0]
                rng = self.axes[axis]
                if not rng.min <= n <= rng.max:
                    raise InputError(
                        f"input {spec.name!r}: {axis} (axis {i}) must be in [{rng.min}, {rng.max}], "
                        f"got {n} (shape {shape})"
                    )
                if axis in sizes and sizes[axis][0] != n:
                    raise InputError(
                        f"input {spec.name!r}: {axis} (axis {i}) is {n} but input "
                        f"{sizes[axis][1]!r} has {axis} = {sizes[axis][0]}"
                    )
                sizes.setdefault(axis, (n, spec.name))
        for name, d, n in sums:
            expected = sum(sizes[t][0] for t in dim_terms(d))
            if n != expected:
                parts = " + ".join(f"{sizes[t][0]}" for t in dim_terms(d))
                raise InputError(f"input {name!r}: expected {d} = {parts} = {expected} positions, got {n}")
        return {axis: n for axis, (n, _) in sizes.items()}

    def describe(self, spec: TensorSpec) -> str:
        return "(" + ", ".join(str(d) for d in spec.dims) + ")"

    # ---- manifest form ------------------------------------------------------------
    def to_dict(self) -> dict:
        def tensor(t: TensorSpec) -> dict:
            return {
                "name": t.name,
                "dtype": t.dtype,
                "dims": list(t.dims),
                "optional": t.optional,
                "doc": t.doc,
                # Derived for consumers that want concrete bounds (TensorRT, C++, serving).
                "min_shape": list(self.shape(t.name, "min")),
                "opt_shape": list(self.shape(t.name, "opt")),
                "max_shape": list(self.shape(t.name, "max")),
            }

        return {
            "axes": {a: {"min": r.min, "opt": r.opt, "max": r.max} for a, r in self.axes.items()},
            "inputs": [tensor(t) for t in self.inputs],
            "outputs": [tensor(t) for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "IOContract":
        try:
            axes = {a: AxisRange(int(r["min"]), int(r["opt"]), int(r["max"])) for a, r in data["axes"].items()}

            def tensor(t) -> TensorSpec:
                dims = tuple(d if isinstance(d, str) else int(d) for d in t["dims"])
                return TensorSpec(str(t["name"]), str(t["dtype"]), dims, bool(t.get("optional", False)), t.get("doc", ""))

            return cls(axes, tuple(tensor(t) for t in data["inputs"]), tuple(tensor(t) for t in data["outputs"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"invalid I/O contract: {type(e).__name__}: {e}") from None


def _shape_and_dtype(name: str, value: Any) -> tuple[tuple[int, ...], str]:
    """Shape and dtype name of a numpy array or torch tensor, without importing torch."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is None or dtype is None:
        raise InputError(
            f"input {name!r}: expected a numpy array or torch tensor, got {type(value).__name__}"
        )
    device = getattr(value, "device", None)
    if getattr(device, "type", None) == "meta":
        raise InputError(f"input {name!r}: expected a tensor with data (cpu or cuda), got a meta tensor")
    dtype_name = getattr(dtype, "name", None) or str(dtype).removeprefix("torch.")
    if dtype_name == "bool_":
        dtype_name = "bool"
    return tuple(int(n) for n in shape), dtype_name
