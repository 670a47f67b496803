"""One model version: loading it (sessions, completed config, warmup, executor) and its leases.

Loading is blocking work (ONNX Runtime builds its sessions) and runs in a worker thread; a
version is handed to the registry only once it has loaded and answered its warmup.

A generation model (config ``parameters`` task ``text-generation``) is chosen here too: its
engine owns its session and its scheduler thread (``EngineRunner`` stands where a tensor model's
sessions and batcher stand), and its adapter answers with the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ortserve.adapters import RequestAdapter, TensorAdapter
from ortserve.errors import ModelLoadError, Unsupported
from ortserve.execution import ItemResult, VersionExecutor
from ortserve.generation.adapter import GenerationAdapter, is_generation
from ortserve.generation.engine import GenerationEngine
from ortserve.generation.model import GenerationModel
from ortserve.generation.types import EngineLimits
from ortserve.observability.metrics import Metrics
from ortserve.observability.recorder import VersionRecorder
from ortserve.registry.warmup import run_warmup, warm_up_generation
from ortserve.repository.config import ParsedConfig, complete_config
from ortserve.repository.layout import DEFAULT_MODEL_FILENAME, check_links_inside
from ortserve.runtime.session import ModelSessions
from ortserve.signature import Signature
from ortserve.text.adapters import text_adapter
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import Array


class Sessions(Protocol):
    """What the registry reads of a version's sessions (``ModelSessions``, ``EngineRunner``)."""

    provider: str
    notes: list[str]

    @property
    def instance_count(self) -> int: ...

    def close(self) -> None: ...


class Executor(Protocol):
    """What runs a version's requests (``VersionExecutor``, ``EngineRunner``)."""

    recorder: VersionRecorder

    def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def submit(
        self,
        feeds: Mapping[str, Array],
        *,
        priority: int = 0,
        timeout_microseconds: int = 0,
        deadline: float | None = None,
        length: int | None = None,
    ) -> ItemResult: ...


@dataclass(eq=False, slots=True)
class ServedVersion:
    """A loaded version. Requests hold a lease on it from resolution to answer."""

    model_name: str
    version: int
    model_config: mc.ModelConfig  # the ONNX model's own inputs and outputs
    sessions: Sessions
    executor: Executor
    fingerprint: str  # what was loaded: config text and the version folder's files
    adapter: RequestAdapter  # what a request is before and after the batcher; chosen at load
    leases: int = 0
    draining: bool = False
    _drained: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def config(self) -> mc.ModelConfig:
        """The config as clients see it (a text model's: with its text inputs and outputs)."""
        return self.adapter.config

    @property
    def recorder(self) -> VersionRecorder:
        """What happened to this version's requests (statistics endpoint, metrics)."""
        return self.executor.recorder

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
        """Stop taking requests, let the leased ones finish, then release the sessions."""
        self.draining = True
        if self.leases:
            await self._drained.wait()
        await self.executor.aclose()
        await asyncio.to_thread(self._close_sessions)

    def _close_sessions(self) -> None:
        self.sessions.close()
        gc.collect()  # objects in reference cycles that still hold model memory
        _return_memory_to_the_os()


def load_version(
    model_name: str,
    model_dir: Path,
    parsed: ParsedConfig,
    version: int,
    default_max_batch_size: int,
    fingerprint: str,
    metrics: Metrics | None,
    confine: Path | None = None,
) -> ServedVersion:
    """Build, check and warm up one version (blocking: call it from a worker thread). With
    ``confine`` (a resolved folder), a version whose files link outside it is refused unread."""
    filename = parsed.config.default_model_filename or DEFAULT_MODEL_FILENAME
    version_dir = model_dir / str(version)
    if confine is not None:
        check_links_inside(version_dir, confine)
    if is_generation(parsed.config):
        return _load_generation(model_name, version_dir, parsed, version, fingerprint, metrics)
    sessions = ModelSessions(version_dir / filename, parsed.config, parsed.source)
    try:
        config = complete_config(parsed, model_name, sessions.signature, default_max_batch_size)
        run_warmup(config, sessions, version_dir, parsed.source)
        label = f"model '{model_name}' version {version}"
        # The one place a version's kind is chosen: a text model is one with a tokenizer.json
        # beside its model.onnx.
        adapter: RequestAdapter = text_adapter(
            version_dir, config, parsed.source, label
        ) or TensorAdapter(config, label)
        recorder = VersionRecorder.for_model(metrics, config.name)
        executor = VersionExecutor(
            label, config, sessions, parsed.source, recorder, padding=adapter.padding
        )
    except ModelLoadError:
        sessions.close()
        raise
    return ServedVersion(model_name, version, config, sessions, executor, fingerprint, adapter)


@dataclass(eq=False)
class EngineRunner:
    """A generation version's sessions and executor in one: its engine, which owns its session
    and runs its own scheduler thread (started when the version goes live, stopped when it has
    drained). Requests reach it through the adapter, never through ``submit``."""

    engine: GenerationEngine
    recorder: VersionRecorder
    provider: str
    notes: list[str] = field(default_factory=list)

    @property
    def instance_count(self) -> int:
        return 1

    def start(self) -> None:
        self.engine.start()

    async def aclose(self) -> None:
        await self.engine.aclose()

    async def submit(
        self,
        feeds: Mapping[str, Array],
        *,
        priority: int = 0,
        timeout_microseconds: int = 0,
        deadline: float | None = None,
        length: int | None = None,
    ) -> ItemResult:
        raise Unsupported("a generation model runs its requests itself, not through a batcher")

    def close(self) -> None:
        """Nothing left to close: the engine's session goes with the engine."""


def _load_generation(
    model_name: str,
    version_dir: Path,
    parsed: ParsedConfig,
    version: int,
    fingerprint: str,
    metrics: Metrics | None,
) -> ServedVersion:
    """A generation model: its config completed without a graph signature (the clients' tensors
    are the adapter's, the graph's are the engine's), its engine warmed up, its adapter."""
    bare = mc.ModelConfig()
    bare.CopyFrom(parsed.config)
    del bare.input[:]  # a Triton vLLM config may list the text tensors: the adapter sets them
    del bare.output[:]
    config = complete_config(
        ParsedConfig(bare, parsed.source, parsed.max_batch_size_given),
        model_name,
        Signature((), ()),
        0,
    )
    label = f"model '{model_name}' version {version}"
    model = GenerationModel.load(version_dir, config, parsed.source)
    limits = EngineLimits.from_config(config, parsed.source)
    warm_up_generation(lambda: GenerationEngine(model, limits), label)
    recorder = VersionRecorder.for_model(metrics, config.name, generation=True)
    runner = EngineRunner(GenerationEngine(model, limits, recorder), recorder, model.provider)
    adapter = GenerationAdapter(runner.engine, config, label)
    return ServedVersion(model_name, version, config, runner, runner, fingerprint, adapter)


def _return_memory_to_the_os() -> None:
    """glibc keeps freed heap for reuse; after unloading a model, hand it back."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)
