"""Hostile files handed to the C++ tool (perceiver_run): damaged .npy inputs and manifests get this package's
error naming the file, with bytes from the file escaped, exit 3 and a peak RSS under 100 MB — never a crash,
std::bad_alloc or an allocation the file's size does not justify (issue 15's mutation run, and its neighbours)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from perceiver_export import runtime
from perceiver_export.errors import ArtifactError

PERCEIVER_RUN = os.environ.get("PERCEIVER_RUN")
pytestmark = pytest.mark.skipif(not (PERCEIVER_RUN and os.path.exists(PERCEIVER_RUN)),
                                reason="the C++ tool is not built: run scripts/test.sh (it sets PERCEIVER_RUN)")
MAX_RSS_MB = 100
VALID = np.zeros((1, 4, 32), np.float32)  # within the tiny contract; its 512 bytes are every file's data


# A fork carries its parent's peak RSS through exec, so this pytest process (torch loaded) cannot measure the
# tool's own: a bare Python starts it and reports that child's ru_maxrss (KiB) from wait4.
_MEASURE = """import os, subprocess, sys
tool = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(tool.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_tool(*args: str) -> tuple[int, str, float]:
    """Exit code, stderr (ASCII: bytes from files must come escaped) and peak RSS in MB of one perceiver_run."""
    result = subprocess.run([sys.executable, "-S", "-c", _MEASURE, PERCEIVER_RUN, *args], capture_output=True, timeout=120)
    return result.returncode, result.stderr.decode("ascii"), int(result.stdout) / 1024


def npy_file(header: bytes | str, data: bytes = VALID.tobytes(), version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy file laid out as numpy writes it (header padded to 64 bytes and ended by a newline)."""
    header = header.encode("latin1") if isinstance(header, str) else header
    length = "<H" if version[0] == 1 else "<I"
    preamble = 8 + struct.calcsize(length)
    header += b" " * ((64 - (preamble + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(length, len(header)) + header + data


def header(shape: str = "(1, 4, 32)", descr: str = "'<f4'", fortran: str = "False", extra: str = "") -> str:
    return f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, {extra}}}"


# name -> (q.npy's bytes, what the error says after "q.npy: "); each refused before its data is allocated.
HOSTILE_NPY = {
    # issue 15's mutation run
    "claims 5 GB": (npy_file(header("(1, 4, 320000000)")),
                    "truncated: the header's shape (1, 4, 320000000) of float32 needs 5120000000 bytes of data, 512 follow the header"),
    "dim 2^32 + 1": (npy_file(header("(4294967297, 4, 32)")),
                     "truncated: the header's shape (4294967297, 4, 32) of float32 needs 2199023256064 bytes of data, 512 follow the header"),
    "dim -1": (npy_file(header("(-1, 4, 32)")), "header's shape (-1, 4, 32) has a negative dimension, -1"),
    "dims negative": (npy_file(header("(1, -4, -32)")), "header's shape (1, -4, -32) has a negative dimension, -4"),
    "dtype not UTF-8": (npy_file(header(descr="'\xd8b1'")),
                        r"unsupported dtype '\xd8b1' (float32 '<f4', float16 '<f2' or bool '|b1')"),
    # their neighbours
    "non-ASCII dtype (3.0, UTF-8)": (npy_file(header(descr="'é'").encode("utf-8"), version=(3, 0)),
                                     r"unsupported dtype '\xc3\xa9' (float32 '<f4', float16 '<f2' or bool '|b1')"),
    "terminal escape in a key": (npy_file(header(extra="'\x1b[2J': '', ")), r"header has an unexpected key '\x1b[2J'"),
    "product beyond 2^64": (npy_file(header("(4294967296, 4294967296, 4294967296)")),
                            "truncated: the header's shape (4294967296, 4294967296, 4294967296) of float32 needs more "
                            "than 2^64 bytes of data, 512 follow the header"),
    "dim beyond 64 bits": (npy_file(header("(99999999999999999999, 4, 32)")),
                           "header's shape (99999999999999999999, 4, 32) has a dimension beyond 64 bits, 99999999999999999999"),
    "65 dims": (npy_file(header("(" + "1, " * 65 + ")")), "header's shape has more than numpy's 64 dimensions"),
    "trailing bytes": (npy_file(header(), VALID.tobytes() + b"\0" * 16),
                       "16 trailing bytes: the header's shape (1, 4, 32) of float32 needs 512 bytes of data, 528 follow the header"),
    "data cut short": (npy_file(header(), VALID.tobytes()[:100]),
                       "truncated: the header's shape (1, 4, 32) of float32 needs 512 bytes of data, 100 follow the header"),
    "extra key": (npy_file(header(extra="'extra': 'x', ")),
                  "header has an unexpected key 'extra' (numpy writes exactly 'descr', 'fortran_order' and 'shape')"),
    "missing key": (npy_file("{'descr': '<f4', 'shape': (1, 4, 32), }"),
                    "header has no 'fortran_order' (numpy writes exactly 'descr', 'fortran_order' and 'shape')"),
    "repeated key": (npy_file(header(extra="'shape': (1, 4, 32), ")), "header repeats the key 'shape'"),
    "fortran order": (npy_file(header(fortran="True")),
                      "Fortran-order arrays are not supported (save a C-order one: numpy.ascontiguousarray)"),
    "shape not a tuple": (npy_file(header(shape="[1, 4, 32]")),
                          "header is not the dict numpy writes: expected a string, True, False or a tuple at byte 50 of "
                          "{'descr': '<f4', 'fortran_order': False, 'shape': [1, 4, 32], }"),
    "(n) is not a tuple": (npy_file(header(shape="(512)"), b"\0" * 2048), "'(n)' is not a tuple (numpy writes '(n,)')"),
    "big-endian": (npy_file(header(descr="'>f4'")), "unsupported dtype '>f4'"),
    "not a dict": (npy_file("import os"), "header is not the dict numpy writes: expected '{' at byte 0"),
    "version 4.0": (npy_file(header(), version=(4, 0)), "unsupported .npy format version 4.0 (numpy writes 1.0, 2.0 and 3.0)"),
    "header length past the end": (b"\x93NUMPY\x01\x00\xff\x0f{'descr'", "truncated: the header is 4095 bytes, 8 follow its length field"),
    "header over numpy's limit": (npy_file("{" + " " * 20000 + "}", version=(2, 0)),
                                  "bytes is longer than the 10000 numpy.load reads"),
    "not .npy": (b"PK\x03\x04 a zip file", r"not a .npy file (it does not start with \x93NUMPY)"),
    "empty": (b"", "not a .npy file (0 bytes, shorter than any .npy header)"),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("npy")
    for name in "qkv":
        np.save(d / f"{name}.npy", VALID)
    return d


def tool_args(artifact, inputs, q) -> list[str]:
    return [str(artifact), "--q", str(q), "--k", str(inputs / "k.npy"), "--v", str(inputs / "v.npy"),
            "--out", str(inputs / "out.npy")]


@pytest.mark.parametrize("case", sorted(HOSTILE_NPY))
def test_hostile_npy_is_refused_naming_the_file_in_bounded_memory(tiny_fp32, inputs, case):
    content, message = HOSTILE_NPY[case]
    q = inputs / f"hostile-{sorted(HOSTILE_NPY).index(case)}.npy"
    q.write_bytes(content)
    code, stderr, rss_mb = run_tool(*tool_args(tiny_fp32.directory, inputs, q))
    print(f"{case}: peak RSS {rss_mb:.1f} MB")
    assert code == 3, stderr
    assert stderr.startswith(f"error (InputError): {q}: "), stderr
    assert message in stderr, stderr
    assert rss_mb < MAX_RSS_MB, f"{case}: peak RSS {rss_mb:.0f} MB"


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_every_npy_version_numpy_writes_is_read(tiny_fp32, inputs, version):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 32)).astype(np.float32)
    path = inputs / f"q-{version[0]}.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array(f, q, version=version)
    code, stderr, _ = run_tool(*tool_args(tiny_fp32.directory, inputs, path))
    assert code == 0, stderr
    expected = runtime.load(tiny_fp32.directory, graph="plain")(q, VALID, VALID)
    np.testing.assert_allclose(np.load(inputs / "out.npy"), expected, atol=1e-5)


def test_missing_and_non_regular_npy_paths_are_named(tiny_fp32, inputs):
    for path, what in ((inputs / "absent.npy", "no such file"), (inputs, "not a regular file")):
        code, stderr, _ = run_tool(*tool_args(tiny_fp32.directory, inputs, path))
        assert (code, stderr.strip()) == (3, f"error (InputError): {path}: {what}")


@pytest.mark.parametrize("option,value,message", [
    ("--repeat", "3abc", "--repeat: expected an integer in [1, 1000000]"),
    ("--repeat", "99999999999", "--repeat: expected an integer in [1, 1000000]"),
    ("--threads", "-1", "--threads: expected an integer in [0, 1024]"),
    ("--treads", "2", "usage: perceiver_run"),
])
def test_bad_numbers_on_the_command_line_are_usage_errors(tiny_fp32, inputs, option, value, message):
    code, stderr, _ = run_tool(*tool_args(tiny_fp32.directory, inputs, inputs / "q.npy"), option, value)
    assert code == 2 and stderr.startswith(message), stderr


# ---- manifest.json values the C++ runtime uses as sizes or paths ------------------------------------------------

def _set(path: str, value):
    def edit(m):
        *parents, last = path.split("/")
        for key in parents:
            m = m[int(key)] if isinstance(m, list) else m[key]
        m[int(last) if isinstance(m, list) else last] = value
    return edit


def _nest(m):
    m["model"]["config"]["deep"] = json.loads("[" * 100 + "]" * 100)


def _list_outside(m):
    m["files"]["../model.onnx"] = m["files"]["model.onnx"]
    m["onnx"]["file"] = "../model.onnx"


# name -> (edit of the manifest, what the error says after "manifest.json: ", whether Python refuses it too)
HOSTILE_MANIFEST = {
    "axis max 2^31": (_set("contract/axes/batch/max", 2**31),
                      "does not match the manifest schema at contract/axes/batch/max: 2147483648 is not an integer in "
                      "[1, 2147483647]", True),
    "axis min negative": (_set("contract/axes/q_len/min", -4),
                          "does not match the manifest schema at contract/axes/q_len/min: -4 is not an integer", True),
    "axis range inverted": (_set("contract/axes/k_len", {"min": 9, "opt": 8, "max": 24}),
                            "invalid I/O contract: axis 'k_len': range must satisfy 1 <= min <= opt <= max <= 2147483647, "
                            "got 9:8:24", True),
    "fixed dim of 20 digits": (_set("contract/inputs/0/dims/2", 10**20),
                               "does not match the manifest schema at contract/inputs/0/dims/2: 1e+20 is not an integer in "
                               "[1, 2147483647]", False),
    "fixed dim as a string": (_set("contract/inputs/0/dims/2", "99999999999999999999"),
                              "invalid I/O contract: q: dim '99999999999999999999' is not a size in [1, 2147483647]", True),
    "sum of an unknown axis": (_set("contract/inputs/3/dims/1", "k_len + nope"),
                               "invalid I/O contract: mask: dim 'k_len + nope' names unknown axis 'nope'", True),
    "optional float input": (_set("contract/inputs/0/optional", True),
                             "invalid I/O contract: input 'q': only a bool mask may be optional", False),
    "no outputs": (_set("contract/outputs", []),
                   "does not match the manifest schema at contract/outputs: 0 items, expected 1 to 16", True),
    "file size negative": (_set("files/model.onnx/bytes", -1),
                           "does not match the manifest schema at files/model.onnx/bytes: -1 is not an integer", True),
    "file size fractional": (_set("files/model.onnx/bytes", 1.5),
                             "does not match the manifest schema at files/model.onnx/bytes: 1.5 is not an integer", True),
    "graph outside the artifact": (_list_outside, "file entry '../model.onnx' points outside the artifact", True),
    "NUL in the graph's name": (_set("onnx/file", "model.onnx\0.txt"),
                                r"does not match the manifest schema at onnx/file: " + '"model.onnx\\\\u0000.txt" contains a '
                                "control character", True),
    "nested 100 levels": (_nest, "JSON nested deeper than 64 levels", False),
    "default graph not among its graphs": (_set("default_graph/graph", "nope"),
                                          "default_graph 'nope' is not one of its graphs (plain, optimized)", True),
    "no default graph in schema 2": (lambda m: m.pop("default_graph"), "missing keys ['default_graph']", True),
    "a graph's file outside the artifact": (_set("graphs/optimized/file", "../model.ort.onnx"),
                                            "file entry '../model.ort.onnx' points outside the artifact", False),
    "a graph's file not listed": (_set("graphs/optimized/files", ["model.ort.onnx", "other.data"]),
                                  "'other.data' of graph 'optimized' is not listed under 'files'", False),
    "a graph named plain": (_set("graphs/plain", {"file": "model.onnx"}),
                            "'graphs' may not name a graph 'plain' (that is model.onnx)", True),
    "schema version 3": (_set("schema_version", 3), "schema_version 3 is not supported (this version reads 1 to 2)", True),
}


def _write_manifest(directory, edit):
    m = json.loads((directory / "manifest.json").read_text())
    edit(m)
    (directory / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFEST))
def test_hostile_manifest_values_are_refused_by_the_cpp_runtime(artifact_copy, inputs, case):
    edit, message, python_refuses = HOSTILE_MANIFEST[case]
    _write_manifest(artifact_copy, edit)
    code, stderr, rss_mb = run_tool(*tool_args(artifact_copy, inputs, inputs / "q.npy"))
    print(f"{case}: peak RSS {rss_mb:.1f} MB")
    assert code == 3, stderr
    assert stderr.startswith(f"error (ArtifactError): {artifact_copy / 'manifest.json'}: "), stderr
    assert message in stderr, stderr
    assert rss_mb < MAX_RSS_MB
    if python_refuses:
        with pytest.raises(ArtifactError):
            runtime.load(artifact_copy, graph="plain")


def test_huge_or_bloated_manifests_are_read_in_bounded_memory(artifact_copy, inputs):
    manifest = artifact_copy / "manifest.json"
    m = json.loads(manifest.read_text())
    for blob, expected in (([0] * (6 * 2**20), f"{manifest}: {{size}} bytes, larger than the 16777216 allowed"),  # 19 MB
                           ([0] * 2**20, f"{manifest}: more than 65536 JSON values"),  # 3 MB of "0, "
                           (["x" * 250] * 60_000, None)):  # 15 MB of strings, within both limits: it runs
        m["model"]["config"]["blob"] = blob
        manifest.write_text(json.dumps(m))
        code, stderr, rss_mb = run_tool(*tool_args(artifact_copy, inputs, inputs / "q.npy"))
        print(f"{manifest.stat().st_size / 2**20:.1f} MiB manifest, {len(blob)} values: peak RSS {rss_mb:.1f} MB")
        if expected is None:
            assert code == 0, stderr
        else:
            assert code == 3 and expected.format(size=manifest.stat().st_size) in stderr, stderr
        assert rss_mb < MAX_RSS_MB


def test_bytes_that_are_not_utf8_are_escaped_in_manifest_errors(artifact_copy, inputs):
    manifest = artifact_copy / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"perceiver-tiny"', b'"perceiver-\xd8\x1b[2J"', 1))
    code, stderr, _ = run_tool(*tool_args(artifact_copy, inputs, inputs / "q.npy"))  # run_tool decodes as ASCII
    assert code == 3 and f"error (ArtifactError): {manifest}: not valid JSON: " in stderr, stderr
    assert "\x1b" not in stderr


def test_the_tool_reads_a_copy_of_its_own_artifact(artifact_copy, inputs):
    """The edits above start from a manifest the tool accepts."""
    code, stderr, _ = run_tool(*tool_args(artifact_copy, inputs, inputs / "q.npy"))
    assert code == 0, stderr
