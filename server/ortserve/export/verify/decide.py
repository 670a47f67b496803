"""Which variants are published: the rules, apart from the work, so they are testable alone.

- A variant that fails its check blocks the whole run: nothing is published (``--force``
  publishes anyway, and the manifest says so).
- A quantized variant slower than the FP32 graph it came from (p50 at batch 32, the batch the
  daemon runs under load) is reported and left out; the FP32 one is still published.
- Without a benchmark, speed is not judged (the manifest says "not benchmarked").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ortserve.export.verify.bench import BenchRow, p50
from ortserve.export.verify.check import Verdict

SPEED_BATCH = 32


@dataclass(frozen=True, slots=True)
class Decision:
    variant: str
    publish: bool
    reason: str
    blocking: bool = False  # True: this refusal stops every variant from being published


def choose_variants(
    candidates: Sequence[str],
    verdicts: Mapping[str, Verdict],
    bench: Sequence[BenchRow] | None,
    base: str,
    quantized: str | None,
    force: bool,
) -> list[Decision]:
    """One decision per candidate (in publish order)."""
    decisions = []
    for name in candidates:
        verdict = verdicts[name]
        if not verdict.passed:
            reason = f"check failed ({_figures(verdict)}; needs {verdict.rule})"
            if force:
                decisions.append(Decision(name, True, reason + "; published by --force"))
            else:
                decisions.append(Decision(name, False, reason, blocking=True))
            continue
        if name != quantized:
            decisions.append(Decision(name, True, "check passed"))
            continue
        mine = p50(bench, name, SPEED_BATCH) if bench else None
        theirs = p50(bench, base, SPEED_BATCH) if bench else None
        if mine is None or theirs is None:
            decisions.append(Decision(name, True, "check passed; speed not benchmarked"))
            continue
        speed = f"p50 at batch {SPEED_BATCH}: {mine:.2f} ms vs {theirs:.2f} ms for {base}"
        if mine <= theirs:
            decisions.append(Decision(name, True, f"check passed; faster ({speed})"))
        elif force:
            decisions.append(Decision(name, True, f"slower ({speed}); published by --force"))
        else:
            decisions.append(Decision(name, False, f"slower than {base} on this machine ({speed})"))
    return decisions


def _figures(verdict: Verdict) -> str:
    f = verdict.figures
    parts = [f"max |diff| {f.max_abs_diff:.3g}", f"min cosine {f.min_cosine:.5f}"]
    if f.label_agreement is not None:
        parts.append(f"label agreement {f.label_agreement:.3f}")
    return ", ".join(parts)
