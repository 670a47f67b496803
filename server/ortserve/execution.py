"""One served version's execution: its batcher feeding its ONNX Runtime sessions; its recorder.

The seam between ``batching`` (which knows nothing of ONNX Runtime) and ``runtime`` (which knows
nothing of batches): ``run_batch`` stacks the requests' feeds, runs them once and splits the
outputs back by rows, timing each step for Triton-style statistics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ortserve.adapters import Padding
from ortserve.batching import (
    Batch,
    DynamicBatcher,
    feed_rows,
    policy_from_config,
    shape_key,
    split_outputs,
    stack_feeds,
)
from ortserve.observability.recorder import VersionRecorder
from ortserve.observability.statistics import ComputeTimes
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
    padding_ratio: float = 1.0  # padded / real positions of a padded batch (Padding)


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
    """Runs one model version's requests through its batcher; records its batch runs."""

    def __init__(
        self,
        name: str,
        config: mc.ModelConfig,
        sessions: ModelSessions,
        source: str,
        recorder: VersionRecorder | None = None,
        padding: Padding | None = None,
    ) -> None:
        """``padding`` (from the version's adapter): requests submitted with a ``length`` are
        padded to their batch's longest, and its sequence outputs trimmed back."""
        self.name = name
        self.recorder = recorder if recorder is not None else VersionRecorder()
        self._sessions = sessions
        self._batched = config.max_batch_size > 0
        self._output_names = [output.name for output in config.output]
        self._padding = padding
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
        """``length``: positions per row of a paddable request (batched with any length)."""
        rows = feed_rows(feeds) if self._batched else 1
        paddable = length is not None and self._padding is not None
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
        padding = self._padding if lengths else None
        stacked = stack_feeds(batch.payloads, padding.values if padding else None)
        stacked_at = time.perf_counter_ns()
        arrays = await self._sessions.run(stacked, self._output_names)
        ran_at = time.perf_counter_ns()
        outputs = dict(zip(self._output_names, arrays, strict=True))
        if self._batched:
            trimmed = padding.sequence_outputs if padding else ()
            pieces = split_outputs(outputs, batch.row_counts, lengths, trimmed)
        else:
            pieces = [outputs]
        times = ComputeTimes(
            stacked_at - start, ran_at - stacked_at, time.perf_counter_ns() - ran_at
        )
        ratio = self._padding_ratio(stacked, padding) if padding else 1.0
        rows = batch.rows
        self.recorder.execution(rows, times)
        return [
            ItemResult(piece, rows, item.queue_ns, times, ratio)
            for piece, item in zip(pieces, batch.items, strict=True)
        ]

    def _padding_ratio(self, stacked: Mapping[str, Array], padding: Padding) -> float:
        """Padded / real positions of a padded batch; recorded as tokens."""
        mask = stacked.get(padding.mask_input) if padding.mask_input else None
        shape = next(iter(stacked.values())).shape  # every padded input: [rows, longest, ...]
        padded = int(shape[0] * shape[1])
        real = int(mask.sum()) if mask is not None else padded
        self.recorder.tokens(real, padded)
        return padded / max(real, 1)
