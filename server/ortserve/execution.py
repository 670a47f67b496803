"""One served version's execution: its batcher feeding its ONNX Runtime sessions; its statistics.

The seam between ``batching`` (which knows nothing of ONNX Runtime) and ``runtime`` (which knows
nothing of batches): ``run_batch`` stacks the requests' feeds, runs them once and splits the
outputs back by rows, timing each step for Triton-style statistics.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

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
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import Array

Feeds = Mapping[str, Array]


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One request's share of a batch run."""

    outputs: dict[str, Array]
    batch_rows: int
    queue_ns: int
    times: ComputeTimes
    padding_ratio: float = 1.0  # padded tokens / real tokens of the batch (text models)


def merge_results(parts: Sequence[ItemResult]) -> ItemResult:
    """One request run as several slices (in order): its outputs joined back along the rows;
    the longest queue wait, the compute of every slice, the biggest batch."""
    outputs = {
        name: np.concatenate([part.outputs[name] for part in parts]) for name in parts[0].outputs
    }
    times = ComputeTimes(
        sum(p.times.input_ns for p in parts),
        sum(p.times.infer_ns for p in parts),
        sum(p.times.output_ns for p in parts),
    )
    return ItemResult(
        outputs,
        max(p.batch_rows for p in parts),
        max(p.queue_ns for p in parts),
        times,
        max(p.padding_ratio for p in parts),
    )


class VersionExecutor:
    """Runs one model version's requests through its batcher; owns its statistics."""

    def __init__(
        self,
        name: str,
        config: mc.ModelConfig,
        sessions: ModelSessions,
        source: str,
        metrics: Metrics | None = None,
        pad_values: Mapping[str, int] | None = None,
        sequence_outputs: Collection[str] = (),
    ) -> None:
        """``pad_values``: for text models, the pad value of each token input; requests are
        then padded to the batch's longest and ``sequence_outputs`` trimmed back."""
        self.name = name
        self.statistics = VersionStatistics()
        self._sessions = sessions
        self._batched = config.max_batch_size > 0
        self._output_names = [output.name for output in config.output]
        self.metrics = metrics.model(config.name) if metrics is not None else None
        self._pad_values = pad_values
        self._sequence_outputs = frozenset(sequence_outputs)
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
        length: int | None = None,
    ) -> ItemResult:
        """``length``: tokens per row of a text request (paddable: batched with any length)."""
        rows = feed_rows(feeds) if self._batched else 1
        paddable = length is not None and self._pad_values is not None
        return await self.batcher.submit(
            feeds,
            rows=rows,
            shape_key=shape_key(feeds, paddable) if self._batched else None,
            priority=priority,
            timeout_microseconds=timeout_microseconds,
            deadline=deadline,
            length=length if paddable else None,
        )

    async def _run_batch(self, batch: Batch[Feeds]) -> Sequence[ItemResult]:
        start = time.perf_counter_ns()
        lengths = batch.lengths
        stacked = stack_feeds(batch.payloads, self._pad_values if lengths else None)
        stacked_at = time.perf_counter_ns()
        arrays = await self._sessions.run(stacked, self._output_names)
        ran_at = time.perf_counter_ns()
        outputs = dict(zip(self._output_names, arrays, strict=True))
        if self._batched:
            pieces = split_outputs(outputs, batch.row_counts, lengths, self._sequence_outputs)
        else:
            pieces = [outputs]
        times = ComputeTimes(
            stacked_at - start, ran_at - stacked_at, time.perf_counter_ns() - ran_at
        )
        ratio = self._padding(stacked) if lengths else 1.0
        rows = batch.rows
        self.statistics.record_execution(rows, times)
        if self.metrics is not None:
            self.metrics.batch_size.observe(rows)
            self.metrics.compute.observe((times.input_ns + times.infer_ns + times.output_ns) / 1e9)
        return [
            ItemResult(piece, rows, item.queue_ns, times, ratio)
            for piece, item in zip(pieces, batch.items, strict=True)
        ]

    def _padding(self, stacked: Mapping[str, Array]) -> float:
        """Padded tokens / real tokens of a text batch; counted in statistics and metrics."""
        mask = stacked.get("attention_mask")
        ids = stacked["input_ids"]
        padded = int(ids.shape[0] * ids.shape[1])
        real = int(mask.sum()) if mask is not None else padded
        self.statistics.record_tokens(real, padded)
        if self.metrics is not None:
            self.metrics.real_tokens.inc(real)
            self.metrics.padded_tokens.inc(padded)
        return padded / max(real, 1)
