"""The one recorder of what happened to requests: statistics and Prometheus fed together."""

from __future__ import annotations

import asyncio

import pytest

from ortserve.errors import Overloaded
from ortserve.observability.metrics import Metrics
from ortserve.observability.recorder import VersionRecorder, count_failure
from ortserve.observability.statistics import ComputeTimes

TIMES = ComputeTimes(input_ns=1_000, infer_ns=2_000_000, output_ns=3_000)


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@pytest.mark.parametrize("metrics_on", [True, False])
def test_one_call_records_statistics_and_metrics(metrics_on: bool) -> None:
    metrics = Metrics()
    recorder = VersionRecorder.for_model(metrics if metrics_on else None, "m")
    with recorder.pending():
        if metrics_on:
            assert _sample(metrics, "ortserve_pending_requests", model="m") == 1
        recorder.execution(4, TIMES)
        recorder.tokens(real=10, padded=16)
        recorder.success(rows=2, total_ns=5_000_000, queue_ns=1_000_000, times=TIMES)
    recorder.failure(total_ns=7)
    stats = recorder.statistics
    assert (stats.inference_count, stats.execution_count) == (2, 1)
    assert (stats.success.count, stats.queue.ns, stats.fail.ns) == (1, 1_000_000, 7)
    assert sorted(stats.batches) == [4]
    assert stats.padding_ratio == 1.6
    counted = {
        ("ortserve_requests_total", ()): 1.0,
        ("ortserve_pending_requests", ()): 0.0,
        ("ortserve_batch_size_sum", ()): 4.0,
        ("ortserve_queue_duration_seconds_count", ()): 1.0,
        ("ortserve_compute_duration_seconds_count", ()): 1.0,
        ("ortserve_tokens_total", (("kind", "real"),)): 10.0,
        ("ortserve_tokens_total", (("kind", "padded"),)): 16.0,
    }
    for (name, extra), value in counted.items():
        got = _sample(metrics, name, model="m", **dict(extra))
        assert got == (value if metrics_on else None), name


def test_versions_of_one_model_share_its_series_not_its_statistics() -> None:
    metrics = Metrics()
    old, new = (VersionRecorder.for_model(metrics, "m") for _ in range(2))
    old.success(1, 1, 1, TIMES)
    new.success(3, 1, 1, TIMES)
    assert (old.statistics.inference_count, new.statistics.inference_count) == (1, 3)
    assert _sample(metrics, "ortserve_requests_total", model="m") == 2


def test_failures_are_counted_by_model_and_reason() -> None:
    metrics = Metrics()
    count_failure(metrics, "m", Overloaded("full"))
    count_failure(metrics, "", asyncio.CancelledError())
    count_failure(None, "m", Overloaded("full"))  # metrics off: nothing to count
    failures = "ortserve_request_failures_total"
    assert _sample(metrics, failures, model="m", reason="overloaded") == 1
    assert _sample(metrics, failures, model="", reason="cancelled") == 1
