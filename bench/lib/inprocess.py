"""The daemon's data plane in process, as ortserve.app builds it, minus gRPC and the watcher.

For measurements of ortserve's own layers (bench.ratio's layers, bench.overhead): the registry
loads every model of a repository once, and ``data_plane`` hands out the served version of one
model and the InferenceService in front of it; everything is closed on the way out.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from bench.lib.encoder import MODEL

if TYPE_CHECKING:  # imported when used: the server's internals load only for these measurements
    from ortserve.inference import InferenceService
    from ortserve.registry.versions import ServedVersion


@contextlib.asynccontextmanager
async def data_plane(
    repo: Path, model: str = MODEL
) -> AsyncIterator[tuple[ServedVersion, InferenceService]]:
    """(ServedVersion, InferenceService) for ``model`` in ``repo``; logs errors only."""
    import structlog

    from ortserve.inference import InferenceService
    from ortserve.observability.metrics import Metrics
    from ortserve.registry.models import ModelRegistry
    from ortserve.registry.versions import load_version

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    metrics = Metrics()
    loader = functools.partial(load_version, default_max_batch_size=32, metrics=metrics)
    registry = ModelRegistry(repo, loader, metrics=metrics)
    await registry.load_all()
    try:
        yield registry.resolve(model), InferenceService(registry, metrics)
    finally:
        await registry.close()
