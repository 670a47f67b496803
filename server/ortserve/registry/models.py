"""Model lifecycle: which models and versions are loaded, their state, and resolving a request.

Loads every model of the repository at start-up. A version that fails to load is recorded as
UNAVAILABLE with its reason and never takes down another version or model.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ortserve.errors import InvalidInput, ModelLoadError, ModelNotFound, ModelNotReady
from ortserve.execution import VersionExecutor
from ortserve.observability.metrics import Metrics
from ortserve.repository.config import ParsedConfig, complete_config, read_config
from ortserve.repository.layout import (
    DEFAULT_MODEL_FILENAME,
    check_model_name,
    model_dirs,
    version_dirs,
)
from ortserve.repository.policy import served_versions
from ortserve.runtime.session import ModelSessions
from ortserve_client._proto import model_config_pb2 as mc

log = structlog.get_logger("ortserve.registry")


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class ServedVersion:
    """One loaded version: its completed config, its sessions and the executor feeding them."""

    model_name: str
    version: int
    config: mc.ModelConfig
    sessions: ModelSessions
    executor: VersionExecutor


@dataclass(slots=True)
class ModelEntry:
    name: str
    path: Path
    state: ModelState = ModelState.LOADING
    reason: str = ""
    versions: dict[int, ServedVersion] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)  # version -> why it did not load

    def newest(self) -> ServedVersion:
        return self.versions[max(self.versions)]


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    version: str
    state: ModelState
    reason: str


class ModelRegistry:
    def __init__(
        self, root: Path, default_max_batch_size: int, metrics: Metrics | None = None
    ) -> None:
        self._root = root
        self._default_max_batch_size = default_max_batch_size
        self._metrics = metrics
        self._models: dict[str, ModelEntry] = {}

    async def load_all(self) -> None:
        """Load every model folder; session creation runs in a worker thread."""
        for name, path in model_dirs(self._root).items():
            entry = ModelEntry(name, path)
            self._models[name] = entry
            await asyncio.to_thread(self._load, entry)
            for served in entry.versions.values():
                served.executor.start()  # its runners live on the event loop

    def _load(self, entry: ModelEntry) -> None:
        try:
            check_model_name(entry.name)
            parsed = read_config(entry.path)
            wanted = served_versions(parsed.config.version_policy, version_dirs(entry.path))
        except (InvalidInput, ModelLoadError) as exc:
            self._fail(entry, str(exc))
            return
        if not wanted:
            self._fail(entry, f"{entry.path}: no version folder (e.g. {entry.path}/1/) to serve")
            return
        for version in wanted:
            try:
                entry.versions[version] = self._load_version(entry, parsed, version)
            except ModelLoadError as exc:
                entry.failed[version] = str(exc)
                log.error(
                    "version failed to load", model=entry.name, version=version, reason=str(exc)
                )
        if entry.versions:
            entry.state, entry.reason = ModelState.READY, ""
            newest = entry.newest()
            log.info(
                "model ready",
                model=entry.name,
                versions=sorted(entry.versions),
                provider=newest.sessions.provider,
                max_batch_size=newest.config.max_batch_size,
                instances=newest.sessions.instance_count,
                notes=newest.sessions.notes or None,
            )
        else:
            self._fail(entry, "; ".join(entry.failed.values()))

    def _load_version(self, entry: ModelEntry, parsed: ParsedConfig, version: int) -> ServedVersion:
        filename = parsed.config.default_model_filename or DEFAULT_MODEL_FILENAME
        model_path = entry.path / str(version) / filename
        sessions = ModelSessions(model_path, parsed.config, parsed.source)
        try:
            config = complete_config(
                parsed, entry.name, sessions.signature, self._default_max_batch_size
            )
            label = f"model '{entry.name}' version {version}"
            executor = VersionExecutor(label, config, sessions, parsed.source, self._metrics)
        except ModelLoadError:
            sessions.close()
            raise
        return ServedVersion(entry.name, version, config, sessions, executor)

    def _fail(self, entry: ModelEntry, reason: str) -> None:
        entry.state, entry.reason = ModelState.UNAVAILABLE, reason
        log.error("model unavailable", model=entry.name, reason=reason)

    def resolve(self, name: str, version: str = "") -> ServedVersion:
        """The version a request should run on (the newest served one when none is named)."""
        entry = self._models.get(name)
        if entry is None:
            check_model_name(name)
            raise ModelNotFound(f"unknown model '{name}'")
        if entry.state is not ModelState.READY:
            raise ModelNotReady(
                f"model '{name}' is not ready ({entry.state.value}): {entry.reason}"
            )
        if not version:
            return entry.newest()
        if not version.isdigit():
            raise ModelNotFound(f"model '{name}' has no version '{version}' (versions are numbers)")
        served = entry.versions.get(int(version))
        if served is None:
            serving = ", ".join(str(v) for v in sorted(entry.versions, reverse=True))
            raise ModelNotFound(
                f"model '{name}' version {version} is not served (serving: {serving})"
            )
        return served

    def entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            check_model_name(name)
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
            if entry.state is not ModelState.READY:
                raise ModelNotReady(
                    f"model '{name}' is not ready ({entry.state.value}): {entry.reason}"
                )
            return [entry.versions[v] for v in sorted(entry.versions)]
        if version:
            raise InvalidInput("a version needs a model name")
        return [
            entry.versions[v]
            for entry in sorted(self._models.values(), key=lambda e: e.name)
            for v in sorted(entry.versions)
        ]

    def names(self) -> list[str]:
        return sorted(self._models)

    def index(self) -> list[IndexEntry]:
        rows: list[IndexEntry] = []
        for name in sorted(self._models):
            entry = self._models[name]
            for version, served in sorted(entry.versions.items()):
                rows.append(IndexEntry(name, str(version), ModelState.READY, _runs_on(served)))
            for version, reason in sorted(entry.failed.items()):
                rows.append(IndexEntry(name, str(version), ModelState.UNAVAILABLE, reason))
            if not entry.versions and not entry.failed:
                rows.append(IndexEntry(name, "", entry.state, entry.reason))
        return rows

    async def close(self) -> None:
        for entry in self._models.values():
            entry.state = ModelState.UNLOADING
            for served in entry.versions.values():
                await served.executor.aclose()
                await asyncio.to_thread(served.sessions.close)
            entry.versions.clear()


def _runs_on(served: ServedVersion) -> str:
    """The index reason of a READY version: the provider that actually runs it."""
    notes = "; ".join(served.sessions.notes)
    return f"running on {served.sessions.provider}" + (f" ({notes})" if notes else "")
