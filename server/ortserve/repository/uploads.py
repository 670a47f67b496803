"""Models given over the API (RepositoryModelLoad): their config and files, checked and written.

Everything a request gives is checked before anything changes (``parse_json_config``,
``check_file_keys``), so that a refused load leaves no trace. The files are written to a
temporary model folder outside the repository (``write_files``), which the registry removes
when the model is unloaded, reloaded or the daemon stops (``remove_files``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from google.protobuf import json_format

from ortserve.errors import InvalidInput, ModelLoadError, cut, shown
from ortserve.repository.config import ParsedConfig, check_supported
from ortserve.repository.layout import MAX_VERSION, parse_version
from ortserve_client.proto import model_config_pb2 as mc


def parse_json_config(text: str, name: str) -> ParsedConfig:
    """A config given over the API, checked as far as it can be without the model (fields
    ortserve does not implement, values out of range), so that a bad one is refused at once."""
    config = mc.ModelConfig()
    source = f"RepositoryModelLoad config for '{name}'"
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as exc:
        raise InvalidInput(f"{source}: {cut(str(exc))}") from None
    check_supported(config, source)
    given = '"max_batch_size"' in text or '"maxBatchSize"' in text
    return ParsedConfig(config, source, given)


#: A path given as a ``file:`` key: its length in bytes and that of each of its names (the
#: limits of common file systems, PATH_MAX being larger still).
_MAX_FILE_KEY_BYTES = 1024
_MAX_FILE_NAME_BYTES = 255


def check_file_keys(name: str, files: Mapping[str, bytes]) -> None:
    """Refuse, naming the key, every ``file:`` key that is not a plain ``<version>/<path>``, or
    that names a file where another key needs a folder."""
    folders: dict[tuple[str, ...], str] = {}
    for key in files:
        rel = PurePosixPath(key)
        problem = ""
        if "\0" in key:
            problem = "has a NUL character"
        elif len(key.encode()) > _MAX_FILE_KEY_BYTES:
            problem = f"is longer than {_MAX_FILE_KEY_BYTES} bytes"
        elif str(rel) != key or rel.is_absolute() or ".." in rel.parts or len(rel.parts) < 2:
            problem = "must be 'file:<version>/<name>' (a relative path, no '..', '.' or '//')"
        elif parse_version(rel.parts[0]) is None:
            problem = f"does not start with a version number (at most {MAX_VERSION})"
        elif any(len(part.encode()) > _MAX_FILE_NAME_BYTES for part in rel.parts):
            problem = f"has a name longer than {_MAX_FILE_NAME_BYTES} bytes"
        if problem:
            raise InvalidInput(f"model '{name}': file parameter {shown('file:' + key)} {problem}")
        for depth in range(1, len(rel.parts)):
            folders.setdefault(rel.parts[:depth], key)
    for key in files:
        other = folders.get(PurePosixPath(key).parts)
        if other is not None:
            raise InvalidInput(
                f"model '{name}': file parameter {shown('file:' + key)} is a file, but "
                f"{shown('file:' + other)} needs it to be a folder"
            )


def write_files(name: str, files: Mapping[str, bytes]) -> Path:
    """A temporary model folder holding files given over the API as ``<version>/<path>``
    (keys checked by ``check_file_keys``). Blocking: run it in a worker thread."""
    folder = Path(tempfile.mkdtemp(prefix=f"ortserve-{name[:64]}-"))
    try:
        for key, data in files.items():
            target = folder.joinpath(*PurePosixPath(key).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    except BaseException as exc:  # whatever stopped it, the bytes written so far go too
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ModelLoadError(
                f"model '{name}': the files given could not be written to {folder}: "
                f"{exc.strerror or exc}"
            ) from None
        raise
    return folder


def remove_files(folder: Path) -> None:
    """Remove a folder ``write_files`` made (what is already gone is no error)."""
    shutil.rmtree(folder, ignore_errors=True)
