"""The model repository on disk, in Triton's layout.

    <repo>/<model>/config.pbtxt          optional
    <repo>/<model>/<N>/model.onnx        N a version number; the file name per
                                         ``default_model_filename``

Only reads the disk; knows nothing of ONNX Runtime or gRPC.
"""

from __future__ import annotations

import re
from pathlib import Path

from ortserve.errors import InvalidInput

CONFIG_FILENAME = "config.pbtxt"
DEFAULT_MODEL_FILENAME = "model.onnx"

_VALID_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def is_ignored(name: str) -> bool:
    """Hidden names, editor swap files and temporary names are never models or versions."""
    return name.startswith(".") or name.endswith(("~", ".swp", ".tmp", ".partial"))


def check_model_name(name: str) -> None:
    """Refuse names that could escape the repository or hide: '/', '..', hidden names."""
    if not name or "/" in name or "\\" in name or ".." in name or not _VALID_NAME.match(name):
        raise InvalidInput(
            f"invalid model name {name!r}: use letters, digits, '_', '-' and '.', "
            "not starting with '.', with no '/' or '..'"
        )


def model_dirs(root: Path) -> dict[str, Path]:
    """Every candidate model folder under the repository root, by name."""
    found: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not is_ignored(entry.name):
            found[entry.name] = entry
    return found


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """The numeric version folders of one model (other names are ignored)."""
    found: dict[int, Path] = {}
    for entry in model_dir.iterdir():
        if entry.is_dir() and entry.name.isdigit() and not is_ignored(entry.name):
            found[int(entry.name)] = entry
    return dict(sorted(found.items()))
