"""The model repository on disk, in Triton's layout.

    <repo>/<model>/config.pbtxt          optional
    <repo>/<model>/<N>/model.onnx        N a version number; the file name per
                                         ``default_model_filename``

Only reads the disk; knows nothing of ONNX Runtime or gRPC.
"""

from __future__ import annotations

import re
from pathlib import Path

from ortserve.errors import InvalidInput, ModelLoadError, shown

CONFIG_FILENAME = "config.pbtxt"
DEFAULT_MODEL_FILENAME = "model.onnx"
MAX_VERSION = 2**63 - 1  # Triton's model versions are int64
_MAX_VERSION_DIGITS = len(str(MAX_VERSION))

# Matched whole (fullmatch): "$" alone would also match before a trailing newline.
_VALID_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
#: The longest model name: a folder name's limit on common file systems (NAME_MAX).
MAX_NAME_LENGTH = 255


def is_ignored(name: str) -> bool:
    """Hidden names, editor swap files and temporary names are never models or versions."""
    return name.startswith(".") or name.endswith(("~", ".swp", ".tmp", ".partial"))


def check_model_name(name: str) -> None:
    """Refuse names that could escape the repository or hide: '/', '..', hidden names; and
    names no folder could have."""
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"invalid model name {shown(name)}: longer than {MAX_NAME_LENGTH} characters"
        )
    if not name or ".." in name or not _VALID_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid model name {shown(name)}: use letters, digits, '_', '-' and '.', "
            "not starting with '.', with no '/' or '..'"
        )


def model_dirs(root: Path) -> dict[str, Path]:
    """Every candidate model folder under the repository root, by name."""
    found: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not is_ignored(entry.name):
            found[entry.name] = entry
    return found


def parse_version(name: str) -> int | None:
    """The version a folder name (or a request) names, or None: the one definition of a version.

    ASCII digits only: ``str.isdigit`` also accepts '①' and '²', which ``int`` then refuses.
    At most Triton's int64, checked on the length first so that ``int`` never meets a name past
    Python's digit limit."""
    if not (0 < len(name) <= _MAX_VERSION_DIGITS and name.isascii() and name.isdigit()):
        return None
    number = int(name)
    return number if number <= MAX_VERSION else None


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """The version folders of one model (other names are ignored)."""
    found: dict[int, Path] = {}
    for entry in model_dir.iterdir():
        version = parse_version(entry.name)
        if version is not None and entry.is_dir():
            found[version] = entry
    return dict(sorted(found.items()))


#: The daemon flag that lets links lead outside the repository (named in the refusal).
LINKS_FLAG = "--allow-symlinks-outside-repository"


def check_inside(path: Path, root: Path) -> None:
    """Refuse ``path`` if it leads (through symbolic links) outside ``root`` (a resolved path):
    by default nothing outside the repository is read."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a link loop (Python 3.11)
        raise ModelLoadError(f"{path}: cannot resolve it: {exc}") from None
    if not real.is_relative_to(root):
        raise ModelLoadError(
            f"{path} is a symbolic link (or inside one) leading outside the model repository, "
            f"to {real}; links are followed only inside it unless the daemon runs with "
            f"{LINKS_FLAG}"
        )


def check_links_inside(folder: Path, root: Path) -> None:
    """``check_inside`` for ``folder`` and every link found under it (each folder walked once,
    links to folders inside ``root`` included), before any file of it is read."""
    check_inside(folder, root)
    pending, seen = [folder.resolve()], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for entry in current.iterdir():
            if entry.is_symlink():
                check_inside(entry, root)
            if entry.is_dir():
                pending.append(entry.resolve())
