"""numpy helpers for a batch: its key, stacking the feeds, splitting the outputs by rows.

A mismatch in stacking or splitting is a bug in the caller or the model, not in any one request,
so it raises RuntimeError (sent as INTERNAL) and fails that batch alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from itertools import accumulate
from typing import Any

import numpy as np
import numpy.typing as npt

from ortserve.errors import InvalidInput

Array = npt.NDArray[Any]
Feeds = Mapping[str, Array]


def feed_rows(feeds: Feeds) -> int:
    """The rows (first dimension) that all of one request's feeds share."""
    rows = {array.shape[0] if array.ndim else 0 for array in feeds.values()}
    if len(rows) != 1 or 0 in rows:
        shapes = {name: list(array.shape) for name, array in feeds.items()}
        raise InvalidInput(f"inputs disagree on the batch size (first dimension): {shapes}")
    return rows.pop()


def shape_key(feeds: Feeds) -> Hashable:
    """What requests must agree on to be stacked: names, dtypes and shapes past the first."""
    return tuple(sorted((name, array.dtype.str, array.shape[1:]) for name, array in feeds.items()))


def stack_feeds(feeds: Sequence[Feeds]) -> dict[str, Array]:
    """One feed per input name: the requests' arrays concatenated along axis 0, in order."""
    if not feeds:
        raise ValueError("no feeds to stack")
    first = feeds[0]
    if len(feeds) == 1:
        return dict(first)  # nothing to stack: no copy
    for index, other in enumerate(feeds[1:], start=1):
        if shape_key(other) != shape_key(first):
            raise RuntimeError(
                f"request {index} of the batch does not stack with request 0: "
                f"{_describe(other)} against {_describe(first)} (shape_key differs)"
            )
    return {name: np.concatenate([item[name] for item in feeds], axis=0) for name in first}


def split_outputs(outputs: Mapping[str, Array], rows: Sequence[int]) -> list[dict[str, Array]]:
    """Each request's slice of every output, by its row count (views, not copies).

    Every output must have exactly as many rows as the batch had: a model that drops or
    reduces the batch dimension cannot be batched, and saying so beats a wrong answer.
    """
    total = sum(rows)
    for name, array in outputs.items():
        got = array.shape[0] if array.ndim else None
        if got != total:
            raise RuntimeError(
                f"output '{name}' has shape {list(array.shape)}, but the batch had {total} rows: "
                "the model does not keep the batch dimension"
            )
    if len(rows) == 1:
        return [dict(outputs)]
    bounds = list(accumulate(rows))[:-1]
    pieces = {name: np.split(array, bounds, axis=0) for name, array in outputs.items()}
    return [{name: parts[index] for name, parts in pieces.items()} for index in range(len(rows))]


def _describe(feeds: Feeds) -> str:
    return ", ".join(
        f"{name} {array.dtype} {list(array.shape)}" for name, array in sorted(feeds.items())
    )
