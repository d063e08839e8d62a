"""Weights in and out: safetensors for artifacts, `weights_only` torch checkpoints for input."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file

from ..errors import ArtifactError, BackendUnavailableError, ConfigError
from ..model.module_ref import construct

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch checkpoint loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own SafetensorError and OSError
            raise ConfigError(f"checkpoint {path}: not a readable safetensors file: {e}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"checkpoint {path}: cannot be loaded with torch.load(weights_only=True) "
            f"(only tensors and plain containers are accepted): {e}"
        ) from None
    for key in ("state_dict", "model"):  # common trainer layouts
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"checkpoint {path}: expected a state dict of tensors")
    return dict(state)


def load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """load_state_dict that reports missing/unexpected keys and shape mismatches by name."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ConfigError(
            f"{source} does not match the model: missing keys {missing[:8]}"
            f"{' …' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}"
        )
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise ConfigError(f"{source} does not match the model's shapes (checkpoint vs model): {wrong[:8]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def save_weights(model: torch.nn.Module, path: Path) -> None:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


def build_model(module: str, config: Mapping, weights: Path, dtype: str = "float32") -> torch.nn.Module:
    """Rebuild the eval-mode module from a manifest's class and config and an artifact's weights.

    A user's module is imported by the name the manifest records: it must be importable here
    (installed, or on PYTHONPATH), and only an nn.Module subclass is ever constructed.
    """
    try:
        model = construct(module, config)
    except ConfigError as e:
        raise BackendUnavailableError(f"the eager model of this artifact cannot be rebuilt here: {e}") from None
    try:
        state = load_file(weights)
    except Exception as e:
        raise ArtifactError(f"{weights}: not a readable safetensors file: {e}") from None
    try:
        load_into(model, state, str(weights))
    except ConfigError as e:
        raise ArtifactError(str(e)) from None
    return model.to(TORCH_DTYPES[dtype]).eval()
