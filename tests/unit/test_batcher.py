"""The dynamic batcher, through its public API, with a fake model gated by events.

No test sleeps to synchronize: a fake ``run_batch`` holds each batch until the test opens its
gate, and ``settle`` only yields to the loop (no clock) until a condition holds. Timeouts are
generous bounds so that a bug fails the test instead of hanging it; no time is asserted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ortserve.batching import (
    Batch,
    BatchPolicy,
    DynamicBatcher,
    QueuePolicy,
    decide,
    feed_rows,
    policy_from_config,
    shape_key,
    split_outputs,
    stack_feeds,
)
from ortserve.errors import ConfigError, DeadlineExpired, InvalidInput, ModelNotReady, Overloaded
from ortserve_client.proto import model_config_pb2 as mc

Array = npt.NDArray[Any]
BOUND_S = 30.0  # a bound on waits that should end at once: only a bug gets near it
LONG_DELAY_US = 60_000_000  # a batching window that a passing test never waits out


class FakeModel:
    """``run_batch`` that records each batch and, while ``hold`` is set, waits for a gate."""

    def __init__(self, fail_with: list[BaseException | None] | None = None) -> None:
        self.batches: list[list[str]] = []
        self.rows: list[int] = []
        self.started: asyncio.Queue[list[str]] = asyncio.Queue()
        self.gates: list[asyncio.Event] = []
        self.hold = False
        self.fail_with = fail_with or []
        self.wrong_count = False

    async def __call__(self, batch: Batch[str]) -> Sequence[str]:
        names = batch.payloads
        self.batches.append(names)
        self.rows.append(batch.rows)
        gate = asyncio.Event()
        self.gates.append(gate)
        self.started.put_nowait(names)
        if self.hold:
            await gate.wait()
        if self.fail_with:
            exc = self.fail_with.pop(0)
            if exc is not None:
                raise exc
        if self.wrong_count:
            return []
        return [f"done:{name}" for name in names]

    async def next_batch(self) -> list[str]:
        async with asyncio.timeout(BOUND_S):
            return await self.started.get()

    def release_all(self) -> None:
        self.hold = False
        for gate in self.gates:
            gate.set()


async def settle(condition: Callable[[], bool]) -> None:
    """Yield to the loop (no clock involved) until ``condition`` holds."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def make(model: FakeModel, runners: int = 1, **policy: Any) -> DynamicBatcher[str, str]:
    policy.setdefault("max_batch_size", 8)
    return DynamicBatcher(model, BatchPolicy(**policy), runners=runners, name="model 'm' v1")


@pytest.fixture
async def model() -> AsyncIterator[FakeModel]:
    fake = FakeModel()
    yield fake
    fake.release_all()


async def bounded(*aws: Any) -> list[Any]:
    async with asyncio.timeout(BOUND_S):
        return list(await asyncio.gather(*aws, return_exceptions=True))


def submit(batcher: DynamicBatcher[str, str], name: str, **kwargs: Any) -> asyncio.Task[str]:
    return asyncio.create_task(batcher.submit(name, **kwargs))


async def busy(batcher: DynamicBatcher[str, str], model: FakeModel) -> asyncio.Task[str]:
    """Occupy the (single) runner with a held batch of one request."""
    model.hold = True
    task = submit(batcher, "busy")
    assert await model.next_batch() == ["busy"]
    return task


# --- the rule, on plain numbers ------------------------------------------------------------


def test_decide_sends_full_batches_at_once() -> None:
    policy = BatchPolicy(max_batch_size=4, max_queue_delay_microseconds=1_000_000)
    assert decide(policy, [2, 2], True, oldest_arrival=10.0, now=10.0).take == 2
    # a compatible request that does not fit: waiting cannot grow the batch
    assert decide(policy, [3], False, oldest_arrival=10.0, now=10.0).take == 1


def test_decide_waits_from_the_oldest_arrival() -> None:
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_microseconds=500_000)
    decision = decide(policy, [1, 1], True, oldest_arrival=10.0, now=10.2)
    assert decision.take == 0
    assert decision.wake_at == pytest.approx(10.5)
    assert decide(policy, [1, 1], True, oldest_arrival=10.0, now=10.5).take == 2
    assert decide(policy, [], True, oldest_arrival=10.0, now=11.0).take == 0


def test_decide_without_delay_sends_what_there_is() -> None:
    policy = BatchPolicy(max_batch_size=8)
    assert decide(policy, [1, 2], True, oldest_arrival=10.0, now=10.0).take == 2


def test_decide_preferred_sizes() -> None:
    policy = BatchPolicy(
        max_batch_size=8, preferred_batch_sizes=(2, 4), max_queue_delay_microseconds=1_000_000
    )
    assert decide(policy, [1, 1], True, 10.0, 10.0).take == 2
    # the longest prefix on a preferred size goes; the rest waits its turn
    assert decide(policy, [1, 1, 1], True, 10.0, 10.0).take == 2
    assert decide(policy, [2, 1, 1, 1], True, 10.0, 10.0).take == 3
    # past the largest preferred size: send it all
    assert decide(policy, [3, 2], True, 10.0, 10.0).take == 2
    # below every preferred size: wait for the window, then send what there is
    assert decide(policy, [1], True, 10.0, 10.0).take == 0
    assert decide(policy, [1], True, 10.0, 11.0).take == 1


def test_queue_policy_deadline_takes_the_earliest_that_applies() -> None:
    strict = QueuePolicy(default_timeout_microseconds=2_000_000)
    assert strict.deadline(10.0) == pytest.approx(12.0)
    # no override: the request's own timeout is ignored
    assert strict.deadline(10.0, timeout_microseconds=500_000) == pytest.approx(12.0)
    assert strict.deadline(10.0, deadline=11.0) == pytest.approx(11.0)
    lenient = QueuePolicy(default_timeout_microseconds=2_000_000, allow_timeout_override=True)
    assert lenient.deadline(10.0, timeout_microseconds=500_000) == pytest.approx(10.5)
    # an override may shorten the default, never lengthen it
    assert lenient.deadline(10.0, timeout_microseconds=5_000_000) == pytest.approx(12.0)
    assert QueuePolicy().deadline(10.0) is None
    assert QueuePolicy(allow_timeout_override=True).deadline(10.0, 1_000_000) == 11.0


def test_policy_rejects_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="preferred_batch_size 16"):
        BatchPolicy(max_batch_size=8, preferred_batch_sizes=(16,))
    with pytest.raises(ValueError, match="default_priority_level"):
        BatchPolicy(max_batch_size=8, priority_levels=2)
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchPolicy(max_batch_size=0)


def test_policy_from_config() -> None:
    config = mc.ModelConfig(max_batch_size=16)
    config.dynamic_batching.preferred_batch_size.extend([4, 8])
    config.dynamic_batching.max_queue_delay_microseconds = 100
    config.dynamic_batching.priority_levels = 2
    config.dynamic_batching.default_priority_level = 2
    config.dynamic_batching.default_queue_policy.max_queue_size = 5
    config.dynamic_batching.priority_queue_policy[1].default_timeout_microseconds = 7
    policy = policy_from_config(config, "m/config.pbtxt")
    assert policy.max_batch_size == 16
    assert policy.preferred_batch_sizes == (4, 8)
    assert policy.max_queue_delay_microseconds == 100
    assert policy.queue_for(2).max_queue_size == 5
    assert policy.queue_for(1).default_timeout_microseconds == 7
    assert policy.max_batch_requests == 0

    alone = policy_from_config(mc.ModelConfig(max_batch_size=4), "m/config.pbtxt")
    assert (alone.max_batch_size, alone.max_batch_requests) == (4, 1)

    config.dynamic_batching.preferred_batch_size.append(32)
    with pytest.raises(ConfigError, match=r"m/config\.pbtxt: .*preferred_batch_size 32"):
        policy_from_config(config, "m/config.pbtxt")
    delay = mc.ModelConfig(max_batch_size=4)
    delay.dynamic_batching.default_queue_policy.timeout_action = mc.ModelQueuePolicy.DELAY
    with pytest.raises(ConfigError, match="DELAY is not supported"):
        policy_from_config(delay, "m/config.pbtxt")


# --- the batcher ---------------------------------------------------------------------------


async def test_full_batch_goes_without_waiting_out_the_window(model: FakeModel) -> None:
    batcher = make(model, max_batch_size=4, max_queue_delay_microseconds=LONG_DELAY_US)
    batcher.start()
    results = await bounded(*(batcher.submit(f"r{i}") for i in range(4)))
    assert results == ["done:r0", "done:r1", "done:r2", "done:r3"]
    assert model.batches == [["r0", "r1", "r2", "r3"]]
    await batcher.aclose()


async def test_partial_batch_goes_when_the_window_closes(model: FakeModel) -> None:
    batcher = make(model, max_batch_size=8, max_queue_delay_microseconds=500_000)
    batcher.start()
    first = submit(batcher, "a")
    await settle(lambda: batcher.queued == 1)
    for _ in range(20):  # the runner has looked and chosen to wait for more
        await asyncio.sleep(0)
    assert model.batches == []
    second = submit(batcher, "b")
    assert await bounded(first, second) == ["done:a", "done:b"]
    assert model.batches == [["a", "b"]]
    await batcher.aclose()


async def test_without_delay_the_batch_is_what_queued_while_busy(model: FakeModel) -> None:
    batcher = make(model)
    batcher.start()
    held = await busy(batcher, model)
    tasks = [submit(batcher, name) for name in ("b", "c", "d")]
    await settle(lambda: batcher.queued == 3)
    model.release_all()
    assert await bounded(held, *tasks) == ["done:busy", "done:b", "done:c", "done:d"]
    assert model.batches == [["busy"], ["b", "c", "d"]]
    await batcher.aclose()


async def test_max_rows_never_exceeded_and_requests_never_split(model: FakeModel) -> None:
    batcher = make(model, max_batch_size=4)
    batcher.start()
    held = await busy(batcher, model)
    sizes = {"a": 3, "b": 2, "c": 1, "d": 4, "e": 1, "f": 2, "g": 2}
    tasks = [submit(batcher, name, rows=rows) for name, rows in sizes.items()]
    await settle(lambda: batcher.queued == len(sizes))
    model.release_all()
    await bounded(held, *tasks)
    formed = model.batches[1:]
    assert formed == [["a"], ["b", "c"], ["d"], ["e", "f"], ["g"]]  # in order, none over 4
    assert all(rows <= 4 for rows in model.rows)
    assert sorted(name for batch in formed for name in batch) == sorted(sizes)
    assert sum(model.rows) == 1 + sum(sizes.values())
    assert Counter(model.rows) == {1: 1, 2: 1, 3: 3, 4: 1}
    await batcher.aclose()


async def test_request_larger_than_max_rows_is_refused(model: FakeModel) -> None:
    batcher = make(model, max_batch_size=4)
    batcher.start()
    with pytest.raises(InvalidInput, match=r"model 'm' v1: a request of 5 rows"):
        await batcher.submit("big", rows=5)
    assert model.batches == []
    await batcher.aclose()


async def test_preferred_size_goes_at_once(model: FakeModel) -> None:
    batcher = make(
        model,
        max_batch_size=8,
        preferred_batch_sizes=(2,),
        max_queue_delay_microseconds=LONG_DELAY_US,
    )
    batcher.start()
    assert await bounded(batcher.submit("a"), batcher.submit("b")) == ["done:a", "done:b"]
    assert model.batches == [["a", "b"]]
    await batcher.aclose()


async def test_batches_only_equal_shape_keys(model: FakeModel) -> None:
    batcher = make(model)
    batcher.start()
    held = await busy(batcher, model)
    keys: dict[str, Hashable] = {"a": (1,), "b": (2,), "c": (1,), "d": (2,)}
    tasks = [submit(batcher, name, shape_key=key) for name, key in keys.items()]
    await settle(lambda: batcher.queued == 4)
    model.release_all()
    await bounded(held, *tasks)
    assert model.batches[1:] == [["a", "c"], ["b", "d"]]
    await batcher.aclose()


async def test_cancelled_caller_is_never_run(model: FakeModel) -> None:
    batcher = make(model)
    batcher.start()
    held = await busy(batcher, model)
    tasks = {name: submit(batcher, name) for name in ("a", "b", "c")}
    await settle(lambda: batcher.queued == 3)
    tasks["b"].cancel()
    await settle(lambda: batcher.queued == 2)
    model.release_all()
    results = await bounded(held, *tasks.values())
    assert results[:2] == ["done:busy", "done:a"]
    assert isinstance(results[2], asyncio.CancelledError)
    assert results[3] == "done:c"
    assert model.batches == [["busy"], ["a", "c"]]
    assert batcher.queued == 0
    await batcher.aclose()


async def test_cancel_during_a_running_batch_leaves_its_mates_answered(
    model: FakeModel,
) -> None:
    batcher = make(model, max_batch_size=3, max_queue_delay_microseconds=LONG_DELAY_US)
    batcher.start()
    model.hold = True
    tasks = [submit(batcher, name) for name in ("a", "b", "c")]
    assert await model.next_batch() == ["a", "b", "c"]
    tasks[1].cancel()
    model.release_all()
    results = await bounded(*tasks)
    assert results[0] == "done:a"
    assert isinstance(results[1], asyncio.CancelledError)
    assert results[2] == "done:c"
    # the batcher carries on
    assert await bounded(batcher.submit("d"), batcher.submit("e"), batcher.submit("f")) == [
        "done:d",
        "done:e",
        "done:f",
    ]
    await batcher.aclose()


@pytest.mark.parametrize("how", ["grpc_deadline", "default_timeout", "request_timeout"])
async def test_deadline_expires_while_the_runner_is_busy(model: FakeModel, how: str) -> None:
    # Level 1 has a 50 ms default timeout of its own; level 2 (the default) has none.
    batcher = make(
        model,
        priority_levels=2,
        default_priority_level=2,
        queue=QueuePolicy(allow_timeout_override=True),
        priority_queues={1: QueuePolicy(default_timeout_microseconds=50_000)},
    )
    batcher.start()
    held = await busy(batcher, model)
    loop = asyncio.get_running_loop()
    kwargs: dict[str, Any] = {}
    if how == "grpc_deadline":
        kwargs["deadline"] = loop.time() + 0.05
    elif how == "default_timeout":
        kwargs["priority"] = 1
    else:
        kwargs["timeout_microseconds"] = 50_000
    late = submit(batcher, "late", **kwargs)
    waiting = submit(batcher, "patient")
    # the gate is still shut: only the timer can answer the late caller
    with pytest.raises(DeadlineExpired, match=r"model 'm' v1: the request's deadline passed"):
        async with asyncio.timeout(BOUND_S):
            await late
    assert batcher.queued == 1  # the late caller left the queue; the patient one waits
    model.release_all()
    assert await bounded(held, waiting) == ["done:busy", "done:patient"]
    assert model.batches == [["busy"], ["patient"]]
    await batcher.aclose()


async def test_deadline_already_past_is_refused(model: FakeModel) -> None:
    batcher = make(model)
    batcher.start()
    loop = asyncio.get_running_loop()
    with pytest.raises(DeadlineExpired):
        await batcher.submit("late", deadline=loop.time() - 1.0)
    await batcher.aclose()


async def test_queue_full_is_refused_at_once(model: FakeModel) -> None:
    batcher = make(model, queue=QueuePolicy(max_queue_size=2))
    batcher.start()
    held = await busy(batcher, model)
    first, second, third = (submit(batcher, name) for name in ("a", "b", "c"))
    with pytest.raises(Overloaded, match=r"the queue is full \(2 requests waiting\)"):
        async with asyncio.timeout(BOUND_S):
            await third
    assert batcher.queued == 2  # the refused request never queued
    model.release_all()
    assert await bounded(held, first, second) == ["done:busy", "done:a", "done:b"]
    await batcher.aclose()


async def test_priority_order_then_fifo(model: FakeModel) -> None:
    batcher = make(model, max_batch_size=1, priority_levels=3, default_priority_level=2)
    batcher.start()
    held = await busy(batcher, model)
    order = [("low", 3), ("mid1", 2), ("default", 0), ("high", 1), ("mid2", 2)]
    tasks = [submit(batcher, name, priority=priority) for name, priority in order]
    await settle(lambda: batcher.queued == len(order))
    model.release_all()
    await bounded(held, *tasks)
    assert model.batches[1:] == [["high"], ["mid1"], ["default"], ["mid2"], ["low"]]
    with pytest.raises(InvalidInput, match="priority 4"):
        await batcher.submit("bad", priority=4)
    await batcher.aclose()


async def test_a_failing_batch_fails_only_its_callers() -> None:
    model = FakeModel(fail_with=[ValueError("boom")])
    batcher = make(model, max_batch_size=2, max_queue_delay_microseconds=LONG_DELAY_US)
    batcher.start()
    results = await bounded(batcher.submit("a"), batcher.submit("b"))
    assert all(isinstance(r, ValueError) and str(r) == "boom" for r in results)
    assert await bounded(batcher.submit("c"), batcher.submit("d")) == ["done:c", "done:d"]
    assert model.batches == [["a", "b"], ["c", "d"]]  # the failed batch ran once, not again
    await batcher.aclose()


async def test_wrong_number_of_results_fails_the_batch(model: FakeModel) -> None:
    batcher = make(model, max_batch_size=2, max_queue_delay_microseconds=LONG_DELAY_US)
    batcher.start()
    model.wrong_count = True
    results = await bounded(batcher.submit("a"), batcher.submit("b"))
    for result in results:
        assert isinstance(result, RuntimeError)
        assert "0 results for a batch of 2" in str(result)
    model.wrong_count = False
    assert await bounded(batcher.submit("c"), batcher.submit("d")) == ["done:c", "done:d"]
    await batcher.aclose()


async def test_close_while_busy_finishes_the_running_batch(model: FakeModel) -> None:
    batcher = make(model)
    batcher.start()
    held = await busy(batcher, model)
    queued = submit(batcher, "queued")
    await settle(lambda: batcher.queued == 1)
    closing = asyncio.create_task(batcher.aclose())
    with pytest.raises(ModelNotReady, match="shutting down"):
        async with asyncio.timeout(BOUND_S):
            await queued
    assert not closing.done()  # still waiting for the running batch
    with pytest.raises(ModelNotReady):
        await batcher.submit("after")
    model.release_all()
    assert await bounded(held, closing) == ["done:busy", None]
    assert model.batches == [["busy"]]


async def test_cancelled_close_answers_the_running_batch(model: FakeModel) -> None:
    batcher = make(model)
    batcher.start()
    held = await busy(batcher, model)
    queued = submit(batcher, "queued")
    await settle(lambda: batcher.queued == 1)
    closing = asyncio.create_task(batcher.aclose())
    await settle(queued.done)  # aclose has begun: it failed the queued request
    closing.cancel()
    results = await bounded(held, closing)
    assert isinstance(results[0], ModelNotReady)
    assert isinstance(results[1], asyncio.CancelledError)
    assert model.batches == [["busy"]]


async def test_two_runners_run_two_batches_at_once(model: FakeModel) -> None:
    batcher = make(model, runners=2)
    batcher.start()
    held = await busy(batcher, model)
    second = submit(batcher, "second")
    # the first batch is still held: the next one forms and runs beside it
    assert await model.next_batch() == ["second"]
    assert batcher.in_flight == 2
    model.release_all()
    assert await bounded(held, second) == ["done:busy", "done:second"]
    await batcher.aclose()


async def test_lifecycle_misuse(model: FakeModel) -> None:
    batcher = make(model)
    with pytest.raises(RuntimeError, match=r"submit\(\) before start\(\)"):
        await batcher.submit("early")
    batcher.start()
    with pytest.raises(RuntimeError, match=r"start\(\) called twice"):
        batcher.start()
    await batcher.aclose()
    await batcher.aclose()  # closing twice is harmless


async def test_numpy_model_end_to_end() -> None:
    """The helpers as a real run_batch would use them: stack, run once, split."""
    seen: list[int] = []

    async def double(batch: Batch[dict[str, Array]]) -> list[dict[str, Array]]:
        feeds = stack_feeds(batch.payloads)
        seen.append(feeds["x"].shape[0])
        return split_outputs({"y": feeds["x"] * 2}, batch.row_counts)

    policy = BatchPolicy(
        max_batch_size=8, preferred_batch_sizes=(5,), max_queue_delay_microseconds=LONG_DELAY_US
    )
    batcher: DynamicBatcher[dict[str, Array], dict[str, Array]] = DynamicBatcher(double, policy)
    batcher.start()
    requests = [{"x": np.full((rows, 3), rows, dtype=np.float32)} for rows in (1, 2, 2)]
    results = await bounded(
        *(
            batcher.submit(feeds, rows=feed_rows(feeds), shape_key=shape_key(feeds))
            for feeds in requests
        )
    )
    assert seen == [5]
    for feeds, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], feeds["x"] * 2)
    await batcher.aclose()


# --- numpy helpers --------------------------------------------------------------------------


def test_stack_and_split() -> None:
    a: dict[str, Array] = {"ids": np.arange(6).reshape(2, 3), "mask": np.ones((2, 3), np.int8)}
    b: dict[str, Array] = {"ids": np.arange(3).reshape(1, 3), "mask": np.zeros((1, 3), np.int8)}
    stacked = stack_feeds([a, b])
    assert stacked["ids"].shape == (3, 3)
    np.testing.assert_array_equal(stacked["mask"][2], [0, 0, 0])
    parts = split_outputs({"out": stacked["ids"] + 1}, [2, 1])
    np.testing.assert_array_equal(parts[0]["out"], a["ids"] + 1)
    np.testing.assert_array_equal(parts[1]["out"], b["ids"] + 1)
    assert stack_feeds([a])["ids"] is a["ids"]  # one request: no copy
    strings: list[dict[str, Array]] = [
        {"s": np.array([b"x"], dtype=object)},
        {"s": np.array([b"y", b"z"], dtype=object)},
    ]
    assert stack_feeds(strings)["s"].tolist() == [b"x", b"y", b"z"]


def test_stack_refuses_feeds_that_do_not_match() -> None:
    a = {"ids": np.zeros((1, 3), dtype=np.int64)}
    with pytest.raises(RuntimeError, match="does not stack"):
        stack_feeds([a, {"ids": np.zeros((1, 4), dtype=np.int64)}])
    with pytest.raises(RuntimeError, match="does not stack"):
        stack_feeds([a, {"ids": np.zeros((1, 3), dtype=np.int32)}])
    with pytest.raises(RuntimeError, match="does not stack"):
        stack_feeds([a, {"other": np.zeros((1, 3), dtype=np.int64)}])


def test_split_checks_the_output_rows() -> None:
    with pytest.raises(RuntimeError, match=r"output 'out' has shape \[2, 4\].*3 rows"):
        split_outputs({"out": np.zeros((2, 4))}, [2, 1])
    with pytest.raises(RuntimeError, match="output 'scalar'"):
        split_outputs({"scalar": np.float32(1.0) * np.ones(())}, [1])


def test_feed_rows_and_shape_key() -> None:
    feeds = {"a": np.zeros((2, 5)), "b": np.zeros((2,), dtype=np.int64)}
    assert feed_rows(feeds) == 2
    with pytest.raises(InvalidInput, match="batch size"):
        feed_rows({"a": np.zeros((2, 5)), "b": np.zeros((3,))})
    assert shape_key(feeds) == shape_key({"b": np.ones((7,), dtype=np.int64), "a": np.ones((1, 5))})
    assert shape_key(feeds) != shape_key({"a": np.zeros((2, 6)), "b": np.zeros((2,), np.int64)})
