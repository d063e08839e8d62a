"""manifest.json: what an artifact directory holds, how it was made, and whether it passed parity."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..contract import IOContract
from ..errors import ArtifactDamagedError, ArtifactError, ConfigError
from .atomic import atomic_write_text

MANIFEST = "manifest.json"
SCHEMA = "perceiver-export/manifest"
SCHEMA_VERSION = 2
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a manifest is metadata; anything bigger is not ours
REQUIRED_KEYS = ("schema", "schema_version", "name", "model", "dtype", "opset", "contract", "onnx", "files")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_of(path), "bytes": path.stat().st_size}


@dataclass
class Manifest:
    """The parsed manifest of one artifact directory."""

    directory: Path
    data: dict[str, Any]

    @property
    def contract(self) -> IOContract:
        return IOContract.from_dict(self.data["contract"])

    @property
    def onnx_path(self) -> Path:
        return self.directory / self.data["onnx"]["file"]

    @property
    def weights_path(self) -> Path:
        return self.directory / self.data["weights"]["file"]

    @property
    def dtype(self) -> str:
        return self.data["dtype"]

    @property
    def model_class(self) -> str:
        """The exported module: perceiver_export.PerceiverLayer, or a user's "package.module:Class"."""
        return self.data["model"]["class"]

    @property
    def model_config(self) -> dict:
        return dict(self.data["model"]["config"])

    @property
    def onnx_files(self) -> list[str]:
        """model.onnx and, when present, its external-data file."""
        return [self.data["onnx"]["file"]] + ([self.data["onnx"]["external_data"]] if self.data["onnx"].get("external_data") else [])

    @property
    def graphs(self) -> dict[str, dict]:
        """ONNX Runtime variants of model.onnx that passed parity ("optimized", "int8"), by name."""
        return self.data.get("graphs") or {}

    @property
    def default_graph(self) -> str:
        """The graph the ONNX Runtime runner and the C++ runtime run unless told otherwise: "plain" or a name in
        `graphs`, chosen at export by timing the verified graphs (export/graph_choice.py)."""
        return self.data["default_graph"]["graph"]

    @property
    def engines(self) -> dict[str, dict]:
        """Engines built from this artifact, by file name (see engines/build.py)."""
        return self.data.get("engines") or {}

    def check_files(self, names: list[str] | None = None) -> None:
        """Listed files (all, or `names`) exist with their recorded size and sha256; raise ArtifactError naming the file."""
        for name, entry in self.data["files"].items():
            if names is not None and name not in names:
                continue
            path = self.directory / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ArtifactError(f"{self.directory / MANIFEST}: file entry {name!r} points outside the artifact")
            if not path.is_file():
                raise ArtifactDamagedError(f"{path}: listed in the manifest but missing")
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise ArtifactDamagedError(
                    f"{path}: damaged: {size} bytes, the manifest records {entry['bytes']}"
                )
            digest = sha256_of(path)
            if digest != entry["sha256"]:
                raise ArtifactDamagedError(
                    f"{path}: damaged: sha256 {digest[:16]}… does not match the manifest's {entry['sha256'][:16]}…"
                )

    def check_external_data(self) -> None:
        """Every ONNX graph's external-data locations stay inside the artifact directory (a hostile
        model.onnx could otherwise make onnxruntime read any file on the machine)."""
        import onnx

        graph_files = [self.data["onnx"]["file"]] + [g["file"] for g in self.data.get("graphs", {}).values()]
        root = self.directory.resolve()
        for name in graph_files:
            model = onnx.load(str(self.directory / name), load_external_data=False)
            for tensor in model.graph.initializer:
                if tensor.data_location != onnx.TensorProto.EXTERNAL:
                    continue
                location = next((e.value for e in tensor.external_data if e.key == "location"), "")
                target = (self.directory / location).resolve()
                if Path(location).is_absolute() or root not in target.parents:
                    raise ArtifactError(
                        f"{self.directory / name}: tensor {tensor.name!r} points to external data {location!r} outside the artifact"
                    )
                if location not in self.data["files"]:
                    raise ArtifactError(f"{self.directory / name}: external data {location!r} is not listed in the manifest")

    def write(self) -> None:
        atomic_write_text(self.directory / MANIFEST, json.dumps(self.data, indent=2) + "\n")


@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator

    from .manifest_schema import MANIFEST_SCHEMA

    return Draft202012Validator(MANIFEST_SCHEMA)


def _from_version_1(data: dict) -> dict:
    """Version 2 added "default_graph". Version 1's rule: the optimized graph where there is one, else plain."""
    graph = "optimized" if "optimized" in (data.get("graphs") or {}) else "plain"
    return {**data, "schema_version": 2, "default_graph": {"graph": graph, "chosen_by": "schema 1 rule"}}


# How to read a manifest of an earlier schema version: UPGRADES[n] turns a version-n document into version n + 1
# (in memory; the file is not rewritten). Bump SCHEMA_VERSION whenever export writes a different manifest, and add
# the step from the previous version here, or leave it out to refuse that version with "re-export".
# tests/fixtures/artifact-v1/ is a version-1 artifact kept as it was written: it must keep loading, or be refused
# with that message.
UPGRADES: dict[int, Callable[[dict], dict]] = {1: _from_version_1}


def readable_versions() -> str:
    """The schema versions this version reads, as its refusals say it: "1 to 2" (the C++ runtime says the same)."""
    oldest = SCHEMA_VERSION
    while oldest - 1 in UPGRADES:
        oldest -= 1
    return f"{oldest} to {SCHEMA_VERSION}" if oldest < SCHEMA_VERSION else str(SCHEMA_VERSION)


def _upgrade(data: dict, path: Path) -> dict:
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtifactError(f"{path}: schema_version must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: schema_version {version} is not supported (this version reads {readable_versions()}): the artifact "
            f"was written by a newer perceiver-export than this one ({__version__}); upgrade it "
            "(`pip install -U perceiver-export`) or re-export the model with this one"
        )
    while version < SCHEMA_VERSION:
        step = UPGRADES.get(version)
        if step is None:
            raise ArtifactError(
                f"{path}: schema_version {version} is not supported (this version reads {readable_versions()}): the artifact "
                f"was written by an older perceiver-export that this one ({__version__}) cannot read; re-export the "
                "model (`python -m perceiver_export onnx ...`) or use the perceiver-export that wrote it"
            )
        data = step(data)
        version = data["schema_version"]
    return data


def read_manifest(directory: str | Path) -> Manifest:
    """Parse and validate DIR/manifest.json (not the files it lists: see Manifest.check_files)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: not an artifact directory (it does not exist)")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; is {directory} an artifact written by `perceiver_export onnx`?")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: {path.stat().st_size} bytes, larger than the {MAX_MANIFEST_BYTES} allowed")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ArtifactError(f"{path}: missing keys {missing}")
    if data["schema"] != SCHEMA:
        raise ArtifactError(f"{path}: schema {data['schema']!r} is not {SCHEMA!r}")
    data = _upgrade(data, path)
    error = next(iter(sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ArtifactError(f"{path}: does not match the manifest schema at {where}: {error.message[:300]}")
    manifest = Manifest(directory, data)
    try:
        manifest.contract
    except ConfigError as e:
        raise ArtifactError(f"{path}: {e}") from None
    for key in ("onnx", "weights"):
        entry = data.get(key)
        if not isinstance(entry, dict) or entry.get("file") not in data["files"]:
            raise ArtifactError(f"{path}: {key!r} must name a file listed under 'files'")
    if "plain" in manifest.graphs:
        raise ArtifactError(f"{path}: 'graphs' may not name a graph 'plain' (that is model.onnx)")
    if manifest.default_graph != "plain" and manifest.default_graph not in manifest.graphs:
        raise ArtifactError(f"{path}: default_graph {manifest.default_graph!r} is not one of its graphs "
                            f"(plain{''.join(', ' + g for g in manifest.graphs)})")
    return manifest
