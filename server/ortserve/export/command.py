"""``ortserve export``: export -> check graph -> optimize -> quantize -> parity -> benchmark ->
decide -> publish, with progress on stderr and the tables on stdout."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from rich.markup import escape

from ortserve.export.bench import BATCH_SIZES, BenchRow, Candidate, run_benchmarks, save_inputs
from ortserve.export.check import (
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
from ortserve.export.decide import Decision, decide
from ortserve.export.errors import CheckFailed, ExportError
from ortserve.export.exporting import (
    check_supported,
    export_onnx,
    load_tokenizer,
    load_torch_model,
)
from ortserve.export.loadable import check_loadable, signature
from ortserve.export.manifest import base_manifest, graph_record, source_files
from ortserve.export.options import (
    EXACT_OPTIMIZE_LEVELS,
    TASKS,
    TOKENIZER_FOLDER,
    ExportOptions,
    Task,
    tensor_model_note,
)
from ortserve.export.publish import (
    Published,
    check_servable,
    config_text,
    model_folder,
    publish_version,
    validate_name,
    write_config_if_absent,
)
from ortserve.export.quantize import Quantization, quantize, resolve_target
from ortserve.export.report import Reporter
from ortserve.export.samples import (
    DEFAULT_TEXTS,
    batch_of,
    encode,
    graph_feeds,
    input_specs,
    single,
)
from ortserve.export.source import (
    HF_FILES,
    SENTENCE_TRANSFORMERS_FILES,
    ModelSource,
    check_tokenizer_files,
    detect_task,
    max_sequence_length,
    resolve_source,
    sentence_transformers_settings,
    set_offline,
)
from ortserve_client.tensors import Array


def run_export(opts: ExportOptions, reporter: Reporter) -> int:
    set_offline()
    validate_name(opts.name)
    source = resolve_source(opts.model)
    task = opts.task or detect_task(source)
    how = "given" if opts.task else "detected"
    where = escape(str(source.folder))
    reporter.line(f"[bold]{source.architecture}[/] from {where}: task {task} ({how})")
    check_supported(source, task)
    check_tokenizer_files(source)
    check_servable(TASKS[task].config_task, opts.max_batch_size)
    if TASKS[task].served_as_tensors:
        reporter.warn(tensor_model_note(task))
    quant = resolve_target(opts.quantize, opts.per_channel) if opts.quantize else None
    max_length = max_sequence_length(source.folder, opts.max_length)
    texts = opts.sample_texts or DEFAULT_TEXTS
    with tempfile.TemporaryDirectory(prefix="ortserve-export-") as tmp:
        work = Path(tmp)
        variants = _build_variants(source, task, opts, quant, work, reporter)
        export_dir = variants[0].path.parent
        label = f"Checking {len(variants)} variant(s) against PyTorch on {len(texts)} texts"
        with reporter.step(label):
            tokenizer = load_tokenizer(export_dir, task, source.folder)
            encoded = encode(tokenizer, texts, task, max_length)
            verdicts = _check(source, task, variants, encoded, opts)
        bench: list[BenchRow] | None = None
        if opts.bench:
            bench = _bench(source, task, variants, encoded, opts, work, reporter)
        base = variants[-2] if quant else variants[-1]  # the FP32 graph that gets published
        candidates = [] if quant and opts.quantized_only else [base.name]
        if quant:
            candidates.append(variants[-1].name)
        decisions = decide(
            candidates,
            {v.variant: v for v in verdicts},
            bench,
            base.name,
            quant.variant_name if quant else None,
            opts.force,
        )
        _print_checks(reporter, variants, verdicts, bench)
        published = _publish(
            source, task, opts, variants, verdicts, bench, decisions, max_length, quant, reporter
        )
        _print_summary(reporter, opts, variants, decisions, published)
    refused = [d for d in decisions if not d.publish]
    if any(d.blocking for d in refused) or not any(d.publish for d in decisions):
        why = "; ".join(f"{d.variant}: {d.reason}" for d in refused) or "nothing to publish"
        raise CheckFailed(f"nothing published ({why}); --force publishes anyway")
    for d in refused:
        reporter.warn(f"{d.variant} not published: {d.reason} (--force publishes it)")
    return 0


def _build_variants(
    source: ModelSource,
    task: str,
    opts: ExportOptions,
    quant: Quantization | None,
    work: Path,
    reporter: Reporter,
) -> list[Variant]:
    """The plain export first, then the optimized graph, then the quantized one."""
    with reporter.step(f"Exporting {source.architecture} ({task}) with Optimum"):
        path = export_onnx(source, task, opts.opset, work / "export")
        check_graph(path)
    variants = [Variant("fp32", path, True, "Optimum export, FP32")]
    if opts.optimize:
        from ortserve.export.optimize import optimize

        with reporter.step(f"Optimizing ({opts.optimize})"):
            path = optimize(path.parent, opts.optimize, work / "optimized")
            check_graph(path)
        exact = opts.optimize in EXACT_OPTIMIZE_LEVELS
        description = f"ONNX Runtime transformer optimizer, {opts.optimize}"
        variants.append(Variant(f"fp32-{opts.optimize}", path, exact, description))
    if quant is not None:
        with reporter.step(f"Quantizing: {quant.describe()}"):
            (work / "quantized").mkdir()
            path = quantize(variants[-1].path, work / "quantized" / "model.onnx", quant)
            check_graph(path)
        variants.append(Variant(quant.variant_name, path, False, quant.describe()))
    return variants


def _check(
    source: ModelSource,
    task: str,
    variants: list[Variant],
    encoded: dict[str, Array],
    opts: ExportOptions,
) -> list[Verdict]:
    torch_model = load_torch_model(source.folder, task)
    batches = check_batches(open_session(variants[0].path), encoded)
    reference = reference_outputs(torch_model, batches)
    del torch_model
    verdicts = []
    for variant in variants:
        got = run_variant(open_session(variant.path), batches)
        spec = TASKS[task]
        figures = compare(reference, got, batches, spec.has_labels, spec.checked_outputs)
        verdicts.append(judge(variant, figures, opts.thresholds))
    return verdicts


def _bench(
    source: ModelSource,
    task: str,
    variants: list[Variant],
    encoded: dict[str, Array],
    opts: ExportOptions,
    work: Path,
    reporter: Reporter,
) -> list[BenchRow]:
    specs = input_specs(open_session(variants[0].path))
    mask = encoded.get("attention_mask")
    longest = int(mask.sum(axis=1).argmax()) if mask is not None else 0
    feeds = {1: graph_feeds(specs, single(encoded, longest))}
    feeds[BATCH_SIZES[-1]] = graph_feeds(specs, batch_of(encoded, BATCH_SIZES[-1]))
    inputs = save_inputs(work / "bench-inputs.npz", feeds)
    candidates = [Candidate("pytorch", "pytorch", source.folder, task)]
    candidates += [Candidate(v.name, "onnx", v.path, task) for v in variants]
    threads = opts.bench_threads or os.cpu_count() or 1
    label = f"Benchmarking {len(candidates)} variants, one process each, {threads} thread(s)"
    with reporter.progress(label, len(candidates)) as advance:
        return run_benchmarks(candidates, inputs, opts.bench_iterations, threads, advance)


def _publish(
    source: ModelSource,
    task: str,
    opts: ExportOptions,
    variants: list[Variant],
    verdicts: list[Verdict],
    bench: list[BenchRow] | None,
    decisions: list[Decision],
    max_length: int,
    quant: Quantization | None,
    reporter: Reporter,
) -> dict[str, Published]:
    chosen = [d.variant for d in decisions if d.publish]
    if not opts.publish or not chosen or any(d.blocking for d in decisions):
        return {}
    spec = TASKS[task]
    extra = sentence_transformers_settings(source.folder) if source.sentence_transformers else {}
    folder = model_folder(opts.repo, opts.name)
    inputs = graph_record(variants[-1].path)["inputs"]
    text = config_text(spec.config_task, opts.max_batch_size, max_length, extra, inputs)
    export_dir = variants[0].path.parent
    common: dict[str, Any] = {
        **base_manifest(opts.command, "ortserve export"),
        "run_id": uuid.uuid4().hex,
        "source": {**source.describe(), "files_sha256": source_files(source.folder)},
        "options": _options_record(opts, task, max_length, quant),
        "checks": {
            "onnx_checker": "passed (full_check) for every variant",
            "reference": f"PyTorch {source.architecture}, inputs as one padded batch and one "
            "row at a time",
            "sample_texts": list(opts.sample_texts or DEFAULT_TEXTS),
            "variants": {v.variant: v.as_dict() for v in verdicts},
        },
        "benchmark": (
            {
                "iterations": opts.bench_iterations,
                "threads": opts.bench_threads or os.cpu_count(),
                "rows": [r.as_dict() for r in bench],
            }
            if bench is not None
            else None
        ),
        "decisions": {d.variant: {"publish": d.publish, "reason": d.reason} for d in decisions},
        "forced": opts.force,
    }
    by_name = {v.name: v for v in variants}
    versions: list[tuple[str, dict[str, Path], dict[str, Any]]] = []
    for name in chosen:
        variant = by_name[name]
        files = {"model.onnx": variant.path, **_beside_files(export_dir, source, spec)}
        manifest = {
            "format": common["format"],
            "model": {
                "name": opts.name,
                "variant": name,
                "description": variant.description,
                "task": task,
                "config_task": spec.config_task,
                "served_as": "tensors" if spec.served_as_tensors else "text",
            },
            **common,
            "opset": graph_record(variant.path)["opset"].get("ai.onnx"),
            "graph": graph_record(variant.path),
        }
        graph = signature(open_session(variant.path), variant.path)
        check_loadable(folder, opts.name, text, graph, files, manifest)
        versions.append((name, files, manifest))
    write_config_if_absent(folder, text)
    published: dict[str, Published] = {}
    for name, files, manifest in versions:
        published[name] = publish_version(opts.repo, opts.name, files, manifest)
        for stale in published[name].stale_removed:
            reporter.warn(f"removed {folder / stale}: left by a publish that was killed")
    return published


def _beside_files(export_dir: Path, source: ModelSource, spec: Task) -> dict[str, Path]:
    """The tokenizer and config files for the version folder: beside model.onnx for a text
    model; in tokenizer/ for a tensor model (the daemon takes a tokenizer.json beside
    model.onnx for a text model)."""
    files = {n: export_dir / n for n in ("tokenizer.json", *HF_FILES) if (export_dir / n).is_file()}
    if "tokenizer.json" not in files:
        raise ExportError(f"{source.folder}: the export has no tokenizer.json (no fast tokenizer)")
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (source.folder / name).is_file():
            files[name] = source.folder / name
    if spec.served_as_tensors:
        return {f"{TOKENIZER_FOLDER}/{name}": path for name, path in files.items()}
    return files


def _options_record(
    opts: ExportOptions, task: str, max_length: int, quant: Quantization | None
) -> dict[str, Any]:
    return {
        "task": task,
        "task_detected": opts.task is None,
        "opset": opts.opset,
        "optimize": opts.optimize,
        "quantize": quant.target if quant else None,  # "auto" resolved
        "per_channel": opts.per_channel,
        "quantized_only": opts.quantized_only,
        "max_length": max_length,
        "max_batch_size": opts.max_batch_size,
        "thresholds": {
            "fp32_tolerance": opts.thresholds.fp32_tolerance,
            "min_cosine": opts.thresholds.min_cosine,
            "min_agreement": opts.thresholds.min_agreement,
        },
        "bench": opts.bench,
        "bench_iterations": opts.bench_iterations,
        "bench_threads": opts.bench_threads,
        "force": opts.force,
    }


def _print_checks(
    reporter: Reporter,
    variants: list[Variant],
    verdicts: list[Verdict],
    bench: list[BenchRow] | None,
) -> None:
    rows = []
    for variant, verdict in zip(variants, verdicts, strict=True):
        f = verdict.figures
        agreement = "-" if f.label_agreement is None else f"{f.label_agreement:.3f}"
        size = f"{variant.path.stat().st_size / 1e6:.1f}"
        rows.append([variant.name, size, f"{f.max_abs_diff:.2e}", f"{f.min_cosine:.5f}",
                     f"{f.mean_cosine:.5f}", agreement, verdict.rule,
                     "[green]pass[/]" if verdict.passed else "[red]FAIL[/]"])  # fmt: skip
    columns = ["variant", "MB", "max |diff|", "min cos", "mean cos", "agree", "rule", "check"]
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


def _print_summary(
    reporter: Reporter,
    opts: ExportOptions,
    variants: list[Variant],
    decisions: list[Decision],
    published: dict[str, Published],
) -> None:
    by_name = {d.variant: d for d in decisions}
    rows = []
    for variant in variants:
        decision = by_name.get(variant.name)
        if variant.name in published:
            where = f"{opts.repo / opts.name / str(published[variant.name].version)}"
        elif decision is None:
            where = "- (intermediate)"
        elif decision.publish and not opts.publish:
            where = "- (--no-publish)"
        else:
            where = "not published"
        reason = decision.reason if decision else "compared only"
        rows.append([variant.name, variant.description, where, reason])
    reporter.table("Summary", ["variant", "what", "published as", "why"], rows)
