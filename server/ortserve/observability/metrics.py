"""Prometheus metrics, in a registry of the daemon's own (no process-global state).

- ``ortserve_requests_total{model}``: ModelInfer requests answered successfully.
- ``ortserve_request_failures_total{model,reason}``: requests refused or failed, by reason
  (``invalid_input``, ``model_not_found``, ``overloaded``, ``deadline_expired``, ``cancelled``...;
  ``model`` is empty when the model is unknown).
- ``ortserve_queue_duration_seconds{model}``: time from arrival to the start of its batch.
- ``ortserve_compute_duration_seconds{model}``: input stacking + session run + output split.
- ``ortserve_batch_size{model}``: rows per executed batch.
- ``ortserve_pending_requests{model}``: requests admitted and not yet answered.
- ``ortserve_model_loads_total{model,result}``: version loads, ``result`` success or failure.
- ``ortserve_model_unloads_total{model}``: versions drained and unloaded.
- ``ortserve_model_ready{model}``: 1 while the model serves, 0 otherwise.
- ``ortserve_tokens_total{model,kind}``: text models: tokens run, ``kind`` real (the texts) or
  padded (what the batches ran, padding included); padded / real is the padding ratio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def reason_label(exc: BaseException) -> str:
    """``ModelNotFound`` -> ``model_not_found``: the failure reason label."""
    return _CAMEL.sub("_", type(exc).__name__).lower()


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """One model's metric children, resolved once: ``labels()`` is too slow per request.

    Fed only through ``observability.recorder.VersionRecorder`` (the ``ModelSeries`` it feeds)."""

    requests: Counter
    queue: Histogram
    compute: Histogram
    batch_size: Histogram
    pending_requests: Gauge
    real_tokens: Counter
    padded_tokens: Counter

    def pending(self, delta: int) -> None:
        self.pending_requests.inc(delta)

    def answered(self, queue_s: float) -> None:
        self.requests.inc()
        self.queue.observe(queue_s)

    def executed(self, rows: int, compute_s: float) -> None:
        self.batch_size.observe(rows)
        self.compute.observe(compute_s)

    def tokens(self, real: int, padded: int) -> None:
        self.real_tokens.inc(real)
        self.padded_tokens.inc(padded)


class Metrics:
    def __init__(self) -> None:
        self._models: dict[str, ModelMetrics] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ortserve_requests", "Successful ModelInfer requests", ["model"], registry=self.registry
        )
        self.failures = Counter(
            "ortserve_request_failures",
            "Failed or refused ModelInfer requests, by reason",
            ["model", "reason"],
            registry=self.registry,
        )
        self.queue = Histogram(
            "ortserve_queue_duration_seconds",
            "Time a request waited before its batch started",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute = Histogram(
            "ortserve_compute_duration_seconds",
            "Compute time of an executed batch (input prep, session run, output split)",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "ortserve_batch_size",
            "Rows per executed batch",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "ortserve_tokens",
            "Tokens run by text models: real (the texts) and padded (padding included)",
            ["model", "kind"],
            registry=self.registry,
        )
        self.loads = Counter(
            "ortserve_model_loads",
            "Model version loads, by result (success or failure)",
            ["model", "result"],
            registry=self.registry,
        )
        self.unloads = Counter(
            "ortserve_model_unloads",
            "Model versions drained and unloaded",
            ["model"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "ortserve_model_ready", "1 while the model serves", ["model"], registry=self.registry
        )
        self.pending = Gauge(
            "ortserve_pending_requests",
            "Requests admitted and not yet answered",
            ["model"],
            registry=self.registry,
        )

    def model(self, name: str) -> ModelMetrics:
        found = self._models.get(name)
        if found is None:
            found = self._models[name] = ModelMetrics(
                requests=self.requests.labels(name),
                queue=self.queue.labels(name),
                compute=self.compute.labels(name),
                batch_size=self.batch_size.labels(name),
                pending_requests=self.pending.labels(name),
                real_tokens=self.tokens.labels(name, "real"),
                padded_tokens=self.tokens.labels(name, "padded"),
            )
        return found

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP; returns the bound port (``port`` 0 picks one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
