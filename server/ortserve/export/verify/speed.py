"""Is a quantized candidate faster than FP32 beyond the noise? Interleaved, paired timings.

One benchmark per variant, one after the other, compares two moments of a shared machine as much
as two models: a neighbour's burst during one variant's runs decides the verdict. Here one child
process (``python -m ortserve.export.verify.speed``, like ``verify/bench.py``: ONNX Runtime's
threads alone in it) loads the base (FP32) and every candidate, then runs rounds: each variant
once at batch 32, the order rotated every round so that no variant always follows the same one.
A round gives one ratio per candidate, ``candidate time / base time``, taken over runs a few
milliseconds apart, so a load change that lasts longer than a round cancels out of it.

The ratio is judged on the log scale, where ratios are symmetric (0.5 and 2 are equally far from
1) and their spread does not depend on which variant is the numerator: the estimate is the
geometric mean of the paired ratios, with a 95 % Student-t confidence interval of the mean log
ratio. Rounds continue until every candidate's interval half-width (on the log scale: 0.03 is
about +-3 %) is below the target, or the time budget ends. A candidate is "faster" only when the
whole interval lies below 1, "slower" when it lies above 1, and otherwise "not shown faster".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ortserve.export.verify.bench import run_child

Array = np.ndarray[Any, Any]

FASTER = "faster"
SLOWER = "slower"
NOT_SHOWN_FASTER = "not shown faster"
WARMUP_ROUNDS = 2
#: A cap for tiny models on a noisy host: by then the interval is narrow whatever the noise.
MAX_ROUNDS = 10_000
#: Loading the sessions and warming up come on top of the budget; past this, the child is stuck.
STARTUP_ALLOWANCE_S = 600.0

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (t_{0.975, df}).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959964


@dataclass(frozen=True, slots=True)
class SpeedJudgement:
    """One candidate against the base, at batch 32."""

    candidate: str
    base: str
    ratio: float  # candidate time / base time (geometric mean of paired ratios); < 1 = faster
    low: float  # 95 % confidence interval of the ratio
    high: float
    rounds: int  # paired rounds run
    verdict: str  # FASTER (high < 1), SLOWER (low > 1) or NOT_SHOWN_FASTER

    @property
    def faster(self) -> bool:
        return self.verdict == FASTER

    @property
    def slower(self) -> bool:
        return self.verdict == SLOWER

    def describe(self) -> str:
        """``0.62x fp32 (95 % CI 0.60-0.64, 14 rounds): faster``."""
        return (
            f"{self.ratio:.2f}x {self.base} (95 % CI {self.low:.2f}-{self.high:.2f}, "
            f"{self.rounds} rounds): {self.verdict}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def t_quantile_975(df: int) -> float:
    """Student's t 97.5 % quantile: a table up to 30 degrees of freedom, then the
    Cornish-Fisher expansion around the normal quantile (error below 1e-4 there)."""
    if df < 1:
        raise ValueError("at least one degree of freedom (two rounds) is needed")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def log_ratio_interval(log_ratios: Sequence[float]) -> tuple[float, float]:
    """The mean of the log ratios and the half-width of its 95 % confidence interval
    (infinite with fewer than two rounds)."""
    n = len(log_ratios)
    if n == 0:
        return 0.0, math.inf
    mean = math.fsum(log_ratios) / n
    if n < 2:
        return mean, math.inf
    variance = math.fsum((x - mean) ** 2 for x in log_ratios) / (n - 1)
    return mean, t_quantile_975(n - 1) * math.sqrt(variance / n)


def judge(
    candidate: str, base: str, candidate_ms: Sequence[float], base_ms: Sequence[float]
) -> SpeedJudgement:
    """The judgement from paired timings: ``candidate_ms[i]`` and ``base_ms[i]`` share a round."""
    if len(candidate_ms) != len(base_ms):
        raise ValueError("paired timings: one candidate time per base time")
    logs = [math.log(c / b) for c, b in zip(candidate_ms, base_ms, strict=True)]
    mean, half = log_ratio_interval(logs)
    low, high = math.exp(mean - half), math.exp(mean + half)
    verdict = FASTER if high < 1.0 else SLOWER if low > 1.0 else NOT_SHOWN_FASTER
    return SpeedJudgement(
        candidate, base, round(math.exp(mean), 4), round(low, 4), round(high, 4), len(logs), verdict
    )


def interleave_rounds(
    runs: Mapping[str, Callable[[], object]],
    base: str,
    *,
    budget_s: float,
    target_halfwidth: float,
    min_rounds: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Time every variant once per round, the order rotated each round, until each candidate's
    log-ratio interval half-width is below ``target_halfwidth`` (after ``min_rounds``), or
    ``budget_s`` has passed, or MAX_ROUNDS; then milliseconds per variant, one entry per round.
    ``runs`` holds the base too; ``clock`` is injectable so that synthetic timings can drive it."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    sums = {name: _Sums() for name in names if name != base}  # of the log ratios, as they come
    start = clock()
    rounds = 0
    while rounds < MAX_ROUNDS:
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            began = clock()
            runs[name]()
            times[name].append((clock() - began) * 1000.0)
        rounds += 1
        for name, running in sums.items():
            running.add(math.log(times[name][-1] / times[base][-1]))
        if clock() - start >= budget_s:
            break
        if rounds >= max(min_rounds, 2) and all(
            running.halfwidth() < target_halfwidth for running in sums.values()
        ):
            break
    return times


class _Sums:
    """Running count, sum and sum of squares: the interval each round in constant time."""

    def __init__(self) -> None:
        self.n, self.total, self.squares = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.total += x
        self.squares += x * x

    def halfwidth(self) -> float:
        if self.n < 2:
            return math.inf
        variance = max(0.0, (self.squares - self.total**2 / self.n) / (self.n - 1))
        return t_quantile_975(self.n - 1) * math.sqrt(variance / self.n)


def judge_speed(
    base: Path,
    candidates: Mapping[str, Path],
    feeds: Mapping[str, Array],
    *,
    threads: int | None,
    budget_s: float = 60.0,
    target_halfwidth: float = 0.03,
    min_rounds: int = 6,
    base_name: str = "fp32",
) -> dict[str, SpeedJudgement]:
    """Each candidate against ``base`` at the batch of ``feeds`` (32 rows), in one child process
    (see the module's docstring); a failing child raises ExportError with its stderr's tail."""
    if not candidates:
        return {}
    with tempfile.TemporaryDirectory(prefix="ortserve-speed-") as tmp:
        inputs = Path(tmp) / "feeds.npz"
        np.savez(inputs, **feeds)  # type: ignore[arg-type]
        cmd = [
            sys.executable, "-m", "ortserve.export.verify.speed",
            "--base", f"{base_name}={base}", "--inputs", str(inputs),
            "--budget", str(budget_s), "--target-halfwidth", str(target_halfwidth),
            "--min-rounds", str(min_rounds), "--threads", str(threads or 0),
        ]  # fmt: skip
        for name, path in candidates.items():
            cmd += ["--candidate", f"{name}={path}"]
        times = _run_child(cmd, budget_s + STARTUP_ALLOWANCE_S)
    return {name: judge(name, base_name, times[name], times[base_name]) for name in candidates}


def _run_child(cmd: list[str], timeout_s: float) -> dict[str, list[float]]:
    result = run_child(cmd, timeout_s, "speed comparison")
    times: dict[str, list[float]] = result["times_ms"]
    return times


# -- the child process -------------------------------------------------------------------------


def _open(path: Path, threads: int) -> Any:
    """A CPU session whose intra-op threads do not spin once a run ends: with several
    sessions taking turns, one session's spinning pool would steal cores from the next."""
    from ortserve.export.verify.check import open_session

    return open_session(path, threads, spinning=False)


def _runner(path: Path, feeds: Mapping[str, Array], threads: int) -> Callable[[], object]:
    session = _open(path, threads)
    wanted = {i.name for i in session.get_inputs()}
    mine = {k: v for k, v in feeds.items() if k in wanted}
    return lambda: session.run(None, mine)


def _named_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ortserve.export.verify.speed")
    parser.add_argument("--base", type=_named_path, required=True, metavar="NAME=PATH")
    parser.add_argument("--candidate", type=_named_path, action="append", default=[])
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--target-halfwidth", type=float, default=0.03)
    parser.add_argument("--min-rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="0: ONNX Runtime's default")
    args = parser.parse_args(argv)
    with np.load(args.inputs) as data:
        feeds = {key: data[key] for key in data.files}
    base_name = args.base[0]
    runs = {name: _runner(path, feeds, args.threads) for name, path in [args.base, *args.candidate]}
    for _ in range(WARMUP_ROUNDS):  # allocations, kernels, caches
        for run in runs.values():
            run()
    times = interleave_rounds(
        runs,
        base_name,
        budget_s=args.budget,
        target_halfwidth=args.target_halfwidth,
        min_rounds=args.min_rounds,
    )
    print(json.dumps({"times_ms": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
