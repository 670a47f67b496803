"""The data plane: resolve the version, prepare the request, batch and run it, finish the answer.

What a request is before and after the batcher is the version's adapter's business
(``ortserve.adapters``: a tensor model's, or a text task's); the path here is the same for every
kind of model. A model that runs itself (a ``StreamingAdapter``: a generation model) takes the
prepared request instead of the batcher and may answer it several times (``infer_stream``). What
happened to a request is recorded once, in the version's recorder.

Transport-free: protocol/ turns gRPC messages into an ``InferRequest`` and an ``InferResponse``
back into a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ortserve.adapters import OutputTensor, Prepared, StreamingAdapter
from ortserve.errors import InvalidInput, ModelNotReady, OrtserveError
from ortserve.execution import ItemResult, merge_results
from ortserve.lifecycle import Admission
from ortserve.observability.metrics import Metrics
from ortserve.observability.recorder import count_failure
from ortserve.observability.statistics import ComputeTimes
from ortserve.registry.models import ModelRegistry
from ortserve.registry.versions import ServedVersion
from ortserve_client.tensors import Array, DecodedTensor

#: Triton's request parameter: a decoupled model's last response is an empty one that only
#: carries the final flag (otherwise the flag rides on the last response with outputs).
EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"


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
    final: bool | None = None  # a decoupled model's response: whether it is the request's last


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
        """One final response (a decoupled model's whole answer in one)."""
        async with contextlib.aclosing(self._responses(request, once=True)) as responses:
            async for response in responses:
                return response
        raise AssertionError("a request ended without a response")  # every path answers

    def infer_stream(self, request: InferRequest) -> AsyncGenerator[InferResponse, None]:
        """The responses of one request as they are made: one for most models, one or more for
        a decoupled one (the last with ``final`` true). Close it to abandon the request."""
        return self._responses(request, once=False)

    async def _responses(
        self, request: InferRequest, once: bool
    ) -> AsyncGenerator[InferResponse, None]:
        if not self.admission.open:
            raise ModelNotReady("the server is shutting down; send the request to another replica")
        with self.admission.counted():
            started = time.perf_counter_ns()
            served: ServedVersion | None = None
            answered = False  # the last response has been handed over: leaving now is no failure
            try:
                # The lease keeps this version open until its last response is built, even if
                # a newer version is swapped in meanwhile.
                with (
                    self._registry.lease(request.model_name, request.model_version) as served,
                    served.recorder.pending(),
                ):
                    queue = _queue_parameters(request.parameters)
                    adapter = served.adapter
                    prepared = await adapter.prepare(request.inputs, request.outputs)
                    if isinstance(adapter, StreamingAdapter):
                        replies = self._replies(served, adapter, prepared, request, once, started)
                        async with contextlib.aclosing(replies):
                            async for response in replies:
                                answered = response.final is not False
                                yield response
                    else:
                        response = await self._run(served, prepared, request, queue, started)
                        answered = True
                        yield response
            except (OrtserveError, asyncio.CancelledError) as exc:
                self._failed(served, exc, started, request.model_name)
                raise
            except GeneratorExit:  # the caller left: a failure unless it had its last response
                if not answered:
                    self._failed(served, asyncio.CancelledError(), started, request.model_name)
                raise

    async def _run(
        self,
        served: ServedVersion,
        prepared: Prepared,
        request: InferRequest,
        queue: tuple[int, int],
        started: int,
    ) -> InferResponse:
        """Through the batcher: one response."""
        priority, timeout_us = queue
        adapter = served.adapter
        unknown = set(request.classification) - set(prepared.outputs)
        if unknown:
            raise InvalidInput(f"classification asked for outputs not requested: {sorted(unknown)}")
        result = await _submit(served, prepared, priority, timeout_us, _deadline(request))
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
        return _response(served, request, [tensors[name] for name in prepared.outputs], parameters)

    async def _replies(
        self,
        served: ServedVersion,
        adapter: StreamingAdapter,
        prepared: Prepared,
        request: InferRequest,
        once: bool,
        started: int,
    ) -> AsyncGenerator[InferResponse, None]:
        """A model that runs itself: its replies as responses (``final`` None when ``once``).
        With Triton's empty-final option (a stream only), the last reply goes out unflagged and
        an empty response ends it."""
        if request.classification:
            raise InvalidInput("classification is not offered by this model")
        empty_final = not once and _flag(request.parameters, EMPTY_FINAL_RESPONSE)
        decoupled = adapter.decoupled and not once
        replies = adapter.respond(prepared, request.parameters, _deadline(request), once=once)
        answered = Answered(served, started)
        async with contextlib.aclosing(replies):
            try:
                async for reply in replies:
                    names = [name for name in prepared.outputs if name in reply.outputs]
                    outputs = [reply.outputs[name] for name in names]
                    if reply.final:  # counted once the whole answer is built
                        answered.done = True
                        total_ns = time.perf_counter_ns() - started
                        served.recorder.success(
                            prepared.client_rows, total_ns, 0, ComputeTimes(infer_ns=total_ns)
                        )
                    answered.response("success")
                    final = reply.final and not empty_final
                    yield _response(served, request, outputs, {}, final if decoupled else None)
            except (asyncio.CancelledError, GeneratorExit):
                if not answered.done:  # closed after its final reply: no cancellation
                    answered.response("cancel")
                raise
            except BaseException:
                answered.response("fail")
                raise
        if empty_final:
            answered.response("empty_response")
            yield _response(served, request, [], {}, True)

    def is_decoupled(self, model_name: str, model_version: str) -> bool:
        """Whether the version a request would reach answers as a decoupled model (False when
        it cannot be resolved: its error says why)."""
        try:
            adapter = self._registry.resolve(model_name, model_version).adapter
        except OrtserveError:
            return False
        return isinstance(adapter, StreamingAdapter) and adapter.decoupled

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


class Answered:
    """The responses of one request answered several times, timed for the statistics."""

    def __init__(self, served: ServedVersion, started: int) -> None:
        self._recorder = served.recorder
        self._index = 0
        self._last = started
        self.done = False  # the final reply has been made

    def response(self, outcome: str) -> None:
        now = time.perf_counter_ns()
        self._recorder.response(self._index, now - self._last, outcome)
        self._index += 1
        self._last = now


def _response(
    served: ServedVersion,
    request: InferRequest,
    outputs: list[OutputTensor],
    parameters: dict[str, Any],
    final: bool | None = None,
) -> InferResponse:
    return InferResponse(
        model_name=served.model_name,
        model_version=str(served.version),
        id=request.id,
        outputs=outputs,
        parameters=parameters,
        final=final,
    )


def _deadline(request: InferRequest) -> float | None:
    """The caller's deadline on the event loop's clock (the batcher's and the engine's)."""
    if request.timeout_s is None:
        return None
    return asyncio.get_running_loop().time() + request.timeout_s


def _flag(parameters: Mapping[str, Any], key: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"request parameter '{key}' must be a bool, got {value!r}")
    return value


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
