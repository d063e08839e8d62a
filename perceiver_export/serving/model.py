"""The one model `serve` serves: its runner behind a `DynamicBatcher`, loaded and unloaded under the server's
model control mode (Triton's `--model-control-mode`: `none`, the default, refuses load and unload; `explicit`
allows them), with every inference counted once in the metrics and Triton's statistics."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..artifact.manifest import read_manifest
from ..contract import IOContract
from ..errors import (BatchFailedError, DeadlineExceededError, InputError, ModelControlError, ModelNotFoundError,
                      OverloadedError, ServingError)
from ..runtime.base import Runner
from .batcher import BatchStats, DynamicBatcher

MODEL_VERSION = "1"
CONTROL_MODES = ("none", "explicit")
# The metrics' status label of each way a valid request can go unanswered.
STATUS_LABEL = {OverloadedError: "unavailable", DeadlineExceededError: "deadline_exceeded", BatchFailedError: "internal"}


class ServedModel:
    """Name, version and contract (known while unloaded too), and the runner and batcher while loaded."""

    def __init__(self, directory: str | Path, name: str | None, control_mode: str,
                 load_runner: Callable[[], Runner], make_batcher: Callable[[Runner, Callable], DynamicBatcher],
                 metrics, statistics=None, platform: str = ""):
        if control_mode not in CONTROL_MODES:
            raise ModelControlError(f"--model-control-mode must be one of {', '.join(CONTROL_MODES)}, got {control_mode!r}")
        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        self.name = name or manifest.data["name"]
        self.contract: IOContract = manifest.contract
        self.control_mode = control_mode
        self.platform = platform
        self.metrics = metrics
        self.statistics = statistics
        self._load_runner = load_runner
        self._make_batcher = make_batcher
        self.runner: Runner | None = None
        self.batcher: DynamicBatcher | None = None
        self.serving = True  # False from SIGTERM on: readiness false, new requests refused
        self._lock = asyncio.Lock()

    # ---- identity ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.serving and self.batcher is not None and self.batcher.accepting

    @property
    def max_batch_size(self) -> int:
        return self.batcher.max_batch_size if self.batcher else self.contract.axes["batch"].max

    def check(self, name: str, version: str | None) -> None:
        """`ModelNotFoundError` unless `name` (and `version`: empty or None = the latest) is this model."""
        if name != self.name:
            raise ModelNotFoundError(f"Model with name {name} does not exist.")
        if version not in (None, "", MODEL_VERSION):
            raise ModelNotFoundError(f"Model with name {name} version {version} does not exist "
                                     f"(this server serves version {MODEL_VERSION}).")

    # ---- model control ----------------------------------------------------------------------
    def _allowed(self, action: str) -> None:
        if self.control_mode != "explicit":
            raise ModelControlError(
                f"cannot {action} model {self.name!r}: model control is off (the server was started with "
                f"--model-control-mode {self.control_mode}); start serve with --model-control-mode explicit to "
                "load and unload models")

    async def load(self, initial: bool = False) -> None:
        """Load the artifact (again: its files are re-checked), then serve through a fresh batcher."""
        if not initial:
            self._allowed("load")
        async with self._lock:
            runner = await asyncio.to_thread(self._load_runner) if not initial else self._load_runner()
            batcher = self._make_batcher(runner, self._on_batch)
            await batcher.start()
            old = self.batcher
            self.runner, self.batcher = runner, batcher
            if old is not None:
                await old.close()  # answers what it had, then goes
        logging.getLogger("perceiver_export").info("model %s loaded", self.name)

    async def unload(self) -> None:
        """Stop taking requests, answer the queued and in-flight ones, then release the runner."""
        self._allowed("unload")
        async with self._lock:
            batcher, self.batcher = self.batcher, None
            if batcher is not None:
                await batcher.close()
            self.runner = None
        logging.getLogger("perceiver_export").info("model %s unloaded", self.name)

    def repository_index(self) -> list[dict]:
        """Triton's repository index entry for this model."""
        state = "READY" if self.ready else "UNAVAILABLE"
        entry = {"name": self.name, "version": MODEL_VERSION, "state": state}
        if not self.ready:
            entry["reason"] = "unloaded" if self.serving else "shutting down"
        return [entry]

    # ---- inference --------------------------------------------------------------------------
    async def infer(self, feeds: Mapping[str, np.ndarray], protocol: str) -> dict[str, np.ndarray]:
        """Run decoded inputs through the batcher; every outcome is counted once, in metrics and statistics."""
        start = time.perf_counter()
        status = "ok"
        timing: dict[str, Any] = {}
        try:
            batcher = self.batcher
            if not self.serving:
                raise OverloadedError("shutting down: no new requests are taken")
            if batcher is None:
                raise OverloadedError(f"model {self.name!r} is unloaded: load it with "
                                      f"POST /v2/repository/models/{self.name}/load")
            out = await batcher.infer(feeds, timing)
            return {self.contract.outputs[0].name: out}
        except InputError:
            status = "invalid_argument"
            raise
        except ServingError as e:
            status = STATUS_LABEL.get(type(e), "internal")
            raise
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(self.name, protocol, status).inc()
            self.metrics.latency.labels(self.name, protocol).observe(elapsed)
            if self.statistics is not None:
                ns = {k: int(v * 1e9) for k, v in timing.items()}
                if status == "ok":
                    self.statistics.record_success(ns.get("queue_s", 0), ns.get("compute_input_s", 0),
                                                   ns.get("compute_infer_s", 0), ns.get("compute_output_s", 0),
                                                   int(elapsed * 1e9), rows=int(feeds[self.contract.inputs[0].name].shape[0]))
                else:
                    self.statistics.record_failure(int(elapsed * 1e9))

    def _on_batch(self, stats: BatchStats) -> None:
        self.metrics.batch_size.labels(self.name).observe(stats.batch)
        self.metrics.batch_requests.labels(self.name).observe(stats.requests)
        self.metrics.batch_seconds.labels(self.name).observe(stats.seconds)
        if self.statistics is not None and stats.error is None:
            self.statistics.record_batch(stats.batch, int(stats.assemble_seconds * 1e9), int(stats.seconds * 1e9),
                                         int(stats.split_seconds * 1e9))


__all__ = ["CONTROL_MODES", "MODEL_VERSION", "ServedModel"]
