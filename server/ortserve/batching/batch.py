"""What the batcher hands to ``run_batch``: the requests of one batch.

The batcher keeps no counts of its own: what happens to requests is recorded once, by the
version's recorder (``observability/recorder.py``), around the batcher."""

from __future__ import annotations

from collections.abc import Hashable
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
