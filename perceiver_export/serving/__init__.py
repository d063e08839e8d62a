"""Serving an artifact: the protocol server, its batcher, the load test, and configs for Triton and KServe, all
derived from the manifest's I/O contract. Only the command line imports this package."""

from __future__ import annotations

import sys

from .batcher import BatchStats, DynamicBatcher

__all__ = ["BatchStats", "DynamicBatcher", "import_kserve"]


def import_kserve():
    """kserve, imported without letting it parse sys.argv (its module-level server flags would read ours)."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
        import kserve.model_server  # noqa: F401 — the REST app its endpoints register on
    except ImportError as e:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(f"serving needs kserve ({e}): `pip install perceiver-export[serve]`") from None
    finally:
        sys.argv = argv
    return kserve
