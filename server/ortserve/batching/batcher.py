"""The dynamic batcher of one model version: one queue, drained by one runner task per instance.

Callers ``submit()`` and wait; runners form batches by the rule in ``decision.py`` and hand them
to ``run_batch``, which is all the batcher knows of the model. While one runner's batch runs,
the queue keeps taking requests and any other runner forms and runs the next batch.

Every caller gets exactly one answer: its result, the error of its batch, DeadlineExpired from
its timer, Overloaded or InvalidInput at submit, or ModelNotReady at shutdown. Futures are
only ever resolved if not done yet (``_execute`` for results, ``_fail`` for errors), so a caller
that has gone away costs nothing and races between a timer and a batch are harmless.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

import structlog

from ortserve.batching.batch import Batch, BatchItem
from ortserve.batching.decision import decide
from ortserve.batching.policy import BatchPolicy
from ortserve.batching.queue import Entry, PendingQueue
from ortserve.errors import DeadlineExpired, InvalidInput, ModelNotReady, Overloaded

T = TypeVar("T")
R = TypeVar("R")

log = structlog.get_logger("ortserve.batching")


class DynamicBatcher(Generic[T, R]):
    """Batches ``submit()`` calls for ``run_batch``, which answers one result per item, in order.

    Lifecycle: ``start()`` inside the running loop, then ``submit()``, then ``aclose()``.
    ``name`` (e.g. "model 'bert' version 3") starts every error message.
    """

    def __init__(
        self,
        run_batch: Callable[[Batch[T]], Awaitable[Sequence[R]]],
        policy: BatchPolicy,
        *,
        runners: int = 1,
        name: str = "batcher",
    ) -> None:
        if runners < 1:
            raise ValueError(f"runners must be >= 1, got {runners}")
        self._run_batch = run_batch
        self._policy = policy
        self._runner_count = runners
        self._name = name
        self._queue: PendingQueue[T, R] = PendingQueue()
        # Set on every change that could alter a decision; each runner clears it before
        # deciding, and nothing awaits between deciding and waiting, so no change is missed.
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runners: list[asyncio.Task[None]] = []
        self._closing = False
        self._seq = itertools.count()
        self._in_flight = 0

    @property
    def policy(self) -> BatchPolicy:
        return self._policy

    @property
    def queued(self) -> int:
        """Requests waiting now (the recorder counts what happened to them)."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Batches running now."""
        return self._in_flight

    def start(self) -> None:
        """Spawn the runners on the running loop."""
        if self._loop is not None or self._closing:
            raise RuntimeError(f"{self._name}: start() called twice, or after aclose()")
        self._loop = asyncio.get_running_loop()
        for index in range(self._runner_count):
            task = self._loop.create_task(self._runner(), name=f"{self._name} runner {index}")
            task.add_done_callback(self._runner_done)
            self._runners.append(task)

    async def aclose(self) -> None:
        """Refuse new requests, fail the queued ones, let running batches finish, stop.

        If ``aclose`` itself is cancelled, the runners are cancelled with it and the callers
        of their batches get ModelNotReady.
        """
        if not self._closing:
            self._closing = True
            self._fail(
                self._queue.drain(),
                ModelNotReady(f"{self._name} is shutting down; the request was not run"),
            )
            self._changed.set()
        # A runner that crashed has been logged and has answered its callers already.
        await asyncio.gather(*self._runners, return_exceptions=True)

    async def submit(
        self,
        payload: T,
        *,
        rows: int = 1,
        shape_key: Hashable = None,
        priority: int = 0,
        timeout_microseconds: int = 0,
        deadline: float | None = None,
        length: int | None = None,
    ) -> R:
        """Queue one request and wait for its result.

        ``rows``: its size along the batch dimension, never split across batches.
        ``shape_key``: requests are batched only with equal keys (non-batch shapes, dtypes).
        ``priority``: 1 is served first; 0 = the policy's default level.
        ``timeout_microseconds``: the request's own queue timeout (0 = none), honoured only
        where the queue policy allows overrides and only to shorten the default.
        ``deadline``: the caller's absolute deadline on this loop's clock (``loop.time()``).
        ``length``: tokens per row of a paddable (text) request: such requests batch with
        others of any length (padded to the longest), grouped by length, within the token budget.
        """
        loop = self._open_loop()
        policy = self._policy
        if not 1 <= rows <= policy.max_batch_size:
            raise InvalidInput(
                f"{self._name}: a request of {rows} rows does not fit in one batch "
                f"(1..{policy.max_batch_size} rows, max_batch_size)"
            )
        level = policy.level_for(priority)
        queue_policy = policy.queue_for(level)
        limit = queue_policy.max_queue_size
        if limit and self._queue.count_at(level) >= limit:
            where = f" at priority level {level}" if level else ""
            raise Overloaded(f"{self._name}: the queue is full ({limit} requests waiting{where})")
        arrival = loop.time()
        expires = queue_policy.deadline(arrival, timeout_microseconds, deadline)
        if expires is not None and expires <= arrival:
            raise DeadlineExpired(f"{self._name}: the request's deadline passed before it queued")
        future: asyncio.Future[R] = loop.create_future()
        entry = Entry(
            next(self._seq), payload, rows, shape_key, level, arrival, expires, future, length
        )
        if expires is not None:
            # Expiry by timer, so that it happens while every runner is busy (triton#7512).
            entry.timer = loop.call_at(expires, self._expire, entry)
        self._queue.push(entry)
        self._changed.set()
        try:
            return await future
        finally:
            if self._queue.remove(entry):  # the caller left while queued
                entry.cancel_timer()
                self._changed.set()
            if future.done() and not future.cancelled():
                future.exception()  # an answer that raced a cancellation is not "never retrieved"

    def _open_loop(self) -> asyncio.AbstractEventLoop:
        if self._closing:
            raise ModelNotReady(f"{self._name} is shutting down")
        if self._loop is None:
            raise RuntimeError(f"{self._name}: submit() before start()")
        return self._loop

    async def _runner(self) -> None:
        while True:
            entries = await self._next_batch()
            if entries is None:
                return
            await self._execute(entries)

    async def _next_batch(self) -> list[Entry[T, R]] | None:
        """Wait until the rule says send; take those entries off the queue. None when closing."""
        assert self._loop is not None
        policy = self._policy
        while not self._closing:
            self._changed.clear()
            now = self._loop.time()
            found = self._queue.candidates(
                policy.max_batch_size,
                policy.max_batch_requests,
                now,
                policy.max_batch_tokens,
                policy.group_by_length,
            )
            for entry in found.expired:
                self._expire(entry)
            picked = found.entries
            oldest = min((entry.arrival for entry in picked), default=now)
            decision = decide(policy, [entry.rows for entry in picked], not found.full, oldest, now)
            if decision.take:
                batch = picked[: decision.take]
                for entry in batch:
                    self._queue.remove(entry)
                    entry.cancel_timer()  # a deadline bounds the wait in the queue, not the run
                return batch
            if decision.wake_at is None:
                await self._changed.wait()
                continue
            try:
                async with asyncio.timeout_at(decision.wake_at):
                    await self._changed.wait()
            except TimeoutError:
                pass  # the window has closed: decide again
        return None

    async def _execute(self, entries: list[Entry[T, R]]) -> None:
        assert self._loop is not None
        # Drop callers that have gone away: their work never reaches the model.
        live = [entry for entry in entries if not entry.future.done()]
        if not live:
            return
        now = self._loop.time()
        batch = Batch(
            items=tuple(
                BatchItem(
                    e.payload, e.rows, e.arrival, round((now - e.arrival) * 1e9), e.level, e.length
                )
                for e in live
            ),
            shape_key=live[0].shape_key,
        )
        self._in_flight += 1
        try:
            results = await self._run_batch(batch)
        except Exception as exc:  # one bad batch fails its own callers; the runner carries on
            self._fail(live, exc)
            return
        except BaseException:  # cancelled (aclose was cancelled): still answer everyone
            self._fail(live, ModelNotReady(f"{self._name} stopped while the request was running"))
            raise
        finally:
            self._in_flight -= 1
        if len(results) != len(live):
            self._fail(
                live,
                RuntimeError(
                    f"{self._name}: run_batch gave {len(results)} results for a batch of "
                    f"{len(live)} requests"
                ),
            )
            return
        for entry, result in zip(live, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)

    def _expire(self, entry: Entry[T, R]) -> None:
        """The timer of ``entry`` (or a runner that saw it first): fail it if still queued."""
        entry.cancel_timer()
        if not self._queue.remove(entry):
            return  # already in a batch, or its caller left
        assert self._loop is not None
        waited_ms = (self._loop.time() - entry.arrival) * 1e3
        self._fail(
            [entry],
            DeadlineExpired(
                f"{self._name}: the request's deadline passed after {waited_ms:.1f} ms in the "
                "queue, before it could run"
            ),
        )
        self._changed.set()

    def _fail(self, entries: Iterable[Entry[T, R]], exc: BaseException) -> None:
        for entry in entries:
            entry.cancel_timer()
            if not entry.future.done():
                entry.future.set_exception(exc)

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        """A runner that dies of a bug must not strand callers: stop and answer all of them."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("batcher runner crashed", batcher=self._name, exc_info=task.exception())
        self._closing = True
        self._fail(
            self._queue.drain(),
            ModelNotReady(f"{self._name} stopped after an internal error; the request was not run"),
        )
        self._changed.set()
