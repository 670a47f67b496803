"""The manifest published with each version (``manifest.json``): where the files came from, how
they were made and how they measured. ``publish.publish_version`` adds ``version`` and the sha256
of every file in the version folder. ``inspect`` reads it back."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from ortserve.export.errors import ExportError
from ortserve.export.graph import describe_graph

FORMAT = "ortserve-manifest/1"
MANIFEST_FILENAME = "manifest.json"


def base_manifest(command: str, kind: str) -> dict[str, Any]:
    """What every manifest records: format, time, the exact command, this machine."""
    from ortserve.export.convert.export import library_versions

    return {
        "format": FORMAT,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "made_by": kind,  # "ortserve export" or "ortserve publish"
        "command": command,
        "versions": {"python": platform.python_version(), **library_versions()},
        "machine": {
            "system": platform.system(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "cpu_flags": _cpu_flags(),
        },
    }


def graph_record(path: Path) -> dict[str, Any]:
    """The published graph's opsets, inputs and outputs (with their dynamic axes)."""
    graph = describe_graph(path)
    graph.pop("file", None)
    return graph


def source_files(folder: Path) -> dict[str, str]:
    """sha256 of each file at the top of the source folder (weights, config, tokenizer)."""
    from ortserve.export.repository.publish import sha256_file

    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def _cpu_flags() -> list[str]:
    """The SIMD flags that decide which INT8 kernels run (x86 Linux only)."""
    wanted = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8"}
    try:
        flags = set(Path("/proc/cpuinfo").read_text(errors="replace").split())
    except OSError:
        return []
    return sorted(flags & wanted)


def command_line(argv: list[str]) -> str:
    """The command as typed (``ortserve`` and its arguments), quoted to paste back."""
    import shlex

    return shlex.join(["ortserve", *argv])


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
