"""Reconciling what a model serves with its folder, without a daemon or ONNX Runtime.

The registry runs with a fake loader (the collaborator it is given) that hands back fake served
versions, over real model folders in a temporary repository, scanned as the daemon scans them.
The settle tracker runs on a fake clock; a load that must be caught in the middle waits on a
gate the test opens. Nothing sleeps; timeouts only bound a wait that a bug would make endless.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ortserve.errors import ModelLoadError
from ortserve.registry.models import ModelRegistry
from ortserve.registry.reconcile import ModelState
from ortserve.repository.config import ParsedConfig
from ortserve.repository.scan import RepositoryScanner
from ortserve.repository.settle import SettleTracker

BOUND_S = 30.0  # a bound on waits that should end at once: only a bug gets near it
SETTLE_S = 1.0
RECHECK_S = 0.25


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeExecutor:
    def __init__(self) -> None:
        self.started = False

    def start(self) -> None:
        self.started = True


@dataclass
class FakeSessions:
    provider: str = "FakeExecutionProvider"
    notes: tuple[str, ...] = ()
    instance_count: int = 1


class FakeVersion:
    """What the registry needs of a served version: its number and files, leases, a drain."""

    def __init__(self, name: str, version: int, parsed: ParsedConfig, fingerprint: str) -> None:
        self.model_name = name
        self.version = version
        self.config = parsed.config
        self.fingerprint = fingerprint
        self.executor = FakeExecutor()
        self.sessions = FakeSessions()
        self.leases = 0
        self.draining = False
        self.closed = asyncio.Event()
        self._drained = asyncio.Event()

    @property
    def label(self) -> str:
        return f"model '{self.model_name}' version {self.version}"

    def acquire(self) -> None:
        self.leases += 1

    def release(self) -> None:
        self.leases -= 1
        if self.draining and self.leases == 0:
            self._drained.set()

    async def drain_and_close(self) -> None:
        self.draining = True
        if self.leases:
            await self._drained.wait()
        self.closed.set()


@dataclass
class FakeLoader:
    """Loads every version, except those in ``fail`` (ModelLoadError with that reason); while
    ``gate`` is set, a load tells ``entered`` and then waits for the gate to open."""

    calls: list[tuple[int, str]] = field(default_factory=list)
    fail: dict[int, str] = field(default_factory=dict)
    gate: threading.Event | None = None
    entered: threading.Event = field(default_factory=threading.Event)

    def __call__(
        self,
        model_name: str,
        model_dir: Path,
        parsed: ParsedConfig,
        version: int,
        *,
        fingerprint: str,
        confine: Path | None,
    ) -> FakeVersion:
        self.calls.append((version, fingerprint))
        if self.gate is not None:
            self.entered.set()
            assert self.gate.wait(BOUND_S), "the test never opened the gate"
        if version in self.fail:
            raise ModelLoadError(f"{model_dir / str(version)}: {self.fail[version]}")
        return FakeVersion(model_name, version, parsed, fingerprint)

    def versions(self) -> list[int]:
        return [version for version, _ in self.calls]


@dataclass
class Setup:
    root: Path
    loader: FakeLoader
    tracker: SettleTracker
    clock: FakeClock
    registry: ModelRegistry

    @property
    def model(self) -> Path:
        return self.root / "m"

    def add_version(self, version: int, where: str = "") -> Path:
        folder = self.model / (where or str(version))
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"not read by the fake loader")
        return folder

    def serving(self) -> FakeVersion:
        served = self.registry.resolve("m")
        assert isinstance(served, FakeVersion)
        return served

    def rows(self) -> dict[str, tuple[ModelState, str]]:
        return {row.version: (row.state, row.reason) for row in self.registry.index()}


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    clock = FakeClock()
    tracker = SettleTracker(SETTLE_S, RECHECK_S, clock=clock)
    loader = FakeLoader()
    registry = ModelRegistry(tmp_path, loader, RepositoryScanner(tracker))
    registry.started = True
    return Setup(tmp_path, loader, tracker, clock, registry)


async def closed(version: FakeVersion) -> None:
    await asyncio.wait_for(version.closed.wait(), BOUND_S)


async def test_a_new_version_loads_and_becomes_the_default(setup: Setup) -> None:
    setup.add_version(1)
    await setup.registry.load_all()
    first = setup.serving()
    assert (first.version, first.executor.started) == (1, True)

    setup.add_version(2)
    assert await setup.registry.sync("m", settle=False) is None
    second = setup.serving()
    assert (second.version, second.executor.started) == (2, True)
    await closed(first)  # the default policy serves the newest only: the old one drains
    assert setup.loader.versions() == [1, 2]
    assert setup.rows() == {"2": (ModelState.READY, "running on FakeExecutionProvider")}


async def test_a_removed_version_serves_until_its_successor_serves_then_drains(
    setup: Setup,
) -> None:
    setup.add_version(1)
    await setup.registry.load_all()
    first = setup.serving()
    setup.add_version(2)  # copied in: it settles before it loads
    shutil.rmtree(setup.model / "1")
    with setup.registry.lease("m") as leased:
        assert leased is first
        wait = await setup.registry.sync("m")
        assert wait == pytest.approx(RECHECK_S)
        assert setup.serving() is first  # its folder is gone, its successor not loaded yet
        assert setup.loader.versions() == [1]

        setup.clock.now += RECHECK_S
        assert await setup.registry.sync("m") is None
        assert setup.serving().version == 2
        assert not first.closed.is_set()  # a request still holds it
        assert setup.rows()["1"] == (ModelState.UNLOADING, "draining")
    await closed(first)
    assert "1" not in setup.rows()


async def test_a_failed_load_keeps_the_old_version_serving_with_the_reason_shown(
    setup: Setup,
) -> None:
    setup.add_version(1)
    await setup.registry.load_all()
    first = setup.serving()
    setup.loader.fail[2] = "the graph does not parse"
    setup.add_version(2)
    await setup.registry.sync("m", settle=False)
    assert setup.serving() is first
    assert setup.rows()["2"] == (
        ModelState.UNAVAILABLE,
        f"{setup.model / '2'}: the graph does not parse",
    )
    await setup.registry.sync("m", settle=False)  # the same files: not tried again
    assert setup.loader.versions() == [1, 2]

    shutil.rmtree(setup.model / "1")  # the failing version does not replace it either
    await setup.registry.sync("m", settle=False)
    assert setup.serving() is first

    del setup.loader.fail[2]
    (setup.model / "2" / "fixed.txt").write_text("new files: tried again")
    await setup.registry.sync("m", settle=False)
    assert setup.serving().version == 2
    await closed(first)
    assert setup.rows() == {"2": (ModelState.READY, "running on FakeExecutionProvider")}


async def test_a_failed_reload_is_shown_until_the_files_are_the_served_ones_again(
    setup: Setup,
) -> None:
    setup.add_version(1)
    await setup.registry.load_all()
    first = setup.serving()
    setup.loader.fail[1] = "a bad change"
    (setup.model / "1" / "bad.bin").write_bytes(b"breaks it")
    await setup.registry.sync("m", settle=False)
    assert setup.serving() is first
    state, reason = setup.rows()["1"]
    assert state == ModelState.READY
    assert reason.endswith("; a reload failed, serving the previous files: "
                           f"{setup.model / '1'}: a bad change")  # fmt: skip

    (setup.model / "1" / "bad.bin").unlink()  # reverted: the files are the served ones
    await setup.registry.sync("m", settle=False)
    assert setup.serving() is first
    assert setup.rows() == {"1": (ModelState.READY, "running on FakeExecutionProvider")}
    assert setup.loader.versions() == [1, 1]


async def test_a_folder_renamed_into_place_replaces_the_served_one_at_once(
    setup: Setup,
) -> None:
    """The roll-out step: `mv m/.st-2 m/2; rm -rf m/1`, seen by the watcher as an arrival."""
    setup.add_version(1)
    await setup.registry.load_all()
    first = setup.serving()
    staged = setup.add_version(2, where=".st-2")
    staged.rename(setup.model / "2")
    setup.tracker.arrived("m", 2)
    shutil.rmtree(setup.model / "1")
    assert await setup.registry.sync("m") is None  # no settle period: it loads now
    assert setup.serving().version == 2
    await closed(first)
    assert setup.loader.versions() == [1, 2]


async def test_a_config_change_reloads_the_served_version(setup: Setup) -> None:
    setup.add_version(1)
    await setup.registry.load_all()
    first = setup.serving()
    (setup.model / "config.pbtxt").write_text("max_batch_size: 4\n")
    await setup.registry.sync("m", settle=False)
    again = setup.serving()
    assert again is not first
    assert (again.version, again.config.max_batch_size) == (1, 4)
    assert again.fingerprint != first.fingerprint
    await closed(first)


async def test_two_concurrent_syncs_of_a_model_load_it_once(setup: Setup) -> None:
    setup.add_version(1)
    setup.loader.gate = threading.Event()
    first = asyncio.create_task(setup.registry.sync("m", settle=False))
    assert await asyncio.to_thread(setup.loader.entered.wait, BOUND_S)
    second = asyncio.create_task(setup.registry.sync("m", settle=False))
    await asyncio.sleep(0)  # let the second sync reach the model's lock
    assert setup.rows()["1"] == (ModelState.LOADING, "loading")
    setup.loader.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), BOUND_S)
    assert setup.loader.versions() == [1]
    assert setup.serving().version == 1


async def test_settle_tracking_forgets_loaded_and_removed_folders(setup: Setup) -> None:
    setup.add_version(1)
    assert await setup.registry.sync("m") == pytest.approx(RECHECK_S)  # copied in: settles
    assert setup.tracker.tracking() == {("m", 1)}
    setup.clock.now += RECHECK_S
    assert await setup.registry.sync("m") is None
    assert setup.serving().version == 1
    assert setup.tracker.tracking() == set()  # loaded: nothing more to settle

    setup.add_version(3)
    setup.tracker.touch("m", 3)  # as the watcher reports a write inside it
    assert await setup.registry.sync("m") == pytest.approx(SETTLE_S)
    assert setup.tracker.tracking() == {("m", 3)}
    shutil.rmtree(setup.model / "3")
    await setup.registry.sync("m")
    assert setup.tracker.tracking() == set()  # its folder went

    setup.tracker.touch("m", 4)
    shutil.rmtree(setup.model)
    await setup.registry.sync("m")
    assert setup.tracker.tracking() == set()  # the model folder went
    assert not setup.registry.knows("m")


async def test_a_write_during_the_settle_period_is_kept_past_a_load(setup: Setup) -> None:
    """Loaded from files that are then written again: the write still holds the next load."""
    setup.add_version(1)
    await setup.registry.load_all()
    setup.tracker.touch("m", 1)
    setup.tracker.loaded("m", 1)
    assert setup.tracker.tracking() == {("m", 1)}
    (setup.model / "1" / "more.bin").write_bytes(b"still being copied")
    assert await setup.registry.sync("m") == pytest.approx(SETTLE_S)
    setup.clock.now += SETTLE_S
    assert await setup.registry.sync("m") == pytest.approx(RECHECK_S)
    setup.clock.now += RECHECK_S
    assert await setup.registry.sync("m") is None
    assert setup.loader.versions() == [1, 1]
    assert setup.tracker.tracking() == set()


async def test_a_settled_folder_without_its_model_file_is_shown_not_loaded(
    tmp_path: Path,
) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "READY").write_text("")
    desired = await RepositoryScanner(SettleTracker(SETTLE_S)).scan("m", tmp_path / "m")
    found = desired.versions[1]
    assert not found.loadable
    assert found.problem == f"{tmp_path / 'm' / '1'}: no model.onnx in it"
    assert desired.wait is None
