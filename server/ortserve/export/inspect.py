"""``ortserve inspect PATH``: what an ONNX model declares, and the manifest published with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ortserve.export.errors import ExportError

MANIFEST_FILENAME = "manifest.json"

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


def read_manifest(model_path: Path) -> dict[str, Any] | None:
    """The manifest.json beside a model file, if there is one."""
    path = model_path.parent / MANIFEST_FILENAME
    if not path.is_file():
        return None
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: cannot read it as JSON: {exc}") from None
    return manifest


def inspect(path: Path, as_json: bool, whole_manifest: bool = False) -> int:
    from rich.markup import escape

    from ortserve.export.report import Reporter

    model = model_file(path)
    graph = describe_graph(model)
    manifest = read_manifest(model)
    reporter = Reporter()
    if as_json:
        reporter.raw_json({"graph": graph, "manifest": manifest})
        return 0
    opsets = ", ".join(f"{d} {v}" for d, v in graph["opset"].items())
    header = f"opset {opsets}, IR {graph['ir_version']}, {graph['producer']}"
    reporter.line(f"[bold]{escape(str(model))}[/]  {escape(header)}")
    reporter.line(f"{graph['nodes']} nodes, {graph['initializer_bytes'] / 1e6:.1f} MB of weights")
    for kind in ("inputs", "outputs"):
        # Cells are escaped: rich would read "[batch_size, 384]" as a markup tag and drop it.
        reporter.table(
            kind,
            ["name", "datatype", "dims", "dynamic axes"],
            [
                [
                    escape(t["name"]),
                    t["datatype"],
                    escape("[" + ", ".join(str(d) for d in t["dims"]) + "]"),
                    escape(", ".join(f"{i}: {n}" for i, n in t["dynamic_axes"].items()) or "-"),
                ]
                for t in graph[kind]
            ],
        )
    if manifest is None:
        reporter.line(f"no {MANIFEST_FILENAME} beside it")
    elif whole_manifest:
        reporter.line(f"[bold]{MANIFEST_FILENAME}[/]")
        reporter.print_json(manifest)
    else:
        rows = [[escape(key), escape(value)] for key, value in manifest_summary(manifest)]
        reporter.table(MANIFEST_FILENAME, ["field", "value"], rows)
        reporter.line(f"the whole {MANIFEST_FILENAME}: --manifest (or --json)")
    return 0


def manifest_summary(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """The lines of a manifest a person looks for first: who made the version, from what, how it
    checked and what was decided. The rest (versions of every library, the machine, each file's
    sha256, every benchmark row) is for ``--manifest``. Tolerates fields that are missing."""
    model = manifest.get("model") or {}
    source = manifest.get("source") or {}
    keys = ("name", "variant", "task", "served_as")
    described = ", ".join(f"{k} {model[k]}" for k in keys if model.get(k) is not None)
    rows = [
        ("version", str(manifest.get("version", "?"))),
        ("made by", f"{manifest.get('made_by', '?')}, {manifest.get('created_utc', '?')}"),
        ("command", str(manifest.get("command", "?"))),
        ("model", described or "?"),
        ("source", str(source.get("hub_id") or source.get("model") or source.get("path") or "?")),
    ]
    checks = manifest.get("checks") or {}
    rows += [(f"check {k}", v) for k, v in checks.items() if isinstance(v, str)]
    for variant, verdict in (checks.get("variants") or {}).items():
        outcome = "passed" if verdict.get("passed") else "FAILED"
        rows.append((f"check {variant}", f"{outcome}: {verdict.get('rule', '')}"))
    for variant, decision in (manifest.get("decisions") or {}).items():
        verb = "published" if decision.get("publish") else "not published"
        rows.append((f"decision {variant}", f"{verb}: {decision.get('reason', '')}"))
    for row in (manifest.get("benchmark") or {}).get("rows") or []:
        rows.append((f"bench {row.get('variant')} batch {row.get('batch')}",
                     f"p50 {row.get('p50_ms')} ms, p95 {row.get('p95_ms')} ms"))  # fmt: skip
    files = manifest.get("files") or {}
    total = sum(int(f.get("bytes", 0)) for f in files.values() if isinstance(f, dict))
    rows.append(("files", f"{len(files)}, {total:,} bytes"))
    return rows
