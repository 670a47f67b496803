"""Composition root: build the daemon, start it, and stop it in order on a signal."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import ssl
import sys
import tempfile
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import grpc
import structlog

from ortserve.errors import OrtserveError
from ortserve.inference import InferenceService
from ortserve.observability.metrics import Metrics
from ortserve.protocol.auth import TokenInterceptor, read_tokens
from ortserve.protocol.health import Health, enable_reflection
from ortserve.protocol.servicer import InferenceServicer
from ortserve.protocol.status import ErrorInterceptor, ShutdownHold
from ortserve.registry.registry import ModelRegistry
from ortserve.repository.watcher import RepositoryWatcher, SettleTracker
from ortserve.settings import ServeSettings
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc

log = structlog.get_logger("ortserve")

#: The GIL's switch interval while serving (CPython's default is 5 ms); see serve().
SWITCH_INTERVAL_S = 0.0005


def version() -> str:
    try:
        return importlib_metadata.version("ortserve")
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0+unknown"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def _shut_down(
    settings: ServeSettings,
    server: grpc.aio.Server,
    servicer: InferenceServicer,
    inference: InferenceService,
    health: Health,
    watcher: RepositoryWatcher | None,
    registry: ModelRegistry,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """In order: say NOT_SERVING, keep serving for the drain delay (load balancers move away),
    refuse new requests with UNAVAILABLE (retried elsewhere), let admitted ones finish within the
    grace period (open streams end with UNAVAILABLE once theirs are answered), stop the server,
    close the sessions. A second signal stops at once."""
    log.info("stopping", drain_seconds=settings.drain_seconds, grace_seconds=settings.grace_seconds)
    servicer.ready = False
    await health.set_server(False)
    graceful = asyncio.ensure_future(
        _drain(settings, server, inference, servicer.hold, watcher, loop)
    )

    def at_once() -> None:
        if not graceful.done():
            log.warning("second signal: stopping at once")
            graceful.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, at_once)
    await asyncio.wait([graceful])
    if graceful.cancelled():
        await server.stop(0)  # cancels what is still running; its callers get CANCELLED
    else:
        graceful.result()
    await registry.close()
    log.info("requests", admitted=inference.admitted, answered=inference.answered)


#: Before the server stops, new calls are held (``ShutdownHold``) until neither a call nor a
#: stream message has arrived for this long (a client that retries at once, held, sends nothing
#: more), for ``HOLD_MAX_S`` at most, within the grace period.
HOLD_QUIET_S = 0.1
HOLD_MAX_S = 1.0


async def _drain(
    settings: ServeSettings,
    server: grpc.aio.Server,
    inference: InferenceService,
    hold: ShutdownHold,
    watcher: RepositoryWatcher | None,
    loop: asyncio.AbstractEventLoop,
) -> None:
    if watcher is not None:
        await watcher.aclose()
    if settings.drain_seconds > 0:
        await asyncio.sleep(settings.drain_seconds)
    inference.close_admission()
    deadline = loop.time() + settings.grace_seconds
    try:
        async with asyncio.timeout(settings.grace_seconds):
            await inference.wait_idle()
    except TimeoutError:
        log.warning("requests still running after the grace period; stopping anyway")
    # A call that reaches gRPC once its stop has begun is cancelled by gRPC itself (CANCELLED,
    # not UNAVAILABLE: the client cannot tell that it did not run). So new calls are held until
    # clients are quiet, and let through (to be refused) only once the stop has begun.
    hold.hold()
    await hold.until_quiet(HOLD_QUIET_S, min(HOLD_MAX_S, max(deadline - loop.time(), 0.0)))
    hold.end_streams()
    stopping = asyncio.ensure_future(server.stop(max(deadline - loop.time(), 0.0) + 0.5))
    # One step of stop(): gRPC's core stops taking calls and sends each client its GOAWAY, before
    # stop() first waits; the held calls are answered after that, on the same connections.
    await asyncio.sleep(0)
    hold.release()
    await stopping


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run ``work`` unless a stop signal comes first; then cancel it. True if it finished."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    await asyncio.wait([task])
    return False


def _control_hint(settings: ServeSettings) -> str | None:
    if settings.model_control_mode == "explicit" or settings.enable_repository_control:
        return None
    return (
        "repository control is off: start the daemon with --enable-repository-control "
        "(ORTSERVE_ENABLE_REPOSITORY_CONTROL=1) or --model-control-mode explicit"
    )


def _build_server(settings: ServeSettings, servicer: InferenceServicer) -> grpc.aio.Server:
    limit = settings.max_message_bytes
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if settings.auth_token_file is not None:
        interceptors.append(TokenInterceptor(read_tokens(settings.auth_token_file)))
    interceptors.append(ErrorInterceptor(servicer.hold))
    server = grpc.aio.server(
        interceptors=interceptors,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
        options=[
            ("grpc.max_receive_message_length", limit),
            # Answers are the daemon's own, sized by the request and the model: not bounded.
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    enable_reflection(server)
    return server


def _listen(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
) -> int:
    """Bind the gRPC port; the bound port, or OSError with the reason (``Address already in
    use``). On failure gRPC's core writes its own line to file descriptor 2 ("E1203 00:03:48
    ... add_port.cc:83] ...") and raises only "Failed to bind ..."; it is caught here so that the
    daemon's one message, naming the address and the reason, is all a person reads. Anything
    the core writes during a successful bind is passed on to stderr, not lost."""
    failure: Exception | None = None
    port = 0
    with _fd2_captured() as core:
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except (RuntimeError, OSError, ValueError) as exc:
            failure = exc
    if failure is None and port > 0:
        if core.text:
            sys.stderr.write(core.text)
        return port
    reason = _core_bind_reason(core.text) or str(failure or "gRPC bound no port")
    if "in use" in reason:
        reason += " (another process listens there: pick another --grpc-port, or 0 for a free one)"
    raise OSError(reason)


@dataclass
class _Captured:
    text: str = ""


@contextmanager
def _fd2_captured() -> Iterator[_Captured]:
    """What anything, C code included, writes to file descriptor 2 while the block runs; it goes
    to a temporary file instead of the terminal, and is handed over when the block ends."""
    captured = _Captured()
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (started with 2>&-): nothing to keep clean
        yield captured
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield captured
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                captured.text = sink.read().decode("utf-8", errors="replace")
    finally:
        os.close(saved)


#: gRPC core's reason in its add_port line: "... (Error in bind for address '[::1]:8001':
#: Address already in use)".
_CORE_BIND_REASON = re.compile(r"Error in bind for address '[^']*': (?P<reason>[^)]+)\)")


def _core_bind_reason(core_text: str) -> str:
    """The reason gRPC's core gave, else its lines without their log prefix."""
    match = _CORE_BIND_REASON.search(core_text)
    if match:
        return match["reason"].strip()
    lines = (line.partition("] ")[2] or line for line in core_text.splitlines())
    return "; ".join(line.strip() for line in lines if line.strip())


def _server_credentials(settings: ServeSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    _check_tls_files(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _check_tls_files(cert: Path, key: Path, client_ca: Path | None) -> None:
    """Load the files as OpenSSL will: gRPC itself would only say it "failed to bind"."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")  # never prompt on a terminal
    except ssl.SSLError as exc:
        raise ValueError(
            f"--tls-cert {cert} with --tls-key {key}: not a PEM certificate and its matching "
            f"private key ({exc.reason or exc})"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise ValueError(
                f"--tls-client-ca {client_ca}: not a PEM CA bundle ({exc.reason or exc})"
            ) from None


async def _load_initial(settings: ServeSettings, registry: ModelRegistry) -> None:
    if settings.model_control_mode != "explicit":
        await registry.load_all()
        return
    for name in settings.load_model:
        try:
            await registry.load(name)
        except OrtserveError as exc:  # one model that cannot load does not stop the daemon
            log.error("model did not load", model=name, reason=str(exc))


async def serve(settings: ServeSettings) -> int:
    # Resolved once: watchfiles reports absolute paths, which a relative root (serve.sh passes
    # `model_repo`) would never match, so no change would ever be seen.
    root = settings.model_repository.resolve()
    if not root.is_dir():
        log.error("model repository not found", model_repository=str(root))
        return 2
    metrics = Metrics()
    tracker = SettleTracker(settings.settle_seconds)
    registry = ModelRegistry(
        root,
        settings.default_max_batch_size,
        metrics,
        tracker,
        allow_links_outside=settings.allow_symlinks_outside_repository,
    )
    inference = InferenceService(registry, metrics)
    servicer = InferenceServicer(registry, inference, version(), _control_hint(settings))
    try:
        server = _build_server(settings, servicer)
    except (OSError, ValueError) as exc:  # e.g. an unreadable or empty token file
        log.error("cannot start", error=str(exc))
        return 2
    health = Health(server)
    registry.on_state_change(health.model_changed)
    address = _address(settings.host, settings.grpc_port)
    try:
        credentials = _server_credentials(settings)
    except (OSError, ValueError) as exc:  # a missing, unreadable or wrong TLS file
        log.error("cannot start", error=str(exc))
        return 2
    try:
        port = _listen(server, address, credentials)
    except OSError as exc:
        log.error("cannot listen", address=address, error=str(exc))
        return 2
    metrics_port = None
    wanted_metrics_port = settings.metrics_port_to_bind()
    if wanted_metrics_port >= 0:
        try:
            metrics_port = metrics.serve(settings.host, wanted_metrics_port)
        except OSError as exc:
            log.error(
                "cannot serve metrics",
                address=_address(settings.host, wanted_metrics_port),
                error=exc.strerror or str(exc),
                hint="pick another --metrics-port, 0 for a free one, or -1 for none",
            )
            return 2
    await server.start()
    await health.set_server(False)
    log.info(
        "listening",
        address=_address(settings.host, port),
        grpc_port=port,
        metrics_port=metrics_port,
        tls=settings.tls_cert is not None,
        mtls=settings.tls_client_ca is not None,
        auth=settings.auth_token_file is not None,
        event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if not await _unless_stopped(_load_initial(settings, registry), stop):
        # Never ready, so no traffic to drain. A version already loading in a worker thread
        # finishes there before the process can exit.
        log.info("stopping during start-up: models not all loaded")
        await server.stop(0)
        await registry.close()
        log.info("stopped")
        return 0
    registry.started = True
    # What start-up built (sessions, configs, modules) lives on: keep the collector off it, and
    # let it run less often, so that it stays off the request path.
    gc.freeze()
    # A worker thread coming back with a finished batch needs the GIL to hand it over and to
    # start the next one; at CPython's default 5 ms switch interval it waited ~4-5 ms for the
    # busy event-loop thread, idling its session ~9 % of the time at 64 clients (1.1-1.5 ms
    # between batches at 0.5 ms; bench/README.md).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.set_threshold(10_000, 20, 20)
    watcher = None
    if settings.model_control_mode == "poll":
        watcher = RepositoryWatcher(root, tracker, registry.sync, settings.watch_polling)
        watcher.start()
    await health.set_models((name, registry.is_ready(name)) for name in registry.names())
    servicer.ready = True
    await health.set_server(True)
    log.info("ready", models=registry.names(), model_control_mode=settings.model_control_mode)

    await stop.wait()
    await _shut_down(settings, server, servicer, inference, health, watcher, registry, loop)
    log.info("stopped")
    return 0
