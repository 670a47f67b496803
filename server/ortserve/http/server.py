"""The HTTP front: one Starlette app, served by uvicorn in the daemon's process and event loop.

``HttpContext`` is what every route reads: the same inference service, registry, state, settings
and metrics as gRPC (no second data path). ``Guard`` is the one ASGI middleware in front of every
route: request id, bearer auth (health open, as over gRPC), the body size limit, metrics and the
access log. ``HttpFront`` binds, serves and stops it; the daemon starts and drains it beside gRPC
(signals stay the daemon's: uvicorn installs none).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib
import json
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ortserve.errors import InvalidInput
from ortserve.http.errors import BodyTooLarge
from ortserve.inference import InferenceService
from ortserve.lifecycle import StateView
from ortserve.observability.metrics import Metrics
from ortserve.registry.models import ModelRegistry
from ortserve.settings import ServeSettings

log = structlog.get_logger("ortserve.http")

#: The request header that carries the caller's deadline, in milliseconds (gRPC's own deadline).
TIMEOUT_HEADER = "x-request-timeout-ms"
#: Paths open without a token, as ``grpc.health.v1`` is over gRPC: probes need no secret.
OPEN_PREFIX = "/v2/health/"
MAX_REQUEST_ID = 128
DENIED = "missing or wrong bearer token: send the header 'Authorization: Bearer <token>'"


@dataclass
class HttpContext:
    """What the routes share with gRPC: the daemon's own components."""

    inference: InferenceService  # infer(request) / infer_stream(request) / check_target
    registry: ModelRegistry  # resolve, index, served, load/unload
    state: StateView  # lifecycle: ready / live
    settings: ServeSettings  # tokens, limits (max_message_bytes as the body limit), flags
    metrics: Metrics | None
    version: str = ""  # the daemon's version (server metadata)
    control_hint: str | None = None  # None: repository control is on; else how to turn it on


def request_timeout_s(request: Request) -> float | None:
    """The caller's deadline from ``X-Request-Timeout-Ms``, in seconds (None: none given)."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        milliseconds = float(raw)
    except ValueError:
        milliseconds = -1.0
    if not milliseconds > 0:
        raise InvalidInput(f"header X-Request-Timeout-Ms: {raw[:40]!r} is not a positive number")
    return milliseconds / 1000


def build_app(ctx: HttpContext, tokens: Sequence[str] = ()) -> ASGIApp:
    """KServe v2 routes, and the OpenAI and task routes where their modules are present."""
    from ortserve.http.kserve import kserve_routes

    routes: list[BaseRoute] = kserve_routes(ctx)
    for module, factory in (("openai", "openai_routes"), ("tasks", "task_routes")):
        routes += _optional_routes(module, factory, ctx)
    app = Starlette(routes=routes)
    return Guard(app, tokens, ctx.settings.max_message_bytes, ctx.metrics)


def _optional_routes(module: str, factory: str, ctx: HttpContext) -> list[BaseRoute]:
    try:
        found = importlib.import_module(f"ortserve.http.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"ortserve.http.{module}":
            raise
        return []
    make: Callable[[HttpContext], list[BaseRoute]] = getattr(found, factory)
    return make(ctx)


class Guard:
    """Request id, auth, body limit, metrics and the access log, around every HTTP request."""

    def __init__(
        self, app: ASGIApp, tokens: Sequence[str], limit: int, metrics: Metrics | None
    ) -> None:
        self._app = app
        self._tokens = [token.encode() for token in tokens]
        self._limit = limit
        self._metrics = metrics

    def _allowed(self, authorization: bytes | None) -> bool:
        if authorization is None:
            return False
        scheme, _, token = authorization.partition(b" ")
        return scheme.lower() == b"bearer" and any(
            hmac.compare_digest(token.strip(), known) for known in self._tokens
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        # A caller's id is echoed and logged: cut to a bounded length, never kilobytes long.
        request_id = headers.get(b"x-request-id", b"")[:MAX_REQUEST_ID] or uuid.uuid4().hex.encode()
        path: str = scope["path"]
        started = time.perf_counter()
        answer = _Answer(send, request_id)
        with structlog.contextvars.bound_contextvars(request_id=request_id.decode("latin-1")):
            try:
                await self._guarded(scope, receive, answer, headers, path)
            finally:
                self._record(scope, answer.status, path, started)

    async def _guarded(
        self, scope: Scope, receive: Receive, answer: _Answer, headers: dict[bytes, bytes],
        path: str,
    ) -> None:  # fmt: skip
        open_path = path.startswith(OPEN_PREFIX)
        if self._tokens and not open_path and not self._allowed(headers.get(b"authorization")):
            await answer.error(path, 401, DENIED, [(b"www-authenticate", b"Bearer")])
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limit:
            await answer.error(path, 413, str(BodyTooLarge(self._limit, int(declared))))
            return
        try:
            await self._app(scope, self._counted(receive), answer.send)
        except BodyTooLarge as exc:  # a route that let it through: answered here
            if not answer.started:
                await answer.error(path, 413, str(exc))
        except Exception as exc:  # a bug the route did not answer: logged, 500 with an id
            error_id = uuid.uuid4().hex[:12]
            log.error("unexpected error", path=path, error_id=error_id, exc_info=exc)
            if not answer.started:
                message = f"internal error (error id {error_id}; see the server log)"
                await answer.error(path, 500, message)

    def _counted(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._limit:
                    raise BodyTooLarge(self._limit)
            return message

        return counted

    def _record(self, scope: Scope, status: int, path: str, started: float) -> None:
        endpoint = scope.get("endpoint")
        route = getattr(endpoint, "__name__", "unmatched")
        if self._metrics is not None:
            self._metrics.http_request(route, status)
        log.debug(
            "access",
            protocol="http",
            method=scope.get("method"),
            path=path,
            route=route,
            status=status,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )


class _Answer:
    """The response going out: its status, and the request id added to its headers."""

    def __init__(self, send: Send, request_id: bytes) -> None:
        self._send = send
        self._request_id = request_id
        self.started = False
        self.status = 0

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            headers = list(message.get("headers", []))
            headers.append((b"x-request-id", self._request_id))
            message = {**message, "headers": headers}
        await self._send(message)

    async def error(
        self, path: str, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """An error in the shape of the route's API: OpenAI's under /v1/, KServe's elsewhere."""
        payload: dict[str, Any]
        if path.startswith("/v1/"):
            kind = "authentication_error" if status == 401 else "invalid_request_error"
            payload = {"error": {"message": text, "type": kind, "param": None, "code": status}}
        else:
            payload = {"error": text}
        body = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()), *(extra or [])]  # fmt: skip
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the daemon owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    client_ca: str | None = None


class HttpFront:
    """The HTTP server: bound by ``bind``, serving from ``start``, drained by ``stop``."""

    def __init__(self, app: ASGIApp, tls: TlsFiles | None = None) -> None:
        config = uvicorn.Config(
            app,
            loop="none",  # the daemon's running loop (uvloop when installed)
            http=_http_parser(),
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,  # Guard logs each request, with its id
            server_header=False,
            ssl_certfile=tls.cert if tls else None,
            ssl_keyfile=tls.key if tls else None,
            ssl_ca_certs=tls.client_ca if tls else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE,
        )
        # uvicorn's own lines ("Started server process") are not the daemon's log.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = _Server(config)
        self._socket: socket.socket | None = None
        self._serving: Any = None

    def bind(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); the bound port, or OSError with why."""
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        if self._socket is None:  # never bound (a daemon built but not listening): no port
            return
        self._serving = asyncio.ensure_future(self._server.serve(sockets=[self._socket]))
        # uvicorn offers no event for "listening"; its startup takes a few loop turns.
        while not self._server.started and not self._serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        if self._serving.done():
            self._serving.result()  # failed to start: say why

    async def stop(self, grace: float | None) -> None:
        """Stop taking connections; answer what is in progress for ``grace`` seconds at most."""
        if self._serving is None:
            if self._socket is not None:
                self._socket.close()
            return
        self._server.config.timeout_graceful_shutdown = int(grace) + 1 if grace else 0
        self._server.should_exit = True
        if not grace:
            self._server.force_exit = True
        try:
            async with asyncio.timeout((grace or 0) + 2):
                await asyncio.shield(self._serving)
        except TimeoutError:
            self._serving.cancel()


def _http_parser() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover - httptools comes with the server extra
        return "h11"
    return "httptools"
