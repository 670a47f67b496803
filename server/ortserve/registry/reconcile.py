"""The reconcile step: make what a model serves match what its folder asks for.

``Reconciler.reconcile(entry, desired)`` takes a model's entry (what serves, what failed) and the
desired state a scan found (``repository/scan.py``): new versions are loaded beside the serving
ones by the injected loader (in a worker thread), the version policy is applied to what loaded,
the served set is swapped in one step, and versions that left it drain their leases before their
sessions close. A version that fails to load never replaces one that serves; it is remembered
with its reason and tried again once its files (or the config) change.

The caller holds the entry's lock: one reconcile of a model at a time.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from ortserve.errors import ModelLoadError
from ortserve.observability.metrics import Metrics
from ortserve.registry.versions import ServedVersion
from ortserve.repository.config import ParsedConfig
from ortserve.repository.policy import served_versions
from ortserve.repository.scan import DesiredState

log = structlog.get_logger("ortserve.registry")


class Loader(Protocol):
    """Builds, checks and warms up one version; blocking (it runs in a worker thread). Raises
    ModelLoadError with the reason when the version cannot serve. ``confine``: the resolved
    folder its files must stay in (None: anywhere)."""

    def __call__(
        self,
        model_name: str,
        model_dir: Path,
        parsed: ParsedConfig,
        version: int,
        *,
        fingerprint: str,
        confine: Path | None,
    ) -> ServedVersion: ...


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class Failure:
    reason: str
    fingerprint: str  # the files (and config) that failed: tried again once they change


@dataclass(slots=True)
class ModelEntry:
    name: str
    path: Path
    versions: dict[int, ServedVersion] = field(default_factory=dict)  # swapped, never mutated
    loading: set[int] = field(default_factory=set)
    draining: list[ServedVersion] = field(default_factory=list)
    failed: dict[int, Failure] = field(default_factory=dict)
    reason: str = ""  # why the model as a whole cannot (fully) serve, e.g. a broken config
    override: ParsedConfig | None = None  # a config given by RepositoryModelLoad
    files_dir: Path | None = None  # a temporary model folder built from RepositoryModelLoad files
    unloaded: bool = False
    config_fp: str = ""  # the config last synced: a change of it is logged as one
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def state(self) -> ModelState:
        if self.versions:
            return ModelState.READY
        if self.loading:
            return ModelState.LOADING
        if self.draining:
            return ModelState.UNLOADING
        return ModelState.UNAVAILABLE

    def newest(self) -> ServedVersion:
        return self.versions[max(self.versions)]

    def fingerprints(self) -> dict[int, str]:
        """What each served version was loaded from."""
        return {version: served.fingerprint for version, served in self.versions.items()}


@dataclass(frozen=True, slots=True)
class Reconciled:
    wait: float | None  # seconds until a version still being written should be looked at again
    loaded: tuple[int, ...] = ()  # the versions loaded by this reconcile


StateListener = Callable[[str, bool], None]


class Reconciler:
    def __init__(self, loader: Loader, metrics: Metrics | None = None) -> None:
        self._loader = loader
        self._metrics = metrics
        self._listeners: list[StateListener] = []
        self._drains: set[asyncio.Task[None]] = set()

    def on_state_change(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    async def reconcile(self, entry: ModelEntry, desired: DesiredState) -> Reconciled:
        """Serve what ``desired`` asks for, as far as it loads. The caller holds entry.lock."""
        parsed = desired.parsed
        if parsed is None:
            self.set_reason(entry, desired.problem)
            return Reconciled(None)
        if entry.config_fp and desired.config_fp != entry.config_fp:
            log.info("model config changed", model=entry.name, config=parsed.source)
        entry.config_fp = desired.config_fp
        available = self._available(entry, desired)
        _keep_superseded(entry, parsed, set(desired.versions), available)
        folders_kept = set(entry.versions) <= set(available)  # a removed folder still drains
        if (
            available
            and folders_kept
            and not served_versions(parsed.config.version_policy, available)
        ):
            # A policy that picks nothing is a config mistake: what serves keeps serving.
            on_disk = ", ".join(str(v) for v in sorted(set(available) & set(desired.versions)))
            self.set_reason(
                entry,
                f"{parsed.source}: version_policy selects none of the versions on disk "
                f"({on_disk})"
                + ("; still serving the ones loaded before" if entry.versions else ""),
            )
            return Reconciled(desired.wait)
        before = entry.versions
        chosen = await self._choose(entry, parsed, available, desired.confine)
        self.swap(entry, chosen)
        missing = (
            ""
            if available or desired.wait is not None
            else f"{entry.path}: no version folder to serve"
        )
        self.set_reason(entry, missing)
        loaded = tuple(v for v, s in chosen.items() if before.get(v) is not s)
        return Reconciled(desired.wait, loaded)

    @staticmethod
    def _available(entry: ModelEntry, desired: DesiredState) -> dict[int, str]:
        """The fingerprint each version would serve: its files on disk when they can be loaded,
        else (still being written, or broken) those it serves now, if it serves."""
        for gone in set(entry.failed) - set(desired.versions):  # its folder went: its failure too
            del entry.failed[gone]
        available: dict[int, str] = {}
        for version, found in desired.versions.items():
            served = entry.versions.get(version)
            if found.problem:
                entry.failed[version] = Failure(found.problem, found.fingerprint)
            if found.loadable:
                available[version] = found.fingerprint
            elif served is not None:
                available[version] = served.fingerprint  # keeps serving its previous files
        return available

    async def _choose(
        self,
        entry: ModelEntry,
        parsed: ParsedConfig,
        available: dict[int, str],
        confine: Path | None,
    ) -> dict[int, ServedVersion]:
        """The versions to serve: the policy applied to those that load, loading as needed."""
        excluded: set[int] = set()
        chosen: dict[int, ServedVersion] = {}
        while True:
            candidates = [
                v
                for v, fp in available.items()
                if v not in excluded
                and (v in entry.versions or entry.failed.get(v, Failure("", "")).fingerprint != fp)
            ]
            wanted = served_versions(parsed.config.version_policy, candidates)
            pending = [v for v in wanted if v not in chosen]
            if not pending:
                return {v: chosen[v] for v in wanted}
            for version in pending:
                served = await self._obtain(entry, parsed, version, available[version], confine)
                if served is None:
                    excluded.add(version)
                    break  # the policy may now pick another version: decide again
                chosen[version] = served

    async def _obtain(
        self,
        entry: ModelEntry,
        parsed: ParsedConfig,
        version: int,
        fingerprint: str,
        confine: Path | None,
    ) -> ServedVersion | None:
        current = entry.versions.get(version)
        if current is not None and current.fingerprint == fingerprint:
            # The files on disk are the ones served (a bad change was reverted): a failure
            # kept from other files no longer describes them.
            entry.failed.pop(version, None)
            return current
        entry.loading.add(version)
        try:
            served = await asyncio.to_thread(
                self._loader,
                entry.name,
                entry.path,
                parsed,
                version,
                fingerprint=fingerprint,
                confine=confine,
            )
        except Exception as exc:  # whatever went wrong, it stays with this version
            reason = (
                str(exc) if isinstance(exc, ModelLoadError) else _unexpected(exc, entry, version)
            )
            self._count("failure", entry.name)
            entry.failed[version] = Failure(reason, fingerprint)
            log.error("version failed to load", model=entry.name, version=version, reason=reason)
            # A version already serving keeps serving its previous files.
            return current
        finally:
            entry.loading.discard(version)
        entry.failed.pop(version, None)
        self._count("success", entry.name)
        _go_live(entry, served)
        return served

    def swap(self, entry: ModelEntry, chosen: dict[int, ServedVersion]) -> list[asyncio.Task[None]]:
        """Serve ``chosen`` from now on; the versions it drops drain in the background."""
        old = entry.versions
        entry.versions = dict(sorted(chosen.items()))  # one assignment: requests see old or new
        kept = {id(served) for served in chosen.values()}
        drains = [self._drain(entry, s) for s in old.values() if id(s) not in kept]
        if drains or set(old) != set(entry.versions):
            log.info("model serving", model=entry.name, versions=sorted(entry.versions))
        if bool(old) != bool(entry.versions):
            self._notify(entry.name, bool(entry.versions))
        return drains

    def _drain(self, entry: ModelEntry, served: ServedVersion) -> asyncio.Task[None]:
        entry.draining.append(served)

        async def drain() -> None:
            try:
                await served.drain_and_close()
                log.info("version unloaded", model=entry.name, version=served.version)
                if self._metrics is not None:
                    self._metrics.unloads.labels(entry.name).inc()
            finally:
                entry.draining.remove(served)

        task = asyncio.get_running_loop().create_task(drain(), name=f"drain {served.label}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        return task

    async def unload(self, entry: ModelEntry, why: str) -> None:
        """Stop serving every version and wait until they have drained and closed."""
        drains = self.swap(entry, {})
        entry.reason = f"unloaded: {why}"
        await asyncio.gather(*drains, return_exceptions=True)

    def set_reason(self, entry: ModelEntry, reason: str) -> None:
        if reason and reason != entry.reason:
            log.error("model problem", model=entry.name, reason=reason)
        entry.reason = reason

    def _count(self, result: str, name: str) -> None:
        if self._metrics is not None:
            self._metrics.loads.labels(name, result).inc()

    def _notify(self, name: str, ready: bool) -> None:
        if self._metrics is not None:
            self._metrics.ready.labels(name).set(1 if ready else 0)
        for listener in self._listeners:
            listener(name, ready)


def _keep_superseded(
    entry: ModelEntry, parsed: ParsedConfig, on_disk: set[int], available: dict[int, str]
) -> None:
    """A served version whose folder was removed keeps serving while the version that takes
    its place does not serve yet (still settling, or failing to load): `mv .st-N N;
    rm -rf N-1` never empties the served set, nor falls back to an older folder. Its sessions
    are in memory, so its files are not needed. A version the policy would still pick with
    its folder back (a plain removal, not a replacement) drains as before."""
    removed = {v: s for v, s in entry.versions.items() if v not in on_disk}
    if not removed:
        return
    picked = set(served_versions(parsed.config.version_policy, on_disk | set(removed)))
    for version, served in removed.items():
        if version not in picked:
            available[version] = served.fingerprint
            log.info(
                "version folder removed; it serves until the version replacing it does",
                model=entry.name,
                version=version,
            )


def _go_live(entry: ModelEntry, served: ServedVersion) -> None:
    """Start a loaded version's executor (on the event loop) and say what it runs on."""
    served.executor.start()
    log.info(
        "version loaded",
        model=entry.name,
        version=served.version,
        provider=served.sessions.provider,
        max_batch_size=served.config.max_batch_size,
        instances=served.sessions.instance_count,
        notes=served.sessions.notes or None,
    )


def _unexpected(exc: Exception, entry: ModelEntry, version: int) -> str:
    """A load failure of a kind the loader does not raise itself: logged with its traceback."""
    log.error("unexpected error loading a version", model=entry.name, version=version, exc_info=exc)
    return f"{entry.path / str(version)}: {type(exc).__name__}: {exc}"
