"""The config.pbtxt the exporter writes for a new model: batching, the text task's parameters,
and a warm-up a decoder with past inputs can run. Only settings the daemon would accept are
written; inputs and outputs are left to the daemon's auto-completion from the graph."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ortserve.export.errors import ExportError
from ortserve.export.options import GENERATION_TASK
from ortserve.text.settings import MIN_SEQUENCE_LENGTH, POOLINGS
from ortserve.text.settings import TASKS as TEXT_TASKS


def check_servable(config_task: str | None, max_batch_size: int) -> None:
    """Refuse, before any work, a config the daemon would load as a text model and refuse.
    (A generation model always gets ``max_batch_size: 0``: its engine batches rows itself.)"""
    if config_task is not None and config_task != GENERATION_TASK and max_batch_size == 0:
        raise ExportError(
            f"--max-batch-size 0: the daemon serves a text model ({config_task}) only with a "
            "batch axis; give 1 or more"
        )


def config_text(
    task: str | None,
    max_batch_size: int,
    max_sequence_length: int,
    extra: Mapping[str, str],
    graph_inputs: Sequence[Mapping[str, Any]] = (),
) -> str:
    """A config.pbtxt for an exported model: batching and the task's parameters; inputs and
    outputs are left to the daemon's auto-completion from the graph. ``task`` None: a tensor
    model, with no text parameters at all (``max_sequence_length`` and ``extra`` are dropped).
    A decoder with past inputs gets a ``model_warmup`` of one token and an empty past (the
    daemon's default warm-up, one row of zeros with every dynamic axis 1, would give it a past
    longer than its mask)."""
    if task == GENERATION_TASK:
        return generation_config_text(max_batch_size or None)
    what = f"task {task}" if task else "a tensor model: no text task, the graph's own tensors"
    lines = [
        f"# Written by `ortserve export` ({what}). Inputs and outputs come from the model;",
        "# edit freely: the exporter never overwrites an existing config.pbtxt.",
        f"max_batch_size: {max_batch_size}",
    ]
    if max_batch_size > 0:
        lines.append("dynamic_batching { }")
    parameters: dict[str, str] = {}
    if task:
        parameters = {"task": task, "max_sequence_length": str(max_sequence_length), **extra}
        _check_text_parameters(parameters)
    for key, value in parameters.items():
        entry = f"{{ string_value: {json.dumps(value)} }}"
        lines.append(f"parameters {{ key: {json.dumps(key)} value: {entry} }}")
    if any(str(i["name"]).startswith("past_key_values") for i in graph_inputs):
        lines += _past_warmup(graph_inputs, batched=max_batch_size > 0)
    return "\n".join(lines) + "\n"


def generation_config_text(max_num_seqs: int | None = None) -> str:
    """A generation model's config.pbtxt: no batch axis (the engine keeps its own batch of
    rows, padded on the left, and ``max_num_seqs`` of them decode at once), decoupled (one
    response per streamed piece of text) and the ``text-generation`` task. No warm-up: the
    engine owns the session and no client-visible tensor feeds the graph directly."""
    lines = [
        "# Written by `ortserve export` (task text-generation: text in, tokens streamed out).",
        "# The context limit comes from config.json, eos ids from generation_config.json.",
        "# Optional parameters: max_num_seqs (rows decoding at once, default 16),",
        "# max_kv_tokens (KV positions over all rows, default 16384), prefill_chunk (prompt",
        "# tokens prefilled per step, default 256), max_queue_size (default 256).",
        "# Edit freely: the exporter never overwrites an existing config.pbtxt.",
        'backend: "onnxruntime"',
        "max_batch_size: 0",
        "model_transaction_policy { decoupled: true }",
    ]
    parameters = {"task": GENERATION_TASK}
    if max_num_seqs is not None:
        parameters["max_num_seqs"] = str(max_num_seqs)
    for key, value in parameters.items():
        entry = f"{{ string_value: {json.dumps(value)} }}"
        lines.append(f"parameters {{ key: {json.dumps(key)} value: {entry} }}")
    return "\n".join(lines) + "\n"


def _check_text_parameters(parameters: Mapping[str, str]) -> None:
    """Never write text settings the daemon's text/settings.py would refuse."""
    accepted = {"task": TEXT_TASKS, "pooling": POOLINGS}
    for key, allowed in accepted.items():
        if key in parameters and parameters[key] not in allowed:
            raise ExportError(
                f"config.pbtxt parameters '{key}': the daemon does not serve "
                f"'{parameters[key]}' (it takes {', '.join(allowed)})"
            )
    if int(parameters["max_sequence_length"]) < MIN_SEQUENCE_LENGTH:
        raise ExportError(
            f"max_sequence_length {parameters['max_sequence_length']}: the daemon needs at "
            f"least {MIN_SEQUENCE_LENGTH} tokens"
        )


def _past_warmup(graph_inputs: Sequence[Mapping[str, Any]], batched: bool) -> list[str]:
    lines = ["model_warmup [ {", '  name: "one token, empty past"', "  batch_size: 1"]
    for tensor in graph_inputs:
        name = str(tensor["name"])
        dims = list(tensor["dims"])[1:] if batched else list(tensor["dims"])
        empty = 0 if name.startswith("past_key_values") else 1
        sizes = ", ".join(str(d if isinstance(d, int) and d > 0 else empty) for d in dims)
        lines.append(
            f"  inputs {{ key: {json.dumps(name)} value: {{ data_type: TYPE_{tensor['datatype']} "
            f"dims: [ {sizes} ] zero_data: true }} }}"
        )
    lines.append("} ]")
    return lines
