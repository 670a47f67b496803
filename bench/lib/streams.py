"""bench.generation's measuring: prompts driven through a token stream N at a time, each piece
timed as it arrives, and what the host did meanwhile.

A ``Stream`` is one request: given a prompt it yields, per piece that arrives (a Delta in process,
a streamed response over gRPC), the number of tokens in it. ``measure`` runs every prompt through
it with a closed loop of ``streams`` workers (a worker takes the next prompt when its previous one
ends), bounded by a time budget, and sums it up as a ``Run``: aggregate tokens/s, time to first
token, inter-token latency (gaps between the pieces of one request), the rows the engine decoded
(sampled) and CPU shares from /proc.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from bench.lib.procstat import machine_busy, main_thread_cpu, process_cpu, self_cpu

#: One request: yields the tokens in each piece as it arrives.
Stream = Callable[[str], AsyncIterator[int]]


@dataclass
class Trace:
    """One request, timed on the driver's clock (perf_counter)."""

    start: float
    arrivals: list[float] = field(default_factory=list)
    tokens: int = 0


@dataclass
class Run:
    """One mode at one concurrency, in one round."""

    mode: str  # "in-process" | "served"
    streams: int
    round: int
    requests: int
    tokens: int
    pieces: int
    wall_s: float
    tokens_per_s: float
    ms_per_token: float  # wall / tokens: the aggregate cost of one token
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    mean_rows: float = 0.0  # rows decoding, sampled while the run went on
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core (the machine has 2)

    def count_tokens(self, per_request: int) -> None:
        """Tokens known per request rather than counted (a streamed response carries text, and
        text held back for a multi-byte character joins the next one)."""
        self.tokens = self.requests * per_request
        self.tokens_per_s = self.tokens / self.wall_s
        self.ms_per_token = self.wall_s * 1e3 / self.tokens


@dataclass
class Probe:
    """What is watched during a run: the CPU of the process that runs the engine (``pid``) and
    the rows its engine decodes (``rows``, sampled every ``every`` s)."""

    pid: int
    rows: Callable[[], Awaitable[int]]
    every: float


def summarize(mode: str, streams: int, rnd: int, traces: list[Trace], wall: float) -> Run:
    firsts = [(t.arrivals[0] - t.start) * 1e3 for t in traces if t.arrivals]
    gaps = [g * 1e3 for t in traces for g in np.diff(t.arrivals)]
    tokens = sum(t.tokens for t in traces)
    return Run(
        mode=mode,
        streams=streams,
        round=rnd,
        requests=len(traces),
        tokens=tokens,
        pieces=sum(len(t.arrivals) for t in traces),
        wall_s=wall,
        tokens_per_s=tokens / wall,
        ms_per_token=wall * 1e3 / tokens,
        ttft_p50_ms=float(np.percentile(firsts, 50)),
        ttft_p99_ms=float(np.percentile(firsts, 99)),
        itl_p50_ms=float(np.percentile(gaps, 50)) if gaps else float("nan"),
        itl_p99_ms=float(np.percentile(gaps, 99)) if gaps else float("nan"),
    )


async def drive(
    texts: list[str], streams: int, stream: Stream, budget: float
) -> tuple[list[Trace], float]:
    """Every prompt through ``stream``, ``streams`` at a time (closed loop); TimeoutError past
    ``budget`` seconds."""
    pending = list(reversed(texts))
    traces: list[Trace] = []

    async def worker() -> None:
        while pending:
            text = pending.pop()
            trace = Trace(time.perf_counter())
            traces.append(trace)
            async for tokens in stream(text):
                trace.arrivals.append(time.perf_counter())
                trace.tokens += tokens

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(streams))), budget)
    return traces, time.perf_counter() - started


def _cpu(pid: int) -> dict[str, float]:
    return {
        "wall": time.perf_counter(),
        "machine": machine_busy(),
        "engine": process_cpu(pid),
        "loop": main_thread_cpu(pid),
        "driver": self_cpu(),
    }


def _shares(before: dict[str, float], after: dict[str, float], pid: int) -> dict[str, float]:
    """% of one core: the engine's process (and its event-loop thread), the driver (this
    process, when it is not the engine's) and everything else on the machine."""
    d = {key: after[key] - before[key] for key in before}
    apart = pid != os.getpid()
    ours = d["engine"] + (d["driver"] if apart else 0.0)
    shares: dict[str, float] = {key: round(100 * d[key] / d["wall"]) for key in ("engine", "loop")}
    if apart:
        shares["driver"] = round(100 * d["driver"] / d["wall"])
    shares["other"] = round(100 * max(d["machine"] - ours, 0.0) / d["wall"])
    return shares


async def _sample(probe: Probe, into: list[int]) -> None:
    while True:
        into.append(await probe.rows())
        await asyncio.sleep(probe.every)


async def measure(
    mode: str, streams: int, rnd: int, texts: list[str], stream: Stream, probe: Probe, budget: float
) -> Run:
    """One run: ``texts`` through ``stream`` at ``streams`` concurrent, watched by ``probe``."""
    rows: list[int] = []
    sampler = asyncio.ensure_future(_sample(probe, rows))
    before = _cpu(probe.pid)
    try:
        traces, wall = await drive(texts, streams, stream, budget)
    finally:
        sampler.cancel()
    run = summarize(mode, streams, rnd, traces, wall)
    run.cpu = _shares(before, _cpu(probe.pid), probe.pid)
    run.mean_rows = float(np.mean(rows)) if rows else float("nan")
    return run
