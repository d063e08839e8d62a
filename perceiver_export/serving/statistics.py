"""Per-model inference statistics in the form and with the names of Triton's statistics extension, so that
perf_analyzer and tritonclient's `get_inference_statistics` read `serve` as they read Triton.

The meanings are Triton's (grpc_service.proto `ModelStatistics`): `inference_count` counts rows (each inference in
a batched request is one), `execution_count` backend calls; `inference_stats.success` is each answered request's
time in the server, `fail` each failed one's; `queue` and `compute_*` are the successful requests' time waiting for
a batch and their share of its input, run and output phases; `batch_stats` are per backend-call batch size. Times
are cumulative nanoseconds with a count (`StatisticDuration`); `last_inference` is milliseconds since the epoch.
"""

from __future__ import annotations

import threading
import time

PHASES = ("compute_input", "compute_infer", "compute_output")
REQUEST_STATS = ("success", "fail", "queue", *PHASES, "cache_hit", "cache_miss")


def _duration() -> dict:
    return {"count": 0, "ns": 0}


def _add(duration: dict, ns: int) -> None:
    duration["count"] += 1
    duration["ns"] += max(0, int(ns))


class InferenceStatistics:
    """One model version's counters. Recorded from the asyncio loop and the batcher's executor thread: every
    method takes one lock, so a snapshot never sees a request half counted."""

    def __init__(self, name: str, version: str = "1"):
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        self._last_inference_ms = 0
        self._inference_count = 0
        self._execution_count = 0
        self._request = {k: _duration() for k in REQUEST_STATS}
        self._batches: dict[int, dict[str, dict]] = {}

    def record_success(self, queue_ns: int, compute_input_ns: int, compute_infer_ns: int, compute_output_ns: int,
                       total_ns: int, *, rows: int = 1, now_ms: int | None = None) -> None:
        """An answered request of `rows` inferences: its time queued, in each compute phase, and in the server."""
        with self._lock:
            _add(self._request["success"], total_ns)
            _add(self._request["queue"], queue_ns)
            for phase, ns in zip(PHASES, (compute_input_ns, compute_infer_ns, compute_output_ns)):
                _add(self._request[phase], ns)
            self._inference_count += int(rows)
            self._last_inference_ms = int(time.time() * 1000) if now_ms is None else int(now_ms)

    def record_failure(self, total_ns: int) -> None:
        """A request answered with an error (invalid input, queue full, timeout, a failed batch)."""
        with self._lock:
            _add(self._request["fail"], total_ns)

    def record_batch(self, batch_size: int, compute_input_ns: int, compute_infer_ns: int, compute_output_ns: int) -> None:
        """One backend call of `batch_size` rows and its three phases."""
        with self._lock:
            self._execution_count += 1
            entry = self._batches.setdefault(int(batch_size), {p: _duration() for p in PHASES})
            for phase, ns in zip(PHASES, (compute_input_ns, compute_infer_ns, compute_output_ns)):
                _add(entry[phase], ns)

    def model_stats(self) -> dict:
        """This model's entry of `model_stats`, as Triton writes it in JSON (integers as numbers)."""
        with self._lock:
            return {
                "name": self.name,
                "version": self.version,
                "last_inference": self._last_inference_ms,
                "inference_count": self._inference_count,
                "execution_count": self._execution_count,
                "inference_stats": {k: dict(v) for k, v in self._request.items()},
                "batch_stats": [{"batch_size": size, **{p: dict(d) for p, d in entry.items()}}
                                for size, entry in sorted(self._batches.items())],
                "memory_usage": [],
            }

    def as_json(self) -> dict:
        """Triton's REST body for `GET /v2/models/NAME[/versions/V]/stats` (and gRPC's ModelStatisticsResponse)."""
        return {"model_stats": [self.model_stats()]}


__all__ = ["InferenceStatistics"]
