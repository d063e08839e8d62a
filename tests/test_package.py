"""The package's top level: the entry points a user imports from `perceiver_export` itself, and the docs' example."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_entry_points_are_importable_from_the_package_and_are_the_deep_objects():
    from perceiver_export import BuildOptions, build_engine, export_artifact, load_spec, verify_artifact
    from perceiver_export.config import load_spec as deep_load_spec
    from perceiver_export.engines.build import BuildOptions as DeepBuildOptions
    from perceiver_export.engines.build import build_engine as deep_build_engine
    from perceiver_export.export.artifact_builder import export_artifact as deep_export_artifact
    from perceiver_export.verify.parity import verify_artifact as deep_verify_artifact

    assert export_artifact is deep_export_artifact
    assert verify_artifact is deep_verify_artifact
    assert build_engine is deep_build_engine
    assert BuildOptions is DeepBuildOptions
    assert load_spec is deep_load_spec


def test_every_name_in_all_resolves_and_unknown_names_still_fail():
    import perceiver_export

    for name in ("export_artifact", "verify_artifact", "build_engine", "BuildOptions", "load_spec"):
        assert name in perceiver_export.__all__ and name in dir(perceiver_export)
    for name in perceiver_export.__all__:
        getattr(perceiver_export, name)
    with pytest.raises(AttributeError, match="module 'perceiver_export' has no attribute 'export_artefact'"):
        perceiver_export.export_artefact  # noqa: B018


def test_python_api_page_example_runs(tmp_path, capsys):
    """docs/python-api.md's first example, on perceiver-tiny in a temporary folder instead of perceiver-base."""
    pytest.importorskip("tensorrt_rtx")
    page = (REPO / "docs" / "python-api.md").read_text()
    block = re.search(r"<!-- python-api-example -->\n```python\n(.*?)```", page, re.S).group(1)
    for old, new in (('"perceiver-base"', '"perceiver-tiny"'),
                     ('"artifacts/perceiver-base"', repr(str(tmp_path / "tiny")))):
        assert old in block
        block = block.replace(old, new)
    exec(compile(block, "python-api-example", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] in ("True plain", "True optimized")
    assert printed[1] == "True ['onnxruntime', 'onnxruntime-optimized', 'openvino']"
    assert printed[2] == "model.tensorrt_rtx.engine"
    assert (tmp_path / "tiny" / "model.tensorrt_rtx.engine").is_file()


def test_all_lists_exactly_the_lazy_names_and_the_eager_ones():
    import perceiver_export

    assert set(perceiver_export._LAZY) <= set(perceiver_export.__all__)
    assert len(perceiver_export.__all__) == len(set(perceiver_export.__all__))
