"""The batched KV cache of the rows decoding together, padded on the left.

Every row's cached positions end at the same column (the newest token), so one decode call with
sequence length 1 serves them all; a row shorter than the longest is padded on the left with
masked positions (``attention_mask`` 0), which attention ignores exactly. A row's position ids
count only its real tokens. When rows leave, the leading columns that every remaining row masks
are dropped, so the cache is never wider than its longest row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ortserve.generation.model import GraphSpec

Array = npt.NDArray[np.generic]
Mask = npt.NDArray[np.int64]


def empty_past(spec: GraphSpec, rows: int = 1) -> list[Array]:
    """Past arrays of length 0 (a prefill's first chunk)."""
    shape = (rows, spec.kv_heads, 0, spec.head_dim)
    return [np.zeros(shape, dtype=spec.kv_dtype) for _ in range(2 * spec.layers)]


class KVCache:
    """Keys and values of the running rows: per layer [rows, kv_heads, length, head_dim]."""

    def __init__(self, spec: GraphSpec) -> None:
        self._spec = spec
        self.past: list[Array] = empty_past(spec, 0)
        self.mask: Mask = np.zeros((0, 0), dtype=np.int64)
        self.lengths: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)  # real tokens per row

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @property
    def tokens(self) -> int:
        """KV positions held, padding included (rows x width)."""
        return self.rows * self.width

    def add_row(self, present: Sequence[Array]) -> None:
        """Append one prefilled row (its present arrays, batch 1, every position real)."""
        length = int(present[0].shape[2])
        width = max(self.width, length)
        old = [_left_pad(array, width) for array in self.past]
        new = [_left_pad(array, width) for array in present]
        self.past = [np.concatenate([a, b], axis=0) for a, b in zip(old, new, strict=True)]
        row_mask = np.zeros((1, width), dtype=np.int64)
        row_mask[0, width - length :] = 1
        self.mask = np.concatenate([_left_pad_mask(self.mask, width), row_mask], axis=0)
        self.lengths = np.append(self.lengths, length)

    def decode_mask(self) -> Mask:
        """The attention mask of a decode step: the cache's mask and the new token."""
        return np.concatenate([self.mask, np.ones((self.rows, 1), dtype=np.int64)], axis=1)

    def positions(self) -> npt.NDArray[np.int64]:
        """Each row's next position id [rows, 1]: its real tokens so far."""
        return self.lengths[:, None].copy()

    def advance(self, present: Sequence[Array]) -> None:
        """Take a decode step's presents (one column longer) as the new cache."""
        self.past = list(present)
        self.mask = self.decode_mask()
        self.lengths = self.lengths + 1

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in this order), then drop columns every one of them masks."""
        index = np.asarray(rows, dtype=np.int64)
        self.past = [array[index] for array in self.past]
        self.mask = self.mask[index]
        self.lengths = self.lengths[index]
        unused = self.width - int(self.lengths.max()) if self.rows else self.width
        if unused > 0:
            self.past = [np.ascontiguousarray(array[:, :, unused:]) for array in self.past]
            self.mask = self.mask[:, unused:]
        if not self.rows:
            self.past = empty_past(self._spec, 0)
            self.mask = np.zeros((0, 0), dtype=np.int64)


def _left_pad(array: Array, width: int) -> Array:
    missing = width - array.shape[2]
    if missing <= 0:
        return array
    pad = np.zeros((array.shape[0], array.shape[1], missing, array.shape[3]), dtype=array.dtype)
    return np.concatenate([pad, array], axis=2)


def _left_pad_mask(mask: Mask, width: int) -> Mask:
    missing = width - mask.shape[1]
    if missing <= 0:
        return mask
    return np.concatenate([np.zeros((mask.shape[0], missing), dtype=np.int64), mask], axis=1)
