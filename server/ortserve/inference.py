"""The data plane: resolve the version, check the inputs against its config, run, shape the answer.

Transport-free: protocol/ turns gRPC messages into an ``InferRequest`` and an ``InferResponse``
back into a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from ortserve.datatypes import CONFIG_TO_WIRE
from ortserve.errors import InvalidInput
from ortserve.registry.models import ModelRegistry, ServedVersion
from ortserve_client._proto import model_config_pb2 as mc
from ortserve_client.tensors import DecodedTensor

Array = npt.NDArray[Any]


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str
    id: str
    inputs: list[DecodedTensor]
    outputs: list[str]  # requested output names; empty means all
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutputTensor:
    name: str
    datatype: str
    array: Array


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    parameters: dict[str, Any] = field(default_factory=dict)


class InferenceService:
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def infer(self, request: InferRequest) -> InferResponse:
        served = self._registry.resolve(request.model_name, request.model_version)
        feeds = check_inputs(served, request.inputs)
        names = check_outputs(served, request.outputs)
        arrays = await served.sessions.run(feeds, names)
        wire_types = {out.name: CONFIG_TO_WIRE[out.data_type] for out in served.config.output}
        return InferResponse(
            model_name=served.model_name,
            model_version=str(served.version),
            id=request.id,
            outputs=[
                OutputTensor(name, wire_types[name], array)
                for name, array in zip(names, arrays, strict=True)
            ],
        )


def check_inputs(served: ServedVersion, inputs: Sequence[DecodedTensor]) -> dict[str, Array]:
    """The request's inputs as feeds, after checking names, datatypes and shapes."""
    config = served.config
    where = f"model '{served.model_name}' version {served.version}"
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
    return array.reshape(([batch] if batch is not None else []) + list(entry.reshape.shape))


def check_outputs(served: ServedVersion, requested: Sequence[str]) -> list[str]:
    """Requested output names in the order asked (all outputs in config order when none)."""
    available = [entry.name for entry in served.config.output]
    if not requested:
        return available
    for name in requested:
        if name not in available:
            raise InvalidInput(
                f"model '{served.model_name}' version {served.version} has no output '{name}' "
                f"(outputs: {', '.join(available)})"
            )
    if len(set(requested)) != len(requested):
        raise InvalidInput(f"an output is requested twice: {list(requested)}")
    return list(requested)
