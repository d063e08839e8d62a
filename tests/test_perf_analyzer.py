"""Triton's perf_analyzer (scripts/install_perf_analyzer.sh) driving an unmodified `serve` process over gRPC and HTTP,
its command line built from the I/O contract, and its CSV report read back (a report captured from such a run)."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from perceiver_export.artifact.manifest import read_manifest
from perceiver_export.contract import AxisRange, IOContract
from perceiver_export.errors import ConfigError
from perceiver_export.serving import perf_analyzer as pa
from tests.served import Served

CAPTURED = Path(__file__).parent / "fixtures" / "perf_analyzer"
TINY_AXES = {"batch": AxisRange(1, 2, 4), "q_len": AxisRange(1, 8, 16), "k_len": AxisRange(1, 8, 24),
             "v_len": AxisRange(1, 6, 24)}


@pytest.fixture(scope="module")
def contract():
    return IOContract.for_perceiver(32, "float32", TINY_AXES)


def flag_values(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command[:-1]) if word == flag]


# ---- the command line, from the contract ------------------------------------------------------
def test_command_line_states_every_input_at_the_contracts_opt_sizes(contract, tmp_path):
    settings = pa.PerfSettings(protocol="grpc", concurrency=[4], batch=2, requests=50, warmup=3)
    command = pa.build_command(contract, "perceiver-tiny", "127.0.0.1:8001", settings, max_batch_size=4,
                               csv_path=tmp_path / "r.csv", data_path=tmp_path / "d.json", perf_analyzer=["PA"])
    assert command[:9] == ["PA", "-m", "perceiver-tiny", "-u", "127.0.0.1:8001", "-i", "grpc", "-b", "2"]
    # the batch dim is -b's where the config batches; q at q_len opt 8, k at k_len opt 8, v at v_len opt 6
    assert flag_values(command, "--shape") == ["q:8,32", "k:8,32", "v:6,32"]
    assert flag_values(command, "--concurrency-range") == ["4"]
    assert flag_values(command, "--measurement-mode") == ["count_windows"]  # windows of at least 50 requests
    assert flag_values(command, "--measurement-request-count") == ["50"]
    assert flag_values(command, "--max-trials") == ["10"] and flag_values(command, "-s") == ["50"]
    assert flag_values(command, "--warmup-request-count") == ["3"]
    assert "--request-count" not in command
    assert flag_values(command, "-f") == [str(tmp_path / "r.csv")]
    assert flag_values(command, "--input-data") == [str(tmp_path / "d.json")]
    assert "--streaming" not in command


def test_command_line_with_an_exact_request_count(contract, tmp_path):
    settings = pa.PerfSettings(measurement="request_count", requests=30)
    command = pa.build_command(contract, "m", "127.0.0.1:8001", settings, max_batch_size=4,
                               csv_path=tmp_path / "r.csv", perf_analyzer=["PA"])
    assert flag_values(command, "--request-count") == ["30"] and "--measurement-mode" not in command
    with pytest.raises(ConfigError, match="measurement must be count_windows or request_count"):
        pa.build_command(contract, "m", "127.0.0.1:8001", pa.PerfSettings(measurement="time"), max_batch_size=4,
                         csv_path=tmp_path / "r.csv", perf_analyzer=["PA"])


def test_command_line_without_triton_batching_writes_the_batch_dim_and_the_mask(contract, tmp_path):
    settings = pa.PerfSettings(protocol="http", batch=2, mask="all-true")
    command = pa.build_command(contract, "m", "127.0.0.1:8000", settings, max_batch_size=0,
                               csv_path=tmp_path / "r.csv", perf_analyzer=["PA"])
    assert flag_values(command, "-b") == ["1"] and flag_values(command, "-i") == ["http"]
    assert flag_values(command, "--shape") == ["q:2,8,32", "k:2,8,32", "v:2,6,32", "mask:2,14"]  # k_len + v_len


def test_command_line_refusals(contract, tmp_path):
    def build(**kw):
        max_batch = kw.pop("max_batch_size", 4)
        return pa.build_command(contract, "m", "127.0.0.1:1", pa.PerfSettings(**kw), max_batch_size=max_batch,
                                csv_path=tmp_path / "r.csv", perf_analyzer=["PA"])

    with pytest.raises(ConfigError, match="--streaming needs gRPC"):
        build(protocol="http", streaming=True)
    with pytest.raises(ConfigError, match="batch 4 is above the served max_batch_size 1"):
        build(batch=4, max_batch_size=1)
    with pytest.raises(ConfigError, match=r"batch 8 is outside the artifact's batch range \[1, 4\]"):
        build(batch=8, max_batch_size=0)
    with pytest.raises(ConfigError, match="protocol must be grpc or http"):
        build(protocol="tcp")
    with pytest.raises(ConfigError, match="one concurrency level per perf_analyzer command line"):
        build(concurrency=[1, 4])
    with pytest.raises(ConfigError, match="mask must be 'omit' or 'all-true'"):
        build(mask="random")
    assert "--streaming" in build(streaming=True)


def test_input_data_file_holds_the_shapes_the_command_line_states(contract, tmp_path):
    settings = pa.PerfSettings(mask="all-true", data_steps=3, seed=1)
    path = pa.write_input_data(contract, tmp_path / "d.json", 1, 4, settings)
    steps = json.loads(path.read_text())["data"]
    assert len(steps) == 3
    for step in steps:
        assert {n: s["shape"] for n, s in step.items()} == {"q": [8, 32], "k": [8, 32], "v": [6, 32], "mask": [14]}
        q = np.frombuffer(base64.b64decode(step["q"]["b64"]), np.float32)
        assert q.size == 8 * 32 and 0.5 < q.std() < 1.5
        assert np.frombuffer(base64.b64decode(step["mask"]["b64"]), np.bool_).tolist() == [True] * 14
    assert steps[0]["q"]["b64"] != steps[1]["q"]["b64"]
    omitted = json.loads(pa.write_input_data(contract, tmp_path / "o.json", 1, 4, pa.PerfSettings()).read_text())
    assert set(omitted["data"][0]) == {"q", "k", "v"}


def test_variable_lengths_give_each_step_its_own_k_and_v_inside_the_contract(contract, tmp_path):
    settings = pa.PerfSettings(lengths="variable", data_steps=32, mask="all-true", seed=3)
    steps = json.loads(pa.write_input_data(contract, tmp_path / "d.json", 1, 4, settings).read_text())["data"]
    assert len(steps) == 32
    k_lens = [s["k"]["shape"][0] for s in steps]
    v_lens = [s["v"]["shape"][0] for s in steps]
    assert min(k_lens + v_lens) >= 1 and max(k_lens + v_lens) <= 24  # the tiny contract's k_len and v_len 1..24
    assert len(set(k_lens)) >= 10 and len(set(v_lens)) >= 10 and len(set(zip(k_lens, v_lens))) >= 25
    for step, k_len, v_len in zip(steps, k_lens, v_lens):
        assert step["q"]["shape"] == [8, 32] and step["k"]["shape"] == [k_len, 32]  # q stays at opt
        assert step["mask"]["shape"] == [k_len + v_len]
        assert np.frombuffer(base64.b64decode(step["k"]["b64"]), np.float32).size == k_len * 32
        assert np.frombuffer(base64.b64decode(step["v"]["b64"]), np.float32).size == v_len * 32
    capped = pa.PerfSettings(lengths="variable", data_steps=32, max_kv=5)
    steps = json.loads(pa.write_input_data(contract, tmp_path / "c.json", 1, 4, capped).read_text())["data"]
    assert {s["k"]["shape"][0] for s in steps} | {s["v"]["shape"][0] for s in steps} <= {1, 2, 3, 4, 5}
    # only the input whose shape does not vary is on the command line; the file states k's, v's and the mask's
    command = pa.build_command(contract, "m", "127.0.0.1:1", settings, max_batch_size=4, csv_path=tmp_path / "r.csv",
                               data_path=tmp_path / "d.json", perf_analyzer=["PA"])
    assert flag_values(command, "--shape") == ["q:8,32"]
    with pytest.raises(ConfigError, match="variable lengths need the --input-data file"):
        pa.build_command(contract, "m", "127.0.0.1:1", settings, max_batch_size=4, csv_path=tmp_path / "r.csv",
                         perf_analyzer=["PA"])
    with pytest.raises(ConfigError, match="lengths must be 'opt' or 'variable', got 'random'"):
        pa.write_input_data(contract, tmp_path / "x.json", 1, 4, pa.PerfSettings(lengths="random"))
    with pytest.raises(ConfigError, match="max_kv 0 is below the contract's k/v minimum 1"):
        pa.write_input_data(contract, tmp_path / "x.json", 1, 4, pa.PerfSettings(lengths="variable", max_kv=0))


def test_not_installed_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv(pa.ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = importlib.util.find_spec("perf_analyzer")
    if spec is not None and (Path(spec.origin).parent / "bin" / "perf_analyzer").exists():
        pytest.skip("perf_analyzer's wheel is installed into this Python (glibc >= 2.38): it is always found")
    with pytest.raises(ConfigError, match=r"perf_analyzer is not installed: run scripts/install_perf_analyzer.sh"):
        pa.perf_analyzer_command(deps=tmp_path / "nothing")
    monkeypatch.setenv(pa.ENV, "/bin/false")
    with pytest.raises(ConfigError, match=r"\$PERCEIVER_PERF_ANALYZER \(/bin/false\) does not run perf_analyzer"):
        pa.perf_analyzer_command()


# ---- the installed binary ----------------------------------------------------------------------
def test_install_script_leaves_a_binary_that_runs():
    command = pa.perf_analyzer_command()
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and re.search(r"Perf Analyzer Version \S+", done.stderr + done.stdout), done
    wrapper = pa.DEPS / "bin" / "perf_analyzer"  # the command line for people, written by the install script
    if wrapper.exists():
        again = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, timeout=30)
        assert again.returncode == 0 and "Perf Analyzer Version" in again.stderr + again.stdout


# ---- its report ----------------------------------------------------------------------------------
def test_parse_reads_a_captured_report():
    """grpc_c2.csv and .txt: perf_analyzer 2.60's -f report and output, concurrency 2 against `serve` on the tiny
    artifact (count_windows of at least 40 requests, -p 2000)."""
    (row,) = pa.parse_csv((CAPTURED / "grpc_c2.csv").read_text())
    assert row == {"concurrency": 2, "rps": 469.289, "p50_ms": 3.903, "p90_ms": 6.654, "p95_ms": 7.144,
                   "p99_ms": 8.95, "mean_ms": None, "client_send_ms": 0.004, "client_recv_ms": 0.001,
                   "server_queue_ms": 0.366, "server_compute_ms": 1.602}
    assert pa.parse_summary((CAPTURED / "grpc_c2.txt").read_text()) == {2: {"requests": 1422, "mean_ms": 4.239}}
    with pytest.raises(ConfigError, match="no rows"):
        pa.parse_csv("Concurrency,Inferences/Second\n")


# ---- against a real `serve` process ------------------------------------------------------------
def batch_rows(http: str) -> float:
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=10).read().decode()
    found = re.search(r"^perceiver_batch_size_sum\{[^}]*\} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0  # no samples before the first backend call


@pytest.fixture(scope="module")
def served_tiny(tiny_fp32):
    with Served(tiny_fp32.directory, "--max-batch-size", "4") as server:
        yield server, read_manifest(tiny_fp32.directory)


@pytest.mark.parametrize("protocol,streaming", [("grpc", False), ("http", False), ("grpc", True)])
def test_perf_analyzer_drives_serve(served_tiny, protocol, streaming, tmp_path):
    server, manifest = served_tiny
    model = manifest.data["name"]
    max_batch = pa.served_max_batch_size(server.http, model)
    assert max_batch == 4
    # This checks that perf_analyzer completes against serve, not how steady this shared machine is: any three
    # windows within 100 % of each other settle it (a run that never settles exits 2).
    settings = pa.PerfSettings(protocol=protocol, streaming=streaming, concurrency=[2], requests=40, max_trials=8,
                               stability_percent=100, timeout_s=60)
    before = batch_rows(server.http)
    start = time.monotonic()
    run = pa.run_perf_analyzer(manifest.contract, model, server.grpc if protocol == "grpc" else server.http,
                               settings, max_batch_size=max_batch, workdir=tmp_path)
    assert time.monotonic() - start < 60
    (row,) = run["results"]
    assert row["concurrency"] == 2 and row["requests"] >= 40 and row["rps"] > 0, run["output"]
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"], row
    assert batch_rows(server.http) - before >= row["requests"]  # the server answered every measured request
    assert ("--streaming" in run["command"][0]) == streaming


def served_counts(grpc: str, model: str) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(grpc).get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_perf_analyzer_sends_variable_lengths_to_serve(served_tiny, tmp_path):
    """32 steps of their own k/v lengths, sent by perf_analyzer at concurrency 4: serve answers every one and batches
    them (its batcher pads k and v); a step one past the contract's k_len max is serve's refusal, so the shapes that
    reach the server are the file's."""
    server, manifest = served_tiny
    model = manifest.data["name"]
    settings = pa.PerfSettings(concurrency=[4], lengths="variable", data_steps=32, requests=60, max_trials=8,
                               stability_percent=100, timeout_s=60)
    before = served_counts(server.grpc, model)
    run = pa.run_perf_analyzer(manifest.contract, model, server.grpc, settings, max_batch_size=4, workdir=tmp_path)
    inferences, executions = (a - b for a, b in zip(served_counts(server.grpc, model), before))
    (row,) = run["results"]
    assert row["requests"] >= 60 and inferences >= row["requests"], (row, inferences)
    assert executions < inferences, (inferences, executions)  # some batches of more than one request
    assert "Successfully read data for 1 stream/streams with 32 step/steps" in run["output"][0]
    assert flag_values(run["command"][0], "--shape") == ["q:8,32"]

    data = tmp_path / "input_data.json"
    steps = json.loads(data.read_text())["data"]
    steps[5]["k"] = {"b64": base64.b64encode(np.zeros((25, 32), np.float32).tobytes()).decode(), "shape": [25, 32]}
    data.write_text(json.dumps({"data": steps}))
    command = pa.build_command(manifest.contract, model, server.grpc, settings, max_batch_size=4,
                               csv_path=tmp_path / "bad.csv", data_path=data)
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 99, done
    assert "input 'k': k_len (axis 1) must be in [1, 24], got 25 (shape (1, 25, 32))" in done.stdout + done.stderr


def test_loadtest_with_both_clients_in_one_run(tiny_fp32, tmp_path):
    """`--client both`: perf_analyzer and tritonclient on the same servers and opt-size requests, in one run."""
    result = subprocess.run(
        [sys.executable, "-m", "perceiver_export", "loadtest", str(tiny_fp32.directory), "--client", "both",
         "--requests", "20", "--concurrency", "1,3", "--timeout-s", "240", "--perf-stability", "100",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "loadtest.json").read_text())
    assert data["client"] == "both"
    assert data["settings"]["shapes"] == {"q_len": 8, "k_len": [8, 8], "v_len": [8, 8]}  # the tiny contract's opt
    cells = {(r["client"], r["mode"], r["protocol"], r["concurrency"]) for r in data["runs"]}
    assert cells == {(cl, m, p, c) for cl in ("tritonclient", "perf_analyzer") for m in ("batching off", "batching on")
                     for p in ("grpc", "http") for c in (1, 3)}
    for run in data["runs"]:
        assert run["rps"] > 0 and run["requests"] >= 20 and run["errors"] == 0, run
        assert 0 < run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"]
        if run["mode"] == "batching off":
            assert run["mean_batch"] == 1.0
        else:
            assert 1.0 <= run["mean_batch"] <= 3.0
    targets = [t["target"] for t in data["targets"]]
    assert any(t.startswith("perf_analyzer: grpc p50") for t in targets) and any(t.startswith("tritonclient: grpc p50")
                                                                                  for t in targets), targets
    assert "client both" in result.stdout
