"""Watching the repository: which models changed, and whether a version folder has settled.

A version folder is taken as complete when it holds a ``READY`` file, or when nothing in it has
changed for the settle period (``--settle-seconds``, default 1 s) and its files looked the same
at two looks ``recheck`` apart. A folder published by one atomic rename has no writes of its
own, so it passes after the short recheck alone; a slow ``cp -r`` keeps resetting the settle
period until it is done. Events come from ``watchfiles`` (inotify; its polling fallback with
``--watch-polling``); hidden, swap and temporary names are ignored.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchfiles import awatch

from ortserve.repository.layout import is_ignored

log = structlog.get_logger("ortserve.watcher")

READY_MARKER = "READY"


def folder_fingerprint(folder: Path) -> str:
    """A digest of the names, sizes and modification times of every file under ``folder``."""
    digest = hashlib.sha1(usedforsecurity=False)
    if not folder.is_dir():
        return ""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(is_ignored(part) for part in rel.parts) or not path.is_file():
            continue
        stat = path.stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


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

    def touch(self, model: str, version: int) -> None:
        """A file inside the version folder was written, created or removed."""
        self._activity[(model, version)] = self._clock()

    def check(self, model: str, version: int, folder: Path, fingerprint: str) -> float:
        """0 when the folder may be loaded now, else the seconds to wait before asking again."""
        key = (model, version)
        if (folder / READY_MARKER).is_file() or self.settle_s <= 0:
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
        self._activity.pop((model, version), None)
        self._seen.pop((model, version), None)


# Called with a model name; returns seconds until it wants to be called again, or None.
SyncModel = Callable[[str], Awaitable[float | None]]


class RepositoryWatcher:
    """Turns file events into per-model syncs, debounced and never two at once for a model."""

    def __init__(
        self, root: Path, tracker: SettleTracker, sync: SyncModel, force_polling: bool = False
    ) -> None:
        self._root = root
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
                    for model in self._classify(path for _, path in changes):
                        self.schedule(model, 0.0)
            except (OSError, RuntimeError) as exc:  # the watch itself broke: say so, start again
                log.error("repository watch failed; restarting it", error=str(exc))
                await asyncio.sleep(1.0)

    def _classify(self, paths: object) -> set[str]:
        models: set[str] = set()
        for raw in paths:  # type: ignore[attr-defined]
            try:
                parts = Path(raw).relative_to(self._root).parts
            except ValueError:
                continue
            if not parts or any(is_ignored(part) for part in parts):
                continue
            models.add(parts[0])
            if len(parts) >= 3 and parts[1].isdigit() and parts[2] != READY_MARKER:
                self._tracker.touch(parts[0], int(parts[1]))
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
