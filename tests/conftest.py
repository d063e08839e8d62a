"""Shared fixtures: tiny-config artifacts exported once per test session, into temporary folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from perceiver_export.config import load_spec
from perceiver_export.export.artifact_builder import export_artifact

REPO = Path(__file__).resolve().parent.parent


def openvino_backends() -> list[str]:
    """The OpenVINO backends verify runs by default on a float32 artifact here (bf16 only on CPUs with bf16 instructions)."""
    try:
        from perceiver_export.runtime.openvino.runner import bf16_unavailable_reason
    except ImportError:
        return []
    return ["openvino"] + (["openvino-bf16"] if bf16_unavailable_reason() is None else [])


@pytest.fixture(scope="session")
def tiny_spec():
    return load_spec("perceiver-tiny")


def _export(tmp_path_factory, tiny_spec, dtype: str, **kwargs):
    out = tmp_path_factory.mktemp(f"tiny-{dtype}") / "artifact"
    return export_artifact(tiny_spec, out, dtype=dtype, **kwargs)


@pytest.fixture(scope="session")
def tiny_fp32(tmp_path_factory, tiny_spec):
    """An exported, verified fp32 tiny artifact. Tests must not modify it: copy it first (see `artifact_copy`)."""
    return _export(tmp_path_factory, tiny_spec, "fp32")


@pytest.fixture(scope="session")
def tiny_fp16(tmp_path_factory, tiny_spec):
    return _export(tmp_path_factory, tiny_spec, "fp16")


@pytest.fixture(scope="session")
def tiny_bf16(tmp_path_factory, tiny_spec):
    return _export(tmp_path_factory, tiny_spec, "bf16")


@pytest.fixture
def artifact_copy(tiny_fp32, tmp_path) -> Path:
    """A private copy of the fp32 tiny artifact that a test may damage."""
    dst = tmp_path / "copy"
    shutil.copytree(tiny_fp32.directory, dst)
    return dst


def save_consistently(model, directory: Path, name: str = "model.onnx") -> None:
    """Write a (tampered) ONNX model and record its new hash, as someone forging an artifact would."""
    import json

    import onnx

    from perceiver_export.artifact.manifest import file_entry

    onnx.save(model, str(directory / name))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][name] = file_entry(directory / name)
    (directory / "manifest.json").write_text(json.dumps(manifest))
