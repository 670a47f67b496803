"""Watching the repository: which models changed, and what happened to their version folders.

Events come from ``watchfiles`` (inotify; its polling fallback with ``--watch-polling``); hidden,
swap and temporary names are ignored. Each batch of events becomes one sync per model it
touches, and tells the settle tracker (``settle.py``) what happened to version folders: written
into (``touch``), gone (``forget``), or renamed into place from beside it (``mv model/.st-7
model/7``: one event batch shows the folder appear and another entry of the model folder go,
with nothing written inside it), which makes it complete at once (``arrived``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import structlog
from watchfiles import Change, awatch

from ortserve.repository.layout import is_ignored, parse_version
from ortserve.repository.scan import READY_MARKER
from ortserve.repository.settle import SettleTracker

log = structlog.get_logger("ortserve.watcher")


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
