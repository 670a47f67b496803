"""Tiny real ONNX models, built with the onnx helper API, and repositories laid out around them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9

#: Wire datatype -> ONNX element type, for every datatype ONNX Runtime's CPU Identity runs.
WIRE_TO_ONNX = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
    "BF16": TensorProto.BFLOAT16,
}

Dim = int | str | None


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


def add_model(width: int = 4, offset: float = 1.0, batch: Dim = "batch") -> onnx.ModelProto:
    """y = x + offset, FP32 [batch, width]; ``offset`` makes versions distinguishable."""
    const = numpy_helper.from_array(np.full([width], offset, dtype=np.float32), "offset")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "offset"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])],
        initializer=[const],
    )
    return _model(graph)


def two_output_model() -> onnx.ModelProto:
    """INT64 ids [batch, seq] -> doubled (INT64) and as float (FP32): for output subsets."""
    two = numpy_helper.from_array(np.array(2, dtype=np.int64), "two")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["ids", "two"], ["doubled"]),
            helper.make_node("Cast", ["ids"], ["as_float"], to=TensorProto.FLOAT),
        ],
        "ids",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [
            helper.make_tensor_value_info("doubled", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("as_float", TensorProto.FLOAT, ["batch", "seq"]),
        ],
        initializer=[two],
    )
    return _model(graph)


def identity_model(datatypes: Sequence[str], width: int = 3) -> onnx.ModelProto:
    """One Identity per datatype: input ``in_<DT>`` -> output ``out_<DT>``, [batch, width]."""
    nodes, inputs, outputs = [], [], []
    for dt in datatypes:
        elem = WIRE_TO_ONNX[dt]
        nodes.append(helper.make_node("Identity", [f"in_{dt}"], [f"out_{dt}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{dt}", elem, ["batch", width]))
        outputs.append(helper.make_tensor_value_info(f"out_{dt}", elem, ["batch", width]))
    return _model(helper.make_graph(nodes, "identity", inputs, outputs))


def encoder_model(
    vocab: int = 30522, width: int = 384, hidden: int = 1536, blocks: int = 4, seed: int = 0
) -> onnx.ModelProto:
    """An encoder-shaped model: int64 ids + mask [batch, seq] -> masked-mean-pooled [batch, width].

    Embedding Gather, ``blocks`` MLP blocks (width -> hidden -> width, ReLU, residual) and a
    masked mean pool: the shape of a sentence-embedding model, with random weights.
    """
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        scale = 1.0 / np.sqrt(shape[0])
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), name
        )

    inits = [weight("embedding", vocab, width)]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["h0"]),
    ]
    current = "h0"
    for i in range(blocks):
        inits += [weight(f"w{i}a", width, hidden), weight(f"w{i}b", hidden, width)]
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}a"], [f"u{i}"]),
            helper.make_node("Relu", [f"u{i}"], [f"r{i}"]),
            helper.make_node("MatMul", [f"r{i}", f"w{i}b"], [f"d{i}"]),
            helper.make_node("Add", [current, f"d{i}"], [f"h{i + 1}"]),
        ]
        current = f"h{i + 1}"
    inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"))
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis"))
    inits.append(numpy_helper.from_array(np.array(1e-9, dtype=np.float32), "eps"))
    nodes += [
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last_axis"], ["mask3"]),
        helper.make_node("Mul", [current, "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "seq_axis"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "eps"], ["safe_count"]),
        helper.make_node("Div", ["summed", "safe_count"], ["embedding_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("embedding_out", TensorProto.FLOAT, ["batch", width])],
        initializer=inits,
    )
    return _model(graph)


def write_model(
    repo: Path,
    name: str,
    model: onnx.ModelProto | bytes,
    version: int = 1,
    config: str | None = None,
    filename: str = "model.onnx",
) -> Path:
    """Lay out ``<repo>/<name>/<version>/<filename>`` (and config.pbtxt when given)."""
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    (folder / filename).write_bytes(data)
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return folder


def slow_model(size: int = 512, rounds: int = 6, seed: int = 0) -> onnx.ModelProto:
    """y = x + 1 (FP32 [batch, 4]) after ``rounds`` square MatMuls that depend on the input.

    The MatMul chain keeps a session busy for a while whatever the batch size (the input's max
    scales a constant matrix, so ONNX Runtime cannot fold it away): a model for queueing tests.
    """
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.ones([4], dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Mul", ["w", "m"], ["t0"]),
    ]
    for i in range(rounds):
        nodes.append(helper.make_node("MatMul", [f"t{i}", "w"], [f"t{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"t{rounds}"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero"], ["nothing"]),
        helper.make_node("Add", ["x", "one"], ["x1"]),
        helper.make_node("Add", ["x1", "nothing"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=inits,
    )
    return _model(graph)


def slow_load_config(warmup_runs: int) -> str:
    """A config for ``slow_model(size=768)`` whose warm-up keeps loading busy for a while
    (~50 ms a run on one thread here): a model that is still loading when a test acts."""
    return (
        "max_batch_size: 1\n"
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
        f'model_warmup [ {{ name: "slow" batch_size: 1 count: {warmup_runs}\n'
        '  inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]\n'
    )
