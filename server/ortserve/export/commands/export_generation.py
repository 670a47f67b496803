"""The steps of ``ortserve export`` that differ for a generation model (a causal LM published
for the daemon's generation engine): what is said before the export, the LM head cut to the
last position, and the parity check of prefill and one decode step."""

from __future__ import annotations

from pathlib import Path

from ortserve.export.commands.export_run import ExportRun
from ortserve.export.convert.export import load_torch_model
from ortserve.export.convert.last_position import slice_in_place
from ortserve.export.options import ExportOptions, Thresholds
from ortserve.export.report import Reporter
from ortserve.export.verify.check import Variant, Verdict, check_batches, judge, open_session
from ortserve.export.verify.generation import (
    compare_generation,
    reference_generation,
    run_generation,
)
from ortserve_client.tensors import Array

#: What the manifest adds to its ``checks.reference`` for a generation model.
GENERATION_REFERENCE = (
    " (padded on the left, as the engine pads); compared: the next-token logits after the "
    "prompt (empty past) and after one decode step fed the prompt's past"
)


def generation_notes(opts: ExportOptions) -> list[str]:
    """Warnings before the export: what would make the published model worse than it could be."""
    from importlib.util import find_spec

    notes = []
    if find_spec("accelerate") is None:
        notes.append(
            "accelerate is not installed: Optimum cannot find tied weights, so a model whose LM "
            "head shares the embedding matrix stores it twice (install the export extra)"
        )
    if opts.max_length is not None:
        notes.append(
            f"--max-length {opts.max_length} only truncates the check's sample texts: a "
            "generation model's context limit is its config.json's (n_positions / "
            "max_position_embeddings), capped by generation_config.json's max_length"
        )
    return notes


def slice_lm_head(model: Path, reporter: Reporter) -> str:
    """Cut the exported graph's LM head to the last position (in place); what to add to the
    variant's description."""
    with reporter.step("Slicing the hidden state to the last position before the LM head"):
        sliced = slice_in_place(model)
    if sliced is None:
        reporter.warn(
            f"{model.name}: no LM head MatMul found before `logits`; published unsliced (the "
            "engine reads the last position of the full logits: same tokens, slower prefill)"
        )
        return ""
    return ", LM head on the last position"


def generation_reference(
    run: ExportRun, encoded: dict[str, Array]
) -> tuple[list[dict[str, Array]], list[dict[str, Array]]]:
    """The check's feeds and PyTorch's next-token logits for them (after the prompt and after
    one decode step); PyTorch is loaded for this and let go."""
    torch_model = load_torch_model(run.source.folder, run.task)
    batches = check_batches(open_session(run.variants.exported.path), encoded)
    reference = reference_generation(torch_model, batches)
    del torch_model
    return batches, reference


def judge_generation(
    variant: Variant,
    batches: list[dict[str, Array]],
    reference: list[dict[str, Array]],
    thresholds: Thresholds,
) -> Verdict:
    """One variant's verdict: its next-token logits against PyTorch's."""
    got = run_generation(open_session(variant.path), batches, reference)
    return judge(variant, compare_generation(reference, got), thresholds)
