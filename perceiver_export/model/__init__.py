"""The PyTorch model this toolkit exports."""

__all__ = ["PerceiverLayer"]


def __getattr__(name: str):
    # Imported on first use (PEP 562): module_ref's names (read by the torch-free servers, e.g. Triton's Python-backend
    # stub environment) must not pull torch in with the package.
    if name == "PerceiverLayer":
        from .layer import PerceiverLayer

        return PerceiverLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
