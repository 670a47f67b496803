"""The models a daemon serves: syncing each with its folder, loads and unloads over the API, and
resolving a request to a leased version.

``ModelRegistry.sync(model)`` scans the model's folder (``RepositoryScanner``, the repository
layer) and reconciles what serves with it (``Reconciler``, which loads versions with the loader
it is given), one sync of a model at a time. Requests resolve to a served version and hold a
lease on it until they are answered; the index lists every model and version with its state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from ortserve.errors import InvalidInput, ModelLoadError, ModelNotFound, ModelNotReady, shown
from ortserve.observability.metrics import Metrics
from ortserve.registry.reconcile import (
    Loader,
    ModelEntry,
    ModelState,
    Reconciler,
    StateListener,
)
from ortserve.registry.versions import ServedVersion
from ortserve.repository.config import ParsedConfig
from ortserve.repository.layout import MAX_VERSION, check_model_name, model_dirs, parse_version
from ortserve.repository.scan import RepositoryScanner
from ortserve.repository.uploads import (
    check_file_keys,
    parse_json_config,
    remove_files,
    write_files,
)

log = structlog.get_logger("ortserve.registry")


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    version: str
    state: ModelState
    reason: str


class ModelRegistry:
    def __init__(
        self,
        root: Path,
        loader: Loader,
        scanner: RepositoryScanner | None = None,
        metrics: Metrics | None = None,
        *,
        allow_links_outside: bool = False,
    ) -> None:
        self._root = root
        # Where symbolic links may lead (None: anywhere; --allow-symlinks-outside-repository).
        self._inside: Path | None = None if allow_links_outside else root.resolve()
        self._scanner = scanner or RepositoryScanner()
        self._reconciler = Reconciler(loader, metrics)
        self._models: dict[str, ModelEntry] = {}
        self._background: set[asyncio.Task[None]] = set()  # loads that outlive their caller
        self.started = False  # set once the initial loading is done
        self._closing = False  # set by close(): no load starts after it

    def on_state_change(self, listener: StateListener) -> None:
        self._reconciler.on_state_change(listener)

    # -- syncing with the repository ---------------------------------------------------------

    async def load_all(self) -> None:
        """Load every model folder as it is now (start-up: no settle wait)."""
        for name in model_dirs(self._root):
            await self.sync(name, settle=False)

    async def sync(self, name: str, *, settle: bool = True) -> float | None:
        """Make model ``name`` serve what its folder holds. Returns seconds until a version
        still being written should be looked at again, or None."""
        entry = self._models.get(name)
        if entry is None:
            if not (self._root / name).is_dir():
                self._scanner.model_gone(name)
                return None
            entry = self._models[name] = ModelEntry(name, self._root / name)
        async with entry.lock:
            if entry.unloaded:
                return None
            if not entry.path.is_dir():
                await self._unload(entry, "its folder was removed")
                self._models.pop(name, None)
                self._scanner.model_gone(name)
                return None
            try:
                desired = await self._scanner.scan(
                    name,
                    entry.path,
                    override=entry.override,
                    confine=self._confine(entry),
                    loaded=entry.fingerprints(),
                    settle=settle,
                )
                done = await self._reconciler.reconcile(entry, desired)
            except Exception as exc:  # e.g. an unreadable folder: this model only, never the rest
                log.exception("model sync failed", model=name)
                self._reconciler.set_reason(entry, f"{entry.path}: {type(exc).__name__}: {exc}")
                return None
            self._scanner.loaded(name, done.loaded)
            return done.wait

    def _confine(self, entry: ModelEntry) -> Path | None:
        """The folder a model's files must stay in, links followed; None for files given over
        the API (written by the daemon itself, no links among them)."""
        return None if entry.files_dir is not None else self._inside

    async def _unload(self, entry: ModelEntry, why: str) -> None:
        """Stop serving every version, wait until they have drained and closed, and remove the
        files given over the API."""
        await self._reconciler.unload(entry, why)
        if entry.files_dir is not None:
            remove_files(entry.files_dir)
            entry.files_dir, entry.path = None, self._root / entry.name
        log.info("model unloaded", model=entry.name, reason=why)

    # -- the repository API ------------------------------------------------------------------

    async def load(
        self, name: str, config_json: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load (or reload) a model now, optionally with a config given as JSON and files
        given as ``{"<version>/<file>": bytes}`` (which then need the config too)."""
        check_model_name(name)
        if files and config_json is None:
            raise InvalidInput(f"model '{name}': file: parameters need a config parameter too")
        # All that the request gives is checked before anything changes: a refused load leaves
        # no trace (no index entry, no files on disk, the serving config untouched).
        override = None if config_json is None else parse_json_config(config_json, name)
        if files:
            check_file_keys(name, files)
        elif not (self._root / name).is_dir():
            raise ModelNotFound(f"no model folder '{name}' in the repository")
        self._check_open(name)
        # The load goes on if the caller gives up (its deadline passes): a version loaded in a
        # worker thread is then still swapped in, not dropped half-made.
        task = asyncio.ensure_future(self._load(name, override, files))
        self._background.add(task)
        task.add_done_callback(self._load_done)
        await asyncio.shield(task)

    def _check_open(self, name: str) -> None:
        if self._closing:
            raise ModelNotReady(f"the server is stopping: model '{name}' is not loaded")

    def _load_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # a caller that left has no use for it; the index keeps the reason

    async def _load(
        self, name: str, override: ParsedConfig | None, files: Mapping[str, bytes] | None
    ) -> None:
        entry = self._models.setdefault(name, ModelEntry(name, self._root / name))
        async with entry.lock:
            # Under the lock: close() waits for a write in progress, then removes its folder.
            self._check_open(name)
            try:
                folder = await asyncio.to_thread(write_files, name, files) if files else None
            except ModelLoadError as exc:  # the disk refused them: no phantom without a reason
                if not entry.versions:
                    entry.reason = str(exc)
                raise
            entry.unloaded = False
            entry.override = override
            if entry.files_dir is not None:  # the files of the previous load over the API
                remove_files(entry.files_dir)
            entry.files_dir = folder
            entry.path = folder or self._root / name
        await self.sync(name, settle=False)
        entry = self._models.get(name, entry)
        if not entry.versions:
            why = self._why(entry) or "nothing to serve"
            raise ModelLoadError(f"model '{name}' did not load: {why}")

    async def unload(self, name: str) -> None:
        entry = self.entry(name)
        async with entry.lock:
            entry.unloaded = True
            entry.override = None
            await self._unload(entry, "by request")

    # -- requests ----------------------------------------------------------------------------

    def resolve(self, name: str, version: str = "") -> ServedVersion:
        """The version a request should run on (the newest served one when none is named)."""
        entry = self.entry(name)
        if not entry.versions:
            raise ModelNotReady(
                f"model '{name}' is not ready ({entry.state.value})"
                + (f": {self._why(entry)}" if self._why(entry) else "")
            )
        if not version:
            return entry.newest()
        number = parse_version(version)
        if number is None:  # never int() a caller's string as it is: Python limits its digits
            raise ModelNotFound(
                f"model '{name}' has no version {shown(version)} (versions are numbers of at "
                f"most {MAX_VERSION})"
            )
        served = entry.versions.get(number)
        if served is None:
            serving = ", ".join(str(v) for v in sorted(entry.versions, reverse=True))
            raise ModelNotFound(
                f"model '{name}' version {number} is not served (serving: {serving})"
            )
        return served

    @contextlib.contextmanager
    def lease(self, name: str, version: str = "") -> Iterator[ServedVersion]:
        """Resolve and hold the version until the request is answered (no await in between)."""
        served = self.resolve(name, version)
        served.acquire()
        try:
            yield served
        finally:
            served.release()

    def entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            check_model_name(name)
            if not self.started:  # it may be in the repository, not loaded yet: try again
                raise ModelNotReady(f"the server is still loading its models ('{name}')")
            raise ModelNotFound(f"unknown model '{name}'")
        return entry

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.resolve(name, version)
        except (ModelNotFound, ModelNotReady, InvalidInput):
            return False
        return True

    def served(self, name: str = "", version: str = "") -> list[ServedVersion]:
        """Loaded versions: of every ready model, or of one model, or one version of it."""
        if name:
            if version:
                return [self.resolve(name, version)]
            entry = self.entry(name)
            if not entry.versions:
                raise ModelNotReady(f"model '{name}' is not ready ({entry.state.value})")
            return list(entry.versions.values())
        if version:
            raise InvalidInput("a version needs a model name")
        return [s for n in sorted(self._models) for s in self._models[n].versions.values()]

    def names(self) -> list[str]:
        return sorted(self._models)

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a model of the repository (loaded or not)."""
        return name in self._models

    def index(self) -> list[IndexEntry]:
        rows: list[IndexEntry] = []
        names = set(self._models)
        if self._root.is_dir():
            names |= set(model_dirs(self._root))
        for name in sorted(names):
            entry = self._models.get(name)
            if entry is None:
                rows.append(IndexEntry(name, "", ModelState.UNAVAILABLE, "not loaded"))
                continue
            rows.extend(_entry_rows(entry))
        return rows

    def _why(self, entry: ModelEntry) -> str:
        return "; ".join([entry.reason] + [f.reason for f in entry.failed.values()]).strip("; ")

    async def close(self) -> None:
        self._closing = True  # a load over the API that has not taken its model's lock stops
        for entry in list(self._models.values()):
            async with entry.lock:
                entry.unloaded = True  # a load that still runs its sync finds nothing to do
                await self._unload(entry, "the server is stopping")  # and its temporary files


def _entry_rows(entry: ModelEntry) -> list[IndexEntry]:
    rows: list[IndexEntry] = []
    versions = set(entry.versions) | entry.loading | set(entry.failed)
    versions |= {s.version for s in entry.draining}
    for version in sorted(versions):
        served = entry.versions.get(version)
        failure = entry.failed.get(version)
        if served is not None:
            reason = _runs_on(served)
            if failure is not None:
                reason += f"; a reload failed, serving the previous files: {failure.reason}"
            rows.append(IndexEntry(entry.name, str(version), ModelState.READY, reason))
        elif version in entry.loading:
            rows.append(IndexEntry(entry.name, str(version), ModelState.LOADING, "loading"))
        elif failure is not None:
            rows.append(
                IndexEntry(entry.name, str(version), ModelState.UNAVAILABLE, failure.reason)
            )
        else:
            rows.append(IndexEntry(entry.name, str(version), ModelState.UNLOADING, "draining"))
    if entry.reason:
        rows.append(IndexEntry(entry.name, "", ModelState.UNAVAILABLE, entry.reason))
    elif not rows:
        rows.append(IndexEntry(entry.name, "", entry.state, ""))
    return rows


def _runs_on(served: ServedVersion) -> str:
    """The index reason of a READY version: the provider that actually runs it."""
    notes = "; ".join(served.sessions.notes)
    return f"running on {served.sessions.provider}" + (f" ({notes})" if notes else "")
