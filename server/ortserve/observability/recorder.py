"""The one recorder of what happened to requests.

Per version, a ``VersionRecorder`` keeps the Triton-style ``VersionStatistics`` (the statistics
endpoint) and feeds the model's Prometheus series (a null object when metrics are off, so no
caller checks). It is fed from two places only: the data plane (``inference``) records a
request's answer or failure and its time pending, the executor (``execution``) records each batch
run and, for padded batches, its tokens. Server-wide, ``count_failure`` counts refused or failed
requests by model and reason, including those that never reached a version.
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

    def __init__(self, series: ModelSeries | None = None) -> None:
        self.statistics = VersionStatistics()
        self._series: ModelSeries = series if series is not None else _NoSeries()

    @classmethod
    def for_model(cls, metrics: Metrics | None, model_name: str) -> VersionRecorder:
        """A new version's recorder: its own statistics, its model's series (shared by the
        model's versions, as Prometheus labels them by model)."""
        return cls(metrics.model(model_name) if metrics is not None else None)

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


def count_failure(metrics: Metrics | None, model_label: str, exc: BaseException) -> None:
    """A request refused or failed, by model (``""`` for a name the repository does not know)
    and reason (``cancelled`` when the caller went away)."""
    if metrics is None:
        return
    reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else reason_label(exc)
    metrics.failures.labels(model_label, reason).inc()
