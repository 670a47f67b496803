"""The daemon as one object: its components and its one state, from start-up to the stop.

app.py builds the components and hands them over; from then on the ``Daemon`` moves its state
(lifecycle.py): STARTING while the repository loads, READY once it has, DRAINING from the first
stop signal, STOPPED. The servicer (ServerReady, ServerLive) and the health service read that
state; the shutdown reads the requests admitted and answered from the data plane's
``Admission``. No grpc import: the servers (gRPC, and the HTTP front unless --no-http) are only
started and stopped here (``Server``); both drain together on a stop signal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from ortserve.errors import OrtserveError
from ortserve.inference import InferenceService
from ortserve.lifecycle import DaemonState, Lifecycle
from ortserve.observability.metrics import Metrics
from ortserve.protocol.health import Health
from ortserve.protocol.servicer import InferenceServicer
from ortserve.protocol.status import ShutdownHold
from ortserve.registry.models import ModelRegistry
from ortserve.repository.watcher import RepositoryWatcher
from ortserve.settings import ServeSettings

log = structlog.get_logger("ortserve")

#: Before the server stops, new calls are held (``ShutdownHold``) until neither a call nor a
#: stream message has arrived for this long (a client that retries at once, held, sends nothing
#: more), for ``HOLD_MAX_S`` at most, within the grace period.
HOLD_QUIET_S = 0.1
HOLD_MAX_S = 1.0


class Server(Protocol):
    """What the daemon does with a front once it is bound (grpc.aio.Server, http.HttpFront)."""

    async def start(self) -> None: ...

    async def stop(self, grace: float | None) -> None: ...


@dataclass(eq=False)
class Daemon:
    """The components, built and listening, and the one state they are served in."""

    settings: ServeSettings
    lifecycle: Lifecycle
    metrics: Metrics
    registry: ModelRegistry
    inference: InferenceService
    servicer: InferenceServicer
    health: Health
    hold: ShutdownHold
    server: Server
    watcher: RepositoryWatcher | None  # poll mode: started once the repository is loaded
    http: Server | None = None  # the HTTP front (None: --no-http)
    _stop: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _graceful: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def state(self) -> DaemonState:
        return self.lifecycle.state

    async def _enter(self, state: DaemonState) -> None:
        self.lifecycle.advance(state)
        await self.health.publish_server()

    async def start(self) -> None:
        """The servers take calls from now on; health says NOT_SERVING until ``open``."""
        await self.server.start()
        if self.http is not None:
            await self.http.start()
        await self.health.publish_server()

    def request_stop(self) -> None:
        """A stop signal (SIGTERM, SIGINT). The first stops in order; one that comes while the
        daemon drains stops it at once."""
        if not self._stop.is_set():
            self._stop.set()
        elif self._graceful is not None and not self._graceful.done():
            log.warning("second signal: stopping at once")
            self._graceful.cancel()

    async def load(self) -> bool:
        """Load the repository, unless a stop signal comes first: then stop without serving
        (never ready, so no traffic to drain). True once loaded."""
        if await _unless_stopped(self._load_models(), self._stop):
            return True
        # A version already loading in a worker thread finishes there before the process exits.
        log.info("stopping during start-up: models not all loaded")
        await self._stop_servers(0)
        await self.registry.close()
        await self._enter(DaemonState.STOPPED)
        log.info("stopped")
        return False

    async def _load_models(self) -> None:
        settings = self.settings
        if settings.model_control_mode != "explicit":
            await self.registry.load_all()
            return
        for name in settings.load_model:
            try:
                await self.registry.load(name)
            except OrtserveError as exc:  # one model that cannot load does not stop the daemon
                log.error("model did not load", model=name, reason=str(exc))

    async def open(self) -> None:
        """Loaded: watch the repository (poll mode) and say READY."""
        # The registry's own "started" (an unknown model is then NOT_FOUND, not "still loading").
        self.registry.started = True
        if self.watcher is not None:
            self.watcher.start()
        registry = self.registry
        await self.health.set_models((name, registry.is_ready(name)) for name in registry.names())
        await self._enter(DaemonState.READY)
        log.info(
            "ready", models=registry.names(), model_control_mode=self.settings.model_control_mode
        )

    async def serve_until_stopped(self) -> None:
        await self._stop.wait()
        await self.shut_down()

    async def shut_down(self) -> None:
        """In order: say NOT_SERVING, keep serving for the drain delay (load balancers move away),
        refuse new requests with UNAVAILABLE (retried elsewhere), let admitted ones finish within
        the grace period (open streams end with UNAVAILABLE once theirs are answered), stop the
        server, close the sessions. A second signal stops at once (``request_stop``)."""
        settings = self.settings
        log.info(
            "stopping", drain_seconds=settings.drain_seconds, grace_seconds=settings.grace_seconds
        )
        await self._enter(DaemonState.DRAINING)
        graceful = self._graceful = asyncio.ensure_future(self._drain())
        await asyncio.wait([graceful])
        if graceful.cancelled():
            await self._stop_servers(0)  # cancels what is still running; callers get CANCELLED
        else:
            graceful.result()
        await self.registry.close()
        admission = self.inference.admission
        log.info("requests", admitted=admission.admitted, answered=admission.answered)
        await self._enter(DaemonState.STOPPED)
        log.info("stopped")

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        settings, hold, admission = self.settings, self.hold, self.inference.admission
        if self.watcher is not None:
            await self.watcher.aclose()
        if settings.drain_seconds > 0:
            await asyncio.sleep(settings.drain_seconds)
        admission.close()
        deadline = loop.time() + settings.grace_seconds
        try:
            async with asyncio.timeout(settings.grace_seconds):
                await admission.wait_idle()
        except TimeoutError:
            log.warning("requests still running after the grace period; stopping anyway")
        # A call that reaches gRPC once its stop has begun is cancelled by gRPC itself (CANCELLED,
        # not UNAVAILABLE: the client cannot tell that it did not run). So new calls are held
        # until clients are quiet, and let through (to be refused) only once the stop has begun.
        hold.hold()
        await hold.until_quiet(HOLD_QUIET_S, min(HOLD_MAX_S, max(deadline - loop.time(), 0.0)))
        hold.end_streams()
        grace = max(deadline - loop.time(), 0.0) + 0.5
        stopping = asyncio.ensure_future(self.server.stop(grace))
        http_stopping = asyncio.ensure_future(self._stop_http(grace))
        # One step of stop(): gRPC's core stops taking calls and sends each client its GOAWAY,
        # before stop() first waits; the held calls are answered after that, on the same
        # connections.
        await asyncio.sleep(0)
        hold.release()
        await stopping
        await http_stopping

    async def _stop_servers(self, grace: float) -> None:
        """Both fronts stop together: new HTTP requests already got 503 since the admission
        closed (as gRPC's got UNAVAILABLE), and what is in progress finishes within ``grace``."""
        await asyncio.gather(self.server.stop(grace), self._stop_http(grace))

    async def _stop_http(self, grace: float) -> None:
        if self.http is not None:
            await self.http.stop(grace)


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
