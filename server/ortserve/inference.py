"""The data plane: resolve the version, check the inputs against its config, run, shape the answer.

Transport-free: protocol/ turns gRPC messages into an ``InferRequest`` and an ``InferResponse``
back into a message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from ortserve.errors import InvalidInput, ModelNotReady, OrtserveError
from ortserve.execution import ItemResult, merge_results
from ortserve.observability.metrics import Metrics, reason_label
from ortserve.registry.registry import ModelRegistry
from ortserve.registry.versions import ServedVersion
from ortserve.text.tasks import top_k
from ortserve.text.tokenization import Encoded
from ortserve.validation import check_inputs, check_outputs
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
        self._closing = False
        self.admitted = 0  # requests taken in; each is answered (result or error) exactly once
        self.answered = 0
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def close_admission(self) -> None:
        """From now on, new requests get UNAVAILABLE (clients retry them elsewhere)."""
        self._closing = True

    async def wait_idle(self) -> None:
        """Until every admitted request has been answered."""
        await self._idle.wait()

    async def infer(self, request: InferRequest) -> InferResponse:
        if self._closing:
            raise ModelNotReady("the server is shutting down; send the request to another replica")
        self._in_flight += 1
        self.admitted += 1
        self._idle.clear()
        try:
            return await self._infer(request)
        finally:
            self.answered += 1
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _infer(self, request: InferRequest) -> InferResponse:
        started = time.perf_counter_ns()
        served: ServedVersion | None = None
        try:
            # The lease keeps this version's sessions open until the answer is built, even if
            # a newer version is swapped in meanwhile.
            with self._registry.lease(request.model_name, request.model_version) as served:
                metrics = served.executor.metrics
                if metrics is not None:
                    metrics.pending.inc()
                try:
                    return await self._run(served, request)
                finally:
                    if metrics is not None:
                        metrics.pending.dec()
        except (OrtserveError, asyncio.CancelledError) as exc:
            self._failed(served, exc, started, request.model_name)
            raise

    async def _run(self, served: ServedVersion, request: InferRequest) -> InferResponse:
        started = time.perf_counter_ns()
        priority, timeout_us = _queue_parameters(request.parameters)
        prepared = await _prepare(served, request)
        unknown = set(request.classification) - set(prepared.outputs)
        if unknown:
            raise InvalidInput(f"classification asked for outputs not requested: {sorted(unknown)}")
        deadline = None
        if request.timeout_s is not None:
            deadline = asyncio.get_running_loop().time() + request.timeout_s
        encoded = prepared.encoded
        result = await _submit(served, prepared, priority, timeout_us, deadline)
        times = result.times
        wire_types = served.output_types
        tensors = {
            name: OutputTensor(name, wire_types[name], array)
            for name, array in result.outputs.items()
        }
        if encoded is not None and served.text is not None:
            for task_output in served.text.finish(encoded, result.outputs):
                tensors[task_output.name] = OutputTensor(
                    task_output.name, task_output.datatype, task_output.array
                )
        _classification(
            tensors, request.classification, served.text.labels if served.text else None
        )
        # Counted once the answer is built: a request that fails in post-processing is a failure.
        rows = prepared.client_rows if served.model_config.max_batch_size else 1
        served.executor.statistics.record_success(
            rows, time.perf_counter_ns() - started, result.queue_ns, times
        )
        metrics = served.executor.metrics
        if metrics is not None:
            metrics.requests.inc()
            metrics.queue.observe(result.queue_ns / 1e9)
        compute_ns = times.input_ns + times.infer_ns + times.output_ns
        parameters: dict[str, Any] = {
            "queue_us": result.queue_ns // 1000,
            "compute_us": compute_ns // 1000,
            "batch_size": result.batch_rows,
        }
        if encoded is not None:
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
            served.executor.statistics.record_failure(time.perf_counter_ns() - started)
        if self._metrics is not None:
            reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else reason_label(exc)
            # Only names the repository knows are labels: a caller could grow the series of
            # unknown ones without bound.
            label = model_name if self._registry.knows(model_name) else ""
            self._metrics.failures.labels(label, reason).inc()


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


@dataclass(slots=True)
class _Prepared:
    """A request made ready for the batcher: its feeds and what to answer with."""

    feeds: dict[str, Array]
    outputs: list[str]
    encoded: Encoded | None = None  # text requests: the tokens, for post-processing

    @property
    def rows(self) -> int:
        return int(next(iter(self.feeds.values())).shape[0]) if self.feeds else 1

    @property
    def client_rows(self) -> int:
        """Rows as the client sent them (a text is one row, however many windows it takes)."""
        return len(self.encoded.texts) if self.encoded is not None else self.rows


async def _submit(
    served: ServedVersion,
    prepared: _Prepared,
    priority: int,
    timeout_us: int,
    deadline: float | None,
) -> ItemResult:
    """Queue the request. A text request whose question-answering windows outnumber
    ``max_batch_size`` goes in slices that each fit a batch; more texts than that is the
    client's own excess, refused by the batcher as for any model."""
    encoded = prepared.encoded
    length = encoded.length if encoded is not None else None

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
    if encoded is None or not limit or rows <= limit or prepared.client_rows > limit:
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


async def _prepare(served: ServedVersion, request: InferRequest) -> _Prepared:
    where = served.label
    text = served.text
    texts = text.texts(request.inputs) if text is not None else None
    if text is None or texts is None:
        raw = served.model_config
        feeds = check_inputs(raw, request.inputs, where)
        available = [out.name for out in raw.output]
        note = " for token inputs; task outputs need TEXT" if text is not None else ""
        return _Prepared(feeds, check_outputs(available, request.outputs, where, note))
    task_outputs = text.task_output_names()
    available = task_outputs + [out.name for out in served.model_config.output]
    names = check_outputs(available, request.outputs, where) if request.outputs else task_outputs
    # Tokenizing runs in a worker thread: tokenizers releases the GIL while it works.
    encoded = await asyncio.to_thread(text.encoder.encode, *texts)
    return _Prepared(encoded.feeds, names, encoded)


def _classification(
    outputs: dict[str, OutputTensor], asked: dict[str, int], labels: dict[int, str] | None
) -> None:
    """Triton's classification extension: an FP32 output becomes its top k as BYTES."""
    for name, k in asked.items():
        tensor = outputs[name]
        if tensor.datatype != "FP32" or tensor.array.ndim < 2:
            raise InvalidInput(
                f"output '{name}': classification needs a batched FP32 output, it is "
                f"{tensor.datatype} {list(tensor.array.shape)}"
            )
        outputs[name] = OutputTensor(name, "BYTES", top_k(tensor.array, k, labels))
