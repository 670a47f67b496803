"""``ortserve publish PATH --name NAME``: an existing ONNX file or folder into the repository.

Checks (``onnx.checker``, then an ONNX Runtime load), then publishes exactly as ``export`` does:
the next version, atomically, with the tokenizer and config files found beside the model, a
config.pbtxt when the model has none, and a manifest. No torch needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ortserve.export.check import check_graph, open_session
from ortserve.export.errors import ExportError
from ortserve.export.inspect import describe_graph, model_file, read_manifest
from ortserve.export.manifest import base_manifest, graph_record
from ortserve.export.options import TASKS, TOKENIZER_FOLDER, PublishOptions, tensor_model_note
from ortserve.export.publish import (
    check_servable,
    config_text,
    model_folder,
    publish_version,
    sha256_file,
    validate_name,
    write_config_if_absent,
)
from ortserve.export.report import Reporter
from ortserve.export.source import (
    HF_FILES,
    SENTENCE_TRANSFORMERS_FILES,
    max_sequence_length,
    sentence_transformers_settings,
)


def run_publish(opts: PublishOptions, reporter: Reporter) -> int:
    validate_name(opts.name)
    model = model_file(opts.path)
    folder = model.parent
    with reporter.step(f"Checking {model} (onnx.checker, ONNX Runtime load)"):
        check_graph(model)
        session = open_session(model)
        providers = session.get_providers()
        del session
    graph = describe_graph(model)
    previous = read_manifest(model)
    task, how = _task(opts, graph, previous)
    reporter.line(f"task: {task or 'none'} ({how})")
    tensors = task is not None and TASKS[task].served_as_tensors
    if task is not None:
        check_servable(TASKS[task].config_task, opts.max_batch_size)
    if tensors:
        reporter.warn(tensor_model_note(str(task)))
    files: dict[str, Path] = {"model.onnx": model}
    for name in _external_data(model):
        files[name] = folder / name
    for name in ("tokenizer.json", *HF_FILES, *SENTENCE_TRANSFORMERS_FILES):
        # beside the model, or in tokenizer/ (a version published as a tensor model)
        found = [p for p in (folder / name, folder / TOKENIZER_FOLDER / name) if p.is_file()]
        if found:
            # a tensor model's tokenizer goes in tokenizer/: beside model.onnx, the daemon would
            # load the version as a text model
            files[f"{TOKENIZER_FOLDER}/{name}" if tensors else name] = found[0]
    if "tokenizer.json" not in files and not tensors:
        reporter.warn(f"no tokenizer.json beside {model}: the daemon cannot tokenize text for it")
    target = model_folder(opts.repo, opts.name)
    if task is not None:
        config_task = TASKS[task].config_task
        extra = sentence_transformers_settings(folder) if task == "sentence-embeddings" else {}
        length = max_sequence_length(folder, opts.max_length)
        text = config_text(config_task, opts.max_batch_size, length, extra, graph["inputs"])
        write_config_if_absent(target, text)
    manifest: dict[str, Any] = {
        **base_manifest(opts.command, "ortserve publish"),
        "model": {
            "name": opts.name,
            "variant": "as given",
            "task": task,
            "config_task": TASKS[task].config_task if task else None,
            "served_as": "text" if "tokenizer.json" in files else "tensors",
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
        },
        "benchmark": None,
    }
    with reporter.step(f"Publishing into {target}"):
        published = publish_version(opts.repo, opts.name, files, manifest)
    reporter.table(
        "Summary",
        ["model", "version", "folder", "files"],
        [[opts.name, published.version, published.path, ", ".join(sorted(published.files))]],
    )
    return 0


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
