"""The manifest published with each version (``manifest.json``): where the files came from, how
they were made and how they measured. ``publish.publish_version`` adds ``version`` and the
sha256 of every file in the version folder."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

from ortserve.export.inspect import describe_graph

FORMAT = "ortserve-manifest/1"


def base_manifest(command: str, kind: str) -> dict[str, Any]:
    """What every manifest records: format, time, the exact command, this machine."""
    from ortserve.export.exporting import library_versions

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
    from ortserve.export.publish import sha256_file

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
