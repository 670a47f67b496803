"""Publish a version into the repository in one atomic step, and write the model's config.pbtxt
(whose text ``config_writer`` makes) unless it has one.

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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortserve.errors import OrtserveError
from ortserve.export.errors import ExportError
from ortserve.export.repository.manifest import MANIFEST_FILENAME
from ortserve.repository.config import parse_config_text
from ortserve.repository.layout import CONFIG_FILENAME, check_model_name, version_dirs

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
