"""One served version's execution: its batcher feeding its ONNX Runtime sessions; its statistics.

The seam between ``batching`` (which knows nothing of ONNX Runtime) and ``runtime`` (which knows
nothing of batches): ``run_batch`` stacks the requests' feeds, runs them once and splits the
outputs back by rows, timing each step for Triton-style statistics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from ortserve.batching import (
    Batch,
    DynamicBatcher,
    feed_rows,
    policy_from_config,
    shape_key,
    split_outputs,
    stack_feeds,
)
from ortserve.observability.metrics import Metrics
from ortserve.observability.statistics import ComputeTimes, VersionStatistics
from ortserve.runtime.session import ModelSessions
from ortserve_client._proto import model_config_pb2 as mc

Array = npt.NDArray[Any]
Feeds = Mapping[str, Array]


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One request's share of a batch run."""

    outputs: dict[str, Array]
    batch_rows: int
    queue_ns: int
    times: ComputeTimes


class VersionExecutor:
    """Runs one model version's requests through its batcher; owns its statistics."""

    def __init__(
        self,
        name: str,
        config: mc.ModelConfig,
        sessions: ModelSessions,
        source: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.statistics = VersionStatistics()
        self._sessions = sessions
        self._model = config.name
        self._batched = config.max_batch_size > 0
        self._output_names = [output.name for output in config.output]
        self._metrics = metrics
        self.batcher: DynamicBatcher[Feeds, ItemResult] = DynamicBatcher(
            self._run_batch,
            policy_from_config(config, source),
            runners=sessions.instance_count,
            name=name,
        )

    def start(self) -> None:
        self.batcher.start()

    async def aclose(self) -> None:
        await self.batcher.aclose()

    async def submit(
        self,
        feeds: Feeds,
        *,
        priority: int = 0,
        timeout_microseconds: int = 0,
        deadline: float | None = None,
    ) -> ItemResult:
        rows = feed_rows(feeds) if self._batched else 1
        return await self.batcher.submit(
            feeds,
            rows=rows,
            shape_key=shape_key(feeds) if self._batched else None,
            priority=priority,
            timeout_microseconds=timeout_microseconds,
            deadline=deadline,
        )

    async def _run_batch(self, batch: Batch[Feeds]) -> Sequence[ItemResult]:
        start = time.perf_counter_ns()
        stacked = stack_feeds(batch.payloads)
        stacked_at = time.perf_counter_ns()
        arrays = await self._sessions.run(stacked, self._output_names)
        ran_at = time.perf_counter_ns()
        outputs = dict(zip(self._output_names, arrays, strict=True))
        pieces = split_outputs(outputs, batch.row_counts) if self._batched else [outputs]
        times = ComputeTimes(
            stacked_at - start, ran_at - stacked_at, time.perf_counter_ns() - ran_at
        )
        self.statistics.record_execution(batch.rows, times)
        if self._metrics is not None:
            self._metrics.batch_size.labels(self._model).observe(batch.rows)
            self._metrics.compute.labels(self._model).observe(
                (times.input_ns + times.infer_ns + times.output_ns) / 1e9
            )
        return [
            ItemResult(piece, batch.rows, item.queue_ns, times)
            for piece, item in zip(pieces, batch.items, strict=True)
        ]
