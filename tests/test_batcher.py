"""DynamicBatcher: padded batches are exact (hypothesis over request mixes), batches stay inside the contract,
and every request gets exactly one answer — its own, an error of its own, or its batch's backend error."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perceiver_export import runtime
from perceiver_export.errors import BatchFailedError, DeadlineExceededError, InputError, OverloadedError
from perceiver_export.serving.batcher import DynamicBatcher, pads_exactly
from perceiver_export.verify.compare import TOLERANCES

FP32 = TOLERANCES["float32"]
SERVING_DOC = Path(__file__).resolve().parent.parent / "docs" / "serving.md"


@pytest.fixture(scope="module")
def runner(tiny_fp32):
    return runtime.load(tiny_fp32.directory, graph="plain", threads=1)


def request(rng: np.random.Generator, batch: int, q: int, k: int, v: int, mask: str) -> dict:
    feeds = {"q": rng.standard_normal((batch, q, 32), dtype=np.float32),
             "k": rng.standard_normal((batch, k, 32), dtype=np.float32),
             "v": rng.standard_normal((batch, v, 32), dtype=np.float32)}
    if mask != "none":
        m = rng.random((batch, k + v)) < 0.6
        if mask == "all-true":
            m[:] = True
        elif mask == "row-masked":
            m[0] = False  # a fully-masked row: the layer zeroes its cross-attention
        feeds["mask"] = m
    return feeds


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(np.abs(a - b) <= FP32.atol + FP32.rtol * np.abs(b)))


requests_st = st.lists(
    st.tuples(st.integers(1, 2), st.sampled_from([1, 8, 16]), st.integers(1, 24), st.integers(1, 24),
              st.sampled_from(["none", "random", "all-true", "row-masked"]), st.floats(0, 3)),
    min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mix=requests_st, max_batch=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_every_batched_answer_equals_the_request_run_alone(runner, mix, max_batch, seed):
    rng = np.random.default_rng(seed)
    feeds = [request(rng, b, q, k, v, m) for b, q, k, v, m, _ in mix]
    delays = [d / 1e3 for *_, d in mix]  # arrival order and spacing vary
    stats = []

    async def main():
        async with DynamicBatcher(runner, max_batch_size=max_batch, max_queue_delay_ms=2, on_batch=stats.append) as b:
            async def one(f, delay):
                await asyncio.sleep(delay)
                return await b.infer(f)

            return await asyncio.gather(*(one(f, d) for f, d in zip(feeds, delays)))

    outs = asyncio.run(main())
    for f, out in zip(feeds, outs):
        alone = runner.infer(f)
        assert out.shape == alone.shape
        assert close(out, alone), float(np.abs(out - alone).max())
    assert sum(s.requests for s in stats) == len(feeds)  # one answer each, no request run twice
    assert all(s.batch <= max(max_batch, max(f["q"].shape[0] for f in feeds)) for s in stats)


def test_padding_is_exact_across_lengths_1_to_24(runner):
    """Four requests with k, v lengths from 1 to 24 in one padded batch, each equal to itself run alone."""
    rng = np.random.default_rng(0)
    feeds = [request(rng, 1, 8, k, v, "none") for k, v in ((1, 24), (24, 1), (7, 13), (24, 24))]
    stats = []

    async def main():
        async with DynamicBatcher(runner, max_batch_size=4, max_queue_delay_ms=50, on_batch=stats.append) as b:
            return await asyncio.gather(*(b.infer(f) for f in feeds))

    outs = asyncio.run(main())
    assert [(s.requests, s.batch, s.padded) for s in stats] == [(4, 4, True)]
    worst = max(float(np.abs(o - runner.infer(f)).max()) for o, f in zip(outs, feeds))
    assert worst < 1e-5


def test_only_equal_q_len_shares_a_batch(runner):
    rng = np.random.default_rng(1)
    feeds = [request(rng, 1, q, 4, 4, "none") for q in (8, 16, 8, 16, 1)]
    stats = []

    async def main():
        async with DynamicBatcher(runner, max_batch_size=4, max_queue_delay_ms=50, on_batch=stats.append) as b:
            return await asyncio.gather(*(b.infer(f) for f in feeds))

    asyncio.run(main())
    assert sorted(s.requests for s in stats) == [1, 2, 2]


def test_batches_stay_inside_the_contract_and_a_large_request_runs_alone(runner):
    """The contract's batch max (4) caps max_batch_size; a request of 3 rows never joins one of 2."""
    rng = np.random.default_rng(2)
    feeds = [request(rng, b, 8, 24, 24, "random") for b in (3, 2, 2, 1, 4)]
    stats = []

    async def main():
        async with DynamicBatcher(runner, max_batch_size=64, max_queue_delay_ms=50, on_batch=stats.append) as b:
            assert b.max_batch_size == 4
            return await asyncio.gather(*(b.infer(f) for f in feeds))

    outs = asyncio.run(main())
    assert all(s.batch <= 4 for s in stats)
    assert [s.batch for s in stats] == [3, 4, 1, 4]  # in arrival order: 3 (+2 would be 5) | 2+2 | 1 (+4) | 4
    for f, o in zip(feeds, outs):
        assert close(o, runner.infer(f))


def test_bad_input_is_refused_before_it_is_queued(runner):
    rng = np.random.default_rng(3)
    bad = request(rng, 1, 8, 4, 4, "none")
    bad["v"] = bad["v"][:, :, :16]

    async def main():
        async with DynamicBatcher(runner) as b:
            with pytest.raises(InputError, match=re.escape("input 'v': expected size 32 on axis 2")):
                await b.infer(bad)
            assert b.queue_depth == 0

    asyncio.run(main())


def test_full_queue_timeouts_backend_errors_and_closing_each_answer_once(runner):
    """max_queue, timeout_ms, a batch whose backend call fails, and a closed batcher: typed errors, and every
    other request still gets its own correct answer."""
    rng = np.random.default_rng(4)
    good = [request(rng, 1, 8, 8, 8, "none") for _ in range(6)]

    class Flaky:
        """The runner, failing on any batch that contains a q starting with 999."""

        def __init__(self, inner):
            self.inner, self.contract, self.manifest = inner, inner.contract, inner.manifest

        def infer(self, feeds):
            if (feeds["q"][:, 0, 0] == 999).any():
                raise RuntimeError("simulated backend failure")
            return self.inner.infer(feeds)

    async def main():
        async with DynamicBatcher(Flaky(runner), max_batch_size=1, max_queue=3, max_queue_delay_ms=0) as b:
            poisoned = dict(good[0], q=good[0]["q"].copy())
            poisoned["q"][0, 0, 0] = 999
            results = await asyncio.gather(*(b.infer(f) for f in [poisoned, *good]), return_exceptions=True)
        assert isinstance(results[0], BatchFailedError) and "simulated backend failure" in str(results[0])
        served = [r for r in results[1:] if isinstance(r, np.ndarray)]
        full = [r for r in results[1:] if isinstance(r, OverloadedError)]
        assert len(served) + len(full) == len(good)  # every request answered exactly once
        assert len(full) >= 1 and "queue full" in str(full[0])
        for f, r in zip(good, results[1:]):
            if isinstance(r, np.ndarray):
                assert close(r, runner.infer(f))
        with pytest.raises(OverloadedError, match="shutting down"):
            await b.infer(good[0])

        async with DynamicBatcher(runner, max_batch_size=1, timeout_ms=0.001) as b:
            with pytest.raises(DeadlineExceededError, match="request timeout of 0.001 ms"):
                await b.infer(request(rng, 4, 16, 24, 24, "none"))

    asyncio.run(main())


def test_pads_only_where_padding_is_known_to_be_exact(runner, tmp_path):
    from perceiver_export.config import load_spec
    from perceiver_export.export.artifact_builder import export_artifact

    assert pads_exactly(runner)
    spec = load_spec("perceiver-tiny").with_module("tests.user_layers:NoMask", {"dim": 32})
    user = runtime.load(export_artifact(spec, tmp_path / "a", verify=False, optimize=False).directory)
    assert not pads_exactly(user)
    rng = np.random.default_rng(5)
    feeds = [{k: v for k, v in request(rng, 1, 8, k, 4, "none").items()} for k in (4, 5, 4)]
    stats = []

    async def main():
        async with DynamicBatcher(user, max_batch_size=4, max_queue_delay_ms=50, on_batch=stats.append) as b:
            return await asyncio.gather(*(b.infer(f) for f in feeds))

    asyncio.run(main())
    assert sorted(s.requests for s in stats) == [1, 2]  # identical shapes only


def test_readme_example_runs(tiny_fp32, monkeypatch, capsys):
    """The serving page's embedding example, run as written (on the tiny artifact instead of perceiver-base)."""
    text = SERVING_DOC.read_text()
    block = re.search(r"<!-- batcher-example -->\n```python\n(.*?)```", text, re.S).group(1)
    code = block.replace("artifacts/perceiver-base", str(tiny_fp32.directory)).replace("512", "32")
    exec(compile(code, "docs-serving-batcher-example", "exec"), {"__name__": "__main__"})
    assert "answers: 16" in capsys.readouterr().out
