"""What a model's folder asks to be served: its config and its complete version folders.

``RepositoryScanner.scan`` reads one model folder into a ``DesiredState``: the config (or why it
cannot be read), and for every version folder its fingerprint, whether it has settled (see
``settle.py``) and why it cannot be loaded as it is. It decides nothing about what serves; the
registry reconciles what serves with it. It owns the settle tracker, which the watcher feeds.

Looking at a model's folders (listing, fingerprinting) runs in a worker thread and is bounded by
``MAX_VERSION_FILES``, so that a huge folder never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ortserve.errors import InvalidInput, ModelLoadError
from ortserve.repository.config import ParsedConfig, read_config
from ortserve.repository.layout import (
    DEFAULT_MODEL_FILENAME,
    check_model_name,
    is_ignored,
    version_dirs,
)
from ortserve.repository.settle import SettleTracker

READY_MARKER = "READY"
# A version folder holds a model file and its external data: a few files, rarely thousands.
# Past this many entries it is refused rather than walked on every change (issue 13, item 7).
MAX_VERSION_FILES = 10_000


def folder_fingerprint(folder: Path, limit: int = MAX_VERSION_FILES) -> str:
    """A digest of the names, sizes and modification times of every file under ``folder``
    ("" when it is gone). Raises ModelLoadError past ``limit`` entries, counted as they are
    listed, so that even one flat folder of a million files costs no more than ``limit``."""
    digest = hashlib.sha1(usedforsecurity=False)
    if not folder.is_dir():
        return ""
    for rel, info in sorted(_files(folder, limit), key=lambda item: item[0]):
        digest.update(f"{rel}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _files(folder: Path, limit: int) -> list[tuple[str, os.stat_result]]:
    """Every regular file under ``folder`` (not under ignored names) with its ``stat``.
    Symlinked folders are not entered (as Path.rglob did); symlinked files are followed. What
    vanishes while it looks is left out: the removal is a change of its own, seen next time."""
    found: list[tuple[str, os.stat_result]] = []
    seen = 0
    pending = [("", str(folder))]
    while pending:
        rel, path = pending.pop()
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    seen += 1
                    if seen > limit:
                        raise ModelLoadError(
                            f"{folder}: more than {limit} files in it; a version folder holds "
                            "a model file and its data files"
                        )
                    if is_ignored(entry.name):
                        continue
                    name = rel + entry.name
                    if entry.is_dir(follow_symlinks=False):
                        pending.append((name + "/", entry.path))
                        continue
                    try:
                        info = entry.stat()
                    except OSError:  # gone meanwhile, or a dangling link
                        continue
                    if stat.S_ISREG(info.st_mode):
                        found.append((name, info))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
    return found


@dataclass(frozen=True, slots=True)
class VersionLook:
    """What one version folder holds now, as ``look_at_versions`` found it."""

    folder: Path
    fingerprint: str
    has_model: bool
    ready: bool  # holds a READY marker
    problem: str = ""  # why it cannot be a version at all (e.g. too many files)


def look_at_versions(model_dir: Path, model_filename: str) -> dict[int, VersionLook]:
    """Every version folder of a model with its fingerprint. Blocking disk I/O: call it in a
    worker thread (``asyncio.to_thread``), never on the event loop."""
    looks: dict[int, VersionLook] = {}
    for version, folder in version_dirs(model_dir).items():
        has_model = (folder / model_filename).is_file()
        ready = (folder / READY_MARKER).is_file()
        try:
            fingerprint = folder_fingerprint(folder)
        except ModelLoadError as exc:
            looks[version] = VersionLook(folder, "", has_model, ready, str(exc))
            continue
        looks[version] = VersionLook(folder, fingerprint, has_model, ready)
    return looks


@dataclass(frozen=True, slots=True)
class VersionOnDisk:
    """One version folder as a scan found it."""

    fingerprint: str  # the config's and the files': what a load of it now would hold
    wait: float = 0.0  # > 0: still being written; look again after this many seconds
    problem: str = ""  # why it cannot be loaded as it is (too many files, no model file)

    @property
    def loadable(self) -> bool:
        return self.wait <= 0 and not self.problem


@dataclass(frozen=True, slots=True)
class DesiredState:
    """What one model folder asks to be served, as a scan found it."""

    parsed: ParsedConfig | None  # None: the config cannot be used (``problem`` says why)
    problem: str = ""
    confine: Path | None = None  # the folder its files must stay in, links followed
    config_fp: str = ""
    versions: dict[int, VersionOnDisk] = field(default_factory=dict)  # every version folder

    @property
    def wait(self) -> float | None:
        """Seconds until a version folder still being written should be looked at again."""
        waits = [found.wait for found in self.versions.values() if found.wait > 0]
        return min(waits) if waits else None


def config_fingerprint(parsed: ParsedConfig) -> str:
    text = parsed.config.SerializeToString(deterministic=True)
    return hashlib.sha1(text, usedforsecurity=False).hexdigest()[:16] + ":"


class RepositoryScanner:
    """Reads model folders into desired states; owns the settle tracker (None: no settling,
    every complete-looking folder loads at once)."""

    def __init__(self, tracker: SettleTracker | None = None) -> None:
        self.tracker = tracker

    async def scan(
        self,
        name: str,
        model_dir: Path,
        *,
        override: ParsedConfig | None = None,
        confine: Path | None = None,
        loaded: Mapping[int, str] | None = None,
        settle: bool = True,
    ) -> DesiredState:
        """What ``model_dir`` asks to be served. ``override``: a config given over the API;
        ``confine``: the folder its files must stay in; ``loaded``: the fingerprints already
        loaded, by version (files that are the loaded ones need no settling); ``settle``:
        False at start-up and for loads over the API, which take folders as they are."""
        try:
            check_model_name(name)
            parsed = override or read_config(model_dir, confine)
        except (InvalidInput, ModelLoadError) as exc:
            return DesiredState(None, str(exc), confine)
        config_fp = config_fingerprint(parsed)
        filename = parsed.config.default_model_filename or DEFAULT_MODEL_FILENAME
        # Listing and fingerprinting may take long (many files, a slow disk): off the event loop.
        looks = await asyncio.to_thread(look_at_versions, model_dir, filename)
        if self.tracker is not None:
            self.tracker.keep_only(name, looks)  # folders that went are forgotten
        known = loaded or {}
        versions = {
            version: self._version(name, version, look, config_fp, filename, known, settle)
            for version, look in looks.items()
        }
        return DesiredState(parsed, "", confine, config_fp, versions)

    def _version(
        self,
        name: str,
        version: int,
        look: VersionLook,
        config_fp: str,
        filename: str,
        loaded: Mapping[int, str],
        settle: bool,
    ) -> VersionOnDisk:
        fingerprint = config_fp + look.fingerprint
        if look.problem:
            return VersionOnDisk(fingerprint, problem=look.problem)
        if loaded.get(version) == fingerprint:
            return VersionOnDisk(fingerprint)  # the files loaded: nothing to settle
        if settle and self.tracker is not None:
            wait = self.tracker.check(name, version, fingerprint, look.ready)
            if wait > 0:
                return VersionOnDisk(fingerprint, wait=wait)
        if not look.has_model:
            # Settled without its model file: nothing to wait for (the file's arrival is a
            # change of its own), only a reason to show.
            return VersionOnDisk(fingerprint, problem=f"{look.folder}: no {filename} in it")
        return VersionOnDisk(fingerprint)

    def loaded(self, name: str, versions: Iterable[int]) -> None:
        """These versions loaded from their folders: their settling is over."""
        if self.tracker is not None:
            for version in versions:
                self.tracker.loaded(name, version)

    def model_gone(self, name: str) -> None:
        """The model folder went: nothing of its versions' settling applies any more."""
        if self.tracker is not None:
            self.tracker.forget_model(name)
