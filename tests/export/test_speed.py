"""The speed decision (verify/speed.py): its statistics on synthetic timings, the interleaving
loop driven by a synthetic clock, and one real child process timing two tiny ONNX graphs whose
costs differ by orders of magnitude (a ratio no busy machine can blur)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ortserve.export.cli import build_export_parser
from ortserve.export.verify.speed import (
    FASTER,
    MAX_ROUNDS,
    NOT_SHOWN_FASTER,
    SLOWER,
    interleave_rounds,
    judge,
    judge_speed,
    log_ratio_interval,
    t_quantile_975,
)
from tests.factories.onnx_models import add_model, slow_model

pytestmark = pytest.mark.ort_range  # scripts/test.sh: also against the newest onnxruntime


def _noisy(ms: float, rounds: int, seed: int, spread: float = 0.05) -> list[float]:
    """``rounds`` timings around ``ms``, log-normal noise of ``spread``."""
    rng = np.random.default_rng(seed)
    return [float(x) for x in ms * rng.lognormal(0.0, spread, rounds)]


# -- statistics on synthetic timings ------------------------------------------------------------


def test_a_clearly_faster_candidate_is_faster() -> None:
    base = _noisy(10.0, 20, seed=1)
    result = judge("int8", "fp32", _noisy(7.0, 20, seed=2), base)
    assert result.verdict == FASTER
    assert result.faster
    assert not result.slower
    assert result.low <= result.ratio <= result.high < 1.0
    assert result.ratio == pytest.approx(0.7, rel=0.05)
    assert result.rounds == 20
    assert result.describe().endswith(
        f"(95 % CI {result.low:.2f}-{result.high:.2f}, 20 rounds): faster"
    )


def test_a_clearly_slower_candidate_is_slower() -> None:
    result = judge("int8", "fp32", _noisy(13.0, 20, seed=3), _noisy(10.0, 20, seed=4))
    assert result.verdict == SLOWER
    assert 1.0 < result.low <= result.ratio <= result.high
    assert result.ratio == pytest.approx(1.3, rel=0.05)


def test_an_equal_candidate_is_not_shown_faster() -> None:
    result = judge("int8", "fp32", _noisy(10.0, 20, seed=5), _noisy(10.0, 20, seed=6))
    assert result.verdict == NOT_SHOWN_FASTER
    assert result.low < 1.0 < result.high


def test_a_small_gain_inside_the_noise_is_not_shown_faster() -> None:
    """2 % faster with 20 % noise over 8 rounds: the interval straddles 1."""
    candidate = _noisy(9.8, 8, seed=7, spread=0.2)
    result = judge("int8", "fp32", candidate, _noisy(10.0, 8, seed=8, spread=0.2))
    assert result.verdict == NOT_SHOWN_FASTER


def test_a_load_shared_by_both_variants_of_a_round_cancels_out() -> None:
    """The host gets three times busier half-way: paired ratios do not notice."""
    load = [1.0] * 10 + [3.0] * 10
    base = [10.0 * f for f in load]
    candidate = [9.0 * f for f in load]
    result = judge("int8", "fp32", candidate, base)
    assert result.verdict == FASTER
    assert result.ratio == pytest.approx(0.9)
    assert result.high == pytest.approx(0.9)


def test_the_interval_uses_students_t() -> None:
    assert t_quantile_975(1) == pytest.approx(12.706)
    assert t_quantile_975(5) == pytest.approx(2.571)
    for df, expected in ((40, 2.0211), (100, 1.9840), (1000, 1.9623)):
        assert t_quantile_975(df) == pytest.approx(expected, abs=2e-4)
    mean, half = log_ratio_interval([0.1, 0.3])
    assert mean == pytest.approx(0.2)
    assert half == pytest.approx(12.706 * math.sqrt(0.02 / 2))
    assert log_ratio_interval([0.1])[1] == math.inf


def test_paired_timings_must_pair() -> None:
    with pytest.raises(ValueError, match="paired"):
        judge("int8", "fp32", [1.0, 2.0], [1.0])


# -- the interleaving loop, on a synthetic clock ------------------------------------------------


class FakeClock:
    """Time that passes only when a fake model runs."""

    def __init__(self) -> None:
        self.now = 0.0
        self.order: list[str] = []

    def __call__(self) -> float:
        return self.now

    def model(self, name: str, costs_s: Callable[[], float]) -> Callable[[], None]:
        def run() -> None:
            self.order.append(name)
            self.now += costs_s()

        return run


def test_rounds_rotate_the_order_and_stop_once_the_interval_is_narrow() -> None:
    clock = FakeClock()
    runs = {
        "fp32": clock.model("fp32", lambda: 0.010),
        "a": clock.model("a", lambda: 0.007),
        "b": clock.model("b", lambda: 0.012),
    }
    times = interleave_rounds(
        runs, "fp32", budget_s=60.0, target_halfwidth=0.03, min_rounds=6, clock=clock
    )
    # noiseless timings: the interval is zero wide as soon as min_rounds is reached
    assert {name: len(t) for name, t in times.items()} == {"fp32": 6, "a": 6, "b": 6}
    rounds = [clock.order[i : i + 3] for i in range(0, 18, 3)]
    assert rounds[:3] == [["fp32", "a", "b"], ["a", "b", "fp32"], ["b", "fp32", "a"]]
    assert rounds[3:] == rounds[:3]
    assert times["a"][0] == pytest.approx(7.0)
    assert judge("a", "fp32", times["a"], times["fp32"]).verdict == FASTER
    assert judge("b", "fp32", times["b"], times["fp32"]).verdict == SLOWER


def test_noise_keeps_the_rounds_going_until_the_budget_ends() -> None:
    clock = FakeClock()
    rng = np.random.default_rng(9)
    runs = {
        "fp32": clock.model("fp32", lambda: 0.010 * float(rng.lognormal(0.0, 0.5))),
        "int8": clock.model("int8", lambda: 0.010 * float(rng.lognormal(0.0, 0.5))),
    }
    times = interleave_rounds(
        runs, "fp32", budget_s=1.0, target_halfwidth=0.01, min_rounds=6, clock=clock
    )
    assert clock.now >= 1.0
    assert clock.now < 1.0 + 0.2  # the round in progress is finished, no more
    assert len(times["fp32"]) == len(times["int8"]) > 20
    assert judge("int8", "fp32", times["int8"], times["fp32"]).verdict == NOT_SHOWN_FASTER


def test_rounds_end_at_the_cap_whatever_the_budget() -> None:
    clock = FakeClock()
    rng = np.random.default_rng(10)
    runs = {name: clock.model(name, lambda: 1e-5 * float(rng.lognormal(0.0, 1.0)))
            for name in ("fp32", "int8")}  # fmt: skip
    times = interleave_rounds(
        runs, "fp32", budget_s=3600.0, target_halfwidth=1e-6, min_rounds=6, clock=clock
    )
    assert len(times["int8"]) == MAX_ROUNDS


# -- a real child process ------------------------------------------------------------------------


def test_judge_speed_times_real_graphs_in_a_child(tmp_path: Path) -> None:
    """base: 4 MatMuls of 256x256; cheap: one Add (hundreds of times cheaper); costly: 32
    MatMuls (8 times dearer). Verdicts this lopsided survive any load on the host."""
    paths = {}
    for name, model in (
        ("fp32", slow_model(size=256, rounds=4)),
        ("cheap", add_model(width=4)),
        ("costly", slow_model(size=256, rounds=32)),
    ):
        paths[name] = tmp_path / f"{name}.onnx"
        paths[name].write_bytes(model.SerializeToString())
    feeds = {"x": np.ones((32, 4), dtype=np.float32)}
    results = judge_speed(
        paths["fp32"],
        {"cheap": paths["cheap"], "costly": paths["costly"]},
        feeds,
        threads=1,
        budget_s=3.0,
        min_rounds=6,
    )
    assert set(results) == {"cheap", "costly"}
    cheap, costly = results["cheap"], results["costly"]
    assert (cheap.candidate, cheap.base) == ("cheap", "fp32")
    assert cheap.verdict == FASTER
    assert cheap.high < 0.5
    assert costly.verdict == SLOWER
    assert costly.low > 2.0
    assert cheap.rounds == costly.rounds >= 6
    assert set(cheap.as_dict()) == {
        "candidate",
        "base",
        "ratio",
        "low",
        "high",
        "rounds",
        "verdict",
    }


def test_judge_speed_with_no_candidates_starts_nothing(tmp_path: Path) -> None:
    assert judge_speed(tmp_path / "absent.onnx", {}, {}, threads=1) == {}


def test_a_broken_candidate_names_the_speed_comparison(tmp_path: Path) -> None:
    from ortserve.export.errors import ExportError

    base = tmp_path / "fp32.onnx"
    base.write_bytes(add_model().SerializeToString())
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match=r"(?s)speed comparison failed:.*bad\.onnx"):
        judge_speed(base, {"bad": tmp_path / "bad.onnx"}, {"x": np.ones((32, 4), np.float32)},
                    threads=1, budget_s=1.0)  # fmt: skip


# -- the flag ------------------------------------------------------------------------------------


def test_speed_budget_flag(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_export_parser()
    base = ["--model", "m", "--name", "n"]
    assert parser.parse_args(base).speed_budget == 60.0
    assert parser.parse_args([*base, "--speed-budget", "12.5"]).speed_budget == 12.5
    for bad in ("0", "-3", "nan", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, "--speed-budget", bad])
    assert "--speed-budget: must be" in capsys.readouterr().err
