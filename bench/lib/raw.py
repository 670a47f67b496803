"""Raw ONNX Runtime in process, with the daemon's own session options: the ceiling to divide by.

``measure_raw`` sweeps batch sizes once up and once down; ``Prober`` takes short probes right
before and after each served run (the host's load moves within seconds).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.lib.encoder import MODEL, feed_row
from bench.lib.procstat import machine_busy, self_cpu


@dataclass
class RawResult:
    rates: dict[int, float]  # batch size -> seq/s
    best_batch: int
    best_rate: float
    b1_p50_ms: float
    b1_p99_ms: float
    other_pct: float = 0.0  # CPU that other processes took meanwhile, % of one core
    layers: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def on_cpu0(pin: bool) -> Iterator[None]:
    """This thread (and the ORT pool threads created meanwhile) on CPU 0 when ``pin``."""
    affinity = os.sched_getaffinity(0)
    try:
        if pin:
            os.sched_setaffinity(0, {0})
        yield
    finally:
        os.sched_setaffinity(0, affinity)


def ort_sessions(repo: Path) -> list[Any]:
    """One session per instance, with exactly the options the daemon builds from the config."""
    import onnxruntime as ort

    from ortserve.repository.config import read_config
    from ortserve.runtime.options import ort_available_providers, provider_plan, session_options

    parsed = read_config(repo / MODEL)
    options = session_options(parsed.config, parsed.source)
    plan = provider_plan(parsed.config, ort_available_providers(), parsed.source)
    count = sum(group.count for group in parsed.config.instance_group) or 1
    return [
        ort.InferenceSession(
            str(repo / MODEL / "1" / "model.onnx"),
            sess_options=options,
            providers=[name for name, _ in plan.providers],
            provider_options=[opts for _, opts in plan.providers],
        )
        for _ in range(count)
    ]


def time_runs(session: Any, batch: int, seconds: float, warm: float = 0.3) -> list[float]:
    """Per-call seconds of back-to-back runs at ``batch``: ``warm`` s warm-up, then ``seconds``."""
    row = feed_row()
    feed = {name: np.repeat(array, batch, axis=0) for name, array in row.items()}
    for phase_seconds, keep in ((warm, False), (seconds, True)):
        times: list[float] = []
        start = time.perf_counter()
        for _ in range(200_000):  # bounded in count as well as in time
            t0 = time.perf_counter()
            session.run(None, feed)
            t1 = time.perf_counter()
            times.append(t1 - t0)
            if t1 - start >= phase_seconds:
                break
        if keep:
            return times
    raise AssertionError("unreachable")


def rate_of(
    sessions: Sequence[Any], batch: int, seconds: float, warm: float = 0.3
) -> tuple[float, list[float]]:
    """Rows/s of all instances running back to back at once (as the daemon's runners would)."""
    if len(sessions) == 1:
        times = time_runs(sessions[0], batch, seconds, warm)
        return batch * len(times) / sum(times), times
    results: list[list[float]] = [[] for _ in sessions]

    def work(index: int) -> None:
        results[index] = time_runs(sessions[index], batch, seconds, warm)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    return sum(batch * len(t) / sum(t) for t in results if t), results[0]


def measure_raw(repo: Path, seconds: float, sizes: Sequence[int]) -> RawResult:
    sessions = ort_sessions(repo)
    rates: dict[int, float] = {}
    wall, busy, mine = time.perf_counter(), machine_busy(), self_cpu()
    b1: list[float] = []
    # Two sweeps, up then down, each size keeping its better figure: one slow second of this
    # shared host must not make the ceiling (and so the served ratio) look better than it is.
    for order in (list(sizes), list(reversed(sizes))):
        for batch in order:
            rate, _ = rate_of(sessions, batch, seconds)
            rates[batch] = max(rates.get(batch, 0.0), rate)
        times = time_runs(sessions[0], 1, seconds)  # one request at a time: one instance busy
        if not b1 or np.percentile(times, 50) < np.percentile(b1, 50):
            b1 = times
    other = (machine_busy() - busy) - (self_cpu() - mine)
    other_pct = round(100 * max(other, 0.0) / (time.perf_counter() - wall))
    del sessions
    gc.collect()
    best = max(rates, key=lambda b: rates[b])
    return RawResult(
        rates,
        best,
        rates[best],
        float(np.percentile(b1, 50) * 1e3),
        float(np.percentile(b1, 99) * 1e3),
        other_pct,
    )


class Prober:
    """Short raw ORT probes right before and after each served run: the ceiling *now*.

    The host's load moves within seconds, so a served figure is divided by the raw rate
    measured around it (mean of the probe before and the one after) as well as by the sweep's.
    """

    def __init__(
        self, repos: dict[str, Path], raw: dict[str, RawResult], seconds: float, pin: bool
    ) -> None:
        self._raw = raw
        self._seconds = seconds
        self._pin = pin
        with on_cpu0(pin):  # ORT's pool threads take the affinity of the thread that creates it
            self._sessions = {name: ort_sessions(repos[name]) for name in raw}
        self.log: list[dict[str, Any]] = []

    def probe(self, variant: str) -> tuple[float, float]:
        """(seq/s at the sweep's best batch, batch-1 p50 ms)."""
        with on_cpu0(self._pin):
            sessions = self._sessions[variant]
            rate, _ = rate_of(sessions, self._raw[variant].best_batch, self._seconds, 0.05)
            p50 = float(np.percentile(time_runs(sessions[0], 1, self._seconds / 2, 0.05), 50))
        self.log.append(
            {"variant": variant, "t": time.time(), "rate": rate, "b1_p50_ms": p50 * 1e3}
        )
        return rate, p50 * 1e3

    def close(self) -> None:
        self._sessions.clear()
        gc.collect()
