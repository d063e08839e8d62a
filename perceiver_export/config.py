"""Model specs (models/*.toml): which module (ours, or `module = "package.module:Class"`), its arguments and axis ranges."""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import torch

from .contract import AXES, AxisRange, IOContract
from .errors import ConfigError
from .model.module_ref import OURS, check_arguments, construct, resolve_class, takes_mask

# models/ sits beside the package in a checkout; installed copies ship it as package data.
# Model specs: inside the installed package (a wheel ships models/*.toml there), else a checkout's models/.
MODELS_DIRS = (Path(__file__).resolve().parent / "models", Path(__file__).resolve().parent.parent / "models")


@dataclass(frozen=True)
class ModelSpec:
    """What to export: a module class and its constructor arguments, the input sizes, and axis ranges."""

    name: str
    model: Mapping[str, Any]  # constructor keyword arguments
    axes: Mapping[str, AxisRange] = field(default_factory=dict)
    module: str = OURS  # "package.module:Class" for a user's own module
    io: Mapping[str, int] = field(default_factory=dict)  # dim / context_dim when the arguments do not say

    @property
    def is_ours(self) -> bool:
        return self.module == OURS

    @property
    def dim(self) -> int:
        """Feature size of q: [io] dim, else the constructor's dim (or query_dim)."""
        for source, key in ((self.io, "dim"), (self.model, "dim"), (self.model, "query_dim")):
            if key in source:
                return _positive_int(source[key], key, self.name)
        raise ConfigError(
            f"{self.name}: cannot tell the feature size of q, k and v from the arguments of {self.module}: "
            "pass --dim N (and --context-dim N when k and v differ from q) on the command line, or set dim (and context_dim) "
            "under [io] in the spec (io= in Python)"
        )

    @property
    def context_dim(self) -> int:
        """Feature size of k and v: [io] context_dim, else the constructor's context_dim, else dim."""
        for source in (self.io, self.model):
            if source.get("context_dim") is not None:
                return _positive_int(source["context_dim"], "context_dim", self.name)
        return self.dim

    def contract(self, dtype: str) -> IOContract:
        """The inputs' contract; the outputs are read from the exported program (export/onnx_graph.py)."""
        mask = True if self.is_ours else takes_mask(resolve_class(self.module), self.module)
        return IOContract.for_call(self.dim, dtype, self.axes, context_dim=self.context_dim, mask=mask)

    def build(self) -> torch.nn.Module:
        """A new, untrained instance (seed torch first for reproducible weights)."""
        return construct(self.module, self.model)

    def with_axes(self, overrides: Mapping[str, AxisRange]) -> "ModelSpec":
        return replace(self, axes={**self.axes, **overrides})

    def with_module(self, module: str, args: Mapping[str, Any], name: str | None = None,
                    io: Mapping[str, int] | None = None) -> "ModelSpec":
        """This spec's axis ranges for another module (`--model package.module:Class --model-args JSON`)."""
        check_arguments(resolve_class(module), args, module)
        default_name = re.sub(r"(?<!^)(?=[A-Z])", "-", module.rpartition(":")[2].rpartition(".")[2]).lower()
        return replace(self, name=name or default_name, module=module, model=dict(args), io=dict(io or {}))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "spec") -> "ModelSpec":
        module = str(data.get("module", OURS))
        model = dict(data.get("model", {}))
        if module == OURS:
            from .model import PerceiverLayer

            params = inspect.signature(PerceiverLayer.__init__).parameters
            unknown = sorted(set(model) - set(params) - {"self"})
            if unknown:
                raise ConfigError(f"{source}: unknown [model] keys {unknown}; PerceiverLayer takes {list(params)[1:]}")
            missing = [p for p in ("dim", "heads", "depth") if p not in model]
            if missing:
                raise ConfigError(f"{source}: [model] is missing {missing}")
        io = dict(data.get("io", {}))
        unknown_io = sorted(set(io) - {"dim", "context_dim"})
        if unknown_io:
            raise ConfigError(f"{source}: unknown [io] keys {unknown_io}; it takes dim and context_dim")
        if io and module == OURS:
            raise ConfigError(f"{source}: [io] is for a user's module (module = ...); PerceiverLayer's sizes are in [model]")
        axes = {}
        for axis in AXES:
            value = data.get("axes", {}).get(axis)
            if value is None:
                raise ConfigError(f"{source}: [axes] is missing {axis} = [min, opt, max]")
            if not (isinstance(value, list) and len(value) == 3):
                raise ConfigError(f"{source}: [axes] {axis} must be [min, opt, max], got {value!r}")
            try:
                axes[axis] = AxisRange(*value)
            except ConfigError as e:
                raise ConfigError(f"{source}: [axes] {axis}: {e}") from None
        return cls(name=str(data.get("name", Path(source).stem)), model=model, axes=axes, module=module, io=io)


def _positive_int(value: Any, key: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """A path to a .toml, or a name under models/ ('perceiver-base')."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"model spec {str(path)!r} does not exist")
        return path
    for folder in MODELS_DIRS:
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for folder in MODELS_DIRS if folder.is_dir() for p in folder.glob("*.toml")})
    raise ConfigError(f"no model spec named {str(name_or_path)!r}; known: {', '.join(known) or 'none'}")


def load_spec(name_or_path: str | Path) -> ModelSpec:
    path = resolve_spec_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return ModelSpec.from_dict(data, source=str(path))
