"""Watching the repository: which models changed, and whether a version folder has settled.

A version folder is taken as complete when it holds a ``READY`` file, or when nothing in it has
changed for the settle period (``--settle-seconds``, default 1 s) and its files looked the same
at two looks ``recheck`` apart. A folder published by one atomic rename has no writes of its
own, so it passes after the short recheck alone; a slow ``cp -r`` keeps resetting the settle
period until it is done. A folder renamed into place from beside it (``mv model/.st-7
model/7``: one event batch shows the folder appear and another entry of the model folder go,
with nothing written inside it) is complete at once. Events come from ``watchfiles`` (inotify;
its polling fallback with ``--watch-polling``); hidden, swap and temporary names are ignored.

Looking at a model's folders (listing, fingerprinting) is done in a worker thread by the caller
and bounded by ``MAX_VERSION_FILES``, so that a huge folder never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchfiles import Change, awatch

from ortserve.errors import ModelLoadError
from ortserve.repository.layout import is_ignored, parse_version, version_dirs

log = structlog.get_logger("ortserve.watcher")

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


@dataclass(slots=True)
class _Seen:
    fingerprint: str
    since: float


class SettleTracker:
    """Decides when a changed version folder is complete enough to load."""

    def __init__(
        self,
        settle_s: float,
        recheck_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settle_s = settle_s
        self._recheck_s = min(recheck_s, settle_s) if settle_s > 0 else 0.0
        self._clock = clock
        self._activity: dict[tuple[str, int], float] = {}
        self._seen: dict[tuple[str, int], _Seen] = {}
        self._arrived: set[tuple[str, int]] = set()

    def touch(self, model: str, version: int) -> None:
        """A file inside the version folder was written, created or removed."""
        self._activity[(model, version)] = self._clock()
        self._arrived.discard((model, version))

    def arrived(self, model: str, version: int) -> None:
        """The version folder was renamed into place whole: complete until written to again."""
        self._arrived.add((model, version))

    def check(self, model: str, version: int, fingerprint: str, ready: bool = False) -> float:
        """0 when the folder may be loaded now, else the seconds to wait before asking again.
        ``ready``: the folder holds a READY marker."""
        key = (model, version)
        if ready or key in self._arrived or self.settle_s <= 0:
            return 0.0
        now = self._clock()
        last = self._activity.get(key)
        if last is not None and now - last < self.settle_s:
            return self.settle_s - (now - last)
        seen = self._seen.get(key)
        if seen is None or seen.fingerprint != fingerprint:
            self._seen[key] = _Seen(fingerprint, now)
            return self._recheck_s
        waited = now - seen.since
        return 0.0 if waited >= self._recheck_s else self._recheck_s - waited

    def forget(self, model: str, version: int) -> None:
        """The version folder went: what was known of it no longer applies to a new one."""
        self._activity.pop((model, version), None)
        self._seen.pop((model, version), None)
        self._arrived.discard((model, version))


# Called with a model name; returns seconds until it wants to be called again, or None.
SyncModel = Callable[[str], Awaitable[float | None]]


class RepositoryWatcher:
    """Turns file events into per-model syncs, debounced and never two at once for a model."""

    def __init__(
        self, root: Path, tracker: SettleTracker, sync: SyncModel, force_polling: bool = False
    ) -> None:
        # watchfiles reports absolute paths: a relative root would match none of them.
        self._root = root.resolve()
        self._tracker = tracker
        self._sync = sync
        self._force_polling = force_polling
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._watch(), name="repository watcher"
        )

    async def aclose(self) -> None:
        self._stop.set()
        for timer in self._timers.values():
            timer.cancel()
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self) -> None:
        log.info("watching repository", path=str(self._root), polling=self._force_polling)
        while not self._stop.is_set():
            try:
                async for changes in awatch(
                    self._root,
                    watch_filter=None,
                    stop_event=self._stop,
                    force_polling=self._force_polling,
                    debounce=300,
                    step=50,
                    recursive=True,
                ):
                    self._handle(changes)
            except Exception:  # the watch itself broke: say so, start again, never die silently
                log.exception("repository watch failed; restarting it")
                await asyncio.sleep(1.0)

    def _handle(self, changes: set[tuple[Change, str]]) -> None:
        try:
            models = self._classify(changes)
        except Exception:  # a name or event nobody foresaw: sync what it names, keep watching
            log.exception("could not sort out repository changes; syncing the models they name")
            models = {parts[0] for _, raw in changes if (parts := self._parts(raw))}
            models = {model for model in models if not is_ignored(model)}
        for model in models:
            self.schedule(model, 0.0)

    def _parts(self, raw: str) -> tuple[str, ...]:
        """The path's parts inside the repository; () for one outside it."""
        try:
            return Path(raw).relative_to(self._root).parts
        except ValueError:
            return ()

    def _classify(self, changes: Iterable[tuple[Change, str]]) -> set[str]:
        """The models a batch of changes touches; tells the tracker what happened to versions."""
        models: set[str] = set()
        appeared: set[tuple[str, str]] = set()  # <model>/<entry> folders that appeared
        went: set[tuple[str, str]] = set()  # <model>/<entry> that went, hidden ones included
        written: set[tuple[str, str]] = set()  # <model>/<entry> with changes inside
        for change, raw in changes:
            parts = self._parts(raw)
            if len(parts) == 2 and not is_ignored(parts[0]):
                if change == Change.added:
                    appeared.add((parts[0], parts[1]))
                elif change == Change.deleted:
                    went.add((parts[0], parts[1]))  # a rename's hidden source counts too
            if not parts or any(is_ignored(part) for part in parts):
                continue
            models.add(parts[0])
            if len(parts) >= 3:
                written.add((parts[0], parts[1]))
                version = parse_version(parts[1])
                if version is not None and parts[2] != READY_MARKER:
                    self._tracker.touch(parts[0], version)
        for model, name in went - appeared:
            version = parse_version(name)
            if version is not None:
                self._tracker.forget(model, version)
        for model, name in appeared - written:
            version = parse_version(name)
            # Appeared whole as another entry of the same model folder went: a rename into place
            # (`mv .st-7 7`). A folder made with mkdir and then filled shows writes inside it.
            if version is not None and any(m == model and n != name for m, n in went):
                log.info("version folder renamed into place", model=model, version=version)
                self._tracker.arrived(model, version)
        return models

    def schedule(self, model: str, delay: float) -> None:
        """Sync ``model`` after ``delay`` seconds (an earlier pending sync wins)."""
        if model in self._running:
            self._again.add(model)
            return
        timer = self._timers.get(model)
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[model] = loop.call_at(when, self._start_sync, model)

    def _start_sync(self, model: str) -> None:
        self._timers.pop(model, None)
        task = asyncio.get_running_loop().create_task(self._run_sync(model), name=f"sync {model}")
        self._running[model] = task

    async def _run_sync(self, model: str) -> None:
        try:
            again = await self._sync(model)
        except Exception:  # a bug in one model's sync must not stop the watcher
            log.exception("model sync failed", model=model)
            again = None
        finally:
            self._running.pop(model, None)
        if model in self._again:
            self._again.discard(model)
            again = 0.0 if again is None else min(again, 0.0)
        if again is not None and not self._stop.is_set():
            self.schedule(model, again)
