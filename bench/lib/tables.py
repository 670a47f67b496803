"""bench.ratio's report: the served table, raw and layer lines, the targets, the profile; and
the results folder's table.md and results.json.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.lib.layers import LAYERS
from bench.lib.perf_analyzer import PaResult
from bench.lib.procstat import cpu_pressure
from bench.lib.raw import RawResult
from bench.lib.variants import base


@dataclass
class HostLoad:
    """The load average (1/5/15 min) and the CPU pressure (avg10): the host around a run."""

    load: tuple[float, float, float]
    psi: str

    @classmethod
    def read(cls) -> HostLoad:
        return cls(os.getloadavg(), cpu_pressure())


@dataclass
class Outcome:
    """Everything one run of bench.ratio measured, as written to results.json."""

    stamp: str
    before: HostLoad
    after: HostLoad | None = None
    raw: dict[str, RawResult] = field(default_factory=dict)
    served: list[PaResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, Any] | None = None


def table(results: Sequence[PaResult], raw: dict[str, RawResult]) -> list[str]:
    ceiling = max((r.best_rate for r in raw.values()), default=float("nan"))
    lines = [
        "| variant | c | infer/s | ÷ raw best | ÷ ceiling | ÷ raw now | p50 ms | p99 ms "
        "| queue µs | compute µs | overhead µs | mean batch | daemon CPU (loop) "
        "| perf_analyzer CPU | other CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def na(value: Any) -> str:
        return "—" if value is None else str(value)

    for r in sorted(results, key=lambda r: (r.variant, r.concurrency, r.version_flag)):
        c = f"{r.concurrency}{' (-x 1)' if r.version_flag else ''}"
        if r.ok and r.attempts > 1:
            c += f" ({r.flags})"
        cpu = (
            f"{r.cpu.get('daemon_pct', '')}% ({r.cpu.get('daemon_loop_pct', '')}%) "
            f"| {r.cpu.get('perf_analyzer_pct', '')}% | {r.cpu.get('other_pct', '')}%"
        )
        if not r.ok:
            lines.append(f"| {r.variant} | {c} | — ({r.note}) | | | | | | | | | | {cpu} |")
            continue
        mine = raw.get(base(r.variant))
        own = r.infer_per_s / mine.best_rate if mine is not None else float("nan")
        batch = f"{r.mean_batch:.1f}" if r.mean_batch else "—"
        lines.append(
            f"| {r.variant} | {c} | {r.infer_per_s:.0f} | {own:.2f} "
            f"| {r.infer_per_s / ceiling:.2f} "
            f"| {r.infer_per_s / r.raw_now_rate if r.raw_now_rate else float('nan'):.2f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {na(r.queue_us)} | {na(r.compute_us)} "
            f"| {na(r.server_overhead_us)} | {batch} | {cpu} |"
        )
    return lines


def layer_lines(raw: dict[str, RawResult], results: Sequence[PaResult]) -> list[str]:
    lines = []
    for name, r in raw.items():
        layers = r.layers
        if not layers:
            continue
        if "error" in layers:
            lines.append(f"- in-process layers `{name}`: failed ({layers['error']})")
            continue
        steps = [("raw session.run", r.b1_p50_ms)]
        steps += [(label, layers[f"{key}_p50_ms"]) for key, label in LAYERS]
        served = [
            x
            for x in results
            if x.variant == name and x.concurrency == 1 and x.ok and not x.version_flag
        ]
        if served:
            steps.append(
                ("+ gRPC transport and perf_analyzer's client (served, c=1)", served[0].p50_ms)
            )
        parts = [f"{steps[0][0]} {steps[0][1]:.2f}"]
        for (_, before), (label, value) in itertools.pairwise(steps):
            parts.append(f"{label} {value:.2f} ({value - before:+.2f})")
        lines.append(
            f"- c=1 p50 by layer, ms, `{name}`: "
            + " → ".join(parts)
            + f" (an executor round trip with a no-op alone: {layers['hop_p50_ms']:.3f})"
        )
        batch = layers.get("full_mean_batch")
        lines.append(
            f"- in-process full path (no gRPC, no load generator) at "
            f"{layers['full_concurrency']} concurrent tasks, `{name}`: "
            f"{layers['full_infer_per_s']:.0f} infer/s = "
            f"{layers['full_infer_per_s'] / r.best_rate:.2f}x raw best"
            + (f", mean batch {batch:.1f}" if batch else "")
        )
    return lines


def raw_lines(raw: dict[str, RawResult]) -> list[str]:
    lines = []
    for name, r in raw.items():
        rates = ", ".join(f"{b}: {v:.0f}" for b, v in r.rates.items())
        lines.append(
            f"- raw ORT `{name}`: best {r.best_rate:.0f} seq/s at batch {r.best_batch}; "
            f"batch-1 p50 {r.b1_p50_ms:.2f} ms, p99 {r.b1_p99_ms:.2f} ms "
            f"(seq/s by batch: {rates}; other processes {r.other_pct}% CPU)"
        )
    return lines


def target_lines(results: Sequence[PaResult], raw: dict[str, RawResult]) -> list[str]:
    """c=64 is judged against the ceiling: the best raw rate of any variant's options."""
    lines = []
    labels = dict.fromkeys(x.variant for x in results if base(x.variant) in raw)
    ceiling = max(raw.values(), key=lambda r: r.best_rate)
    for name in labels:
        r = raw[base(name)]
        mine = {
            x.concurrency: x for x in results if x.variant == name and x.ok and not x.version_flag
        }
        if 64 in mine:
            ratio = mine[64].infer_per_s / ceiling.best_rate
            verdict = "met" if ratio >= 0.9 else "NOT met"
            now = mine[64].raw_now_rate
            lines.append(
                f"- `{name}` c=64: {mine[64].infer_per_s:.0f} / {ceiling.best_rate:.0f} = "
                f"{ratio:.2f}x the raw ceiling (target ≥ 0.90: {verdict}); "
                f"{mine[64].infer_per_s / r.best_rate:.2f}x its own options' raw best"
                + (
                    f"; against raw probed around the run ({now:.0f}): "
                    f"{mine[64].infer_per_s / now:.2f}x"
                    if now
                    else ""
                )
            )
        if 1 in mine:
            diff = mine[1].p50_ms - r.b1_p50_ms
            verdict = "met" if diff <= 0.5 else "NOT met"
            now_p50 = mine[1].raw_now_b1_p50_ms
            lines.append(
                f"- `{name}` c=1: served p50 {mine[1].p50_ms:.2f} ms - raw batch-1 p50 "
                f"{r.b1_p50_ms:.2f} ms = {diff:+.2f} ms (target ≤ +0.50: {verdict})"
                + (
                    f"; against raw probed around the run ({now_p50:.2f} ms): "
                    f"{mine[1].p50_ms - now_p50:+.2f} ms"
                    if now_p50
                    else ""
                )
            )
    return lines


def profile_lines(summary: dict[str, Any]) -> list[str]:
    served = summary.get("served") or {}
    lines = [
        f"- daemon CPU over the 20 s: {summary['daemon_cpu_s']} s "
        f"({100 * summary['daemon_cpu_s'] / 20:.0f}% of one core); py-spy samples "
        f"{summary['samples']}; served meanwhile {served.get('infer_per_s', 0):.0f} infer/s "
        "(py-spy slows what it samples: compare with the table's c=64 row)",
        "- % of daemon CPU by category: "
        + ", ".join(f"{k} {v}%" for k, v in summary["categories_pct_of_daemon_cpu"].items()),
    ]
    for thread in summary["threads"][:6]:
        split = ", ".join(f"{k} {v}%" for k, v in thread["split_pct_of_daemon"].items())
        lines.append(
            f"  - {thread['name']} ({thread['tid']}): {thread['cpu_s']} s = "
            f"{thread['cpu_pct_of_daemon']}%: {split}"
        )
    lines.append(
        "- event-loop thread, busy samples by leaf ← caller: "
        + "; ".join(
            f"{k} {v}%"
            for k, v in list(summary["main_thread_top_pct_of_its_busy_samples"].items())[:10]
        )
    )
    return lines


def report(run: Outcome, elapsed_s: float, command: str) -> str:
    """The text printed at the end and written to table.md."""
    after = run.after or run.before
    lines = [
        f"Run {run.stamp} ({elapsed_s:.0f} s): `{command}`",
        f"load average (1/5/15 min) before {' '.join(f'{x:.2f}' for x in run.before.load)} → "
        f"after {' '.join(f'{x:.2f}' for x in after.load)}; "
        f"cpu pressure avg10 {run.before.psi} → {after.psi}",
        "",
        *raw_lines(run.raw),
        "",
        *table(run.served, run.raw),
        "",
        *target_lines(run.served, run.raw),
        *layer_lines(run.raw, run.served),
        *(f"- {note}" for note in run.notes),
    ]
    if run.profile is not None:
        lines += ["", f"Profile (`{run.profile['variant']}`, c=64):", *profile_lines(run.profile)]
    return "\n".join(lines)


def write(out: Path, run: Outcome, text: str) -> None:
    """out/table.md (``text``) and out/results.json (every figure)."""
    after = run.after or run.before
    (out / "table.md").write_text(text + "\n")
    results = {
        "stamp": run.stamp,
        "load_before": run.before.load,
        "load_after": after.load,
        "psi_before": run.before.psi,
        "psi_after": after.psi,
        "raw": {k: asdict(v) for k, v in run.raw.items()},
        "served": [asdict(r) for r in run.served],
        "notes": run.notes,
        "probes": run.probes,
        "profile": run.profile,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
