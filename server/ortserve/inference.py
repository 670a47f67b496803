"""The data plane: resolve the version, prepare the request, batch and run it, finish the answer.

What a request is before and after the batcher is the version's adapter's business
(``ortserve.adapters``: a tensor model's, or a text task's); the path here is the same for every
kind of model. What happened to it is recorded once, in the version's recorder.

Transport-free: protocol/ turns gRPC messages into an ``InferRequest`` and an ``InferResponse``
back into a message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ortserve.adapters import OutputTensor, Prepared
from ortserve.errors import InvalidInput, ModelNotReady, OrtserveError
from ortserve.execution import ItemResult, merge_results
from ortserve.lifecycle import Admission
from ortserve.observability.metrics import Metrics
from ortserve.observability.recorder import count_failure
from ortserve.registry.models import ModelRegistry
from ortserve.registry.versions import ServedVersion
from ortserve_client.tensors import Array, DecodedTensor


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str
    id: str
    inputs: list[DecodedTensor]
    outputs: list[str]  # requested output names; empty means all
    parameters: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None  # the caller's own deadline (gRPC), seconds from now
    classification: dict[str, int] = field(default_factory=dict)  # output -> top k asked


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    parameters: dict[str, Any] = field(default_factory=dict)


class InferenceService:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics | None = None,
        admission: Admission | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        # Requests taken in and answered, and the refusal of new ones once a shutdown has begun:
        # the daemon owns it (its shutdown closes it, waits on it and logs its counts).
        self.admission = admission if admission is not None else Admission()

    async def infer(self, request: InferRequest) -> InferResponse:
        if not self.admission.open:
            raise ModelNotReady("the server is shutting down; send the request to another replica")
        with self.admission.counted():
            return await self._infer(request)

    async def _infer(self, request: InferRequest) -> InferResponse:
        started = time.perf_counter_ns()
        served: ServedVersion | None = None
        try:
            # The lease keeps this version's sessions open until the answer is built, even if
            # a newer version is swapped in meanwhile.
            with (
                self._registry.lease(request.model_name, request.model_version) as served,
                served.recorder.pending(),
            ):
                return await self._run(served, request)
        except (OrtserveError, asyncio.CancelledError) as exc:
            self._failed(served, exc, started, request.model_name)
            raise

    async def _run(self, served: ServedVersion, request: InferRequest) -> InferResponse:
        started = time.perf_counter_ns()
        priority, timeout_us = _queue_parameters(request.parameters)
        adapter = served.adapter
        prepared = await adapter.prepare(request.inputs, request.outputs)
        unknown = set(request.classification) - set(prepared.outputs)
        if unknown:
            raise InvalidInput(f"classification asked for outputs not requested: {sorted(unknown)}")
        deadline = None
        if request.timeout_s is not None:
            deadline = asyncio.get_running_loop().time() + request.timeout_s
        result = await _submit(served, prepared, priority, timeout_us, deadline)
        tensors = adapter.finish(prepared, result.outputs)
        _classification(tensors, request.classification, adapter.labels)
        # Counted once the answer is built: a request that fails in post-processing is a failure.
        times = result.times
        served.recorder.success(
            prepared.client_rows, time.perf_counter_ns() - started, result.queue_ns, times
        )
        compute_ns = times.input_ns + times.infer_ns + times.output_ns
        parameters: dict[str, Any] = {
            "queue_us": result.queue_ns // 1000,
            "compute_us": compute_ns // 1000,
            "batch_size": result.batch_rows,
        }
        if prepared.length is not None:  # a paddable request: how much of its batch was padding
            parameters["padding_ratio"] = round(result.padding_ratio, 4)
        return InferResponse(
            model_name=served.model_name,
            model_version=str(served.version),
            id=request.id,
            outputs=[tensors[name] for name in prepared.outputs],
            parameters=parameters,
        )

    def check_target(self, model_name: str, model_version: str) -> None:
        """Refuse, as ``infer`` would, a request to a model or version that cannot serve it,
        before its tensors are decoded (decoding a large request costs seconds of CPU)."""
        try:
            self._registry.resolve(model_name, model_version)
        except OrtserveError as exc:
            self._failed(None, exc, 0, model_name)
            raise

    def undecodable(self, model_name: str, exc: InvalidInput) -> InvalidInput:
        """A request whose tensors could not be decoded (after ``check_target``, before
        ``infer``): counted as a failure, and answered with ``exc``."""
        self._failed(None, exc, 0, model_name)
        return exc

    def _failed(
        self, served: ServedVersion | None, exc: BaseException, started: int, model_name: str
    ) -> None:
        if served is not None:
            served.recorder.failure(time.perf_counter_ns() - started)
        # Only names the repository knows are labels: a caller could grow the series of unknown
        # ones without bound.
        label = model_name if self._registry.knows(model_name) else ""
        count_failure(self._metrics, label, exc)


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


async def _submit(
    served: ServedVersion,
    prepared: Prepared,
    priority: int,
    timeout_us: int,
    deadline: float | None,
) -> ItemResult:
    """Queue the request. A splittable request whose rows outnumber ``max_batch_size`` (a
    question's context windows) goes in slices that each fit a batch; more client rows than that
    is the client's own excess, refused by the batcher as for any model."""
    length = prepared.length

    def submit(feeds: dict[str, Array]) -> Awaitable[ItemResult]:
        # Every slice keeps the request's width (length): the outputs line up.
        return served.executor.submit(
            feeds,
            priority=priority,
            timeout_microseconds=timeout_us,
            deadline=deadline,
            length=length,
        )

    limit = served.model_config.max_batch_size
    rows = prepared.rows
    if not prepared.splittable or not limit or rows <= limit or prepared.client_rows > limit:
        return await submit(prepared.feeds)
    slices = [
        {name: array[start : start + limit] for name, array in prepared.feeds.items()}
        for start in range(0, rows, limit)
    ]
    tasks = [asyncio.ensure_future(submit(feeds)) for feeds in slices]
    try:
        parts = await asyncio.gather(*tasks)
    except BaseException:  # one slice failed (or the caller left): the others are no use now
        for task in tasks:
            task.cancel()
        raise
    return merge_results(parts)


def _classification(
    outputs: dict[str, OutputTensor], asked: dict[str, int], labels: Mapping[int, str]
) -> None:
    """Triton's classification extension: an FP32 output becomes its top k as BYTES; ``labels``
    (the adapter's) name the indices."""
    for name, k in asked.items():
        tensor = outputs[name]
        if tensor.datatype != "FP32" or tensor.array.ndim < 2:
            raise InvalidInput(
                f"output '{name}': classification needs a batched FP32 output, it is "
                f"{tensor.datatype} {list(tensor.array.shape)}"
            )
        outputs[name] = OutputTensor(name, "BYTES", top_k(tensor.array, k, labels))


def top_k(scores: Array, k: int, labels: Mapping[int, str] | None = None) -> Array:
    """Per row, the k best as "score:index[:label]" bytes."""
    flat = scores.reshape(scores.shape[0], -1)
    k = min(k, flat.shape[1])
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    out = np.empty((flat.shape[0], k), dtype=np.object_)
    for row in range(flat.shape[0]):
        for col, index in enumerate(order[row]):
            text = f"{flat[row, index]:f}:{int(index)}"
            if labels and int(index) in labels:
                text += f":{labels[int(index)]}"
            out[row, col] = text.encode()
    return out
