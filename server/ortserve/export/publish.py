"""Publish a version into the repository in one atomic step, and write the model's config.pbtxt.

A version is written into a hidden staging folder inside the model folder (``.staging-...``,
hidden names are never loaded), every file and folder is flushed to disk, the manifest goes in
last, and one ``rename`` puts the folder in place as ``<repo>/<name>/<N>``: a watching daemon
sees no version folder, then a complete one. N is the next free number; if another publisher
takes it first, the next one is tried.

A staging folder is named ``.staging-<pid>-<random>`` and its publisher holds an exclusive
``flock`` on it. A publisher that fails or is stopped (Ctrl-C, SIGTERM) removes its own; one that
was killed outright (SIGKILL, power loss) leaves it, and the next publish into the same model
folder removes it: only when its process is gone *and* its lock is free, so a concurrent
publisher's folder is never touched.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortserve.errors import OrtserveError
from ortserve.export.errors import ExportError
from ortserve.export.inspect import MANIFEST_FILENAME
from ortserve.repository.config import parse_config_text
from ortserve.repository.layout import CONFIG_FILENAME, check_model_name, version_dirs
from ortserve.text.settings import MIN_SEQUENCE_LENGTH, POOLINGS
from ortserve.text.settings import TASKS as TEXT_TASKS

_CHUNK = 1 << 20
_ATTEMPTS = 20
_STAGING = re.compile(r"\.staging-(?P<pid>[0-9]+)-[0-9a-f]+")  # fullmatch: "$" allows a "\n"


@dataclass(frozen=True, slots=True)
class Published:
    version: int
    path: Path
    files: dict[str, dict[str, Any]]  # relative name -> {"sha256": ..., "bytes": ...}
    stale_removed: tuple[str, ...] = ()  # staging folders of dead publishers, removed first


def validate_name(name: str) -> None:
    """A model name the daemon accepts (checked before any work is done)."""
    try:
        check_model_name(name)
    except OrtserveError as exc:
        raise ExportError(f"--name: {exc}") from None


def model_folder(repo: Path, name: str) -> Path:
    validate_name(name)
    folder = repo / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def next_version(folder: Path) -> int:
    versions = version_dirs(folder) if folder.is_dir() else {}
    return max(versions, default=0) + 1


def publish_version(
    repo: Path, name: str, files: Mapping[str, Path], manifest: dict[str, Any]
) -> Published:
    """Copy ``files`` (relative name in the version -> source file) and the manifest into the
    next version of ``<repo>/<name>``, atomically. ``manifest`` gets ``version`` and ``files``."""
    folder = model_folder(repo, name)
    stale = remove_stale_staging(folder)
    staging = folder / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lock = None
    try:
        staging.mkdir()
        lock = _lock(staging)
        hashes = {rel: _copy(src, staging / rel) for rel, src in sorted(files.items())}
        for _ in range(_ATTEMPTS):
            version = next_version(folder)
            target = folder / str(version)
            record = {**manifest, "version": version, "files": hashes}
            _write(staging / MANIFEST_FILENAME, json.dumps(record, indent=2, default=str) + "\n")
            _fsync_tree(staging)
            if target.exists():  # another publisher got there first
                continue
            try:
                os.rename(staging, target)
            except OSError:
                if target.exists():
                    continue
                raise
            _fsync_dir(folder)
            return Published(version, target, hashes, stale)
        raise ExportError(f"{folder}: no free version number after {_ATTEMPTS} tries")
    except BaseException:  # KeyboardInterrupt, and Terminated (SIGTERM, SIGHUP) too
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def remove_stale_staging(folder: Path) -> tuple[str, ...]:
    """Remove the ``.staging-<pid>-*`` folders in ``folder`` left by a publisher that was killed
    before it could clean up: its process no longer runs and nobody holds its lock. A folder of
    a live publisher (here or, sharing the repository, in another container) is kept."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return ()
    for entry in entries:
        match = _STAGING.fullmatch(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _process_exists(pid):
            continue
        path = Path(entry.path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue  # gone already (renamed or removed by another publisher)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    continue  # a live publisher holds it
                # no locks on this file system: the dead process is all there is to go by
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(entry.name)
        finally:
            os.close(fd)
    return tuple(sorted(removed))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return True  # cannot tell: keep its folder
    return True


def _lock(staging: Path) -> int | None:
    """An exclusive lock on the staging folder for as long as this publisher works in it (the
    kernel drops it when the process dies, however it dies). None where locks are unsupported."""
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def write_config_if_absent(folder: Path, text: str) -> bool:
    """Write ``config.pbtxt`` (atomically) unless the model already has one; True if written."""
    path = folder / CONFIG_FILENAME
    if path.exists():
        return False
    try:
        parse_config_text(text, str(path))  # never write what the daemon would refuse
    except OrtserveError as exc:
        raise ExportError(f"the generated {CONFIG_FILENAME} does not parse: {exc}") from None
    partial = folder / f".{CONFIG_FILENAME}.{uuid.uuid4().hex[:8]}.partial"
    try:
        _write(partial, text)
        os.replace(partial, path)
    except BaseException:  # an error, Ctrl-C or SIGTERM: leave no partial file behind
        partial.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return True


def check_servable(config_task: str | None, max_batch_size: int) -> None:
    """Refuse, before any work, a config the daemon would load as a text model and refuse."""
    if config_task is not None and max_batch_size == 0:
        raise ExportError(
            f"--max-batch-size 0: the daemon serves a text model ({config_task}) only with a "
            "batch axis; give 1 or more"
        )


def config_text(
    task: str | None,
    max_batch_size: int,
    max_sequence_length: int,
    extra: Mapping[str, str],
    graph_inputs: Sequence[Mapping[str, Any]] = (),
) -> str:
    """A config.pbtxt for an exported model: batching and the task's parameters; inputs and
    outputs are left to the daemon's auto-completion from the graph. ``task`` None: a tensor
    model, with no text parameters at all (``max_sequence_length`` and ``extra`` are dropped).
    A decoder with past inputs gets a ``model_warmup`` of one token and an empty past (the
    daemon's default warm-up, one row of zeros with every dynamic axis 1, would give it a past
    longer than its mask)."""
    what = f"task {task}" if task else "a tensor model: no text task, the graph's own tensors"
    lines = [
        f"# Written by `ortserve export` ({what}). Inputs and outputs come from the model;",
        "# edit freely: the exporter never overwrites an existing config.pbtxt.",
        f"max_batch_size: {max_batch_size}",
    ]
    if max_batch_size > 0:
        lines.append("dynamic_batching { }")
    parameters: dict[str, str] = {}
    if task:
        parameters = {"task": task, "max_sequence_length": str(max_sequence_length), **extra}
        _check_text_parameters(parameters)
    for key, value in parameters.items():
        entry = f"{{ string_value: {json.dumps(value)} }}"
        lines.append(f"parameters {{ key: {json.dumps(key)} value: {entry} }}")
    if any(str(i["name"]).startswith("past_key_values") for i in graph_inputs):
        lines += _past_warmup(graph_inputs, batched=max_batch_size > 0)
    return "\n".join(lines) + "\n"


def _check_text_parameters(parameters: Mapping[str, str]) -> None:
    """Never write text settings the daemon's text/settings.py would refuse."""
    accepted = {"task": TEXT_TASKS, "pooling": POOLINGS}
    for key, allowed in accepted.items():
        if key in parameters and parameters[key] not in allowed:
            raise ExportError(
                f"config.pbtxt parameters '{key}': the daemon does not serve "
                f"'{parameters[key]}' (it takes {', '.join(allowed)})"
            )
    if int(parameters["max_sequence_length"]) < MIN_SEQUENCE_LENGTH:
        raise ExportError(
            f"max_sequence_length {parameters['max_sequence_length']}: the daemon needs at "
            f"least {MIN_SEQUENCE_LENGTH} tokens"
        )


def _past_warmup(graph_inputs: Sequence[Mapping[str, Any]], batched: bool) -> list[str]:
    lines = ["model_warmup [ {", '  name: "one token, empty past"', "  batch_size: 1"]
    for tensor in graph_inputs:
        name = str(tensor["name"])
        dims = list(tensor["dims"])[1:] if batched else list(tensor["dims"])
        empty = 0 if name.startswith("past_key_values") else 1
        sizes = ", ".join(str(d if isinstance(d, int) and d > 0 else empty) for d in dims)
        lines.append(
            f"  inputs {{ key: {json.dumps(name)} value: {{ data_type: TYPE_{tensor['datatype']} "
            f"dims: [ {sizes} ] zero_data: true }} }}"
        )
    lines.append("} ]")
    return lines


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy(src: Path, dst: Path) -> dict[str, Any]:
    """Copy and hash in one pass, flushed to disk."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return {"sha256": digest.hexdigest(), "bytes": size}


def _write(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    """Flush every folder under ``root`` (files are flushed as they are written)."""
    for dirpath, _, _ in os.walk(root, topdown=False):
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
