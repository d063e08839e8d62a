"""Re-exporting into a directory that holds files: keep what still fits the new export, move the rest aside.

Other commands write into an artifact (`trt` engines, `bench` and `loadtest` output, `kserve`'s manifest), and a
user may keep their own files there. A re-export replaces the directory whole (atomic/publish_dir), so before the
swap it carries over the engines built from the same model.onnx for the same inputs, and every other entry the
new artifact does not have goes to DIR.previous/ with the previous artifact — moved, never deleted.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..artifact.manifest import Manifest, read_manifest
from ..errors import ArtifactError


@dataclass
class Carryover:
    carried: list[str] = field(default_factory=list)  # files of the old artifact kept (and listed) in the new one
    moved_aside: list[str] = field(default_factory=list)  # entries of the old directory the new one lacks; dirs end in /
    previous: Path | None = None  # where the old directory goes, whole: DIR.previous (None: nothing to keep)
    reasons: dict[str, str] = field(default_factory=dict)  # engine file -> why it was not carried over


def previous_dir_for(out: Path) -> Path:
    return out.parent / f"{out.name}.previous"


def carry_over(out: Path, new: Manifest) -> Carryover:
    """Copy (hard-link) into the staged artifact `new` the engines of `out` still valid for it, record them in its
    manifest, and say what of `out` the new artifact will not have. `out` itself is not changed."""
    result = Carryover()
    if not out.is_dir():
        return result
    try:
        old = read_manifest(out)
    except ArtifactError:
        old = None  # not an artifact (or a damaged one): nothing to carry, everything is kept aside
    if old is not None:
        for name, entry in old.engines.items():
            why = _why_not_carried(old, new, name, entry)
            if why:
                result.reasons[name] = why
                continue
            _link_or_copy(out / name, new.directory / name)
            new.data.setdefault("engines", {})[name] = entry
            new.data["files"][name] = old.data["files"][name]
            result.carried.append(name)
        if result.carried:
            new.write()
    written = {p.name for p in new.directory.iterdir()}
    result.moved_aside = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if p.name not in written)
    result.previous = previous_dir_for(out) if result.moved_aside else None
    return result


def _why_not_carried(old: Manifest, new: Manifest, name: str, entry: dict) -> str | None:
    onnx = {n: new.data["files"][n]["sha256"] for n in new.onnx_files}
    if entry.get("onnx_sha256") != onnx:
        return "built from a different model.onnx"
    if old.data["contract"] != new.data["contract"]:
        return "built for other input names, types or ranges"  # same graph, other axis ranges: other profiles
    if (new.directory / name).exists():
        return "the new export writes a file of that name"
    try:
        old.check_files([name])
    except ArtifactError as e:
        return str(e)
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link costs nothing for a large engine; engines are replaced by rename, never rewritten in place."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def describe_carryover(carried: list[str], moved_aside: list[str], previous: Path | None,
                       reasons: dict[str, str]) -> list[str]:
    """What the command prints about the directory it replaced (nothing when it held only the export's own files)."""
    lines = []
    if carried:
        lines.append(f"kept from the previous artifact (built from the same model.onnx): {', '.join(carried)}")
    if moved_aside:
        names = ", ".join(f"{n} ({reasons[n]})" if n in reasons else n for n in moved_aside)
        lines.append(f"moved aside to {previous}/ with the previous artifact: {names}")
    return lines
