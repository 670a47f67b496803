"""The one recorder of what happened to requests.

Per version, a ``VersionRecorder`` keeps the Triton-style ``VersionStatistics`` (the statistics
endpoint) and feeds the model's Prometheus series (a null object when metrics are off, so no
caller checks). It is fed from two places only: the data plane (``inference``) records a
request's answer or failure and its time pending, the executor (``execution``) records each batch
run and, for padded batches, its tokens; for a generation model, the engine reports its tokens
and load to it (it is the engine's ``GenerationObserver``). Server-wide, ``count_failure`` counts
refused or failed requests by model and reason, including those that never reached a version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from ortserve.observability.metrics import Metrics, reason_label
from ortserve.observability.statistics import ComputeTimes, VersionStatistics


class ModelSeries(Protocol):
    """A model's Prometheus series (``metrics.ModelMetrics``), as the recorder feeds them."""

    def pending(self, delta: int) -> None: ...

    def answered(self, queue_s: float) -> None: ...

    def executed(self, rows: int, compute_s: float) -> None: ...

    def tokens(self, real: int, padded: int) -> None: ...


class TokenSeries(Protocol):
    """A generation model's Prometheus series (``metrics.GenerationSeries``)."""

    def first_token(self, seconds: float) -> None: ...

    def token_gap(self, seconds: float) -> None: ...

    def finished(self, input_tokens: int, output_tokens: int, reason: str) -> None: ...

    def load(self, running: int, waiting: int, kv_tokens: int) -> None: ...


class _NoTokens:
    """Metrics off (or not a generation model): dropped here."""

    def first_token(self, seconds: float) -> None:
        pass

    def token_gap(self, seconds: float) -> None:
        pass

    def finished(self, input_tokens: int, output_tokens: int, reason: str) -> None:
        pass

    def load(self, running: int, waiting: int, kv_tokens: int) -> None:
        pass


class _NoSeries:
    """Metrics off: every series is dropped here."""

    def pending(self, delta: int) -> None:
        pass

    def answered(self, queue_s: float) -> None:
        pass

    def executed(self, rows: int, compute_s: float) -> None:
        pass

    def tokens(self, real: int, padded: int) -> None:
        pass


class VersionRecorder:
    """What happened to one version's requests and batches."""

    def __init__(
        self, series: ModelSeries | None = None, tokens: TokenSeries | None = None
    ) -> None:
        self.statistics = VersionStatistics()
        self._series: ModelSeries = series if series is not None else _NoSeries()
        self._tokens: TokenSeries = tokens if tokens is not None else _NoTokens()

    @classmethod
    def for_model(
        cls, metrics: Metrics | None, model_name: str, *, generation: bool = False
    ) -> VersionRecorder:
        """A new version's recorder: its own statistics, its model's series (shared by the
        model's versions, as Prometheus labels them by model); ``generation``: with the token
        series of a generation model too."""
        if metrics is None:
            return cls()
        tokens = metrics.generation(model_name) if generation else None
        return cls(metrics.model(model_name), tokens)

    @contextmanager
    def pending(self) -> Iterator[None]:
        """While a request is admitted to this version and not yet answered."""
        self._series.pending(1)
        try:
            yield
        finally:
            self._series.pending(-1)

    def success(self, rows: int, total_ns: int, queue_ns: int, times: ComputeTimes) -> None:
        """One request answered: ``rows`` as the client counts them."""
        self.statistics.record_success(rows, total_ns, queue_ns, times)
        self._series.answered(queue_ns / 1e9)

    def response(self, index: int, ns: int, outcome: str) -> None:
        """Response ``index`` of a request answered several times (see
        ``VersionStatistics.record_response``)."""
        self.statistics.record_response(index, ns, outcome)

    def failure(self, total_ns: int) -> None:
        """One request that reached this version and failed (counted by reason server-wide)."""
        self.statistics.record_failure(total_ns)

    def execution(self, rows: int, times: ComputeTimes) -> None:
        """One session run of ``rows`` rows."""
        self.statistics.record_execution(rows, times)
        self._series.executed(rows, (times.input_ns + times.infer_ns + times.output_ns) / 1e9)

    def tokens(self, real: int, padded: int) -> None:
        """One padded batch: its real positions and those it ran, padding included."""
        self.statistics.record_tokens(real, padded)
        self._series.tokens(real, padded)

    # -- a generation model's engine reports here (ortserve.generation.types.GenerationObserver)

    def first_token(self, seconds: float) -> None:
        """A request's first token, ``seconds`` after it arrived."""
        self._tokens.first_token(seconds)

    def token_gap(self, seconds: float) -> None:
        """A request's next token, ``seconds`` after its previous one."""
        self._tokens.token_gap(seconds)

    def finished(self, input_tokens: int, output_tokens: int, reason: str) -> None:
        """A generation ended (its success or failure is recorded by the data plane)."""
        self._tokens.finished(input_tokens, output_tokens, reason)

    def load(self, running: int, waiting: int, kv_tokens: int) -> None:
        """After each scheduler step (one session run: counted as an execution)."""
        self.statistics.execution_count += 1
        self._tokens.load(running, waiting, kv_tokens)


def count_failure(metrics: Metrics | None, model_label: str, exc: BaseException) -> None:
    """A request refused or failed, by model (``""`` for a name the repository does not know)
    and reason (``cancelled`` when the caller went away)."""
    if metrics is None:
        return
    reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else reason_label(exc)
    metrics.failures.labels(model_label, reason).inc()
