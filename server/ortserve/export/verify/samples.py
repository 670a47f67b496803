"""Sample inputs for the checks and the benchmark: texts, tokenized, fed to ORT and to torch.

The exported graph's own input list decides what is fed, to ONNX Runtime and to PyTorch alike: a
tokenizer that emits an input the graph lacks (``token_type_ids`` from a generic tokenizer on
GPT-2) must not reach the PyTorch model either, or the two would not compute the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ortserve.export.errors import ExportError
from ortserve.export.options import TASKS
from ortserve_client.tensors import Array

DEFAULT_TEXTS = (
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "ONNX Runtime serves transformer models on CPUs with dynamic batching of requests.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France, on the river Seine.",
    "a",
    "Sentence embeddings map texts with similar meanings to nearby vectors.",
    "The daemon reloads a model when a new version folder appears in the repository.",
)

#: ONNX Runtime's type names for the inputs the feeds are built in.
_ORT_TO_NUMPY: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One graph input: name, ONNX Runtime type name, dims (an int, or a name when dynamic)."""

    name: str
    type_name: str
    dims: tuple[int | str | None, ...]


def input_specs(session: Any) -> list[InputSpec]:
    """The inputs of an ``onnxruntime.InferenceSession``."""
    return [InputSpec(i.name, i.type, tuple(i.shape)) for i in session.get_inputs()]


def encode(tokenizer: Any, texts: Sequence[str], task: str, max_length: int) -> dict[str, Array]:
    """Tokenize ``texts`` as one right-padded batch (questions paired with contexts for QA)."""
    kwargs: dict[str, Any] = {
        "padding": True,
        "truncation": True,
        "max_length": max_length,
        "return_tensors": "np",
    }
    if task == "question-answering":
        contexts = [texts[(i + 1) % len(texts)] for i in range(len(texts))]
        encoded = tokenizer(list(texts), contexts, **kwargs)
    else:
        encoded = tokenizer(list(texts), **kwargs)
    return {name: np.asarray(value) for name, value in encoded.items()}


def graph_feeds(specs: Sequence[InputSpec], encoded: dict[str, Array]) -> dict[str, Array]:
    """Exactly the graph's inputs, from the tokenizer's output; an empty past for decoders."""
    mask = encoded.get("attention_mask")
    batch = int(next(iter(encoded.values())).shape[0])
    feeds: dict[str, Array] = {}
    for spec in specs:
        dtype = _ORT_TO_NUMPY.get(spec.type_name)
        if dtype is None:
            raise ExportError(f"graph input '{spec.name}' has type {spec.type_name}")
        if spec.name in encoded:
            feeds[spec.name] = encoded[spec.name].astype(dtype)
        elif spec.name == "token_type_ids" and mask is not None:
            feeds[spec.name] = np.zeros_like(mask, dtype=dtype)
        elif spec.name == "position_ids" and mask is not None:
            feeds[spec.name] = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(dtype)
        elif spec.name.startswith("past_key_values"):
            # No past yet: every dynamic axis but the batch is the (empty) past length.
            shape = [d if isinstance(d, int) and d > 0 else 0 for d in spec.dims]
            shape[0] = batch
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
        else:
            raise ExportError(
                f"the exported graph wants an input '{spec.name}' that the tokenizer does not "
                f"give (it gives {', '.join(sorted(encoded))})"
            )
    return feeds


def torch_inputs(feeds: dict[str, Array]) -> dict[str, Array]:
    """What the PyTorch model gets: the same arrays, without the (empty) past."""
    return {k: v for k, v in feeds.items() if not k.startswith("past_key_values")}


def batch_of(encoded: dict[str, Array], rows: int) -> dict[str, Array]:
    """``rows`` rows cycled from the encoded batch (for the batch-32 benchmark)."""
    index = np.arange(rows) % next(iter(encoded.values())).shape[0]
    return {name: array[index] for name, array in encoded.items()}


def rows_of(encoded: dict[str, Array], start: int, stop: int) -> dict[str, Array]:
    """Rows ``start:stop`` as a batch of their own, cut to their longest row: the columns
    where none of them has a token (padding for longer rows elsewhere) are dropped."""
    mask = encoded.get("attention_mask")
    if mask is None:
        return {name: array[start:stop] for name, array in encoded.items()}
    keep = mask[start:stop].astype(bool).any(axis=0)
    return {name: array[start:stop][:, keep] for name, array in encoded.items()}


def single(encoded: dict[str, Array], row: int) -> dict[str, Array]:
    """Row ``row`` alone, with its padding cut off (on the right, or on the left as a
    generation model's batch is padded)."""
    mask = encoded.get("attention_mask")
    if mask is None:
        return {name: array[row : row + 1] for name, array in encoded.items()}
    keep = mask[row].astype(bool)
    return {name: array[row : row + 1][:, keep] for name, array in encoded.items()}


def token_mask(feeds: dict[str, Array]) -> Array | None:
    """Which [batch, sequence] positions are real tokens (outputs at padding are not compared)."""
    mask = feeds.get("attention_mask")
    return None if mask is None else mask.astype(bool)


def has_labels(task: str) -> bool:
    return TASKS[task].has_labels
