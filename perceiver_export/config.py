"""Model specs (models/*.toml): the PerceiverLayer constructor arguments and default axis ranges."""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .contract import AXES, AxisRange, IOContract
from .errors import ConfigError

# models/ sits beside the package in a checkout; installed copies ship it as package data.
MODELS_DIRS = (Path(__file__).resolve().parent.parent / "models", Path(__file__).resolve().parent / "models")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    model: Mapping[str, Any]  # PerceiverLayer keyword arguments
    axes: Mapping[str, AxisRange] = field(default_factory=dict)

    def contract(self, dtype: str) -> IOContract:
        return IOContract.for_perceiver(int(self.model["dim"]), dtype, self.axes)

    def with_axes(self, overrides: Mapping[str, AxisRange]) -> "ModelSpec":
        return replace(self, axes={**self.axes, **overrides})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "spec") -> "ModelSpec":
        from .model import PerceiverLayer

        model = dict(data.get("model", {}))
        params = inspect.signature(PerceiverLayer.__init__).parameters
        unknown = sorted(set(model) - set(params) - {"self"})
        if unknown:
            raise ConfigError(f"{source}: unknown [model] keys {unknown}; PerceiverLayer takes {list(params)[1:]}")
        missing = [p for p in ("dim", "heads", "depth") if p not in model]
        if missing:
            raise ConfigError(f"{source}: [model] is missing {missing}")
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
        return cls(name=str(data.get("name", Path(source).stem)), model=model, axes=axes)


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
