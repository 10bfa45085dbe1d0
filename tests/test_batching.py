"""DynamicBatcher: batches form when the model is free, full under load, and no caller is lost."""

from __future__ import annotations

import asyncio

import pytest

from deployments.batching import DynamicBatcher


class SlowModel:
    """Records each batch; takes ``seconds`` per batch without using the CPU (like a model on a GPU)."""

    def __init__(self, seconds: float = 0.05, fail_on: int | None = None):
        self.seconds = seconds
        self.fail_on = fail_on
        self.batches: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [item * 10 for item in items]


def run(coro):
    return asyncio.run(coro)


def test_calls_queued_while_the_model_runs_form_one_full_batch():
    model = SlowModel(seconds=0.05)

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=16, wait_timeout_s=0.005)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.02)  # the first batch (item 0 alone) is running now
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 33)]
        await asyncio.sleep(0.001)
        return await asyncio.gather(first, *rest)

    results = run(scenario())
    assert results == [i * 10 for i in range(33)]
    # @serve.batch would run 1 + 32 batches of one here; the batcher runs 1 + 16 + 16.
    assert [len(b) for b in model.batches] == [1, 16, 16]
    assert [i for b in model.batches for i in b] == list(range(33))  # arrival order kept


def test_a_lone_call_waits_at_most_the_timeout_for_company():
    model = SlowModel(seconds=0.0)

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=8, wait_timeout_s=0.05)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit(2))  # within the first call's 50 ms: same batch
        await asyncio.sleep(0.1)
        third = await batcher.submit(3)  # alone, after the timeout
        return await first, await second, third

    assert run(scenario()) == (10, 20, 30)
    assert model.batches == [[1, 2], [3]]


def test_a_failing_batch_fails_its_callers_only():
    model = SlowModel(seconds=0.02, fail_on=2)

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=2, wait_timeout_s=0.01)
        calls = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3, 4)]
        return await asyncio.gather(*calls, return_exceptions=True)

    first, second, third, fourth = run(scenario())
    assert isinstance(first, ValueError) and isinstance(second, ValueError)
    assert (third, fourth) == (30, 40)
    assert model.batches == [[1, 2], [3, 4]]


def test_cancelled_callers_are_left_out_of_the_next_batch():
    model = SlowModel(seconds=0.05)

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=8, wait_timeout_s=0.001)
        running = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.001)
        assert batcher.queued == 3
        waiting[1].cancel()  # e.g. the ingress timed out on this call
        results = await asyncio.gather(running, *waiting, return_exceptions=True)
        return results, batcher.queued

    (zero, one, two, three), queued = run(scenario())
    assert (zero, one, three) == (0, 10, 30)
    assert isinstance(two, asyncio.CancelledError)
    assert model.batches == [[0], [1, 3]]
    assert queued == 0


def test_wrong_number_of_results_is_an_error_for_the_callers():
    async def broken(items: list[int]) -> list[int]:
        return items[:-1]

    async def scenario():
        batcher = DynamicBatcher(broken, max_batch_size=4, wait_timeout_s=0.01)
        return await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)

    errors = run(scenario())
    assert all(isinstance(e, RuntimeError) and "1 results for 2 items" in str(e) for e in errors)


def test_configure_changes_the_next_batches_and_refuses_nonsense():
    model = SlowModel(seconds=0.02)

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=8, wait_timeout_s=0.01)
        batcher.configure(max_batch_size=2, wait_timeout_s=0.01)
        return await asyncio.gather(*(batcher.submit(i) for i in range(5)))

    assert run(scenario()) == [0, 10, 20, 30, 40]
    assert [len(b) for b in model.batches] == [2, 2, 1]
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(model).configure(max_batch_size=0, wait_timeout_s=0.01)
