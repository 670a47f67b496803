"""Composition root: build the daemon, start it, and stop it in order on a signal."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import re
import signal
import ssl
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import grpc
import structlog

from ortserve.daemon import Daemon
from ortserve.http.server import HttpContext, HttpFront, TlsFiles, build_app
from ortserve.inference import InferenceService
from ortserve.lifecycle import Admission, Lifecycle
from ortserve.observability.metrics import Metrics
from ortserve.protocol.auth import TokenInterceptor, read_tokens
from ortserve.protocol.health import Health, enable_reflection
from ortserve.protocol.servicer import InferenceServicer
from ortserve.protocol.status import ErrorInterceptor, ShutdownHold
from ortserve.registry.models import ModelRegistry
from ortserve.registry.versions import load_version
from ortserve.repository.scan import RepositoryScanner
from ortserve.repository.settle import SettleTracker
from ortserve.repository.watcher import RepositoryWatcher
from ortserve.settings import ServeSettings
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc

log = structlog.get_logger("ortserve")

#: The GIL's switch interval while serving (CPython's default is 5 ms); see _tune_for_serving().
SWITCH_INTERVAL_S = 0.0005


def version() -> str:
    try:
        return importlib_metadata.version("ortserve")
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0+unknown"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _control_hint(settings: ServeSettings) -> str | None:
    if settings.model_control_mode == "explicit" or settings.enable_repository_control:
        return None
    return (
        "repository control is off: start the daemon with --enable-repository-control "
        "(ORTSERVE_ENABLE_REPOSITORY_CONTROL=1) or --model-control-mode explicit"
    )


def _build_server(
    settings: ServeSettings, servicer: InferenceServicer, tokens: list[str] | None
) -> grpc.aio.Server:
    limit = settings.max_message_bytes
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if tokens is not None:
        interceptors.append(TokenInterceptor(tokens))
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


async def serve(settings: ServeSettings) -> int:
    built = build(settings)
    if built is None:
        return 2
    daemon, server = built
    bound = _bind(settings, server, daemon.metrics)
    if bound is None:
        return 2
    port, metrics_port = bound
    http = daemon.http if isinstance(daemon.http, HttpFront) else None
    bound_http, http_port = _bind_http(settings, http)
    if not bound_http:
        return 2
    await daemon.start()
    log.info(
        "listening",
        address=_address(settings.host, port),
        grpc_port=port,
        metrics_port=metrics_port,
        http_port=http_port,
        tls=settings.tls_cert is not None,
        mtls=settings.tls_client_ca is not None,
        auth=settings.auth_token_file is not None,
        event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    if not await daemon.load():  # a stop signal came first: stopped without serving
        return 0
    _tune_for_serving()
    await daemon.open()
    await daemon.serve_until_stopped()
    return 0


def build(settings: ServeSettings) -> tuple[Daemon, grpc.aio.Server] | None:
    """The daemon and its gRPC server, wired and bound to no port yet (None: could not, and
    the reason is logged)."""
    # Resolved once: watchfiles reports absolute paths, which a relative root (serve.sh passes
    # `model_repo`) would never match, so no change would ever be seen.
    root = settings.model_repository.resolve()
    if not root.is_dir():
        log.error("model repository not found", model_repository=str(root))
        return None
    metrics = Metrics()
    tracker = SettleTracker(settings.settle_seconds)
    loader = functools.partial(
        load_version, default_max_batch_size=settings.default_max_batch_size, metrics=metrics
    )
    registry = ModelRegistry(
        root,
        loader,
        RepositoryScanner(tracker),
        metrics,
        allow_links_outside=settings.allow_symlinks_outside_repository,
    )
    lifecycle = Lifecycle()
    hold = ShutdownHold()
    inference = InferenceService(registry, metrics, Admission())
    servicer = InferenceServicer(
        registry, inference, version(), lifecycle, hold, _control_hint(settings)
    )
    try:
        tokens = read_tokens(settings.auth_token_file) if settings.auth_token_file else None
        server = _build_server(settings, servicer, tokens)
    except (OSError, ValueError) as exc:  # e.g. an unreadable or empty token file
        log.error("cannot start", error=str(exc))
        return None
    http = None
    if not settings.no_http:
        context = HttpContext(
            inference, registry, lifecycle, settings, metrics, version(), _control_hint(settings)
        )
        http = HttpFront(build_app(context, tokens or ()), _tls_files(settings))
    health = Health(server, lifecycle)
    registry.on_state_change(health.model_changed)
    watcher = None
    if settings.model_control_mode == "poll":
        watcher = RepositoryWatcher(root, tracker, registry.sync, settings.watch_polling)
    daemon = Daemon(
        settings=settings,
        lifecycle=lifecycle,
        metrics=metrics,
        registry=registry,
        inference=inference,
        servicer=servicer,
        health=health,
        hold=hold,
        server=server,
        watcher=watcher,
        http=http,
    )
    return daemon, server


def _bind(
    settings: ServeSettings, server: grpc.aio.Server, metrics: Metrics
) -> tuple[int, int | None] | None:
    """Bind the gRPC port, and the metrics port unless there is none: the bound ports (None:
    could not, and the reason is logged)."""
    address = _address(settings.host, settings.grpc_port)
    try:
        credentials = _server_credentials(settings)
    except (OSError, ValueError) as exc:  # a missing, unreadable or wrong TLS file
        log.error("cannot start", error=str(exc))
        return None
    try:
        port = _listen(server, address, credentials)
    except OSError as exc:
        log.error("cannot listen", address=address, error=str(exc))
        return None
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
            return None
    return port, metrics_port


def _tls_files(settings: ServeSettings) -> TlsFiles | None:
    """The HTTP front serves TLS with gRPC's certificate and key (checked by ``_bind``)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    client_ca = str(settings.tls_client_ca) if settings.tls_client_ca else None
    return TlsFiles(str(settings.tls_cert), str(settings.tls_key), client_ca)


def _bind_http(settings: ServeSettings, http: HttpFront | None) -> tuple[bool, int | None]:
    """Bind the HTTP port: whether it could be (else the reason is logged), and the bound port
    (None: no HTTP front)."""
    wanted = settings.http_port_to_bind()
    if http is None or wanted is None:
        return True, None
    try:
        return True, http.bind(settings.host, wanted)
    except OSError as exc:
        log.error(
            "cannot listen",
            address=_address(settings.host, wanted),
            error=exc.strerror or str(exc),
            hint="pick another --http-port, 0 for a free one, or --no-http for none",
        )
        return False, None


def _tune_for_serving() -> None:
    """Once start-up is done, before the first request."""
    # What start-up built (sessions, configs, modules) lives on: keep the collector off it, and
    # let it run less often, so that it stays off the request path.
    gc.freeze()
    # A worker thread coming back with a finished batch needs the GIL to hand it over and to
    # start the next one; at CPython's default 5 ms switch interval it waited ~4-5 ms for the
    # busy event-loop thread, idling its session ~9 % of the time at 64 clients (1.1-1.5 ms
    # between batches at 0.5 ms; bench/README.md).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.set_threshold(10_000, 20, 20)
