"""What ``ortserve export`` shows and records about its variants: the parity and latency tables,
the summary (every quantized candidate, built or not, with its check, its speed against FP32
and why it was or was not published), and the manifest's ``quantization`` record."""

from __future__ import annotations

from typing import Any

from ortserve.export.commands.export_run import ExportRun
from ortserve.export.repository.publish import Published
from ortserve.export.verify.check import FIGURE_COLUMNS


def print_checks(run: ExportRun) -> None:
    reporter, bench = run.reporter, run.bench
    rows = []
    for variant in run.variants:
        verdict = run.verdicts[variant.name]
        size = f"{variant.path.stat().st_size / 1e6:.1f}"
        check = "[green]pass[/]" if verdict.passed else "[red]FAIL[/]"
        rows.append([variant.name, size, *verdict.figures.cells(), verdict.rule, check])
    columns = ["variant", "MB", *FIGURE_COLUMNS, "rule", "check"]
    reporter.table("Parity against PyTorch", columns, rows)
    if bench is None:
        return
    torch_p50 = {r.batch: r.p50_ms for r in bench if r.variant == "pytorch"}
    rows = []
    for r in bench:
        ref = torch_p50.get(r.batch)
        speedup = f"{ref / r.p50_ms:.2f}x" if ref and r.p50_ms > 0 else "-"
        p = (r.p50_ms, r.p95_ms, r.p99_ms)
        timings = [f"{x:.2f}" for x in p]
        rows.append([r.variant, str(r.batch), str(r.sequence_length), *timings, speedup])
    columns = ["variant", "batch", "seq len", "p50 ms", "p95 ms", "p99 ms", "vs PyTorch p50"]
    iterations = bench[0].iterations if bench else 0
    reporter.table(f"Latency ({iterations} runs each, own process)", columns, rows)


def print_summary(run: ExportRun, published: dict[str, Published]) -> None:
    opts = run.opts
    by_name = {d.variant: d for d in run.decisions}
    base = run.variants.fp32.name
    rows = []
    for variant in run.variants:
        decision = by_name.get(variant.name)
        if variant.name in published:
            where = f"{opts.repo / opts.name / str(published[variant.name].version)}"
        elif decision is None:
            where = "- (intermediate)"
        elif decision.publish and not opts.publish:
            where = "- (--no-publish)"
        else:
            where = "not published"
        check = "pass" if run.verdicts[variant.name].passed else "FAIL"
        speed = run.speeds.get(variant.name)
        timed = f"{speed.ratio:.2f}x {base}: {speed.verdict}" if speed else "-"
        reason = decision.reason if decision else "compared only"
        rows.append([variant.name, variant.description, check, timed, where, reason])
    for skipped in run.skipped:
        rows.append([skipped.name, skipped.description, "-", "-", "not built", skipped.reason])
    columns = ["variant", "what", "check", "time vs FP32", "published as", "why"]
    run.reporter.table("Summary", columns, rows)


def quantization_record(run: ExportRun) -> dict[str, Any] | None:
    """The manifest's ``quantization``: how the candidates were chosen, and every one of them
    (the built ones in the order made, then those not built) with its figures."""
    if run.quant is None:
        return None
    opts = run.opts
    by_name = {d.variant: d for d in run.decisions}
    candidates: list[dict[str, Any]] = []
    for variant in run.variants.quantized:
        spec = run.specs[variant.name]
        decision = by_name.get(variant.name)
        speed = run.speeds.get(variant.name)
        candidates.append(
            {
                "name": variant.name,
                "description": variant.description,
                "built": True,
                "target": spec.target,
                "per_channel": spec.per_channel,
                "reduce_range": spec.reduce_range,
                "u8u8": spec.u8u8,
                "keep_fp32": list(spec.keep_fp32),
                "check": run.verdicts[variant.name].as_dict(),
                "speed": speed.as_dict() if speed is not None else None,
                "published": bool(decision and decision.publish),
                "reason": decision.reason if decision else "",
            }
        )
    for skipped in run.skipped:
        record = {"name": skipped.name, "description": skipped.description, "built": False}
        candidates.append({**record, "published": False, "reason": skipped.reason})
    chosen = [c["name"] for c in candidates if c["published"]]
    return {
        "mode": "auto" if run.auto else "explicit",
        "family": run.quant.target,
        "published": chosen[0] if chosen else None,
        "speed": {
            "method": "paired, interleaved runs at batch 32 in one process; ratio = candidate "
            "time / FP32 time (geometric mean), 95% confidence interval",
            "base": run.variants.fp32.name,
            "budget_s": opts.speed_budget_s,
            "threads": opts.bench_threads,
            "judged": opts.bench,
            "require_faster": opts.require_faster,
        },
        "candidates": candidates,
    }
