"""``ortserve inspect PATH``: what an ONNX model declares, and the manifest published with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ortserve.export.graph import describe_graph, model_file
from ortserve.export.repository.manifest import MANIFEST_FILENAME, read_manifest


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
