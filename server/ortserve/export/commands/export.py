"""``ortserve export``: export -> check graph -> optimize -> parity -> quantize (each candidate
checked as it is made) -> speed against FP32 -> decide -> benchmark -> publish, with progress on
stderr and the tables on stdout. The steps share one ``ExportRun``."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from rich.markup import escape

from ortserve.export.commands.export_candidates import (
    ParityCheck,
    build_candidates,
    judge_candidates,
)
from ortserve.export.commands.export_generation import (
    GENERATION_REFERENCE,
    generation_notes,
    slice_lm_head,
)
from ortserve.export.commands.export_report import (
    print_checks,
    print_summary,
    quantization_record,
)
from ortserve.export.commands.export_run import ExportRun, Variants
from ortserve.export.convert.export import check_exportable, export_onnx, load_tokenizer
from ortserve.export.convert.quantize import resolve_target
from ortserve.export.errors import CheckFailed, ExportError
from ortserve.export.options import (
    EXACT_OPTIMIZE_LEVELS,
    TASKS,
    TOKENIZER_FOLDER,
    ExportOptions,
    tensor_model_note,
)
from ortserve.export.report import Reporter
from ortserve.export.repository.config_writer import check_servable, config_text
from ortserve.export.repository.loadable import check_loadable, signature
from ortserve.export.repository.manifest import base_manifest, graph_record, source_files
from ortserve.export.repository.publish import (
    Published,
    model_folder,
    publish_version,
    validate_name,
    write_config_if_absent,
)
from ortserve.export.source import (
    HF_FILES,
    SENTENCE_TRANSFORMERS_FILES,
    check_tokenizer_files,
    detect_task,
    max_sequence_length,
    resolve_source,
    sentence_transformers_settings,
    set_offline,
)
from ortserve.export.verify.bench import (
    BATCH_SIZES,
    BenchRow,
    Candidate,
    run_benchmarks,
    save_inputs,
)
from ortserve.export.verify.check import CHECK_BATCH_ROWS, Variant, check_graph, open_session
from ortserve.export.verify.check_texts import check_texts
from ortserve.export.verify.decide import Decision, Rules, choose
from ortserve.export.verify.samples import (
    DEFAULT_TEXTS,
    batch_of,
    encode,
    graph_feeds,
    input_specs,
    single,
)
from ortserve.repository.config import DEFAULT_MAX_BATCH_SIZE
from ortserve_client.tensors import Array


def run_export(opts: ExportOptions, reporter: Reporter) -> int:
    set_offline()
    validate_name(opts.name)
    source = resolve_source(opts.model)
    task = opts.task or detect_task(source)
    how = "given" if opts.task else "detected"
    where = escape(str(source.folder))
    reporter.line(f"[bold]{source.architecture}[/] from {where}: task {task} ({how})")
    check_exportable(source, task)
    check_tokenizer_files(source)
    check_servable(TASKS[task].config_task, _max_batch_size(opts, task))
    if TASKS[task].served_as_tensors:
        reporter.warn(tensor_model_note(task))
    if TASKS[task].generates:
        for note in generation_notes(opts):
            reporter.warn(note)
    quant = resolve_target(opts.quantize, opts.per_channel) if opts.quantize else None
    max_length = max_sequence_length(source.folder, opts.max_length)
    texts = check_texts(opts.check_texts)
    with tempfile.TemporaryDirectory(prefix="ortserve-export-") as tmp:
        run = ExportRun(opts, reporter, source, task, max_length, quant, Path(tmp))
        run.check_texts = tuple(texts)
        run.variants = _build_variants(run)
        tokenizer = load_tokenizer(run.variants.export_dir, task, source.folder)
        label = f"Checking {len(run.variants)} variant(s) against PyTorch on {len(texts)} texts"
        with reporter.step(label):
            check = ParityCheck(run, encode(tokenizer, texts, task, _check_length(run)))
            run.verdicts = {v.name: check.verdict(v) for v in run.variants}
        build_candidates(run, check)
        samples = encode(tokenizer, opts.sample_texts or DEFAULT_TEXTS, task, max_length)
        if opts.bench:
            judge_candidates(run, samples)
        run.decisions = _decide(run)
        if opts.bench:
            run.bench = _bench(run, samples)
        print_checks(run)
        published = _publish(run)
        print_summary(run, published)
    return _exit_status(run)


def _exit_status(run: ExportRun) -> int:
    """0 when something was published (or would be, with --no-publish) and nothing blocks it;
    3 (CheckFailed) otherwise. Under auto, a quantized candidate left out is a warning."""
    refused = [d for d in run.decisions if not d.publish]
    if any(d.blocking for d in refused) or not any(d.publish for d in run.decisions):
        why = "; ".join(f"{d.variant}: {d.reason}" for d in refused) or "nothing to publish"
        raise CheckFailed(f"nothing published ({why}); --force publishes anyway")
    hint = "" if run.auto else " (--force publishes it)"
    for d in refused:
        if not d.passed_over:
            run.reporter.warn(f"{d.variant} not published: {d.reason}{hint}")
    if (
        run.auto
        and run.variants.quantized
        and not any(d.publish for d in run.decisions if d.variant in run.specs)
    ):
        count = len(run.variants.quantized)
        run.reporter.warn(
            f"no quantized variant published: none of the {count} candidate(s) tried passed its "
            f"check and the speed rules (see the summary); {run.variants.fp32.name} published alone"
        )
    return 0


def _check_length(run: ExportRun) -> int:
    """Where the check texts are cut: the max length; a generation model's prompts one token
    short of its context, as the check feeds it one decode step after the prompt."""
    return run.max_length - 1 if run.spec.generates else run.max_length


def _decide(run: ExportRun) -> list[Decision]:
    opts = run.opts
    rules = Rules(
        base=run.variants.fp32.name,
        auto=run.auto,
        force=opts.force,
        require_faster=opts.require_faster,
        quantized_only=opts.quantized_only,
    )
    quantized = [v.name for v in run.variants.quantized]
    return choose([run.variants.fp32.name], quantized, run.verdicts, run.speeds, rules)


def _build_variants(run: ExportRun) -> Variants:
    """The plain export first, then the optimized graph (the quantized candidates are made
    later, each checked as it is made: ``export_candidates``)."""
    opts, reporter, work = run.opts, run.reporter, run.work
    with reporter.step(f"Exporting {run.source.architecture} ({run.task}) with Optimum"):
        path = export_onnx(run.source, run.task, opts.opset, work / "export")
        check_graph(path)
    description = "Optimum export, FP32"
    if run.spec.generates:
        description += slice_lm_head(path, reporter)
    variants = Variants(Variant("fp32", path, True, description))
    if opts.optimize:
        from ortserve.export.convert.optimize import optimize

        with reporter.step(f"Optimizing ({opts.optimize})"):
            path = optimize(path.parent, opts.optimize, work / "optimized")
            check_graph(path)
        exact = opts.optimize in EXACT_OPTIMIZE_LEVELS
        description = f"ONNX Runtime transformer optimizer, {opts.optimize}"
        optimized = Variant(f"fp32-{opts.optimize}", path, exact, description)
        variants = Variants(variants.exported, optimized=optimized)
    return variants


def _bench(run: ExportRun, encoded: dict[str, Array]) -> list[BenchRow]:
    """Latency of PyTorch, the FP32 graphs and the quantized variant published, for the table
    and the manifest (the speed decision is ``judge_candidates``')."""
    specs = input_specs(open_session(run.variants.exported.path))
    mask = encoded.get("attention_mask")
    longest = int(mask.sum(axis=1).argmax()) if mask is not None else 0
    feeds = {1: graph_feeds(specs, single(encoded, longest))}
    feeds[BATCH_SIZES[-1]] = graph_feeds(specs, batch_of(encoded, BATCH_SIZES[-1]))
    inputs = save_inputs(run.work / "bench-inputs.npz", feeds)
    chosen = set(run.published_names)
    variants = [v for v in run.variants if v.name not in run.specs or v.name in chosen]
    candidates = [Candidate("pytorch", "pytorch", run.source.folder, run.task)]
    candidates += [Candidate(v.name, "onnx", v.path, run.task) for v in variants]
    threads = run.opts.bench_threads or os.cpu_count() or 1
    label = f"Benchmarking {len(candidates)} variants, one process each, {threads} thread(s)"
    with run.reporter.progress(label, len(candidates)) as advance:
        return run_benchmarks(candidates, inputs, run.opts.bench_iterations, threads, advance)


def _publish(run: ExportRun) -> dict[str, Published]:
    """Check every chosen variant against the daemon's loader first, then write config.pbtxt
    (unless the model has one) and publish each as a version of its own."""
    opts, source, spec = run.opts, run.source, run.spec
    chosen = [d.variant for d in run.decisions if d.publish]
    if not opts.publish or not chosen or any(d.blocking for d in run.decisions):
        return {}
    extra = sentence_transformers_settings(source.folder) if source.sentence_transformers else {}
    folder = model_folder(opts.repo, opts.name)
    inputs = graph_record(run.variants.last.path)["inputs"]
    batch = _max_batch_size(opts, run.task)
    text = config_text(spec.config_task, batch, run.max_length, extra, inputs)
    common = _common_manifest(run)
    versions: list[tuple[str, dict[str, Path], dict[str, Any]]] = []
    for name in chosen:
        variant = run.variants.named(name)
        files = {"model.onnx": variant.path, **_beside_files(run)}
        manifest = {
            "format": common["format"],
            "model": {
                "name": opts.name,
                "variant": name,
                "description": variant.description,
                "task": run.task,
                "config_task": spec.config_task,
                "served_as": spec.served_as,
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
            run.reporter.warn(f"removed {folder / stale}: left by a publish that was killed")
    return published


def _common_manifest(run: ExportRun) -> dict[str, Any]:
    """What the manifest of every version this run publishes records alike."""
    opts, source = run.opts, run.source
    return {
        **base_manifest(opts.command, "ortserve export"),
        "run_id": uuid.uuid4().hex,
        "source": {**source.describe(), "files_sha256": source_files(source.folder)},
        "options": _options_record(run),
        "checks": {
            "onnx_checker": "passed (full_check) for every variant",
            "reference": f"PyTorch {source.architecture}, inputs in padded batches of "
            f"{CHECK_BATCH_ROWS} rows and one row at a time"
            + (GENERATION_REFERENCE if run.spec.generates else ""),
            "check_texts": {
                "source": str(opts.check_texts) if opts.check_texts else "bundled",
                "count": len(run.check_texts),
            },
            "sample_texts": list(opts.sample_texts or DEFAULT_TEXTS),
            "variants": {name: v.as_dict() for name, v in run.verdicts.items()},
        },
        "benchmark": (
            {
                "iterations": opts.bench_iterations,
                "threads": opts.bench_threads or os.cpu_count(),
                "rows": [r.as_dict() for r in run.bench],
            }
            if run.bench is not None
            else None
        ),
        "decisions": {d.variant: {"publish": d.publish, "reason": d.reason} for d in run.decisions},
        "quantization": quantization_record(run),
        "forced": opts.force,
    }


def _beside_files(run: ExportRun) -> dict[str, Path]:
    """The tokenizer and config files for the version folder: beside model.onnx for a text
    model; in tokenizer/ for a tensor model (the daemon takes a tokenizer.json beside
    model.onnx for a text model)."""
    export_dir, source = run.variants.export_dir, run.source
    files = {n: export_dir / n for n in ("tokenizer.json", *HF_FILES) if (export_dir / n).is_file()}
    if "tokenizer.json" not in files:
        raise ExportError(f"{source.folder}: the export has no tokenizer.json (no fast tokenizer)")
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (source.folder / name).is_file():
            files[name] = source.folder / name
    if run.spec.served_as_tensors:
        return {f"{TOKENIZER_FOLDER}/{name}": path for name, path in files.items()}
    return files


def _max_batch_size(opts: ExportOptions, task: str) -> int:
    """--max-batch-size, else the default; a generation model's is its max_num_seqs (0: the
    engine's default), as its config has no batch axis."""
    if opts.max_batch_size is not None:
        return opts.max_batch_size
    return 0 if TASKS[task].generates else DEFAULT_MAX_BATCH_SIZE


def _options_record(run: ExportRun) -> dict[str, Any]:
    opts = run.opts
    return {
        "task": run.task,
        "task_detected": opts.task is None,
        "opset": opts.opset,
        "optimize": opts.optimize,
        "quantize": run.quant.target if run.quant else None,  # "auto" resolved
        "per_channel": opts.per_channel,
        "quantized_only": opts.quantized_only,
        "max_length": run.max_length,
        "max_batch_size": _max_batch_size(opts, run.task),
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
