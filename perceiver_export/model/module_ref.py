"""Which nn.Module an export is of: our PerceiverLayer, or a user's `package.module:Class` with the same call contract.

A reference is imported, its constructor arguments checked against its signature, and its
forward's parameters read to learn whether it takes a mask. Every failure is a ConfigError
that names the reference and what went wrong, before anything is traced.
"""

from __future__ import annotations

import importlib
import inspect
import json
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a class is resolved: OURS is read by torch-free servers too
    import torch

# How manifests name our own layer (kept from schema v1's first artifacts).
OURS = "perceiver_export.PerceiverLayer"
CALL_CONTRACT = "forward(q, k, v, mask=None)"


def _split(ref: str) -> tuple[str, str]:
    """'package.module:Class' (or 'package.module.Class') -> (module, attribute path)."""
    if ":" in ref:
        module, _, attr = ref.partition(":")
    else:
        module, _, attr = ref.rpartition(".")
    if not module or not attr or not all(p.isidentifier() for p in module.split(".") + attr.split(".")):
        raise ConfigError(f"--model {ref!r}: expected package.module:Class")
    return module, attr


def resolve_class(ref: str) -> type[torch.nn.Module]:
    """The nn.Module subclass `ref` names; ConfigError if it cannot be imported or is not one."""
    import torch

    if ref == OURS:
        from .layer import PerceiverLayer

        return PerceiverLayer
    module_name, attr = _split(ref)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ModuleNotFoundError, or anything the module's own top level raises
        raise ConfigError(
            f"--model {ref!r}: cannot import {module_name!r}: {type(e).__name__}: {e} "
            "(is it installed, or on PYTHONPATH / in the current directory?)"
        ) from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            classes = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, torch.nn.Module)
                             and v.__module__ == module.__name__)
            raise ConfigError(
                f"--model {ref!r}: {module_name!r} has no attribute {attr!r}; "
                f"its nn.Module classes: {', '.join(classes) or 'none'}"
            )
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
        raise ConfigError(f"--model {ref!r}: {obj!r} is not a torch.nn.Module subclass")
    return obj


def check_arguments(cls: type, args: Mapping[str, Any], ref: str) -> None:
    """Keyword arguments the constructor does not take are refused by name (unless it takes **kwargs)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ConfigError(f"{ref}: unknown constructor argument(s) {unknown}; {cls.__name__} takes {accepted}")


def construct(ref: str, args: Mapping[str, Any]) -> torch.nn.Module:
    """`Class(**args)`; a failing constructor becomes a ConfigError quoting the call."""
    import torch

    cls = resolve_class(ref)
    check_arguments(cls, args, ref)
    try:
        model = cls(**args)
    except Exception as e:
        call = f"{cls.__name__}(**{json.dumps(dict(args))})"
        raise ConfigError(f"--model {ref!r}: {call} failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, torch.nn.Module):  # a class whose __new__ returns something else
        raise ConfigError(f"--model {ref!r}: constructing it gave a {type(model).__name__}, not an nn.Module")
    return model


def takes_mask(cls: type[torch.nn.Module], ref: str) -> bool:
    """Whether forward follows `forward(q, k, v, mask=None)` or `forward(q, k, v)`; ConfigError otherwise."""
    params = [p for n, p in inspect.signature(cls.forward).parameters.items() if n != "self"]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    required = [p for p in positional if p.default is p.empty]
    if (len(positional) < 3 and not varargs) or len(required) > 4:
        shown = ", ".join(str(p) for p in params)
        raise ConfigError(f"{ref}: forward({shown}) does not follow the call contract {CALL_CONTRACT}")
    if len(required) == 4:
        raise ConfigError(f"{ref}: forward's 4th parameter {positional[3].name!r} must be optional (default None): "
                          f"the call contract is {CALL_CONTRACT}")
    return len(positional) >= 4 or varargs
