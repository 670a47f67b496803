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
- ``ortserve_http_requests_total{route,status}``: requests answered by the HTTP front, by route
  (its endpoint's name: ``infer``, ``embeddings``...; ``unmatched``) and HTTP status. The model
  series above count requests of both protocols.

Generation models (``GenerationSeries``, fed by the engine through the version's recorder):

- ``ortserve_time_to_first_token_seconds{model}``: from a request's arrival to its first token.
- ``ortserve_inter_token_latency_seconds{model}``: between consecutive tokens of one request.
- ``ortserve_generated_tokens_total{model}``: tokens generated (``rate()`` of it: tokens/s);
  ``ortserve_prompt_tokens_total{model}``: prompt tokens of finished requests.
- ``ortserve_generations_total{model,reason}``: requests ended, by finish reason (``length``,
  ``stop``, ``eos``, ``cancelled``).
- ``ortserve_running_sequences{model}``, ``ortserve_waiting_sequences{model}``,
  ``ortserve_kv_tokens{model}``: after each scheduler step, the rows decoding, the requests
  waiting for a row, the KV-cache positions in use.
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


_TOKEN_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
    0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class GenerationSeries:
    """One generation model's series, resolved once (the engine reports every token)."""

    first_token_s: Histogram
    token_gap_s: Histogram
    generated_tokens: Counter
    prompt_tokens: Counter
    finished_by_reason: Counter  # the parent: a child per reason, made on first use
    model: str
    running: Gauge
    waiting: Gauge
    kv_tokens: Gauge

    def first_token(self, seconds: float) -> None:
        self.first_token_s.observe(seconds)
        self.generated_tokens.inc()

    def token_gap(self, seconds: float) -> None:
        self.token_gap_s.observe(seconds)
        self.generated_tokens.inc()

    def finished(self, input_tokens: int, output_tokens: int, reason: str) -> None:
        self.prompt_tokens.inc(input_tokens)
        self.finished_by_reason.labels(self.model, reason).inc()

    def load(self, running: int, waiting: int, kv_tokens: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.kv_tokens.set(kv_tokens)


class Metrics:
    def __init__(self) -> None:
        self._models: dict[str, ModelMetrics] = {}
        self._generation: dict[str, GenerationSeries] = {}
        self._http: dict[tuple[str, int], Counter] = {}
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

        self.http_requests = Counter(
            "ortserve_http_requests",
            "Requests answered by the HTTP front, by route and HTTP status",
            ["route", "status"],
            registry=self.registry,
        )
        self._generation_series()

    def _generation_series(self) -> None:
        registry = self.registry
        self.first_token = Histogram(
            "ortserve_time_to_first_token_seconds",
            "Generation: time from a request's arrival to its first token",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=registry,
        )
        self.token_gap = Histogram(
            "ortserve_inter_token_latency_seconds",
            "Generation: time between consecutive tokens of one request",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=registry,
        )
        self.generated_tokens = Counter(
            "ortserve_generated_tokens",
            "Generation: tokens generated",
            ["model"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "ortserve_prompt_tokens",
            "Generation: prompt tokens of finished requests",
            ["model"],
            registry=registry,
        )
        self.generations = Counter(
            "ortserve_generations",
            "Generation: requests ended, by finish reason",
            ["model", "reason"],
            registry=registry,
        )
        self.running = Gauge(
            "ortserve_running_sequences",
            "Generation: rows decoding",
            ["model"],
            registry=registry,
        )
        self.waiting = Gauge(
            "ortserve_waiting_sequences",
            "Generation: requests waiting for a row",
            ["model"],
            registry=registry,
        )
        self.kv_tokens = Gauge(
            "ortserve_kv_tokens",
            "Generation: KV-cache positions in use",
            ["model"],
            registry=registry,
        )

    def http_request(self, route: str, status: int) -> None:
        """One HTTP request answered (``route``: a fixed name, never the path: bounded series)."""
        child = self._http.get((route, status))
        if child is None:  # labels() is too slow per request: each child is resolved once
            child = self._http[(route, status)] = self.http_requests.labels(route, str(status))
        child.inc()

    def generation(self, name: str) -> GenerationSeries:
        """A generation model's series (shared by its versions, as labels are by model)."""
        found = self._generation.get(name)
        if found is None:
            found = self._generation[name] = GenerationSeries(
                first_token_s=self.first_token.labels(name),
                token_gap_s=self.token_gap.labels(name),
                generated_tokens=self.generated_tokens.labels(name),
                prompt_tokens=self.prompt_tokens.labels(name),
                finished_by_reason=self.generations,
                model=name,
                running=self.running.labels(name),
                waiting=self.waiting.labels(name),
                kv_tokens=self.kv_tokens.labels(name),
            )
        return found

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
