"""numpy helpers for a batch: its key, stacking the feeds, splitting the outputs by rows.

A mismatch in stacking or splitting is a bug in the caller or the model, not in any one request,
so it raises RuntimeError (sent as INTERNAL) and fails that batch alone.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from itertools import accumulate

import numpy as np

from ortserve.errors import InvalidInput
from ortserve_client.tensors import Array

Feeds = Mapping[str, Array]


def feed_rows(feeds: Feeds) -> int:
    """The rows (first dimension) that all of one request's feeds share."""
    rows = {array.shape[0] if array.ndim else 0 for array in feeds.values()}
    if len(rows) != 1 or 0 in rows:
        shapes = {name: list(array.shape) for name, array in feeds.items()}
        raise InvalidInput(f"inputs disagree on the batch size (first dimension): {shapes}")
    return rows.pop()


def shape_key(feeds: Feeds, paddable: bool = False) -> Hashable:
    """What requests must agree on to be stacked: names, dtypes and shapes past the first
    (past the token axis too for paddable requests, which are padded to agree)."""
    skip = 2 if paddable else 1
    return tuple(
        sorted((name, array.dtype.str, array.shape[skip:]) for name, array in feeds.items())
    )


def stack_feeds(
    feeds: Sequence[Feeds], pad_values: Mapping[str, int | float] | None = None
) -> dict[str, Array]:
    """One feed per input name: the requests' arrays concatenated along axis 0, in order.

    With ``pad_values`` (paddable requests: [rows, tokens] arrays of any token count), every
    array is first padded along axis 1 to the batch's longest, with its input's pad value (0
    where none is given).
    """
    if not feeds:
        raise ValueError("no feeds to stack")
    first = feeds[0]
    if len(feeds) == 1:
        return dict(first)  # nothing to stack: no copy
    if pad_values is not None:
        return {name: _pad_concat([item[name] for item in feeds], pad_values.get(name, 0))
                for name in first}  # fmt: skip
    key = shape_key(first)
    for index, other in enumerate(feeds[1:], start=1):
        if shape_key(other) != key:
            raise RuntimeError(
                f"request {index} of the batch does not stack with request 0: "
                f"{_describe(other)} against {_describe(first)} (shape_key differs)"
            )
    return {name: np.concatenate([item[name] for item in feeds], axis=0) for name in first}


def split_outputs(
    outputs: Mapping[str, Array],
    rows: Sequence[int],
    lengths: Sequence[int] | None = None,
    sequence_outputs: Collection[str] = (),
) -> list[dict[str, Array]]:
    """Each request's slice of every output, by its row count (views, not copies).

    With ``lengths`` (a padded batch), the ``sequence_outputs`` (those with a token axis 1) are
    trimmed back to each request's own token count.

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
        split = [dict(outputs)]
    else:
        bounds = list(accumulate(rows))[:-1]
        pieces = {name: np.split(array, bounds, axis=0) for name, array in outputs.items()}
        split = [{name: parts[i] for name, parts in pieces.items()} for i in range(len(rows))]
    if lengths is not None:
        for item, length in zip(split, lengths, strict=True):
            for name in sequence_outputs:
                if name in item and item[name].ndim >= 2:
                    item[name] = item[name][:, :length]
    return split


def _pad_concat(arrays: Sequence[Array], value: int | float) -> Array:
    longest = max(array.shape[1] for array in arrays)
    total = sum(array.shape[0] for array in arrays)
    out = np.full((total, longest, *arrays[0].shape[2:]), value, dtype=arrays[0].dtype)
    row = 0
    for array in arrays:
        out[row : row + array.shape[0], : array.shape[1]] = array
        row += array.shape[0]
    return out


def _describe(feeds: Feeds) -> str:
    return ", ".join(
        f"{name} {array.dtype} {list(array.shape)}" for name, array in sorted(feeds.items())
    )
