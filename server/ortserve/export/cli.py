"""``ortserve export | publish | inspect``: flags, help, and errors as one line with an exit status.

``ortserve.cli`` hands these commands here without parsing them, so the daemon's command line
never imports this package. Exit statuses: 0 done, 1 error, 2 bad usage, 3 a check failed (or
nothing could be published) and nothing was published; 130 interrupted (SIGINT), 128 + N stopped
by signal N (SIGTERM 143, SIGHUP 129), after removing what the run had half-written.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from ortserve.export.errors import EXIT_USAGE, ExportError, Terminated
from ortserve.export.options import (
    OPTIMIZE_LEVELS,
    QUANTIZE_TARGETS,
    TASKS,
    ExportOptions,
    PublishOptions,
    Thresholds,
)
from ortserve.repository.config import DEFAULT_MAX_BATCH_SIZE
from ortserve.text.settings import MIN_SEQUENCE_LENGTH  # the daemon's own floor

if TYPE_CHECKING:
    from ortserve.export.report import Reporter

_DEFAULTS = Thresholds()


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (what the daemon accepts in config.pbtxt)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    return parse


def _repo_arguments(parser: argparse.ArgumentParser, publish: bool = False) -> None:
    parser.add_argument(
        "--name", required=True, help="model name: the folder <repo>/<name>/ that versions go into"
    )
    parser.add_argument(
        "--repo",
        type=Path,
        default=Path("model_repo"),
        help="model repository folder (default: model_repo)",
    )
    if publish:
        length_use = " (a text model only: refused for a tensor model)"
        batch_default = None
        tensor_note = (
            "; a tensor model with no known task gets a config.pbtxt, with max_batch_size and "
            "dynamic batching, only when this is given, else the daemon completes its config "
            "from the graph"
        )
    else:
        length_use = " (and the check's truncation)"
        tensor_note = (
            "; a text-generation model gets max_batch_size 0 and this as its max_num_seqs, the "
            "rows its engine decodes at once (default: the engine's, 16)"
        )
        batch_default = None
    parser.add_argument(
        "--max-length",
        type=_int_at_least(MIN_SEQUENCE_LENGTH),
        default=None,
        metavar="TOKENS",
        help=f"max_sequence_length written into a new config.pbtxt{length_use}; default: the "
        "model's own (sentence-transformers max_seq_length, else the tokenizer's "
        "model_max_length), capped at 512",
    )
    parser.add_argument(
        "--max-batch-size",
        type=_int_at_least(0),
        default=batch_default,
        help=f"max_batch_size written into a new config.pbtxt (default: {DEFAULT_MAX_BATCH_SIZE}"
        f"{tensor_note}); an existing config.pbtxt is never overwritten",
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text}") from None
    if not 0 < value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ortserve export",
        description=(
            "Export a Hugging Face model (local folder) to ONNX with Optimum, optionally optimize "
            "and quantize it, check each variant against PyTorch, benchmark each in its own "
            "process, and publish the FP32 graph (and the quantized one) as the next versions of "
            "<repo>/<name>/ by atomic rename, with tokenizer files, config.pbtxt and a manifest. "
            "Works offline: never downloads from a model hub."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="the model: a local folder with config.json and weights (a Hugging Face "
        "Hub id only works when already in the local cache; nothing is downloaded)",
    )
    _repo_arguments(p)
    p.add_argument(
        "--task",
        choices=list(TASKS),
        default=None,
        help="what the model does; default: detected (modules.json -> "
        "sentence-embeddings, else from the architecture's head, e.g. "
        "...ForSequenceClassification -> text-classification, ...LMHeadModel -> "
        "text-generation-with-past); both text-generation tasks publish a generation model: "
        "the with-past export, its LM head sliced to the last position, served text in and "
        "tokens streamed out",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset to export with (default: Optimum's choice for the model)",
    )
    p.add_argument(
        "--optimize",
        choices=OPTIMIZE_LEVELS,
        default=None,
        help="ONNX Runtime graph optimization: O1 basic, O2 + transformer fusions, O3 + "
        "approximate GELU, O4 + FP16 (GPU only). O3/O4 are checked like quantized "
        "variants (cosine), O1/O2 by max |diff|",
    )
    p.add_argument(
        "--quantize",
        choices=QUANTIZE_TARGETS,
        nargs="?",
        const="auto",
        default=None,
        help="also make an 8-bit variant and publish it as the next version. auto (the "
        "default when the flag has no value) tries, for this machine's CPU, dynamic INT8, its "
        "7-bit/U8U8 forms where they help, the same with its most sensitive nodes kept in FP32 "
        "(when the first fails its check) and 8-bit weight-only, and publishes the fastest that "
        "passes its check (none: FP32 alone, exit status 0). An explicit target makes that one "
        "only, and a failed check publishes nothing: dynamic INT8 for avx2, avx512, "
        "avx512_vnni or arm64, or weight-only (8-bit weights in blocks of 32, MatMulNBits: the "
        "accurate option, 0.999 cosine on all-MiniLM-L6-v2 vs 0.98)",
    )
    p.add_argument(
        "--per-tensor",
        dest="per_channel",
        action="store_false",
        help="dynamic INT8 with one scale per weight tensor instead of per channel "
        "(smaller, but all-MiniLM-L6-v2 loses up to 9%% cosine)",
    )
    p.add_argument(
        "--quantized-only",
        action="store_true",
        help="with --quantize, publish only the quantized variant (default: the FP32 "
        "graph as one version, then the quantized one as the next)",
    )
    p.add_argument(
        "--sample-text",
        dest="sample_texts",
        action="append",
        default=[],
        metavar="TEXT",
        help="a text for the speed judgement, the benchmark and the warm-up (repeat the flag; "
        "default: 8 built-in English sentences; the checks use --check-texts)",
    )
    p.add_argument(
        "--check-texts",
        type=Path,
        default=None,
        metavar="FILE",
        help="the texts the parity check runs on, one per line (UTF-8, at least 8, blank "
        "lines skipped), instead of the bundled check set (76 texts: short queries to "
        "paragraphs past 512 tokens, in 11 languages, code, numbers, URLs, emoji)",
    )
    p.add_argument(
        "--fp32-tolerance",
        type=_non_negative,
        default=_DEFAULTS.fp32_tolerance,
        help="FP32 variants fail when max |ONNX - PyTorch| over the sample outputs is "
        "above this (default: %(default)g)",
    )
    p.add_argument(
        "--min-cosine",
        type=float,
        default=_DEFAULTS.min_cosine,
        help="quantized (and O3/O4) variants fail when the cosine between any of their "
        "output vectors and PyTorch's is below this (default: %(default)g)",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=_DEFAULTS.min_agreement,
        help="... or when fewer than this share of argmax labels agree, for tasks with "
        "labels (classification, QA spans, next token) (default: %(default)g)",
    )
    p.add_argument(
        "--no-bench",
        dest="bench",
        action="store_false",
        help="skip the benchmark (then a quantized variant is published without the speed check)",
    )
    p.add_argument(
        "--bench-iterations",
        type=int,
        default=50,
        metavar="N",
        help="timed runs per variant and batch size (1 and 32), after a warm-up; "
        "p50/p95/p99 are over these (default: %(default)s)",
    )
    p.add_argument(
        "--bench-threads",
        type=int,
        default=None,
        metavar="N",
        help="threads for PyTorch and ONNX Runtime alike in the benchmark (default: every CPU; "
        "on a busy machine 1 gives steadier figures)",
    )
    p.add_argument(
        "--speed-budget",
        type=_positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long FP32 and the quantized candidates may be timed against each other, "
        "interleaved at batch 32, before the speed decision: it stops sooner once the "
        "ratio is known to about 3 %% (default: %(default)g)",
    )
    p.add_argument(
        "--require-faster",
        action="store_true",
        help="publish a quantized variant only when it is faster than FP32 beyond the noise "
        "(default: one not shown faster is published too, and says so; one shown slower "
        "never is, unless --force)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="publish even when a check fails or the quantized variant is slower than "
        "FP32 here (the manifest records it)",
    )
    p.add_argument(
        "--no-publish",
        dest="publish",
        action="store_false",
        help="export, check and benchmark only; write nothing into the repository",
    )
    return p


def build_publish_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ortserve publish",
        description=(
            "Publish an existing ONNX model (a .onnx file, or a folder with model.onnx and its "
            "tokenizer/config files) as the next version of <repo>/<name>/, by atomic rename, "
            "after onnx.checker and an ONNX Runtime load. Writes config.pbtxt if absent and a "
            "manifest. Needs no torch."
        ),
    )
    p.add_argument("path", type=Path, help="a .onnx file, or a folder holding model.onnx")
    _repo_arguments(p, publish=True)
    p.add_argument(
        "--task",
        choices=list(TASKS),
        default=None,
        help="the task for config.pbtxt; default: from a manifest.json beside the "
        "model, else guessed from the output names",
    )
    return p


def build_inspect_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ortserve inspect",
        description="Print an ONNX model's opset, inputs, outputs and dynamic axes, and a "
        "summary of the manifest.json published beside it (--manifest: all of it).",
    )
    p.add_argument("path", type=Path, help="a .onnx file, or a folder holding model.onnx")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document instead: the graph and the whole manifest",
    )
    p.add_argument(
        "--manifest",
        action="store_true",
        help="print the whole manifest.json (default: a summary of it)",
    )
    return p


def main(argv: Sequence[str]) -> int:
    """``argv`` starts with the command name (export, publish or inspect)."""
    from ortserve.export.report import Reporter

    command, rest = argv[0], list(argv[1:])
    builders = {
        "export": build_export_parser,
        "publish": build_publish_parser,
        "inspect": build_inspect_parser,
    }
    args = builders[command]().parse_args(rest)
    reporter = Reporter()
    try:
        with _termination_raises():
            return _run(command, args, argv, reporter)
    except ExportError as exc:
        reporter.error(command, str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        reporter.error(command, f"interrupted; {_LEFT}")
        return 128 + signal.SIGINT
    except Terminated as exc:
        reporter.error(command, f"stopped by {signal.Signals(exc.signum).name}; {_LEFT}")
        return 128 + exc.signum


#: What an interrupted run leaves: versions are renamed into place whole, or not at all.
_LEFT = "its staging and temporary folders are removed (versions published before stay)"

#: Signals that stop the tool the way Ctrl-C does, with every cleanup on the way out.
_TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def _termination_raises() -> Iterator[None]:
    """While the command runs, SIGTERM and SIGHUP raise ``Terminated`` in the main thread (as
    SIGINT raises KeyboardInterrupt), so the ``finally``/``except BaseException`` cleanups run:
    a killed ``publish`` leaves no ``.staging-*`` folder, a killed ``export`` no temporary
    folder. A signal the caller ignores (``nohup``) stays ignored; a second signal during the
    cleanup is ignored so that it is not cut short (SIGKILL still stops everything)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous: dict[signal.Signals, Any] = {}

    def stop(signum: int, frame: FrameType | None) -> None:
        for number in previous:
            signal.signal(number, signal.SIG_IGN)
        raise Terminated(signum)

    for wanted in _TERMINATION_SIGNALS:
        if signal.getsignal(wanted) == signal.SIG_DFL:
            previous[wanted] = signal.signal(wanted, stop)
    try:
        yield
    finally:
        for restored, handler in previous.items():
            signal.signal(restored, handler)


def _run(command: str, args: argparse.Namespace, argv: Sequence[str], reporter: Reporter) -> int:
    from ortserve.export.repository.manifest import command_line

    if command == "export":
        if args.quantized_only and not args.quantize:
            raise _usage(build_export_parser(), "--quantized-only needs --quantize")
        if args.check_texts is not None:
            from ortserve.export.verify.check_texts import check_texts

            check_texts(args.check_texts)  # a bad file stops the run before any export
        from ortserve.export.commands.export import run_export

        return run_export(_export_options(args, command_line(list(argv))), reporter)
    if command == "publish":
        from ortserve.export.commands.publish import run_publish

        options = PublishOptions(
            path=args.path,
            name=args.name,
            repo=args.repo,
            task=args.task,
            max_length=args.max_length,
            max_batch_size=args.max_batch_size,
            command=command_line(list(argv)),
        )
        return run_publish(options, reporter)
    from ortserve.export.commands.inspect import inspect

    return inspect(args.path, args.json, args.manifest)


class _UsageError(ExportError):
    exit_code = EXIT_USAGE


def _usage(parser: argparse.ArgumentParser, message: str) -> _UsageError:
    return _UsageError(f"{message} (see `{parser.prog} --help`)")


def _export_options(args: argparse.Namespace, command: str) -> ExportOptions:
    return ExportOptions(
        model=args.model,
        name=args.name,
        repo=args.repo,
        task=args.task,
        opset=args.opset,
        optimize=args.optimize,
        quantize=args.quantize,
        per_channel=args.per_channel,
        quantized_only=args.quantized_only,
        max_length=args.max_length,
        max_batch_size=args.max_batch_size,
        sample_texts=tuple(args.sample_texts),
        check_texts=args.check_texts,
        thresholds=Thresholds(args.fp32_tolerance, args.min_cosine, args.min_agreement),
        bench=args.bench,
        bench_iterations=args.bench_iterations,
        bench_threads=args.bench_threads,
        speed_budget_s=args.speed_budget,
        require_faster=args.require_faster,
        force=args.force,
        publish=args.publish,
        command=command,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
