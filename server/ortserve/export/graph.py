"""Finding and describing an ONNX file without running it: what ``inspect`` prints, what the
manifest records and what ``publish`` guesses the task from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ortserve.export.errors import ExportError

_ELEM_TYPES = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
    8: "BYTES", 9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 16: "BF16",
}  # fmt: skip


def model_file(path: Path) -> Path:
    """``path`` itself when a file, else the model.onnx in the folder (or its one .onnx file)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise ExportError(f"{path}: no such file or folder")
    if (path / "model.onnx").is_file():
        return path / "model.onnx"
    found = sorted(path.glob("*.onnx"))
    if len(found) == 1:
        return found[0]
    names = ", ".join(p.name for p in found) or "none"
    raise ExportError(f"{path}: expected model.onnx or exactly one .onnx file (found: {names})")


def describe_graph(path: Path) -> dict[str, Any]:
    """Opsets, IR version, producer, inputs and outputs (dims: a number, or the axis name when
    dynamic), and the weights' total size."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ExportError(f"{path}: not an ONNX model: {exc}") from None

    def tensors(values: Any) -> list[dict[str, Any]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims: list[int | str] = [
                d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                for d in tensor.shape.dim
            ]
            out.append(
                {
                    "name": value.name,
                    "datatype": _ELEM_TYPES.get(tensor.elem_type, str(tensor.elem_type)),
                    "dims": dims,
                    "dynamic_axes": {i: d for i, d in enumerate(dims) if isinstance(d, str)},
                }
            )
        return out

    initializers = {i.name for i in model.graph.initializer}
    weight_bytes = sum(len(i.raw_data) for i in model.graph.initializer)
    return {
        "file": str(path),
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": tensors(v for v in model.graph.input if v.name not in initializers),
        "outputs": tensors(model.graph.output),
        "nodes": len(model.graph.node),
        "initializer_bytes": weight_bytes,
    }
