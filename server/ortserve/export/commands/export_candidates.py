"""The quantized candidates of ``ortserve export --quantize``: built one by one from the FP32
graph, each checked against PyTorch as it is made, then timed against FP32.

``--quantize`` (auto) tries what ``convert.quantize.auto_candidates`` lists for this CPU family,
in order of expected speed, and, when the first (dynamic INT8 for the family) fails its check,
the same with its most sensitive nodes kept in FP32 (found on the check feeds by
``convert.sensitivity``), placed before weight-only. A candidate the quantizer cannot make is
recorded and passed over. An explicit target is one candidate, and a quantizer error stops
the run as before.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from ortserve.export.commands.export_generation import generation_reference, judge_generation
from ortserve.export.commands.export_run import ExportRun, Skipped
from ortserve.export.convert.export import load_torch_model
from ortserve.export.convert.quantize import (
    Quantization,
    auto_candidates,
    has_matmul_weights,
    quantize,
)
from ortserve.export.errors import ExportError
from ortserve.export.verify.check import (
    Variant,
    Verdict,
    check_batches,
    check_graph,
    compare,
    judge,
    open_session,
    reference_outputs,
    run_variant,
)
from ortserve.export.verify.samples import batch_of, graph_feeds, input_specs
from ortserve_client.tensors import Array

#: The shares of the quantizable nodes (MatMul, Gemm, Attention) the keep-in-FP32 candidates
#: leave unquantized, at least one each: all-MiniLM-L6-v2's 48 MatMuls give 5 and 12. The
#: smaller is faster; the larger leaves headroom where the smaller passes only just (MiniLM's
#: keep-5 passes the 64-text set at min cosine 0.9803).
KEEP_FP32_SHARES = (0.1, 0.25)

#: The batch the speed of a candidate is judged at: the batch the daemon runs under load.
SPEED_BATCH = 32


class ParityCheck:
    """PyTorch's outputs on the check feeds, computed once (PyTorch is loaded once), and any
    variant judged against them as it is made."""

    def __init__(self, run: ExportRun, encoded: dict[str, Array]) -> None:
        self._run = run
        if run.spec.generates:
            self.batches, self._reference = generation_reference(run, encoded)
            return
        torch_model = load_torch_model(run.source.folder, run.task)
        self.batches = check_batches(open_session(run.variants.exported.path), encoded)
        self._reference = reference_outputs(torch_model, self.batches)
        del torch_model

    def verdict(self, variant: Variant) -> Verdict:
        run = self._run
        thresholds = run.opts.thresholds
        if run.spec.generates:
            return judge_generation(variant, self.batches, self._reference, thresholds)
        got = run_variant(open_session(variant.path), self.batches)
        spec = run.spec
        figures = compare(self._reference, got, self.batches, spec.has_labels, spec.checked_outputs)
        return judge(variant, figures, thresholds)


def build_candidates(run: ExportRun, check: ParityCheck) -> None:
    """Make and check every quantized candidate, in order; ``run`` records each one's variant,
    spec and verdict (or why it was not built)."""
    if run.quant is None:
        return
    if not run.auto:
        _make(run, check, run.quant)
        return
    fp32 = run.variants.fp32.path
    first, *rest = auto_candidates(
        run.quant.target, run.quant.per_channel, has_matmul_weights(fp32)
    )
    keep = _keep_sensitive(run, check, first, _make(run, check, first))
    dynamic = [spec for spec in rest if spec.target != "weight-only"]
    weight_only = [spec for spec in rest if spec.target == "weight-only"]
    for spec in [*dynamic, *keep, *weight_only]:
        _make(run, check, spec)


def _make(run: ExportRun, check: ParityCheck, spec: Quantization) -> Verdict | None:
    """Quantize, ``onnx.checker``, check against PyTorch; None when the quantizer refused (auto
    only: an explicit target's refusal is the run's error)."""
    name = spec.variant_name
    folder = run.work / "quantized" / name
    folder.mkdir(parents=True)
    try:
        with run.reporter.step(f"Quantizing: {spec.describe()}"):
            path = quantize(run.variants.fp32.path, folder / "model.onnx", spec)
            check_graph(path)
    except ExportError as exc:
        if not run.auto:
            raise
        run.skipped.append(Skipped(name, spec.describe(), f"not built: {exc}"))
        return None
    variant = Variant(name, path, False, spec.describe())
    with run.reporter.step(f"Checking {name} against PyTorch"):
        verdict = check.verdict(variant)
    run.variants = run.variants.with_quantized(variant)
    run.specs[name] = spec
    run.verdicts[name] = verdict
    return verdict


def _keep_sensitive(
    run: ExportRun, check: ParityCheck, first: Quantization, verdict: Verdict | None
) -> list[Quantization]:
    """The first candidate with its most sensitive nodes kept in FP32 (those that add the most
    error against the FP32 graph on the check feeds), one per share in ``KEEP_FP32_SHARES``,
    when the first one failed its check: they are slower than the first, so only worth making
    then. The nodes are ranked once; each candidate keeps the top of the ranking."""
    from ortserve.export.convert.sensitivity import sensitive_nodes

    fp32 = run.variants.fp32.path
    counts = keep_counts(fp32)
    if verdict is None or verdict.passed:
        why = "could not be made" if verdict is None else "passed its check"
        for count in counts:
            name, what = _keep_names(first, count)
            run.skipped.append(Skipped(name, what, f"not built: {first.variant_name} {why}"))
        return []
    quantized = run.variants.named(first.variant_name).path
    most = counts[-1]
    with run.reporter.step(f"Ranking the {most} node(s) that {first.variant_name} hurts most"):
        nodes = sensitive_nodes(fp32, quantized, check.batches, most)
    if not nodes:
        for count in counts:
            name, what = _keep_names(first, count)
            run.skipped.append(Skipped(name, what, "not built: no quantized node found to keep"))
        return []
    kept = sorted({min(count, len(nodes)) for count in counts})
    return [replace(first, keep_fp32=tuple(nodes[:count])) for count in kept]


def _keep_names(first: Quantization, count: int) -> tuple[str, str]:
    return (
        f"{first.variant_name}-keep{count}",
        f"{first.describe()}, the {count} most sensitive node(s) kept in FP32",
    )


def keep_counts(fp32: Path) -> list[int]:
    """How many nodes each keep-in-FP32 candidate leaves unquantized (``KEEP_FP32_SHARES``),
    distinct, smallest first."""
    import onnx

    from ortserve.export.convert.sensitivity import QUANTIZABLE_OPS

    graph = onnx.load(str(fp32), load_external_data=False).graph
    quantizable = sum(1 for node in graph.node if node.op_type in QUANTIZABLE_OPS)
    return sorted({max(1, math.ceil(share * quantizable)) for share in KEEP_FP32_SHARES})


def judge_candidates(run: ExportRun, samples: dict[str, Array]) -> None:
    """Time the candidates that passed their check (all of them under ``--force``) against the
    FP32 graph, interleaved at batch 32, in one child process (``verify.speed``)."""
    from ortserve.export.verify.speed import judge_speed

    opts = run.opts
    timed = {
        v.name: v.path for v in run.variants.quantized if opts.force or run.verdicts[v.name].passed
    }
    if not timed:
        return
    fp32 = run.variants.fp32
    feeds = graph_feeds(input_specs(open_session(fp32.path)), batch_of(samples, SPEED_BATCH))
    threads = opts.bench_threads
    label = f"Timing {len(timed)} candidate(s) against {fp32.name}, interleaved at batch 32"
    with run.reporter.step(f"{label} (up to {opts.speed_budget_s:g} s)"):
        run.speeds.update(
            judge_speed(
                fp32.path,
                timed,
                feeds,
                threads=threads,
                budget_s=opts.speed_budget_s,
                base_name=fp32.name,
            )
        )
