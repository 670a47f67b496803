"""Checking a request's tensors against a model config: names, datatypes, shapes, outputs."""

from __future__ import annotations

from collections.abc import Sequence

from ortserve.datatypes import CONFIG_TO_WIRE
from ortserve.errors import InvalidInput
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import Array, DecodedTensor


def check_inputs(
    config: mc.ModelConfig, inputs: Sequence[DecodedTensor], where: str
) -> dict[str, Array]:
    """The request's inputs as feeds, after checking names, datatypes and shapes.

    ``where`` names the model and version in messages."""
    expected = {entry.name: entry for entry in config.input}
    feeds: dict[str, Array] = {}
    batch_sizes: set[int] = set()
    for tensor in inputs:
        entry = expected.get(tensor.name)
        if entry is None:
            known = ", ".join(expected)
            raise InvalidInput(f"{where} has no input '{tensor.name}' (inputs: {known})")
        if tensor.name in feeds:
            raise InvalidInput(f"input '{tensor.name}' is given twice")
        want_type = CONFIG_TO_WIRE[entry.data_type]
        if tensor.datatype != want_type:
            raise InvalidInput(
                f"input '{tensor.name}': datatype {tensor.datatype} does not match "
                f"{where}, which expects {want_type}"
            )
        batch = _check_shape(entry, tensor, config.max_batch_size, where)
        if batch is not None:
            batch_sizes.add(batch)
        feeds[tensor.name] = _reshaped(entry, tensor.array, batch)
    missing = [name for name, entry in expected.items() if name not in feeds and not entry.optional]
    if missing:
        raise InvalidInput(f"{where}: missing input(s) {', '.join(repr(m) for m in missing)}")
    if len(batch_sizes) > 1:
        raise InvalidInput(
            f"{where}: inputs disagree on the batch size (first dimension): {sorted(batch_sizes)}"
        )
    return feeds


def _check_shape(
    entry: mc.ModelInput, tensor: DecodedTensor, max_batch: int, where: str
) -> int | None:
    shape = list(tensor.array.shape)
    dims = list(entry.dims)
    batch: int | None = None
    expected = ([-1] if max_batch > 0 else []) + dims
    if len(shape) != len(expected):
        raise InvalidInput(
            f"input '{tensor.name}': shape {shape} does not match {where}, which expects "
            f"{expected} (-1 = any size)"
        )
    if max_batch > 0:
        batch = shape[0]
        if batch < 1 or batch > max_batch:
            raise InvalidInput(
                f"input '{tensor.name}': batch size {batch} is outside 1..{max_batch} "
                f"(max_batch_size of {where})"
            )
    for got, want in zip(shape, expected, strict=True):
        if want != -1 and got != want:
            raise InvalidInput(
                f"input '{tensor.name}': shape {shape} does not match {where}, which expects "
                f"{expected} (-1 = any size)"
            )
    return batch


def _reshaped(entry: mc.ModelInput, array: Array, batch: int | None) -> Array:
    """Apply the config's ``reshape``: clients send ``dims``, the model takes ``reshape``."""
    if not entry.HasField("reshape"):
        return array
    shape = ([batch] if batch is not None else []) + list(entry.reshape.shape)
    try:
        return array.reshape(shape)
    except ValueError:  # dims with -1 let sizes through that the fixed reshape cannot take
        raise InvalidInput(
            f"input '{entry.name}': shape {list(array.shape)} ({array.size} elements) does not "
            f"fit the model's reshape {shape}"
        ) from None


def check_outputs(
    available: Sequence[str], requested: Sequence[str], where: str, note: str = ""
) -> list[str]:
    """Requested output names in the order asked (all of ``available`` when none)."""
    if not requested:
        return list(available)
    for name in requested:
        if name not in available:
            raise InvalidInput(
                f"{where} has no output '{name}'{note} (outputs: {', '.join(available)})"
            )
    if len(set(requested)) != len(requested):
        raise InvalidInput(f"an output is requested twice: {list(requested)}")
    return list(requested)
