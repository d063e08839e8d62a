"""Which artifact a path names: the directory itself, or the artifact a file (model.onnx, bench/bench.json) lies in."""

from __future__ import annotations

from pathlib import Path

from ..errors import ArtifactError
from .manifest import MANIFEST


def artifact_dir_for(path: str | Path) -> tuple[Path, str | None]:
    """The artifact directory `path` names, and a note saying how it was found when it was not `path` itself.

    An artifact directory (one holding manifest.json) is returned as it is. A file or folder inside one resolves to
    the nearest enclosing directory with a manifest.json. A missing path, or a directory outside any artifact, is
    returned unchanged for read_manifest to refuse with its own message; a file outside any artifact is refused here,
    saying how to make one.
    """
    path = Path(path)
    if not path.exists() or (path.is_dir() and (path / MANIFEST).is_file()):
        return path, None
    for parent in path.parents:
        if (parent / MANIFEST).is_file():
            inside = path.relative_to(parent)
            what = "the directory of" if len(inside.parts) == 1 else "which holds"
            return parent, f"using artifact {parent} ({what} {inside})"
    if path.is_dir():
        return path, None
    raise ArtifactError(
        f"{path}: a file, not in an artifact (no {MANIFEST} beside it or in any folder above): pass an artifact "
        "directory, or make one from a model spec with `python -m perceiver_export onnx --config NAME --out DIR`"
    )
