"""One model version: loading it (sessions, completed config, warmup, executor) and its leases.

Loading is blocking work (ONNX Runtime builds its sessions) and runs in a worker thread; a
version is handed to the registry only once it has loaded and answered its warmup.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
from dataclasses import dataclass, field
from pathlib import Path

from ortserve.datatypes import CONFIG_TO_WIRE
from ortserve.errors import ModelLoadError
from ortserve.execution import VersionExecutor
from ortserve.observability.metrics import Metrics
from ortserve.registry.warmup import run_warmup
from ortserve.repository.config import ParsedConfig, complete_config
from ortserve.repository.layout import DEFAULT_MODEL_FILENAME, check_links_inside
from ortserve.repository.parameters import Parameters
from ortserve.runtime.session import ModelSessions
from ortserve.text.files import has_tokenizer, read_files
from ortserve.text.pipeline import TextPipeline
from ortserve.text.settings import text_settings
from ortserve_client.proto import model_config_pb2 as mc


@dataclass(eq=False, slots=True)
class ServedVersion:
    """A loaded version. Requests hold a lease on it from resolution to answer."""

    model_name: str
    version: int
    config: mc.ModelConfig  # as clients see it (with the text inputs and outputs of a text model)
    model_config: mc.ModelConfig  # the ONNX model's own inputs and outputs
    sessions: ModelSessions
    executor: VersionExecutor
    fingerprint: str  # what was loaded: config text and the version folder's files
    text: TextPipeline | None = None
    output_types: dict[str, str] = field(init=False)  # output name -> wire datatype
    leases: int = 0
    draining: bool = False
    _drained: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.output_types = {out.name: CONFIG_TO_WIRE[out.data_type] for out in self.config.output}

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
    sessions = ModelSessions(version_dir / filename, parsed.config, parsed.source)
    try:
        config = complete_config(parsed, model_name, sessions.signature, default_max_batch_size)
        run_warmup(config, sessions, version_dir, parsed.source)
        text = _text_pipeline(version_dir, config, parsed.source)
        label = f"model '{model_name}' version {version}"
        executor = VersionExecutor(
            label,
            config,
            sessions,
            parsed.source,
            metrics,
            pad_values=text.pad_values if text else None,
            sequence_outputs=text.sequence_outputs if text else (),
        )
    except ModelLoadError:
        sessions.close()
        raise
    public = text.public_config(config) if text else config
    return ServedVersion(
        model_name, version, public, config, sessions, executor, fingerprint, text=text
    )


def _text_pipeline(version_dir: Path, config: mc.ModelConfig, source: str) -> TextPipeline | None:
    """A text model is one with a tokenizer.json beside its model.onnx."""
    if not has_tokenizer(version_dir):
        return None
    files = read_files(version_dir)
    return TextPipeline(files, text_settings(Parameters(config, source), files), config)


def _return_memory_to_the_os() -> None:
    """glibc keeps freed heap for reuse; after unloading a model, hand it back."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)
