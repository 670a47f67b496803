"""Model lifecycle: load beside, swap, drain, unload; and resolving a request to a leased version.

``sync(model)`` makes what is served match what is on disk: new versions are loaded beside the
serving ones (sessions, warmup, checks), the version policy is applied to what loaded, the
served set is swapped in one step, and versions that left it drain their leases before their
sessions close. A version that fails to load never replaces one that serves; it is remembered
with its reason and tried again once its files (or the config) change.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import structlog
from google.protobuf import json_format

from ortserve.errors import (
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    cut,
    shown,
)
from ortserve.observability.metrics import Metrics
from ortserve.registry.versions import ServedVersion, load_version
from ortserve.repository.config import ParsedConfig, check_supported, read_config
from ortserve.repository.layout import (
    DEFAULT_MODEL_FILENAME,
    MAX_VERSION,
    check_model_name,
    model_dirs,
    parse_version,
)
from ortserve.repository.policy import served_versions
from ortserve.repository.watcher import SettleTracker, VersionLook, look_at_versions
from ortserve_client.proto import model_config_pb2 as mc

log = structlog.get_logger("ortserve.registry")


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    version: str
    state: ModelState
    reason: str


@dataclass(slots=True)
class _Failure:
    reason: str
    fingerprint: str


@dataclass(slots=True)
class ModelEntry:
    name: str
    path: Path
    versions: dict[int, ServedVersion] = field(default_factory=dict)  # swapped, never mutated
    loading: set[int] = field(default_factory=set)
    draining: list[ServedVersion] = field(default_factory=list)
    failed: dict[int, _Failure] = field(default_factory=dict)
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


StateListener = Callable[[str, bool], None]


class ModelRegistry:
    def __init__(
        self,
        root: Path,
        default_max_batch_size: int,
        metrics: Metrics | None = None,
        tracker: SettleTracker | None = None,
        allow_links_outside: bool = False,
    ) -> None:
        self._root = root
        # Where symbolic links may lead (None: anywhere; --allow-symlinks-outside-repository).
        self._inside: Path | None = None if allow_links_outside else root.resolve()
        self._default_max_batch_size = default_max_batch_size
        self._metrics = metrics
        self._tracker = tracker
        self._models: dict[str, ModelEntry] = {}
        self._listeners: list[StateListener] = []
        self._drains: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()  # loads that outlive their caller
        self.started = False  # set once the initial loading is done
        self._closing = False  # set by close(): no load starts after it

    def on_state_change(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    # -- loading -----------------------------------------------------------------------------

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
                return None
            entry = self._models[name] = ModelEntry(name, self._root / name)
        async with entry.lock:
            if entry.unloaded:
                return None
            if not entry.path.is_dir():
                await self._unload(entry, "its folder was removed")
                self._models.pop(name, None)
                return None
            try:
                return await self._sync_locked(entry, settle)
            except Exception as exc:  # e.g. an unreadable folder: this model only, never the rest
                log.exception("model sync failed", model=name)
                self._set_reason(entry, f"{entry.path}: {type(exc).__name__}: {exc}")
                return None

    async def _sync_locked(self, entry: ModelEntry, settle: bool) -> float | None:
        try:
            check_model_name(entry.name)
            parsed = entry.override or read_config(entry.path, self._confine(entry))
        except (InvalidInput, ModelLoadError) as exc:
            self._set_reason(entry, str(exc))
            return None
        config_fp = _config_fingerprint(parsed)
        if entry.config_fp and config_fp != entry.config_fp:
            log.info("model config changed", model=entry.name, config=parsed.source)
        entry.config_fp = config_fp
        wait: float | None = None
        available: dict[int, str] = {}
        filename = parsed.config.default_model_filename or DEFAULT_MODEL_FILENAME
        # Listing and fingerprinting may take long (many files, a slow disk): off the event loop.
        looks = await asyncio.to_thread(look_at_versions, entry.path, filename)
        for gone in set(entry.failed) - set(looks):  # its folder was removed: so is its failure
            del entry.failed[gone]
        for version, look in looks.items():
            fingerprint = config_fp + look.fingerprint
            served = entry.versions.get(version)
            if look.problem:
                entry.failed[version] = _Failure(look.problem, look.problem)
                if served is not None:
                    available[version] = served.fingerprint  # keeps serving its previous files
                continue
            if served is None or served.fingerprint != fingerprint:
                delay = self._settle(entry.name, version, look, fingerprint, settle)
                if delay > 0:
                    wait = delay if wait is None else min(wait, delay)
                elif not look.has_model:
                    # Settled without its model file: nothing to wait for (the file's arrival
                    # is a change of its own), only a reason to show.
                    reason = f"{look.folder}: no {filename} in it"
                    entry.failed[version] = _Failure(reason, fingerprint)
                if delay > 0 or not look.has_model:
                    if served is None:
                        continue  # not complete yet: neither served nor loaded
                    fingerprint = served.fingerprint  # keep the served one until it settles
            available[version] = fingerprint
        self._keep_superseded(entry, parsed, set(looks), available)
        folders_kept = set(entry.versions) <= set(available)  # a removed folder still drains
        if (
            available
            and folders_kept
            and not served_versions(parsed.config.version_policy, available)
        ):
            # A policy that picks nothing is a config mistake: what serves keeps serving.
            on_disk = ", ".join(str(v) for v in sorted(set(available) & set(looks)))
            self._set_reason(
                entry,
                f"{parsed.source}: version_policy selects none of the versions on disk "
                f"({on_disk})"
                + ("; still serving the ones loaded before" if entry.versions else ""),
            )
            return wait
        chosen = await self._choose(entry, parsed, available)
        self._swap(entry, chosen)
        missing = (
            "" if available or wait is not None else f"{entry.path}: no version folder to serve"
        )
        self._set_reason(entry, missing)
        return wait

    def _settle(
        self, name: str, version: int, look: VersionLook, fingerprint: str, settle: bool
    ) -> float:
        if not settle or self._tracker is None:
            return 0.0
        return self._tracker.check(name, version, fingerprint, look.ready)

    def _keep_superseded(
        self, entry: ModelEntry, parsed: ParsedConfig, on_disk: set[int], available: dict[int, str]
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

    async def _choose(
        self, entry: ModelEntry, parsed: ParsedConfig, available: dict[int, str]
    ) -> dict[int, ServedVersion]:
        """The versions to serve: the policy applied to those that load, loading as needed."""
        excluded: set[int] = set()
        chosen: dict[int, ServedVersion] = {}
        while True:
            candidates = [
                v
                for v, fp in available.items()
                if v not in excluded
                and (v in entry.versions or entry.failed.get(v, _Failure("", "")).fingerprint != fp)
            ]
            wanted = served_versions(parsed.config.version_policy, candidates)
            pending = [v for v in wanted if v not in chosen]
            if not pending:
                return {v: chosen[v] for v in wanted}
            for version in pending:
                served = await self._obtain(entry, parsed, version, available[version])
                if served is None:
                    excluded.add(version)
                    break  # the policy may now pick another version: decide again
                chosen[version] = served

    async def _obtain(
        self, entry: ModelEntry, parsed: ParsedConfig, version: int, fingerprint: str
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
                load_version,
                entry.name,
                entry.path,
                parsed,
                version,
                self._default_max_batch_size,
                fingerprint,
                self._metrics,
                self._confine(entry),
            )
        except Exception as exc:  # whatever went wrong, it stays with this version
            reason = (
                str(exc) if isinstance(exc, ModelLoadError) else _unexpected(exc, entry, version)
            )
            self._count("failure", entry.name)
            entry.failed[version] = _Failure(reason, fingerprint)
            log.error("version failed to load", model=entry.name, version=version, reason=reason)
            # A version already serving keeps serving its previous files.
            return current
        finally:
            entry.loading.discard(version)
        entry.failed.pop(version, None)
        self._count("success", entry.name)
        served.executor.start()
        log.info(
            "version loaded",
            model=entry.name,
            version=version,
            provider=served.sessions.provider,
            max_batch_size=served.config.max_batch_size,
            instances=served.sessions.instance_count,
            notes=served.sessions.notes or None,
        )
        return served

    def _swap(
        self, entry: ModelEntry, chosen: dict[int, ServedVersion]
    ) -> list[asyncio.Task[None]]:
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

    async def _unload(self, entry: ModelEntry, why: str) -> None:
        """Stop serving every version and wait until they have drained and closed."""
        drains = self._swap(entry, {})
        entry.reason = f"unloaded: {why}"
        await asyncio.gather(*drains, return_exceptions=True)
        if entry.files_dir is not None:
            shutil.rmtree(entry.files_dir, ignore_errors=True)
            entry.files_dir, entry.path = None, self._root / entry.name
        log.info("model unloaded", model=entry.name, reason=why)

    def _set_reason(self, entry: ModelEntry, reason: str) -> None:
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
        override = None if config_json is None else _parse_json_config(config_json, name)
        if files:
            _check_file_keys(name, files)
        elif not (self._root / name).is_dir():
            raise ModelNotFound(f"no model folder '{name}' in the repository")
        self._check_open(name)
        # The load goes on if the caller gives up (its deadline passes): a version loaded in a
        # worker thread is then still swapped in, not dropped half-made.
        task = asyncio.ensure_future(self._load(name, override, files))
        self._background.add(task)
        task.add_done_callback(self._load_done)
        await asyncio.shield(task)

    def _confine(self, entry: ModelEntry) -> Path | None:
        """The folder a model's files must stay in, links followed; None for files given over
        the API (written by the daemon itself, no links among them)."""
        return None if entry.files_dir is not None else self._inside

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
                folder = await asyncio.to_thread(_write_files, name, files) if files else None
            except ModelLoadError as exc:  # the disk refused them: no phantom without a reason
                if not entry.versions:
                    entry.reason = str(exc)
                raise
            entry.unloaded = False
            entry.override = override
            if entry.files_dir is not None:  # the files of the previous load over the API
                shutil.rmtree(entry.files_dir, ignore_errors=True)
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


def _unexpected(exc: Exception, entry: ModelEntry, version: int) -> str:
    """A load failure of a kind the loader does not raise itself: logged with its traceback."""
    log.error("unexpected error loading a version", model=entry.name, version=version, exc_info=exc)
    return f"{entry.path / str(version)}: {type(exc).__name__}: {exc}"


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


def _config_fingerprint(parsed: ParsedConfig) -> str:
    text = parsed.config.SerializeToString(deterministic=True)
    return hashlib.sha1(text, usedforsecurity=False).hexdigest()[:16] + ":"


def _parse_json_config(text: str, name: str) -> ParsedConfig:
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


def _check_file_keys(name: str, files: Mapping[str, bytes]) -> None:
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


def _write_files(name: str, files: Mapping[str, bytes]) -> Path:
    """A temporary model folder holding files given over the API as ``<version>/<path>``
    (keys checked by ``_check_file_keys``). Blocking: run it in a worker thread."""
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
