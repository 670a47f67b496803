"""Triton-style model statistics, kept per model version (transport-free).

Semantics follow Triton's ModelStatistics: ``inference_count`` counts rows (a request of batch 4
counts 4), ``execution_count`` counts session runs; success/fail/queue and the compute durations
are per request (each request of a batch is charged its batch's compute times), ``batch_stats``
is per executed batch size. A model that answers a request several times (decoupled: a generation
model) also has ``responses``, Triton's ``response_stats``: by the response's index in its
request ("0" is the first: its ``compute_infer`` is the time to the first text), the time each
took since the one before, as success, failure, cancellation or an empty final response.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class ComputeTimes:
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


@dataclass(slots=True)
class BatchStatistics:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


#: Response indexes kept in ``response_stats`` (a long generation's later responses are not
#: broken down further, so that the statistics stay bounded).
MAX_RESPONSE_INDEXES = 256
RESPONSE_OUTCOMES = ("success", "fail", "empty_response", "cancel")


@dataclass(slots=True)
class ResponseStatistics:
    compute_infer: Duration = field(default_factory=Duration)
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    empty_response: Duration = field(default_factory=Duration)
    cancel: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class VersionStatistics:
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStatistics] = field(default_factory=dict)
    responses: dict[int, ResponseStatistics] = field(default_factory=dict)  # decoupled models
    real_tokens: int = 0  # text models: tokens of the texts themselves
    padded_tokens: int = 0  # text models: tokens run, padding included

    @property
    def padding_ratio(self) -> float:
        return self.padded_tokens / self.real_tokens if self.real_tokens else 1.0

    def record_tokens(self, real: int, padded: int) -> None:
        self.real_tokens += real
        self.padded_tokens += padded

    def record_execution(self, rows: int, times: ComputeTimes) -> None:
        """One session run of ``rows`` rows."""
        self.execution_count += 1
        stats = self.batches.get(rows)
        if stats is None:
            stats = self.batches[rows] = BatchStatistics()
        stats.compute_input.add(times.input_ns)
        stats.compute_infer.add(times.infer_ns)
        stats.compute_output.add(times.output_ns)

    def record_success(self, rows: int, total_ns: int, queue_ns: int, times: ComputeTimes) -> None:
        """One request answered."""
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.success.add(total_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(times.input_ns)
        self.compute_infer.add(times.infer_ns)
        self.compute_output.add(times.output_ns)

    def record_response(self, index: int, ns: int, outcome: str) -> None:
        """Response ``index`` of a request, ``ns`` after the one before (or the request's
        arrival); ``outcome`` one of ``RESPONSE_OUTCOMES``."""
        if index >= MAX_RESPONSE_INDEXES:
            return
        stats = self.responses.get(index)
        if stats is None:
            stats = self.responses[index] = ResponseStatistics()
        getattr(stats, outcome).add(ns)
        if outcome == "success":
            stats.compute_infer.add(ns)

    def record_failure(self, total_ns: int) -> None:
        self.fail.add(total_ns)
