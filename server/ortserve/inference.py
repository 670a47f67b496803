"""The data plane: resolve the version, check the inputs against its config, run, shape the answer.

Transport-free: protocol/ turns gRPC messages into an ``InferRequest`` and an ``InferResponse``
back into a message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from ortserve.datatypes import CONFIG_TO_WIRE
from ortserve.errors import InvalidInput, OrtserveError
from ortserve.observability.metrics import Metrics, reason_label
from ortserve.registry.registry import ModelRegistry
from ortserve.registry.versions import ServedVersion
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
    timeout_s: float | None = None  # the caller's own deadline (gRPC), seconds from now


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
    def __init__(self, registry: ModelRegistry, metrics: Metrics | None = None) -> None:
        self._registry = registry
        self._metrics = metrics

    async def infer(self, request: InferRequest) -> InferResponse:
        started = time.perf_counter_ns()
        served: ServedVersion | None = None
        try:
            # The lease keeps this version's sessions open until the answer is built, even if
            # a newer version is swapped in meanwhile.
            with self._registry.lease(request.model_name, request.model_version) as served:
                if self._metrics is not None:
                    self._metrics.pending.labels(served.model_name).inc()
                try:
                    return await self._run(served, request)
                finally:
                    if self._metrics is not None:
                        self._metrics.pending.labels(served.model_name).dec()
        except (OrtserveError, asyncio.CancelledError) as exc:
            self._failed(served, exc, started)
            raise

    async def _run(self, served: ServedVersion, request: InferRequest) -> InferResponse:
        started = time.perf_counter_ns()
        feeds = check_inputs(served, request.inputs)
        names = check_outputs(served, request.outputs)
        priority, timeout_us = _queue_parameters(request.parameters)
        deadline = None
        if request.timeout_s is not None:
            deadline = asyncio.get_running_loop().time() + request.timeout_s
        result = await served.executor.submit(
            feeds, priority=priority, timeout_microseconds=timeout_us, deadline=deadline
        )
        times = result.times
        served.executor.statistics.record_success(
            _rows(served, feeds), time.perf_counter_ns() - started, result.queue_ns, times
        )
        if self._metrics is not None:
            self._metrics.requests.labels(served.model_name).inc()
            self._metrics.queue.labels(served.model_name).observe(result.queue_ns / 1e9)
        wire_types = {out.name: CONFIG_TO_WIRE[out.data_type] for out in served.config.output}
        compute_ns = times.input_ns + times.infer_ns + times.output_ns
        return InferResponse(
            model_name=served.model_name,
            model_version=str(served.version),
            id=request.id,
            outputs=[OutputTensor(name, wire_types[name], result.outputs[name]) for name in names],
            parameters={
                "queue_us": result.queue_ns // 1000,
                "compute_us": compute_ns // 1000,
                "batch_size": result.batch_rows,
            },
        )

    def _failed(self, served: ServedVersion | None, exc: BaseException, started: int) -> None:
        if served is not None:
            served.executor.statistics.record_failure(time.perf_counter_ns() - started)
        if self._metrics is not None:
            reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else reason_label(exc)
            # Unknown model names are not labels: a caller could grow the series without bound.
            label = served.model_name if served is not None else ""
            self._metrics.failures.labels(label, reason).inc()


def _rows(served: ServedVersion, feeds: dict[str, Array]) -> int:
    if served.config.max_batch_size == 0:
        return 1
    return int(next(iter(feeds.values())).shape[0]) if feeds else 1


def _queue_parameters(parameters: dict[str, Any]) -> tuple[int, int]:
    """Triton's request parameters ``priority`` and ``timeout`` (microseconds)."""
    values = []
    for key in ("priority", "timeout"):
        value = parameters.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInput(
                f"request parameter '{key}' must be a non-negative integer, got {value!r}"
            )
        values.append(value)
    return values[0], values[1]


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
