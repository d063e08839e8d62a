"""`loadtest`: real servers (batching off and on) driven by tritonclient; a bounded run on the tiny artifact checks
the report's structure and numbers (never timings against a limit: those are the benchmark's to report)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_loadtest_reports_every_mode_protocol_and_concurrency(tiny_fp32, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "perceiver_export", "loadtest", str(tiny_fp32.directory), "--requests", "12",
         "--concurrency", "1,3", "--k-len", "1:24", "--v-len", "2:5", "--timeout-s", "300", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "loadtest.json").read_text())
    assert (tmp_path / "loadtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["settings"]["shapes"] == {"q_len": 8, "k_len": [1, 24], "v_len": [2, 5]}
    assert data["settings"]["max_batch_size"] == 4  # the tiny contract's batch max
    cells = {(r["mode"], r["protocol"], r["concurrency"]) for r in data["runs"]}
    assert cells == {(m, p, c) for m in ("batching off", "batching on") for p in ("grpc", "http") for c in (1, 3)}
    for run in data["runs"]:
        assert run["requests"] == 12 and run["errors"] == 0, run
        assert run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"]
        if run["mode"] == "batching off":
            assert run["mean_batch"] == 1.0
        else:
            assert 1.0 <= run["mean_batch"] <= 3.0  # at most as many as there are clients
        assert ("direct_p50_ms" in run) == (run["concurrency"] == 1)
    assert [t["target"].split(" ")[0] for t in data["targets"]][:2] == ["grpc", "http"]
    assert "direct runner p50" in result.stdout and "req/s" in result.stdout
