"""``ortserve publish PATH --name NAME``: an existing ONNX file or folder into the repository.

Checks (``onnx.checker``, then an ONNX Runtime load, then the daemon's own loader rules on the
config that will be in force and the version's files), then publishes exactly as ``export`` does:
the next version, atomically, with the tokenizer and config files found beside the model, a
config.pbtxt when the model has none, and a manifest. No torch needed.

A model that takes no token inputs (``input_ids``...) is published as a tensor model: any
tokenizer files found go in ``tokenizer/``, since a ``tokenizer.json`` beside ``model.onnx`` makes
the daemon load a text model, which it would refuse. ``--task`` with a text task is refused for
it; a guessed task is dropped. A tensor model with no known task gets a config.pbtxt only for
``--max-batch-size``; ``--max-length`` is refused for any tensor model: nothing is dropped
without a word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ortserve.export.errors import ExportError
from ortserve.export.graph import describe_graph, model_file
from ortserve.export.options import (
    TASKS,
    TOKENIZER_FOLDER,
    PublishOptions,
    tensor_model_note,
)
from ortserve.export.report import Reporter
from ortserve.export.repository.config_writer import check_servable, config_text
from ortserve.export.repository.loadable import (
    check_loadable,
    past_inputs_note,
    signature,
    takes_past,
    takes_tokens,
    token_inputs_note,
)
from ortserve.export.repository.manifest import base_manifest, graph_record, read_manifest
from ortserve.export.repository.publish import (
    model_folder,
    publish_version,
    sha256_file,
    validate_name,
    write_config_if_absent,
)
from ortserve.export.source import (
    HF_FILES,
    SENTENCE_TRANSFORMERS_FILES,
    max_sequence_length,
    sentence_transformers_settings,
)
from ortserve.export.verify.check import check_graph, open_session
from ortserve.repository.config import DEFAULT_MAX_BATCH_SIZE
from ortserve.repository.layout import CONFIG_FILENAME


def run_publish(opts: PublishOptions, reporter: Reporter) -> int:
    validate_name(opts.name)
    model = model_file(opts.path)
    folder = model.parent
    with reporter.step(f"Checking {model} (onnx.checker, ONNX Runtime load)"):
        check_graph(model)
        session = open_session(model)
        providers = session.get_providers()
        graph_signature = signature(session, model)
        del session
    graph = describe_graph(model)
    previous = read_manifest(model)
    task, how = _task(opts, graph, previous)
    input_names = [i["name"] for i in graph["inputs"]]
    generation = task is not None and TASKS[task].generates
    tokens = takes_past(input_names) if generation else takes_tokens(input_names)
    if task is not None:
        check_servable(TASKS[task].config_task, _max_batch_size(opts))
    if task is not None and not TASKS[task].served_as_tensors and not tokens:
        note = past_inputs_note(model) if generation else token_inputs_note(model, input_names)
        if opts.task:
            raise ExportError(
                f"--task {task}: {note}; leave --task out to publish it as a tensor model"
            )
        reporter.warn(f"not a {task} model after all: {note}")
        task, how, generation = (
            None,
            f"{task} dropped: no {'past' if generation else 'token'} inputs",
            False,
        )
    reporter.line(f"task: {task or 'none'} ({how})")
    text = task is not None and not TASKS[task].served_as_tensors
    # A tensor model's tokenizer goes in tokenizer/: beside model.onnx, the daemon would load the
    # version as a text model, and refuse one that takes no token inputs.
    tensors = not text and (task is not None or not tokens)
    _check_flags(opts, task, text and not generation)
    if task is not None and tensors:
        reporter.warn(tensor_model_note(str(task)))
    files: dict[str, Path] = {"model.onnx": model}
    for name in _external_data(model):
        files[name] = folder / name
    for name in ("tokenizer.json", *HF_FILES, *SENTENCE_TRANSFORMERS_FILES):
        # beside the model, or in tokenizer/ (a version published as a tensor model)
        found = [p for p in (folder / name, folder / TOKENIZER_FOLDER / name) if p.is_file()]
        if found:
            files[f"{TOKENIZER_FOLDER}/{name}" if tensors else name] = found[0]
    tokenizer = "tokenizer.json" in files or f"{TOKENIZER_FOLDER}/tokenizer.json" in files
    if not tokenizer and (task is None or text):
        reporter.warn(f"no tokenizer.json beside {model}: the daemon cannot tokenize text for it")
    if task is None and tensors and f"{TOKENIZER_FOLDER}/tokenizer.json" in files:
        reporter.warn(
            f"{token_inputs_note(model, input_names)}: published as a tensor model, with its "
            f"tokenizer files in {TOKENIZER_FOLDER}/ (beside model.onnx, tokenizer.json would "
            "make the daemon load it as a text model, and refuse it)"
        )
    target = opts.repo / opts.name  # created once the checks pass
    config: str | None = None
    if task is not None:
        config_task = TASKS[task].config_task
        extra = sentence_transformers_settings(folder) if task == "sentence-embeddings" else {}
        length = max_sequence_length(folder, opts.max_length)
        batch = (opts.max_batch_size or 0) if generation else _max_batch_size(opts)
        config = config_text(config_task, batch, length, extra, graph["inputs"])
    elif opts.max_batch_size is not None or takes_past(input_names):
        # a tensor model: batching only, as asked; a decoder, with a warm-up of an empty past
        config = config_text(None, _max_batch_size(opts), 0, {}, graph["inputs"])
    manifest: dict[str, Any] = {
        **base_manifest(opts.command, "ortserve publish"),
        "model": {
            "name": opts.name,
            "variant": "as given",
            "task": task,
            "config_task": TASKS[task].config_task if task else None,
            "served_as": "generation"
            if generation
            else ("text" if "tokenizer.json" in files else "tensors"),
        },
        "source": {
            "path": str(opts.path.resolve()),
            "files_sha256": {rel: sha256_file(src) for rel, src in sorted(files.items())},
            "manifest": previous,
        },
        "opset": graph["opset"].get("ai.onnx"),
        "graph": graph_record(model),
        "checks": {
            "onnx_checker": "passed (full_check)",
            "onnxruntime_load": f"passed ({', '.join(providers)})",
            "daemon_load_rules": "passed (config.pbtxt completed from the graph"
            + (", text pipeline built)" if "tokenizer.json" in files else ")"),
        },
        "benchmark": None,
    }
    check_loadable(target, opts.name, config, graph_signature, files, manifest)
    model_folder(opts.repo, opts.name)
    if config is not None and not write_config_if_absent(target, config):
        given = [f for f, v in (("--max-batch-size", opts.max_batch_size),
                                ("--max-length", opts.max_length)) if v is not None]  # fmt: skip
        if given:
            reporter.warn(
                f"{target / CONFIG_FILENAME} exists and is kept (never overwritten): "
                f"{' and '.join(given)} not applied; edit that file to change them"
            )
    with reporter.step(f"Publishing into {target}"):
        published = publish_version(opts.repo, opts.name, files, manifest)
    for stale in published.stale_removed:
        reporter.warn(f"removed {target / stale}: left by a publish that was killed")
    reporter.table(
        "Summary",
        ["model", "version", "folder", "files"],
        [[opts.name, published.version, published.path, ", ".join(sorted(published.files))]],
    )
    return 0


def _max_batch_size(opts: PublishOptions) -> int:
    return DEFAULT_MAX_BATCH_SIZE if opts.max_batch_size is None else opts.max_batch_size


def _check_flags(opts: PublishOptions, task: str | None, text: bool) -> None:
    """Refuse a flag that would otherwise be dropped without a word."""
    if opts.max_length is None or text:
        return
    if task is not None and TASKS[task].generates:
        raise ExportError(
            f"--max-length {opts.max_length}: a {task} model has no max_sequence_length; its "
            "context limit is its config.json's (n_positions / max_position_embeddings), capped "
            "by generation_config.json's max_length; leave it out"
        )
    if task is not None:
        raise ExportError(
            f"--max-length {opts.max_length}: a {task} model is published as a tensor model, "
            "with no max_sequence_length to write (clients tokenize themselves); leave it out"
        )
    raise ExportError(
        f"--max-length {opts.max_length}: no text task is known for this model, so there is no "
        "max_sequence_length to write; pass --task (a text task, for a model taking token "
        "inputs) or leave --max-length out"
    )


def _task(
    opts: PublishOptions, graph: dict[str, Any], previous: dict[str, Any] | None
) -> tuple[str | None, str]:
    if opts.task:
        return opts.task, "given"
    if previous and previous.get("model", {}).get("task") in TASKS:
        return str(previous["model"]["task"]), "from the manifest beside the model"
    outputs = {o["name"]: o for o in graph["outputs"]}
    inputs = {i["name"] for i in graph["inputs"]}
    guess = None
    if "sentence_embedding" in outputs:
        guess = "sentence-embeddings"
    elif "start_logits" in outputs and "end_logits" in outputs:
        guess = "question-answering"
    elif "last_hidden_state" in outputs:
        guess = "feature-extraction"
    elif any(n.startswith("past_key_values") for n in inputs):
        folder = Path(str(graph["file"])).parent
        if not any((folder / d / "tokenizer.json").is_file() for d in (".", TOKENIZER_FOLDER)):
            return None, (
                "a decoder with past inputs, but no tokenizer.json for the generation engine: "
                "a tensor model"
            )
        guess = "text-generation-with-past"
    elif "logits" in outputs:
        rank = len(outputs["logits"]["dims"])
        guess = "text-classification" if rank == 2 else "token-classification"
    if guess is None:
        return None, "unknown: pass --task to write the task into config.pbtxt"
    return guess, "guessed from the output names; pass --task to choose"


def _external_data(model: Path) -> list[str]:
    """Files holding the weights outside the .onnx file, if any (names relative to it)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ExportError(f"{model}: not an ONNX model: {exc}") from None
    names: set[str] = set()
    for tensor in proto.graph.initializer:
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    names.add(entry.value)
    for name in names:
        if not (model.parent / name).is_file():
            raise ExportError(f"{model}: its weights file {name} is missing")
    return sorted(names)
