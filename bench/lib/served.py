"""bench.ratio's served runs: perf_analyzer against each variant's daemon, in order of importance,
inside a time budget, each run bracketed by raw ORT probes; then the `-x` check and --profile.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.lib import perf_analyzer
from bench.lib.daemon import Daemon
from bench.lib.perf_analyzer import PaResult
from bench.lib.profile import profile_daemon
from bench.lib.raw import Prober
from bench.lib.variants import base, streaming

X_CHECK_CONCURRENCY = 8
X_CHECK_FLAGS = [["-p", "2000", "-s", "1000", "-r", "3"]]  # any variation: a check, not a figure


def plan_runs(variants: Sequence[str], concurrencies: Sequence[int]) -> list[tuple[int, str]]:
    """Most important first (c=64, then c=1, then the rest high to low), variants interleaved."""
    order = sorted(concurrencies, key=lambda c: (c != 64, c != 1, -c))
    return [(c, v) for c in order for v in variants]


class Budget:
    """Whether the runs left fit the time left; when they do not, the variant that did worse at
    the highest concurrency measured so far is dropped, and when not even one run fits, the rest.
    """

    def __init__(
        self, seconds: float, started: float, reserve_s: float, interval_ms: str, probe_s: float
    ) -> None:
        """``seconds`` from ``started`` (time.monotonic()), less ``reserve_s`` for what follows."""
        self.seconds = seconds
        self._deadline = started + seconds - reserve_s
        self._probe_s = probe_s
        self._estimate = float(interval_ms) / 1000 * 4 + 4  # a run stabilizing in 3-4 windows

    def fit(
        self, pending: list[tuple[int, str]], done: Sequence[PaResult], notes: list[str]
    ) -> list[tuple[int, str]]:
        """The runs still to do; a note for each variant or run given up."""
        if done:  # what runs really take here, probes included
            seen = [r.cpu["wall_s"] + 2 * self._probe_s for r in done]
            self._estimate = max(self._estimate, sum(seen) / len(seen))
        while pending:
            left = self._deadline - time.monotonic()
            alive = sorted({v for _, v in pending})
            if len(pending) * self._estimate <= left or len(alive) < 2:
                break
            worse = self._worse(alive, done)
            if worse is None:
                break
            top_c, at_top = worse
            loser = min(at_top, key=lambda v: at_top[v])
            skipped = ", ".join(f"c={c}" for c, v in pending if v == loser)
            pending = [(c, v) for c, v in pending if v != loser]
            notes.append(
                f"time budget ({self.seconds:.0f} s) short: dropped variant `{loser}` at "
                f"{skipped} (it did worse at c={top_c}: {at_top[loser]:.0f} vs "
                f"{max(at_top.values()):.0f} infer/s)"
            )
        if pending and self._estimate > self._deadline - time.monotonic() + 10:
            notes.append(
                f"time budget ({self.seconds:.0f} s) spent: skipped "
                + ", ".join(f"{v} c={c}" for c, v in pending)
            )
            return []
        return pending

    @staticmethod
    def _worse(
        alive: Sequence[str], done: Sequence[PaResult]
    ) -> tuple[int, dict[str, float]] | None:
        """(highest concurrency every live variant has a figure at, infer/s by variant there)."""
        mine = [r for r in done if r.ok and not r.version_flag and r.variant in alive]
        top_c = max((r.concurrency for r in mine), default=None)
        if top_c is None:
            return None
        at_top = {r.variant: r.infer_per_s for r in mine if r.concurrency == top_c}
        return (top_c, at_top) if len(at_top) == len(alive) else None


@dataclass
class ServedRuns:
    """perf_analyzer ``pa`` against ``daemons`` (by base variant); files under ``out``."""

    pa: str
    daemons: dict[str, Daemon]
    prober: Prober
    data: Path
    out: Path
    flag_sets: list[list[str]]
    cpus: str | None

    def run_all(
        self, plan: list[tuple[int, str]], budget: Budget, notes: list[str]
    ) -> list[PaResult]:
        results: list[PaResult] = []
        pending = budget.fit(plan, results, notes)
        while pending:
            c, name = pending.pop(0)
            results.append(self.one(name, c))
            pending = budget.fit(pending, results, notes)
        return results

    def one(self, name: str, c: int) -> PaResult:
        """One run, with a raw probe before and after it; prints a progress line."""
        before = self.prober.probe(base(name))
        result = perf_analyzer.measure(
            self.pa, self.daemons[base(name)], name, c, self.data, self.out, self.flag_sets,
            streaming=streaming(name), cpus=self.cpus,
        )  # fmt: skip
        after = self.prober.probe(base(name))
        result.raw_now_rate = (before[0] + after[0]) / 2
        result.raw_now_b1_p50_ms = (before[1] + after[1]) / 2
        print(progress_line(result, before[0], after[0]), flush=True)
        return result

    def x_check(self, name: str, notes: list[str]) -> PaResult:
        """c=8 with and without `-x 1`: do server-side statistics come through both ways?"""
        pair = []
        for version in (None, "1"):
            tag = "-xcheck" + ("-x1" if version else "")
            pair.append(
                perf_analyzer.measure(
                    self.pa,
                    self.daemons[name],
                    name,
                    X_CHECK_CONCURRENCY,
                    self.data,
                    self.out,
                    X_CHECK_FLAGS,
                    version=version,
                    cpus=self.cpus,
                    tag=tag,
                )
            )
        for r in pair:
            has = r.ok and r.queue_us is not None and r.server_requests is not None
            notes.append(
                f"-x check ({name}, c={X_CHECK_CONCURRENCY}, "
                f"{'-x 1' if r.version_flag else 'no -x'}): "
                + (
                    f"ok, server stats present: {r.server_requests} requests / "
                    f"{r.server_executions} executions, queue {r.queue_us} µs, compute "
                    f"{r.compute_us} µs (client counted {r.client_requests})"
                    if has
                    else f"FAILED or no server stats ({r.note})"
                )
            )
        return pair[1]

    def profile(
        self, results: Sequence[PaResult], variants: Sequence[str], native: bool
    ) -> dict[str, Any] | None:
        """py-spy the variant that did best at c=64 (the only one, if one)."""
        name = sorted({r.variant for r in results if r.ok} or {variants[0]})[0]
        if len(variants) > 1:
            scored = {
                r.variant: r.infer_per_s
                for r in results
                if r.ok and r.concurrency == 64 and not r.version_flag
            }
            if scored:
                name = max(scored, key=lambda v: scored[v])
        print(f"  profiling `{name}` at c=64 with py-spy (20 s)...", flush=True)
        summary = profile_daemon(
            self.pa, self.daemons[base(name)], name, self.data, self.out, native, self.cpus
        )
        if summary is not None:
            summary["variant"] = name
        return summary


def progress_line(result: PaResult, probe_before: float, probe_after: float) -> str:
    mean = f", mean batch {result.mean_batch:.1f}" if result.mean_batch else ""
    figures = (
        f"{result.infer_per_s:.0f} infer/s, p50 {result.p50_ms:.2f} ms, p99 "
        f"{result.p99_ms:.2f} ms, queue {result.queue_us} µs, compute "
        f"{result.compute_us} µs{mean}"
        if result.ok
        else result.note
    )
    return (
        f"  {result.variant} c={result.concurrency}: {figures}"
        f" [daemon {result.cpu['daemon_pct']}%, other {result.cpu['other_pct']}% CPU;"
        f" raw probes {probe_before:.0f} → {probe_after:.0f} seq/s]"
    )
