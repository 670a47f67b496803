"""The benchmarks' synthetic encoder (tests/factories encoder_model()): names, shape, inputs."""

from __future__ import annotations

from typing import Any

import numpy as np

MODEL = "encoder"
SEQ = 32
VOCAB = 30522


def input_data(seq: int = SEQ, vocab: int = VOCAB, seed: int = 0) -> dict[str, Any]:
    """perf_analyzer --input-data: one row of ids within the vocabulary and an all-ones mask."""
    ids = np.random.default_rng(seed).integers(1, vocab, size=seq, dtype=np.int64)
    return {
        "data": [
            {
                "input_ids": {"content": [int(v) for v in ids], "shape": [seq]},
                "attention_mask": {"content": [1] * seq, "shape": [seq]},
            }
        ]
    }


def feed_row() -> dict[str, np.ndarray]:
    """The same row as ``input_data``, as a batch-1 feed for ONNX Runtime or the daemon."""
    row = input_data()["data"][0]
    return {
        "input_ids": np.asarray(row["input_ids"]["content"], dtype=np.int64)[None, :],
        "attention_mask": np.asarray(row["attention_mask"]["content"], dtype=np.int64)[None, :],
    }
