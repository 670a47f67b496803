"""``--quantize`` (auto) tries several candidates and publishes the fastest that passes.

The model: a tiny random BERT classifier with one outlier activation. In its last layer the
feed-forward's first hidden unit has a bias of 500, and the output projection ignores that unit
(its column is zero) but is scaled up, so the layer matters to the logits. FP32 does not notice
the outlier; dynamic INT8 quantizes the projection's input with one scale per tensor, set by the
500, so every other unit is lost (cosine ~0.87). Weight-only (8-bit, activations quantized per
block of 32) loses them too. Keeping the projection in FP32 -- the node that adds the most error
against FP32 -- restores it (cosine > 0.999): auto falls back to that candidate.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from ortserve.export.convert.quantize import detect_cpu_target
from ortserve.export.verify.check import Figures, Verdict
from ortserve.export.verify.decide import Rules, choose
from ortserve.export.verify.speed import SpeedJudgement
from tests.export.conftest import CLI, manifest, versions

pytestmark = pytest.mark.ort_range  # scripts/test.sh: also against the newest onnxruntime

FAMILY = detect_cpu_target()
FIRST = f"int8-{FAMILY}"


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("optimum.exporters.onnx")
    import torch
    import transformers as tf

    from tests.factories.hf_models import make_bert

    folder = make_bert(tmp_path_factory.mktemp("outlier") / "tc", "text-classification")
    model = tf.BertForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        layer = model.bert.encoder.layer[-1]
        layer.intermediate.dense.bias[0] = 500.0
        layer.output.dense.weight[:, 0] = 0.0
        layer.output.dense.weight.mul_(50.0)
    model.save_pretrained(folder)
    return folder


def _candidates(record: dict[str, object]) -> dict[str, dict[str, object]]:
    quantization = record["quantization"]
    assert isinstance(quantization, dict)
    return {c["name"]: c for c in quantization["candidates"]}


def test_auto_falls_back_to_the_candidate_that_passes(
    tmp_path: Path, cli: CLI, outlier_model: Path
) -> None:
    repo = tmp_path / "repo"
    result = cli("export", "--model", outlier_model, "--name", "tc", "--repo", repo,
                 "--quantize", "--no-bench")  # fmt: skip
    assert result.code == 0, result.err
    assert versions(repo / "tc") == [1, 2]
    v2 = manifest(repo / "tc" / "2")
    chosen = v2["model"]["variant"]
    assert chosen.startswith(f"{FIRST}-keep")
    assert v2["quantization"]["mode"] == "auto"
    assert v2["quantization"]["published"] == chosen
    candidates = _candidates(v2)
    first = candidates[FIRST]
    assert first["built"]
    assert not first["check"]["passed"]
    assert first["check"]["min_cosine"] < 0.98
    assert "check failed" in first["reason"]
    kept = candidates[chosen]
    assert kept["check"]["passed"]
    assert kept["check"]["min_cosine"] >= 0.98
    assert kept["published"]
    assert kept["speed"] is None
    assert "speed not benchmarked" in kept["reason"]
    for name, candidate in candidates.items():  # every candidate made, with its figures
        assert candidate["built"], name
        assert {"min_cosine", "mean_cosine", "label_agreement", "rule"} <= set(candidate["check"])
        assert candidate["published"] is (name == chosen)
        assert name in result.out  # the summary table
    # the nodes kept are the graph's FP32 MatMuls; the rest are quantized
    graph = onnx.load(str(repo / "tc" / "2" / "model.onnx")).graph
    by_name = {node.name: node.op_type for node in graph.node}
    assert kept["keep_fp32"]
    assert all(by_name.get(node) == "MatMul" for node in kept["keep_fp32"])
    assert {"MatMulInteger", "DynamicQuantizeMatMul"} & set(by_name.values())
    assert manifest(repo / "tc" / "1")["quantization"] == v2["quantization"]
    assert "not published" in result.err  # the failed candidates are named, not hidden


def test_auto_publishes_fp32_alone_when_no_candidate_passes(
    tmp_path: Path, cli: CLI, outlier_model: Path
) -> None:
    repo = tmp_path / "repo"
    args = ["export", "--model", outlier_model, "--repo", repo, "--quantize", "--no-bench",
            "--min-cosine", "0.99999"]  # fmt: skip
    result = cli(*args, "--name", "tc")
    assert result.code == 0, result.err
    assert versions(repo / "tc") == [1]
    record = manifest(repo / "tc" / "1")
    assert record["model"]["variant"] == "fp32"
    assert record["quantization"]["published"] is None
    candidates = _candidates(record)
    assert FIRST in candidates
    assert any(name.startswith(f"{FIRST}-keep") for name in candidates)
    assert not any(c["published"] or c["check"]["passed"] for c in candidates.values())
    assert "no quantized variant published" in result.err

    only = cli(*args, "--name", "only", "--quantized-only")  # still serves: FP32 it is
    assert only.code == 0, only.err
    assert versions(repo / "only") == [1]
    fallback = manifest(repo / "only" / "1")
    assert fallback["model"]["variant"] == "fp32"
    assert "--quantized-only" in fallback["decisions"]["fp32"]["reason"]


def test_an_explicit_target_that_fails_its_check_publishes_nothing(
    tmp_path: Path, cli: CLI, outlier_model: Path
) -> None:
    repo = tmp_path / "repo"
    result = cli("export", "--model", outlier_model, "--name", "tc", "--repo", repo,
                 "--quantize", FAMILY, "--no-bench")  # fmt: skip
    assert result.code == 3
    assert f"{FIRST}: check failed" in result.err
    assert "nothing published" in result.err
    assert "keep" not in result.out  # one candidate only: no fallback for an explicit target
    assert versions(repo / "tc") == []


def test_passing_candidates_are_timed_against_fp32_and_the_decision_follows(
    tmp_path: Path, cli: CLI, outlier_model: Path
) -> None:
    repo = tmp_path / "repo"
    result = cli("export", "--model", outlier_model, "--name", "tc", "--repo", repo,
                 "--quantize", "--speed-budget", "1", "--bench-iterations", "3",
                 "--bench-threads", "1")  # fmt: skip
    assert result.code == 0, result.err
    record = manifest(repo / "tc" / "1")
    candidates = _candidates(record)
    timed = {name: c for name, c in candidates.items() if c["speed"] is not None}
    assert timed
    assert all(c["check"]["passed"] for c in timed.values())
    assert all(c["speed"] is None for c in candidates.values() if not c["check"]["passed"])
    (name, candidate), *_ = timed.items()
    speed = candidate["speed"]
    assert speed["base"] == "fp32"
    assert speed["rounds"] >= 2
    assert speed["low"] <= speed["ratio"] <= speed["high"]
    assert speed["verdict"] in ("faster", "slower", "not shown faster")
    published = speed["verdict"] != "slower"  # not shown faster: published, and says so
    assert candidate["published"] is published
    assert versions(repo / "tc") == ([1, 2] if published else [1])
    assert record["quantization"]["published"] == (name if published else None)
    assert speed["verdict"] in candidate["reason"]
    assert record["quantization"]["speed"]["budget_s"] == 1.0
    assert "Latency" in result.out


# -- the rules alone -----------------------------------------------------------------------------


def _verdict(name: str, passed: bool) -> Verdict:
    return Verdict(name, Figures(1e-3, 0.99, 0.995, 1.0, 4, ("logits",)), "rule", passed)


def _speed(name: str, ratio: float, low: float, high: float) -> SpeedJudgement:
    verdict = "faster" if high < 1 else "slower" if low > 1 else "not shown faster"
    return SpeedJudgement(name, "fp32", ratio, low, high, 8, verdict)


VERDICTS = {
    "fp32": _verdict("fp32", True),
    "a": _verdict("a", False),
    "b": _verdict("b", True),
    "c": _verdict("c", True),
    "d": _verdict("d", True),
}


def _published(decisions: list[object]) -> list[str]:
    return [d.variant for d in decisions if d.publish]  # type: ignore[attr-defined]


def test_choose_publishes_the_fastest_candidate_that_passes() -> None:
    speeds = {"b": _speed("b", 0.8, 0.75, 0.85), "c": _speed("c", 0.6, 0.55, 0.65),
              "d": _speed("d", 1.2, 1.1, 1.3)}  # fmt: skip
    decisions = choose(["fp32"], ["a", "b", "c", "d"], VERDICTS, speeds, Rules("fp32", True))
    assert _published(decisions) == ["fp32", "c"]
    by_name = {d.variant: d for d in decisions}
    assert not by_name["a"].blocking
    assert "check failed" in by_name["a"].reason
    assert by_name["b"].passed_over
    assert "c published instead (faster)" in by_name["b"].reason
    assert "slower than fp32" in by_name["d"].reason
    assert not by_name["d"].passed_over
    forced = choose(["fp32"], ["d"], VERDICTS, speeds, Rules("fp32", True, force=True))
    assert _published(forced) == ["fp32", "d"]


def test_choose_not_shown_faster_is_published_unless_required_faster() -> None:
    speeds = {"b": _speed("b", 0.98, 0.9, 1.05)}
    decisions = choose(["fp32"], ["b"], VERDICTS, speeds, Rules("fp32", True))
    assert _published(decisions) == ["fp32", "b"]
    assert "not shown faster than fp32" in decisions[1].reason
    strict = choose(["fp32"], ["b"], VERDICTS, speeds, Rules("fp32", True, require_faster=True))
    assert _published(strict) == ["fp32"]
    assert "--require-faster" in strict[1].reason
    assert not strict[1].blocking


def test_choose_a_failed_candidate_blocks_only_an_explicit_target() -> None:
    auto = choose(["fp32"], ["a"], VERDICTS, {}, Rules("fp32", auto=True))
    assert _published(auto) == ["fp32"]
    assert not any(d.blocking for d in auto)
    explicit = choose(["fp32"], ["a"], VERDICTS, {}, Rules("fp32", auto=False))
    assert explicit[1].blocking
    only = choose(["fp32"], ["a"], VERDICTS, {}, Rules("fp32", True, quantized_only=True))
    assert _published(only) == ["fp32"]
    chosen = choose(["fp32"], ["a", "b"], VERDICTS, {}, Rules("fp32", True, quantized_only=True))
    assert _published(chosen) == ["b"]  # unspeeded: the first that passes, in order
