"""What the batcher hands to ``run_batch``, and the counters it keeps of its own work (read by
``Batcher.stats``; the statistics endpoint has its own recorder)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchItem(Generic[T]):
    """One request in a batch, as ``run_batch`` sees it."""

    payload: T
    rows: int
    arrival: float  # loop time at submit
    queue_ns: int  # from arrival until the batch was handed to run_batch, for statistics
    priority_level: int  # 0 when priorities are off
    length: int | None = None  # tokens per row of a paddable (text) request


@dataclass(frozen=True, slots=True)
class Batch(Generic[T]):
    """Requests to run together, oldest first; ``run_batch`` answers each, in this order."""

    items: tuple[BatchItem[T], ...]
    shape_key: Hashable  # the key every item shares

    def __len__(self) -> int:
        return len(self.items)

    @property
    def rows(self) -> int:
        return sum(item.rows for item in self.items)

    @property
    def payloads(self) -> list[T]:
        return [item.payload for item in self.items]

    @property
    def row_counts(self) -> list[int]:
        return [item.rows for item in self.items]

    @property
    def lengths(self) -> list[int] | None:
        """Each item's tokens per row, when the batch is of paddable requests."""
        if any(item.length is None for item in self.items):
            return None
        return [item.length or 0 for item in self.items]


@dataclass(frozen=True, slots=True)
class BatcherStats:
    """A snapshot of one batcher's counters since it was built."""

    queued: int  # requests waiting now
    in_flight: int  # batches running now
    batches_executed: int  # batches that run_batch answered in full
    requests_executed: int
    rows_executed: int
    batch_sizes: Mapping[int, int]  # rows in a batch -> number of such batches executed
    batches_failed: int  # run_batch raised, or answered the wrong number of items
    rejected: int  # refused at submit: queue full (Overloaded)
    expired: int  # deadline passed while queued (DeadlineExpired)
    cancelled: int  # caller went away before its answer
