"""Which variants are published: the rules, apart from the work, so they are testable alone.

- An FP32 variant that fails its check blocks the whole run: nothing is published (``--force``
  publishes anyway, and the manifest says so).
- Quantized candidates: ``--quantize auto`` tries several (``choose``); one that fails its check
  is passed over, and when none is left the FP32 graph is published alone (exit status 0). An
  explicit target (``--quantize avx2``...) is one candidate, and its failed check blocks the run
  as an FP32 failure does.
- Speed is judged against the FP32 graph the candidates came from (``SpeedLike``: the paired,
  interleaved judgement of ``verify.speed``). A
  candidate shown slower is left out unless ``--force``; one not shown faster is published with
  that said, unless ``--require-faster``. Of the candidates left, the fastest is published (by
  its time ratio to FP32); without a speed judgement (``--no-bench``), the first in the order of
  expected speed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ortserve.export.verify.check import Verdict

SPEED_BATCH = 32

FASTER, SLOWER, NOT_SHOWN = "faster", "slower", "not shown faster"


@dataclass(frozen=True, slots=True)
class Decision:
    variant: str
    publish: bool
    reason: str
    blocking: bool = False  # True: this refusal stops every variant from being published
    passed_over: bool = False  # True: it qualified, but a faster candidate was published


class SpeedLike(Protocol):
    """What a decision reads of a speed judgement (``verify.speed.SpeedJudgement``)."""

    @property
    def ratio(self) -> float: ...  # candidate time / FP32 time at batch 32; < 1: faster

    @property
    def low(self) -> float: ...  # the ratio's 95 % confidence interval

    @property
    def high(self) -> float: ...

    @property
    def rounds(self) -> int: ...

    @property
    def verdict(self) -> str: ...  # FASTER, SLOWER or NOT_SHOWN

    def as_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Rules:
    """The flags the decision follows."""

    base: str  # the FP32 variant the quantized ones were made from and are timed against
    auto: bool  # --quantize auto: failed candidates are passed over, FP32 is the fallback
    force: bool = False
    require_faster: bool = False
    quantized_only: bool = False


def choose(
    fp32: Sequence[str],
    quantized: Sequence[str],
    verdicts: Mapping[str, Verdict],
    speeds: Mapping[str, SpeedLike],
    rules: Rules,
) -> list[Decision]:
    """One decision per FP32 variant that may be published, then one per quantized candidate
    (in the order of expected speed); at most one quantized candidate is published."""
    mine = [_quantized(name, verdicts[name], speeds.get(name), rules) for name in quantized]
    eligible = [i for i, (d, _) in enumerate(mine) if d.publish]
    if not eligible and rules.auto and rules.force:  # --force: the failed ones, as for FP32
        eligible = [i for i, name in enumerate(quantized) if not verdicts[name].passed]
        mine = [(_forced(d) if i in eligible else d, s) for i, (d, s) in enumerate(mine)]
    chosen = min(eligible, key=lambda i: (_ratio(mine[i][1]), i)) if eligible else None
    decisions = [d for d, _ in mine]
    if chosen is not None:
        timed = any(speed is not None for _, speed in mine)
        winner = quantized[chosen]
        decisions = [
            _passed_over(d, winner, timed) if d.publish and i != chosen else d
            for i, d in enumerate(decisions)
        ]
    fallback = rules.quantized_only and rules.auto and chosen is None
    fp32_decisions = [
        _fp32(name, verdicts[name], rules, fallback)
        for name in fp32
        if not rules.quantized_only or fallback or not quantized
    ]
    return fp32_decisions + decisions


def _fp32(name: str, verdict: Verdict, rules: Rules, fallback: bool) -> Decision:
    if not verdict.passed:
        reason = f"check failed ({figures_text(verdict)}; needs {verdict.rule})"
        if rules.force:
            return Decision(name, True, reason + "; published by --force")
        return Decision(name, False, reason, blocking=True)
    if fallback:
        return Decision(name, True, "check passed; published although --quantized-only, as no "
                        "quantized candidate qualified")  # fmt: skip
    return Decision(name, True, "check passed")


def _quantized(
    name: str, verdict: Verdict, speed: SpeedLike | None, rules: Rules
) -> tuple[Decision, SpeedLike | None]:
    """The candidate's decision on its own merits (before it is compared with the others)."""
    if not verdict.passed:
        reason = f"check failed ({figures_text(verdict)}; needs {verdict.rule})"
        if rules.auto:
            return Decision(name, False, reason), speed
        if rules.force:
            return Decision(name, True, reason + "; published by --force"), speed
        return Decision(name, False, reason, blocking=True), speed
    if speed is None:
        return Decision(name, True, "check passed; speed not benchmarked"), None
    text = speed_text(speed, rules.base)
    if speed.verdict == SLOWER:
        if rules.force:
            return Decision(name, True, f"slower ({text}); published by --force"), speed
        return Decision(name, False, f"slower than {rules.base} on this machine ({text})"), speed
    if speed.verdict == FASTER:
        return Decision(name, True, f"check passed; faster ({text})"), speed
    if rules.require_faster:
        reason = f"not shown faster than {rules.base} ({text}); --require-faster drops it"
        return Decision(name, False, reason), speed
    return Decision(name, True, f"check passed; not shown faster than {rules.base} ({text})"), speed


def _forced(decision: Decision) -> Decision:
    return Decision(decision.variant, True, decision.reason + "; published by --force")


def _passed_over(decision: Decision, chosen: str, timed: bool) -> Decision:
    why = "faster" if timed else "earlier in the order of expected speed"
    reason = f"{decision.reason}; {chosen} published instead ({why})"
    return Decision(decision.variant, False, reason, passed_over=True)


def _ratio(speed: SpeedLike | None) -> float:
    return math.inf if speed is None else speed.ratio


def speed_text(speed: SpeedLike, base: str) -> str:
    """The speed figures in a reason: the paired ratio and its interval."""
    return (
        f"time {speed.ratio:.3f}x {base}'s at batch {SPEED_BATCH}, 95% CI "
        f"{speed.low:.3f}-{speed.high:.3f}, {speed.rounds} paired rounds"
    )


def figures_text(verdict: Verdict) -> str:
    f = verdict.figures
    parts = [f"max |diff| {f.max_abs_diff:.3g}", f"min cosine {f.min_cosine:.5f}"]
    if f.label_agreement is not None:
        parts.append(f"label agreement {f.label_agreement:.3f}")
    return ", ".join(parts)
