"""Inference statistics in Triton's form: the counters add up as Triton's do, and the body reads back with
Triton's own grpc_service.proto (as tritonclient and perf_analyzer read it)."""

import json
import threading
import time

from google.protobuf import json_format
from tritonclient.grpc import service_pb2

from perceiver_export.serving.statistics import InferenceStatistics


def recorded() -> InferenceStatistics:
    stats = InferenceStatistics("tiny")
    # Two requests (2 rows and 1 row) batched into one call of 3 rows, then one request alone, then a failure.
    stats.record_batch(3, 1_000, 50_000, 2_000)
    stats.record_success(400_000, 600, 30_000, 1_200, 500_000, rows=2, now_ms=1_700_000_000_000)
    stats.record_success(100_000, 400, 20_000, 800, 200_000, rows=1, now_ms=1_700_000_000_001)
    stats.record_batch(1, 300, 10_000, 500)
    stats.record_success(0, 300, 10_000, 500, 20_000, rows=1, now_ms=1_700_000_000_009)
    stats.record_failure(7_000)
    return stats


def test_counters_add_up_as_tritons():
    body = recorded().as_json()
    assert body == {"model_stats": [{
        "name": "tiny", "version": "1", "last_inference": 1_700_000_000_009,
        "inference_count": 4, "execution_count": 2,
        "inference_stats": {
            "success": {"count": 3, "ns": 720_000}, "fail": {"count": 1, "ns": 7_000},
            "queue": {"count": 3, "ns": 500_000}, "compute_input": {"count": 3, "ns": 1_300},
            "compute_infer": {"count": 3, "ns": 60_000}, "compute_output": {"count": 3, "ns": 2_500},
            "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0},
        },
        "batch_stats": [
            {"batch_size": 1, "compute_input": {"count": 1, "ns": 300}, "compute_infer": {"count": 1, "ns": 10_000},
             "compute_output": {"count": 1, "ns": 500}},
            {"batch_size": 3, "compute_input": {"count": 1, "ns": 1_000}, "compute_infer": {"count": 1, "ns": 50_000},
             "compute_output": {"count": 1, "ns": 2_000}},
        ],
        "memory_usage": [],
    }]}
    assert '"last_inference": 1700000000009' in json.dumps(body)  # numbers, not strings


def test_body_reads_back_with_tritons_proto():
    response = json_format.ParseDict(recorded().as_json(), service_pb2.ModelStatisticsResponse())
    (model,) = response.model_stats
    assert (model.name, model.version, model.inference_count, model.execution_count) == ("tiny", "1", 4, 2)
    assert model.inference_stats.success.count == 3 and model.inference_stats.queue.ns == 500_000
    assert [(b.batch_size, b.compute_infer.ns) for b in model.batch_stats] == [(1, 10_000), (3, 50_000)]


def test_fresh_statistics_are_zero_and_last_inference_is_the_clock():
    stats = InferenceStatistics("m", "2")
    first = stats.model_stats()
    assert (first["version"], first["last_inference"], first["inference_count"], first["batch_stats"]) == ("2", 0, 0, [])
    before = int(time.time() * 1000)
    stats.record_success(1, 1, 1, 1, 4)
    assert before <= stats.model_stats()["last_inference"] <= int(time.time() * 1000)


def test_two_threads_recording_lose_nothing():
    stats = InferenceStatistics("m")

    def requests():
        for _ in range(5_000):
            stats.record_success(10, 1, 2, 3, 20)

    def batches():
        for _ in range(5_000):
            stats.record_batch(2, 1, 2, 3)

    threads = [threading.Thread(target=requests), threading.Thread(target=batches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    s = stats.model_stats()
    assert s["inference_count"] == 5_000 and s["inference_stats"]["success"] == {"count": 5_000, "ns": 100_000}
    assert s["execution_count"] == 5_000 and s["batch_stats"][0]["compute_output"] == {"count": 5_000, "ns": 15_000}
