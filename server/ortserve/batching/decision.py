"""The batching rule, apart from any queue, clock or model: "send these now, or look again at T".

Triton's dynamic batcher answers the same question the same way, so a Triton config behaves
here as it does there. Pure, so that every branch is testable with plain numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ortserve.batching.policy import BatchPolicy


@dataclass(frozen=True, slots=True)
class Decision:
    # How many of the leading candidates to send now; 0 = send nothing yet.
    take: int
    # When waiting: the loop time at which to decide again even if nothing arrives;
    # None = only when the queue changes.
    wake_at: float | None = None


def decide(
    policy: BatchPolicy, rows: Sequence[int], can_grow: bool, oldest_arrival: float, now: float
) -> Decision:
    """Decide for the candidates of the next batch.

    ``rows``: the row counts of the candidates, in queue order, already within the policy's
    limits. ``can_grow``: False when a compatible request was left out for lack of room, so
    waiting cannot make this batch any bigger. ``oldest_arrival``: when the oldest candidate
    arrived, on the same clock as ``now``: the window opens then, not when a runner looks.
    """
    if not rows:
        return Decision(0)
    total = sum(rows)
    if not can_grow or total >= policy.max_batch_size:
        return Decision(len(rows))
    delay = policy.max_queue_delay_s
    window_end = oldest_arrival + delay
    window_over = delay > 0 and now >= window_end
    if policy.preferred_batch_sizes and not window_over:
        # Send the longest prefix that lands on a preferred size; the rest waits its turn.
        best = 0
        running = 0
        for index, count in enumerate(rows):
            running += count
            if running in policy.preferred_batch_sizes:
                best = index + 1
        if best:
            return Decision(best)
        if total >= max(policy.preferred_batch_sizes):
            return Decision(len(rows))  # past every preferred size: growing gains nothing
    if delay == 0 or window_over:
        return Decision(len(rows))
    return Decision(0, window_end)
