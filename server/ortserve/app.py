"""Composition root: build the daemon, start it, and stop it in order on a signal."""

from __future__ import annotations

import asyncio
import signal
from importlib import metadata as importlib_metadata

import grpc
import structlog

from ortserve.inference import InferenceService
from ortserve.observability.metrics import Metrics
from ortserve.protocol.health import Health, enable_reflection
from ortserve.protocol.servicer import InferenceServicer
from ortserve.protocol.status import ErrorInterceptor
from ortserve.registry.models import ModelRegistry
from ortserve.settings import ServeSettings
from ortserve_client._proto import grpc_service_pb2_grpc as pb_grpc

log = structlog.get_logger("ortserve")


def version() -> str:
    try:
        return importlib_metadata.version("ortserve")
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0+unknown"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def serve(settings: ServeSettings) -> int:
    root = settings.model_repository
    if not root.is_dir():
        log.error("model repository not found", model_repository=str(root))
        return 2
    metrics = Metrics()
    registry = ModelRegistry(root, settings.default_max_batch_size, metrics)
    servicer = InferenceServicer(registry, InferenceService(registry, metrics), version())
    limit = settings.max_message_bytes
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health = Health(server)
    enable_reflection(server)
    try:
        port = server.add_insecure_port(_address(settings.host, settings.grpc_port))
    except RuntimeError as exc:
        log.error(
            "cannot listen", address=_address(settings.host, settings.grpc_port), error=str(exc)
        )
        return 2
    metrics_port = None
    if settings.metrics_port >= 0:
        try:
            metrics_port = metrics.serve(settings.host, settings.metrics_port)
        except OSError as exc:
            log.error("cannot serve metrics", port=settings.metrics_port, error=str(exc))
            return 2
    await server.start()
    await health.set_server(False)
    log.info(
        "listening",
        address=_address(settings.host, port),
        grpc_port=port,
        metrics_port=metrics_port,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    await registry.load_all()
    await health.set_models((name, registry.is_ready(name)) for name in registry.names())
    servicer.ready = True
    await health.set_server(True)
    log.info("ready", models=registry.names())

    await stop.wait()
    log.info("stopping", grace_seconds=settings.grace_seconds)
    servicer.ready = False
    await health.set_server(False)
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal stops at once
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.stop(0)))
    await server.stop(settings.grace_seconds)
    await registry.close()
    log.info("stopped")
    return 0
