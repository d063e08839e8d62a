"""Exact dynamic batching around any runner: concurrent requests share one backend call, each gets its own answer.

A PerceiverLayer attends only to the context positions its mask marks True, so requests with different k/v
lengths can share a batch: k and v are padded to the group's longest with mask = False at the padding, and the
output, whose shape does not depend on k/v lengths, is split back per request. q has no mask, so only requests
with equal q_len (and dtype) are grouped. For a module whose exactness under padding is not known (a user's
module, one without a mask, or an output shaped by k/v lengths), only requests of identical shapes are grouped.

The knobs mean what Triton's dynamic batcher means by them: `max_batch_size`, `max_queue_delay_ms` (how long
the first request of a batch waits for company), `max_queue` (queued requests; past it a request is rejected at
once) and `timeout_ms` (a request not answered by then gets `DeadlineExceededError`).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..contract import IOContract, dim_terms
from ..errors import BatchFailedError, DeadlineExceededError, InputError, OverloadedError
from ..model.module_ref import OURS
from ..runtime.arrays import to_numpy
from ..runtime.base import Runner

LENGTH_AXES = ("k_len", "v_len")


@dataclass
class BatchStats:
    """What one backend call carried; passed to the `on_batch` observer (metrics)."""

    requests: int
    batch: int  # rows sent to the backend
    seconds: float  # the backend call
    padded: bool
    error: str | None = None
    assemble_seconds: float = 0.0  # concatenating and padding the inputs (Triton's compute_input)
    split_seconds: float = 0.0  # splitting the output per request (Triton's compute_output)
    queued_seconds: tuple[float, ...] = ()  # each request's wait from arrival to its batch's start


@dataclass(eq=False)  # compared by identity: its feeds are numpy arrays
class _Pending:
    feeds: dict[str, np.ndarray]
    sizes: dict[str, int]
    key: tuple
    future: asyncio.Future
    arrival: float = field(default_factory=time.monotonic)
    started: float | None = None  # when its batch began (monotonic)
    compute: tuple[float, float, float] = (0.0, 0.0, 0.0)  # its batch's assemble, backend call, split seconds

    @property
    def rows(self) -> int:
        return self.sizes["batch"]


def pads_exactly(runner: Runner) -> bool:
    """Whether k/v padding with a False mask leaves every request's output unchanged (our PerceiverLayer)."""
    contract = runner.contract
    if runner.manifest.model_class != OURS or "mask" not in contract.input_names:
        return False
    output_axes = {t for o in contract.outputs for d in o.dims for t in dim_terms(d)}
    return not output_axes & set(LENGTH_AXES)


class DynamicBatcher:
    """`await batcher.infer({"q": q, "k": k, "v": v, "mask": mask})` from many tasks; one backend call per batch.

    Use as `async with DynamicBatcher(runner, max_batch_size=8) as batcher: ...`, or `start()` / `close()`.
    Inputs are checked against the runner's contract before they are queued (`InputError` at once). A full
    queue raises `OverloadedError`, a closed batcher too; a request past `timeout_ms` raises
    `DeadlineExceededError`; a backend error fails only that batch's requests with `BatchFailedError`.
    """

    def __init__(self, runner: Runner, *, max_batch_size: int | None = None, max_queue_delay_ms: float = 0.0,
                 max_queue: int = 256, timeout_ms: float | None = None, pad: bool | None = None,
                 on_batch: Callable[[BatchStats], None] | None = None):
        contract = runner.contract
        batch_range = contract.axes["batch"]
        limit = batch_range.max if max_batch_size is None else max_batch_size
        if limit < 1:
            raise InputError(f"max_batch_size must be at least 1, got {limit}")
        if max_queue < 1:
            raise InputError(f"max_queue must be at least 1, got {max_queue}")
        self.runner = runner
        self.contract = contract
        # Never build a batch outside the contract's batch range.
        self.max_batch_size = min(limit, batch_range.max)
        self.max_queue_delay = max(0.0, max_queue_delay_ms) / 1e3
        self.max_queue = max_queue
        self.timeout = None if timeout_ms is None or timeout_ms <= 0 else timeout_ms / 1e3
        self.pad = pads_exactly(runner) if pad is None else pad
        self.on_batch = on_batch
        self._queue: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._in_flight = 0

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self) -> "DynamicBatcher":
        if self._worker is None:
            self._wakeup = asyncio.Event()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
            self._worker = asyncio.get_running_loop().create_task(self._run_forever(), name="dynamic-batcher")
        return self

    async def close(self) -> None:
        """Stop taking requests, answer every queued and in-flight one, then stop the worker."""
        self._closing = True
        if self._worker is not None:
            self._wakeup.set()
            await self._worker
            self._worker = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def fail_queued(self, reason: str) -> int:
        """Answer every request still waiting with `OverloadedError(reason)`; returns how many there were."""
        failed = 0
        for p in self._queue:
            if not p.future.done():
                p.future.set_exception(OverloadedError(reason))
                failed += 1
        self._queue = []
        return failed

    async def __aenter__(self) -> "DynamicBatcher":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not yet sent to the backend)."""
        return sum(1 for p in self._queue if not p.future.done())

    @property
    def accepting(self) -> bool:
        return not self._closing

    # ---- requests ---------------------------------------------------------------------------
    async def infer(self, feeds: Mapping[str, Any], timing: dict | None = None) -> np.ndarray:
        """The runner's answer for these inputs, computed in a batch with others where they fit.

        `timing`, when given, receives `queue_s` (how long the request waited for its batch to start) and
        `compute_input_s`, `compute_infer_s`, `compute_output_s` (its batch's assembly, backend call and split).
        """
        if self._closing:
            raise OverloadedError("shutting down: no new requests are taken")
        if self._worker is None:
            raise OverloadedError("the batcher is not running: use `async with DynamicBatcher(...)` or start()")
        feeds = {name: to_numpy(value) for name, value in feeds.items() if value is not None}
        sizes = self.contract.check_inputs(feeds)
        if self.queue_depth >= self.max_queue:
            raise OverloadedError(f"queue full: {self.max_queue} requests are waiting (max_queue {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        pending = _Pending(feeds, sizes, self._group_key(feeds, sizes), future)
        self._queue.append(pending)
        self._wakeup.set()
        try:
            if self.timeout is None:
                out = await asyncio.shield(future)
            else:
                out = await asyncio.wait_for(asyncio.shield(future), self.timeout)
            if timing is not None and pending.started is not None:
                timing["queue_s"] = pending.started - pending.arrival
                timing["compute_input_s"], timing["compute_infer_s"], timing["compute_output_s"] = pending.compute
            return out
        except asyncio.TimeoutError:
            # By identity: `in` would compare _Pending dataclasses field by field, numpy arrays included.
            queued = any(p is pending for p in self._queue)
            future.cancel()  # still queued: it will not run; already running: its answer is dropped
            raise DeadlineExceededError(
                f"no answer within the request timeout of {self.timeout * 1e3:g} ms "
                f"({'still queued' if queued else 'in a running batch'})"
            ) from None
        except asyncio.CancelledError:
            future.cancel()  # the caller went away (a client disconnected): its request does not run
            raise

    def _group_key(self, feeds: Mapping[str, np.ndarray], sizes: Mapping[str, int]) -> tuple:
        return batch_key(self.contract, feeds, sizes, self.pad)

    # ---- the worker -------------------------------------------------------------------------
    async def _run_forever(self) -> None:
        while True:
            self._drop_finished()
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            first = self._queue[0]
            deadline = first.arrival + self.max_queue_delay
            while not self._closing and self._rows_waiting(first.key) < self.max_batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = self._take(first.key)
            if batch:
                await self._execute(batch)

    def _drop_finished(self) -> None:
        self._queue = [p for p in self._queue if not p.future.done()]

    def _rows_waiting(self, key: tuple) -> int:
        return sum(p.rows for p in self._queue if p.key == key and not p.future.done())

    def _take(self, key: tuple) -> list[_Pending]:
        """Requests of one group in arrival order, up to max_batch_size rows; one larger request runs alone."""
        self._drop_finished()
        batch, rows = [], 0
        for p in self._queue:
            if p.key != key:
                continue
            if batch and rows + p.rows > self.max_batch_size:
                break
            batch.append(p)
            rows += p.rows
            if rows >= self.max_batch_size:
                break
        taken = set(map(id, batch))
        self._queue = [p for p in self._queue if id(p) not in taken]
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        for p in batch:
            p.started = began
        assemble_start = time.perf_counter()
        feeds, padded = self._assemble(batch)
        rows = sum(p.rows for p in batch)
        start = time.perf_counter()
        assemble_seconds = start - assemble_start
        split_seconds = 0.0
        self._in_flight += len(batch)
        error = None
        try:
            out = await loop.run_in_executor(self._executor, self.runner.infer, feeds)
        except Exception as e:  # noqa: BLE001 — any backend failure fails this batch only
            error = f"{type(e).__name__}: {e}"
            failure = e if isinstance(e, InputError) else BatchFailedError(
                f"the backend failed on a batch of {len(batch)} request(s): {error}")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(failure)
        else:
            seconds = time.perf_counter() - start
            parts = split_batch(out, [p.rows for p in batch])
            split_seconds = time.perf_counter() - start - seconds
            for p, part in zip(batch, parts):
                p.compute = (assemble_seconds, seconds, split_seconds)
                if not p.future.done():
                    p.future.set_result(part)
        finally:
            self._in_flight -= len(batch)
        if error is not None:
            seconds = time.perf_counter() - start
        if self.on_batch is not None:
            self.on_batch(BatchStats(len(batch), rows, seconds, padded, error, assemble_seconds, split_seconds,
                                     tuple(began - p.arrival for p in batch)))

    def _assemble(self, batch: list[_Pending]) -> tuple[dict[str, np.ndarray], bool]:
        return assemble_batch(self.contract, [p.feeds for p in batch], [p.sizes for p in batch], self.pad)


# ---- the padding, shared with Triton's Python backend (triton_python_model.py) ------------------------------
def batch_key(contract: IOContract, feeds: Mapping[str, np.ndarray], sizes: Mapping[str, int], pad: bool) -> tuple:
    """Requests with equal keys can share one backend call: padded, equal q_len and dtype; else identical shapes."""
    dtype = feeds[contract.inputs[0].name].dtype.str
    if pad:
        return (dtype, sizes["q_len"])
    return (dtype, *(sizes.get(a) for a in contract.axes if a != "batch"), tuple(sorted(feeds)))


def assemble_batch(contract: IOContract, feeds_list: Sequence[Mapping[str, np.ndarray]],
                   sizes_list: Sequence[Mapping[str, int]], pad: bool) -> tuple[dict[str, np.ndarray], bool]:
    """One set of feeds for the backend from checked requests of one `batch_key`, and whether any was padded.

    With `pad`, k and v are padded to the group's longest with the padding masked out (a request without a mask
    attends to all of its own positions); without it the requests must have identical shapes.
    """
    if len(feeds_list) == 1:
        return dict(feeds_list[0]), False
    names = [s.name for s in contract.inputs if s.name != "mask"]
    lengths = {a: max(s[a] for s in sizes_list) for a in LENGTH_AXES} if pad else {}
    padded = pad and any(s[a] != lengths[a] for s in sizes_list for a in LENGTH_AXES)
    feeds = {}
    for name in names:
        if name not in feeds_list[0]:
            continue
        axis = {"k": "k_len", "v": "v_len"}.get(name) if pad else None
        parts = [_pad_axis1(f[name], lengths[axis]) if axis else f[name] for f in feeds_list]
        feeds[name] = np.concatenate(parts, axis=0)
    if pad and (padded or any("mask" in f for f in feeds_list)):
        feeds["mask"] = np.concatenate([_padded_mask(f, s, lengths) for f, s in zip(feeds_list, sizes_list)], axis=0)
    elif "mask" in feeds_list[0]:
        feeds["mask"] = np.concatenate([f["mask"] for f in feeds_list], axis=0)
    return feeds, padded


def split_batch(out: np.ndarray, rows: Sequence[int]) -> list[np.ndarray]:
    """The backend's output split back per request (`rows` each), each part its own contiguous array."""
    start, parts = 0, []
    for n in rows:
        parts.append(np.ascontiguousarray(out[start:start + n]))
        start += n
    return parts


def _padded_mask(feeds: Mapping[str, np.ndarray], sizes: Mapping[str, int], lengths: Mapping[str, int]) -> np.ndarray:
    k, v = sizes["k_len"], sizes["v_len"]
    mask = feeds.get("mask")
    if mask is None:
        mask = np.ones((sizes["batch"], k + v), dtype=bool)  # no mask = attend to all of its own positions
    out = np.zeros((sizes["batch"], lengths["k_len"] + lengths["v_len"]), dtype=bool)
    out[:, :k] = mask[:, :k]
    out[:, lengths["k_len"]:lengths["k_len"] + v] = mask[:, k:]
    return out


def _pad_axis1(x: np.ndarray, length: int) -> np.ndarray:
    if x.shape[1] == length:
        return x
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, length - x.shape[1])
    return np.pad(x, pad)


__all__ = ["BatchStats", "DynamicBatcher", "assemble_batch", "batch_key", "pads_exactly", "split_batch"]
