"""Token-aware batching of paddable (text) requests: grouping by length, the token budget, the
oldest request anchoring each batch, and padding/trimming of arrays."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from ortserve.batching import Batch, BatchPolicy, DynamicBatcher, split_outputs, stack_feeds
from tests.unit.test_batcher import BOUND_S


class Recorder:
    """run_batch that records the lengths in each batch; the first batch waits for a gate."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.first = asyncio.Event()

    async def __call__(self, batch: Batch[int]) -> Sequence[int]:
        self.batches.append(list(batch.payloads))
        if len(self.batches) == 1:
            self.first.set()
            await self.gate.wait()
        return list(batch.payloads)


async def _run(policy: BatchPolicy, lengths: list[int], grouping: bool = True) -> list[list[int]]:
    """One blocker occupies the runner; then ``lengths`` queue and are batched in one go."""
    model = Recorder()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(model, policy)
    batcher.start()
    async with asyncio.timeout(BOUND_S):
        blocker = asyncio.ensure_future(batcher.submit(0, length=1))
        await model.first.wait()
        tasks = [asyncio.ensure_future(batcher.submit(n, length=n)) for n in lengths]
        await asyncio.sleep(0)  # let every submit queue before the runner looks again
        model.gate.set()
        await asyncio.gather(blocker, *tasks)
    await batcher.aclose()
    return model.batches[1:]


async def test_similar_lengths_batch_together() -> None:
    policy = BatchPolicy(max_batch_size=3)
    batches = await _run(policy, [5, 100, 6, 98, 7, 99])
    # The oldest (5) anchors the first batch, which takes the nearest lengths.
    assert batches == [[5, 6, 7], [100, 99, 98]]


async def test_arrival_order_when_grouping_is_off() -> None:
    policy = BatchPolicy(max_batch_size=3, group_by_length=False)
    assert await _run(policy, [5, 100, 6, 98, 7, 99]) == [[5, 100, 6], [98, 7, 99]]


async def test_token_budget_bounds_padded_cost() -> None:
    policy = BatchPolicy(max_batch_size=8, max_batch_tokens=200)
    batches = await _run(policy, [10, 10, 90, 10, 10, 10])
    for batch in batches:
        assert max(batch) * len(batch) <= 200
    assert sorted(n for b in batches for n in b) == [10, 10, 10, 10, 10, 90]
    assert batches[0] == [10, 10, 10, 10, 10]  # the long one does not pad the short ones


async def test_the_oldest_request_always_goes_even_if_it_is_long() -> None:
    policy = BatchPolicy(max_batch_size=2, max_batch_tokens=100)
    batches = await _run(policy, [90, 5, 5, 5])
    assert batches[0][0] == 90


def test_stack_pads_to_the_longest_and_split_trims_back() -> None:
    a = {"input_ids": np.array([[1, 2, 3]]), "attention_mask": np.ones((1, 3), np.int64)}
    b = {"input_ids": np.array([[4], [5]]), "attention_mask": np.ones((2, 1), np.int64)}
    stacked = stack_feeds([a, b], {"input_ids": 0})
    np.testing.assert_array_equal(stacked["input_ids"], [[1, 2, 3], [4, 0, 0], [5, 0, 0]])
    np.testing.assert_array_equal(stacked["attention_mask"], [[1, 1, 1], [1, 0, 0], [1, 0, 0]])
    hidden = np.arange(3 * 3 * 2).reshape(3, 3, 2)
    pooled = np.arange(3 * 4).reshape(3, 4)
    first, second = split_outputs({"h": hidden, "p": pooled}, [1, 2], [3, 1], {"h"})
    assert first["h"].shape == (1, 3, 2)
    assert second["h"].shape == (2, 1, 2)
    np.testing.assert_array_equal(second["h"], hidden[1:, :1])
    assert second["p"].shape == (2, 4)


def test_policy_rejects_a_negative_token_budget() -> None:
    with pytest.raises(ValueError, match="max_batch_tokens"):
        BatchPolicy(max_batch_size=2, max_batch_tokens=-1)
