"""The PyTorch model this toolkit exports."""

from .layer import PerceiverLayer

__all__ = ["PerceiverLayer"]
