"""Which nodes lose the most accuracy when quantized: per-node error against the FP32 graph.

The way ORT's quantization debugger (``qdq_loss_debug``) and Optimum compare activations: the
tensors that the FP32 graph and the quantized graph both have (the quantizer keeps the names of
the activations it reads and writes) become extra graph outputs, both graphs run on the same
inputs, and each quantized node is charged the error it adds itself: the quantized graph's nodes
read their inputs from the FP32 run, so the relative error at a node's output is its own, not
what it inherits from upstream. (Subtracting the error at the input from the error at the output
instead ranked all-MiniLM-L6-v2's nodes no better than chance: keeping its "top" 4 in FP32 gained
less than keeping its "bottom" 4; ranked on own error, keeping 4/8/12 of 36 MatMuls took the
minimum cosine from 0.986 to 0.990/0.995/0.998.)

Both graphs are copied and run from memory: models over 2 GiB (protobuf's limit) are refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ortserve.export.errors import ExportError
from ortserve_client.tensors import Array

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

#: Ops the dynamic and weight-only quantizers rewrite (what ``nodes_to_exclude`` can keep).
QUANTIZABLE_OPS = frozenset({"MatMul", "Gemm", "Attention"})
_TINY = 1e-12
_PROTOBUF_LIMIT = 2**31 - 1
_FP32 = "fp32::"  # prefix of the inputs that feed FP32 activations to the quantized graph


@dataclass(frozen=True, slots=True)
class _Watched:
    """A quantized node: its name, the activation it reads and the tensor it writes."""

    name: str
    inputs: tuple[str, ...]
    output: str


def sensitive_nodes(
    fp32: Path, quantized: Path, feeds: Sequence[Mapping[str, Array]], count: int
) -> list[str]:
    """Names of the ``count`` FP32-graph nodes that add the most error once quantized, worst
    first: each node's relative error at its output when it reads the FP32 activations,
    averaged over ``feeds`` (input name -> array, as the FP32 graph takes them)."""
    if count <= 0 or not feeds:
        return []
    reference, candidate = _load(fp32), _load(quantized)
    watched = _watched_nodes(reference, candidate)
    if not watched:
        return []
    tensors = sorted({t for node in watched for t in (node.output, *node.inputs)})
    activations = sorted({t for node in watched for t in node.inputs})
    ref_session = _session(reference, tensors)
    cand_session = _session(_fed_from_fp32(candidate, activations), tensors)
    own_error = dict.fromkeys((node.name for node in watched), 0.0)
    for feed in feeds:
        ref = _run(ref_session, tensors, feed)
        fed = {**feed, **{_FP32 + t: ref[t] for t in activations}}
        cand = _run(cand_session, tensors, fed)
        for node in watched:
            own_error[node.name] += relative_error(ref[node.output], cand[node.output]) / len(feeds)
    ranked = sorted(own_error, key=lambda name: (-own_error[name], name))
    return ranked[:count]


def relative_error(reference: Array, candidate: Array) -> float:
    """||candidate - reference|| / ||reference||: scale-free, so that layers compare."""
    ref = np.asarray(reference, dtype=np.float64)
    diff = np.asarray(candidate, dtype=np.float64) - ref
    return float(np.linalg.norm(diff) / max(float(np.linalg.norm(ref)), _TINY))


def _load(path: Path) -> onnx.ModelProto:
    import onnx

    model = onnx.load(str(path))
    if model.ByteSize() > _PROTOBUF_LIMIT:
        raise ExportError(f"{path}: finding sensitive nodes needs a model under 2 GiB")
    return model


def _watched_nodes(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> list[_Watched]:
    """The reference's quantizable nodes that the quantizer rewrote (an excluded node keeps its
    name and op) and whose output both graphs have."""
    shared = _tensor_names(reference) & _tensor_names(candidate)
    weights = {init.name for init in reference.graph.initializer}
    untouched = {(node.name, node.op_type) for node in candidate.graph.node}
    watched = []
    for node in reference.graph.node:
        if node.op_type not in QUANTIZABLE_OPS or not node.name or not node.output:
            continue
        if (node.name, node.op_type) in untouched or node.output[0] not in shared:
            continue
        # The activation operand: MatMul/Gemm read their weight as B, Attention as its 2nd input.
        operands = node.input[:1] if node.op_type == "Attention" else node.input[:2]
        inputs = tuple(t for t in operands if t and t not in weights and t in shared)
        watched.append(_Watched(node.name, inputs, node.output[0]))
    return watched


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {value.name for value in graph.input}
    names.update(out for node in graph.node for out in node.output if out)
    return names - {init.name for init in graph.initializer}


def _session(model: onnx.ModelProto, tensors: Iterable[str]) -> ort.InferenceSession:
    """A session on a copy of ``model`` whose outputs are ``tensors`` (types left to ORT)."""
    import onnx
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in tensors)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        copy.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _fed_from_fp32(model: onnx.ModelProto, activations: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose nodes read each of ``activations`` from a new graph input
    (``fp32::<name>``): fed the FP32 graph's values, each quantized node then shows its own
    error only, not the error its inputs already carry."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    renamed = set(activations)
    for node in copy.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = _FP32 + name
    copy.graph.input.extend(
        onnx.helper.make_tensor_value_info(_FP32 + name, onnx.TensorProto.FLOAT, None)
        for name in activations
    )
    return copy


def _run(
    session: ort.InferenceSession, tensors: Sequence[str], feed: Mapping[str, Array]
) -> dict[str, Array]:
    """Outputs by name; the feed is narrowed to the graph's inputs (a tokenizer may give more)."""
    wanted = {value.name for value in session.get_inputs()}
    inputs = {name: array for name, array in feed.items() if name in wanted}
    outputs = session.run(list(tensors), inputs)
    return {name: np.asarray(value) for name, value in zip(tensors, outputs, strict=True)}
