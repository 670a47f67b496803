"""Graph surgery for generation models: the LM head computes the last position only.

A generation engine reads ``logits[:, -1, :]`` and nothing else, yet the exported graph projects
every prompt position onto the vocabulary: on a 50k vocabulary that one MatMul is about as costly
as the rest of a small model's prefill. Slicing the hidden state to its last position on the
sequence axis, just before the LM head, gives ``logits`` of shape [batch, 1, vocab] with the very
same values at that position (every op from the hidden state to the logits works per position).

The LM head is found by walking back from the ``logits`` output through per-position ops (Add of
a bias, Cast, Identity, a scale) to the MatMul whose other operand is a weight (an initializer,
or a Transpose/Cast of one: tied embeddings). The Slice goes on that MatMul's activation input,
which must be [batch, sequence, hidden]. A graph that does not look like this is left as it is
(``None``): the engine takes the last position of full logits just the same, only slower.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortserve.export.errors import ExportError

LOGITS = "logits"
#: Ops between the LM head's MatMul and ``logits`` that work on each position alone.
_PER_POSITION = ("Add", "Cast", "Identity", "Mul", "Div", "Tanh")  # Tanh: logit soft-capping
#: Ops that turn a weight into the LM head's operand without reading any activation.
_WEIGHT_OPS = ("Transpose", "Cast", "Identity", "DequantizeLinear", "Reshape")
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Sliced:
    """Where the Slice went, for the report and the manifest."""

    head: str  # the LM head's node name (e.g. /lm_head/MatMul)
    hidden: str  # the tensor that is sliced to its last position

    def describe(self) -> str:
        return f"hidden state {self.hidden} sliced to the last position before {self.head}"


def slice_to_last_position(source: Path, output: Path) -> Sliced | None:
    """Write ``source`` with its LM head fed the last position only to ``output`` (a file
    path; external weight files are copied beside it). None, and nothing written, when the
    graph has no recognisable LM head."""
    import onnx

    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ExportError(f"{source}: not an ONNX model: {exc}") from None
    found = find_lm_head(model.graph)
    if found is None:
        return None
    head, index, path = found
    hidden = head.input[index]
    sliced = f"{hidden}_last_position"
    _insert_slice(model.graph, head, index, sliced)
    _set_logits_length_one(model.graph, path)
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(output))
    if output.parent.resolve() != source.parent.resolve():
        for name in _external_files(model):
            shutil.copyfile(source.parent / name, output.parent / name)
    return Sliced(head.name or head.output[0], hidden)


def slice_in_place(model: Path) -> Sliced | None:
    """``slice_to_last_position`` over ``model`` itself (its external weights, if any, stay
    where they are): the sliced graph replaces the export, whole or not at all."""
    partial = model.with_name(f".{model.name}.sliced")
    try:
        sliced = slice_to_last_position(model, partial)
        if sliced is not None:
            os.replace(partial, model)
    finally:
        partial.unlink(missing_ok=True)
    return sliced


def find_lm_head(graph: Any) -> tuple[Any, int, list[Any]] | None:
    """(the LM head MatMul, the index of its activation input, the nodes from it to
    ``logits``), or None."""
    if _logits_rank(graph) != 3:
        return None  # [batch, sequence, vocab] only: axis 1 must be the sequence
    producers = {out: node for node in graph.node for out in node.output}
    weights = {init.name for init in graph.initializer}
    weights |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    ranks = {init.name: len(init.dims) for init in graph.initializer}
    path: list[Any] = []
    name = LOGITS
    while (node := producers.get(name)) is not None and len(path) < 8:
        path.append(node)
        if node.op_type == "MatMul":  # hidden [batch, sequence, hidden] @ weight [hidden, vocab]
            weight = node.input[1]
            if _is_weight(weight, producers, weights) and _rank(weight, producers, ranks) == 2:
                return node, 0, path
            return None
        if node.op_type not in _PER_POSITION:
            return None
        activations = [i for i in node.input if i and not _is_weight(i, producers, weights)]
        if len(activations) != 1:
            return None
        name = activations[0]
    return None


def _is_weight(name: str, producers: dict[str, Any], weights: set[str], depth: int = 0) -> bool:
    """A tensor computed from weights alone (tied embeddings arrive through a Transpose)."""
    if name in weights:
        return True
    node = producers.get(name)
    if node is None or node.op_type not in _WEIGHT_OPS or depth > 4:
        return False
    return all(_is_weight(i, producers, weights, depth + 1) for i in node.input if i)


def _logits_rank(graph: Any) -> int | None:
    for value in graph.output:
        if value.name == LOGITS and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    return None


def _rank(name: str, producers: dict[str, Any], ranks: dict[str, int]) -> int | None:
    """A weight's rank, through the ops that keep it (a Reshape's is not known here)."""
    node = producers.get(name)
    if name in ranks or node is None:
        return ranks.get(name)
    if node.op_type in ("Transpose", "Cast", "Identity", "DequantizeLinear"):
        return _rank(node.input[0], producers, ranks)
    return None


def _insert_slice(graph: Any, head: Any, index: int, sliced: str) -> None:
    """``sliced = Slice(hidden, starts=[-1], ends=[max], axes=[1])`` fed to the head instead."""
    import numpy as np
    from onnx import helper, numpy_helper

    hidden = head.input[index]
    prefix = f"{sliced}/"
    constants = {
        "starts": np.array([-1], dtype=np.int64),
        "ends": np.array([_INT64_MAX], dtype=np.int64),
        "axes": np.array([1], dtype=np.int64),
    }
    for key, value in constants.items():
        graph.initializer.append(numpy_helper.from_array(value, prefix + key))
    node = helper.make_node(
        "Slice",
        [hidden, prefix + "starts", prefix + "ends", prefix + "axes"],
        [sliced],
        name=f"{head.name or 'lm_head'}/LastPosition",
    )
    position = list(graph.node).index(head)
    graph.node.insert(position, node)
    head.input[index] = sliced


def _set_logits_length_one(graph: Any, path: list[Any]) -> None:
    """``logits`` is [batch, 1, vocab] now; shapes recorded for the old length are dropped."""
    stale = {out for node in path for out in node.output}
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    for value in graph.output:
        if value.name == LOGITS:
            dims = value.type.tensor_type.shape.dim
            if len(dims) == 3:
                dims[1].Clear()
                dims[1].dim_value = 1


def _external_files(model: Any) -> set[str]:
    from onnx.external_data_helper import uses_external_data

    names: set[str] = set()
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            names |= {e.value for e in tensor.external_data if e.key == "location"}
    return names
