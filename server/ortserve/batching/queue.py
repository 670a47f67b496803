"""The waiting requests of one batcher: priority levels, FIFO within each, O(1) removal.

Removal is eager (a cancelled caller or an expired deadline takes its entry out at once), so the
queue holds only requests that someone still waits for, and its length is the real backlog that
``max_queue_size`` bounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False, slots=True)
class Entry(Generic[T, R]):
    """One waiting request, as the batcher keeps it (callers see ``BatchItem``)."""

    seq: int  # arrival order, unique per batcher
    payload: T
    rows: int
    shape_key: Hashable
    level: int
    arrival: float  # loop time
    deadline: float | None  # loop time
    future: asyncio.Future[R]
    length: int | None = None  # tokens per row for paddable (text) requests, else None
    timer: asyncio.TimerHandle | None = None

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def compatible(head_key: Hashable, key: Hashable) -> bool:
    """Whether a request may join a batch formed from ``head_key`` (``tensors.shape_key``):
    the same inputs, dtypes and shapes past the batch axis. Paddable (text) requests share a key
    without their token width, which ``_by_length`` bounds and the batch is padded to."""
    return bool(key == head_key)


@dataclass(frozen=True, slots=True)
class Candidates(Generic[T, R]):
    entries: list[Entry[T, R]]
    # True when a compatible request was left out (no room in rows or in requests).
    full: bool
    # Entries met on the way whose deadline has passed (their timer has not fired yet).
    expired: list[Entry[T, R]]


class PendingQueue(Generic[T, R]):
    def __init__(self) -> None:
        # level -> {seq: entry}; a dict keeps insertion (arrival) order and removes in O(1).
        self._levels: dict[int, dict[int, Entry[T, R]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def count_at(self, level: int) -> int:
        return len(self._levels.get(level, ()))

    def push(self, entry: Entry[T, R]) -> None:
        if entry.level not in self._levels:
            self._levels[entry.level] = {}
            self._levels = dict(sorted(self._levels.items()))  # levels stay in priority order
        self._levels[entry.level][entry.seq] = entry
        self._count += 1

    def remove(self, entry: Entry[T, R]) -> bool:
        """Take ``entry`` out; False if it was not queued (already taken or removed)."""
        level = self._levels.get(entry.level)
        if level is None or level.pop(entry.seq, None) is None:
            return False
        self._count -= 1
        return True

    def __iter__(self) -> Iterator[Entry[T, R]]:
        """Entries in the order they are served: level 1 first, then by arrival."""
        for level in self._levels.values():
            yield from level.values()

    def drain(self) -> list[Entry[T, R]]:
        entries = list(self)
        self._levels.clear()
        self._count = 0
        return entries

    def candidates(
        self,
        max_rows: int,
        max_requests: int,
        now: float,
        max_tokens: int = 0,
        group_by_length: bool = True,
    ) -> Candidates[T, R]:
        """The next batch: ``_in_order``, or ``_by_length`` when the oldest request is paddable."""
        live: list[Entry[T, R]] = []
        expired: list[Entry[T, R]] = []
        for entry in self:
            if entry.deadline is not None and entry.deadline <= now:
                expired.append(entry)
            else:
                live.append(entry)
        if live and live[0].length is not None:
            picked, full = _by_length(live, max_rows, max_requests, max_tokens, group_by_length)
        else:
            picked, full = _in_order(live, max_rows, max_requests)
        return Candidates(picked, full, expired)


def _in_order(
    live: list[Entry[T, R]], max_rows: int, max_requests: int
) -> tuple[list[Entry[T, R]], bool]:
    """In serving order: the first live entry sets the shape key.

    Requests of other keys are stepped over (they keep their place); a compatible one that does
    not fit ends the batch, so that nothing overtakes an older request of its own key.
    """
    picked: list[Entry[T, R]] = []
    rows = 0
    head_key: Hashable = None
    for entry in live:
        if picked and not compatible(head_key, entry.shape_key):
            continue
        if rows + entry.rows > max_rows or (max_requests and len(picked) == max_requests):
            return picked, True
        if not picked:
            head_key = entry.shape_key
        picked.append(entry)
        rows += entry.rows
    return picked, bool(max_requests) and len(picked) == max_requests


def _by_length(
    live: list[Entry[T, R]], max_rows: int, max_requests: int, max_tokens: int, grouping: bool
) -> tuple[list[Entry[T, R]], bool]:
    """Paddable requests: the oldest always goes; the others join nearest its length first (or
    in arrival order) while rows, requests and padded tokens (longest x rows) fit.

    The oldest request anchors every batch, so a long text waits no longer than its own window:
    once it is the oldest it is never passed over for shorter ones.
    """
    head = live[0]
    anchor = head.length or 0
    others = [
        e for e in live[1:] if e.length is not None and compatible(head.shape_key, e.shape_key)
    ]
    if grouping:
        others.sort(key=lambda e: (e.level, abs((e.length or 0) - anchor), e.seq))
    picked = [head]
    rows, longest, full = head.rows, anchor, False
    for entry in others:
        length = max(longest, entry.length or 0)
        too_many = max_requests and len(picked) == max_requests
        too_long = max_tokens and length * (rows + entry.rows) > max_tokens
        if rows + entry.rows > max_rows or too_many or too_long:
            full = True
            continue
        picked.append(entry)
        rows, longest = rows + entry.rows, length
    return picked, full or (bool(max_requests) and len(picked) == max_requests)
