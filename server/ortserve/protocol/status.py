"""The one table from domain errors to gRPC status codes, applied to every RPC by an interceptor.

Domain errors carry their message to the caller as they are. Anything else is a bug: it is
logged with its traceback and an error id, and the caller gets INTERNAL with that id only.

The interceptor also owns what gRPC does before a handler runs: parsing the request (a message
that is not one is refused by the table, not by gRPC as UNKNOWN), and the hold of new calls in the
moment the server stops (``ShutdownHold``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import grpc
import structlog
from google.protobuf.message import DecodeError

from ortserve import errors

log = structlog.get_logger("ortserve.protocol")

# Most specific first: the first matching row wins.
STATUS_TABLE: tuple[tuple[type[errors.OrtserveError], grpc.StatusCode], ...] = (
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.ModelNotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExpired, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Disabled, grpc.StatusCode.UNAVAILABLE),
    (errors.Unsupported, grpc.StatusCode.UNIMPLEMENTED),
    (errors.ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelLoadError, grpc.StatusCode.INTERNAL),
)

_SERVICE_PREFIX = "/inference.GRPCInferenceService/"


def status_for(exc: errors.OrtserveError) -> grpc.StatusCode:
    for kind, code in STATUS_TABLE:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


#: What may end a handler without an answer: its cancellation, or the process stopping. Any other
#: BaseException (a native library's panic, say) is a bug like any other: INTERNAL, logged.
CONTROL_EXCEPTIONS = (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt, SystemExit)


def describe(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller gets for ``exc`` (a bug is logged with an error id)."""
    if isinstance(exc, errors.OrtserveError):
        code = status_for(exc)
        log.debug("request refused", method=method, code=code.name, reason=str(exc))
        return code, str(exc)
    error_id = uuid.uuid4().hex[:12]
    log.error("unexpected error", method=method, error_id=error_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (error id {error_id}; see the server log)"


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str
) -> None:
    code, message = describe(exc, method)
    await context.abort(code, message)


class ShutdownHold:
    """The last moment before the server stops: new calls are held, open streams end.

    Once ``server.stop()`` has begun, gRPC's core cancels every call that reaches it, and every
    call still queued for the application, before any handler sees it: the client gets
    CANCELLED, which does not say that its request never ran. Its GOAWAY stops a client from
    sending only once the client has read it. So, just before the stop, new calls wait here
    (``hold``) instead of being refused at once: a client waiting for an answer sends nothing
    more. Once neither a new call nor a stream message has arrived for a while
    (``until_quiet``), the open streams end (``end_streams``: the server ending a stream while
    its grpc.aio client writes can make that client read INTERNAL instead of the status), the
    server's stop begins, and ``release`` lets the held calls run: they are answered as any call
    to a stopping server is (UNAVAILABLE), after the GOAWAY on the same connection.
    """

    def __init__(self) -> None:
        self._released = asyncio.Event()
        self._released.set()
        self._arrived = asyncio.Event()
        self._streams_end = asyncio.Event()

    def hold(self) -> None:
        self._released.clear()

    @property
    def holding(self) -> bool:
        """Checked by every call before ``wait``: serving, a call pays for nothing more."""
        return not self._released.is_set()

    def arrived(self) -> None:
        """A new call, or a message on an open stream: the clients are not quiet yet."""
        self._arrived.set()

    async def until_quiet(self, quiet_s: float, limit_s: float) -> None:
        """Until nothing has arrived for ``quiet_s`` seconds, ``limit_s`` at most."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        while (left := end - loop.time()) > 0:
            self._arrived.clear()
            try:
                async with asyncio.timeout(min(quiet_s, left)):
                    await self._arrived.wait()
            except TimeoutError:
                return

    def end_streams(self) -> None:
        self._streams_end.set()

    async def streams_end(self) -> None:
        """Until ``end_streams``: a stream reads no more then, and ends once it has answered."""
        await self._streams_end.wait()

    def release(self) -> None:
        self._released.set()

    async def wait(self, time_remaining: float | None) -> None:
        """Until released; a call with a deadline waits half its remaining time at most, so
        that it is answered (UNAVAILABLE) rather than timed out on the client."""
        if self._released.is_set():
            return
        self.arrived()
        try:
            async with asyncio.timeout(None if time_remaining is None else time_remaining / 2):
                await self._released.wait()
        except TimeoutError:
            pass


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What the request deserializer gives for bytes that are not the expected message: the
    guard refuses it (INVALID_ARGUMENT). Raised in gRPC's own deserializer instead, the error
    would end the call as UNKNOWN before any handler ran."""

    expected: str  # the message type's name
    error: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    expected = getattr(descriptor, "name", "request message")

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:  # the bytes are the caller's; any other error is a bug
            return Undecodable(expected, str(exc))

    return deserialize


def _check_decoded(request: Any, rpc: str) -> None:
    if isinstance(request, Undecodable):
        raise errors.InvalidInput(
            f"{rpc}: the request is not a {request.expected} message ({request.error})"
        )


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The stream's messages, until one cannot be parsed: that one raises InvalidInput where
    the handler reads it (the handler answers what it read before, then ends the stream)."""
    number = 0
    async for request in requests:
        number += 1
        if isinstance(request, Undecodable):
            raise errors.InvalidInput(
                f"a stream message is not a {request.expected}: message {number} of the stream "
                f"({request.error})"
            )
        yield request


UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[
    [AsyncIterator[Any], grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]
]


def _guard_unary(behavior: UnaryBehavior, method: str, hold: ShutdownHold) -> UnaryBehavior:
    name = method.rsplit("/", 1)[-1]

    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if hold.holding:
            await hold.wait(context.time_remaining())
        # Every log line of this request carries its id (the request's own, or a new one);
        # the binding lives in this RPC's task context and goes with it.
        request_id = getattr(request, "id", "") or uuid.uuid4().hex[:16]
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            _check_decoded(request, name)
            return await behavior(request, context)
        except grpc.aio.AbortError:
            code = grpc.StatusCode.ABORTED
            raise
        except BaseException as exc:
            if isinstance(exc, CONTROL_EXCEPTIONS):
                raise
            code, message = describe(exc, method)
            await context.abort(code, message)
            raise  # unreachable: abort raises
        finally:
            log.debug(
                "access",
                rpc=name,
                model=getattr(request, "model_name", None) or getattr(request, "name", None),
                code=code.name,
                ms=round((time.perf_counter() - started) * 1000, 3),
            )

    return guarded


def _guard_stream(behavior: StreamBehavior, method: str, hold: ShutdownHold) -> StreamBehavior:
    async def guarded(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        if hold.holding:
            await hold.wait(context.time_remaining())
        try:
            async for response in behavior(_decoded_stream(requests), context):
                yield response
        except grpc.aio.AbortError:
            raise
        except BaseException as exc:
            if isinstance(exc, CONTROL_EXCEPTIONS):
                raise
            await _abort(context, exc, method)

    return guarded


_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the type stubs


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Applies the status table to every RPC of the inference service (wrapped once per method),
    and ``hold`` to each new call."""

    def __init__(self, hold: ShutdownHold | None = None) -> None:
        self._cache: dict[str, Handler] = {}
        self._hold = hold if hold is not None else ShutdownHold()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        method: str = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(_SERVICE_PREFIX):
            return handler
        wrapped = _wrap(handler, method, self._hold)
        self._cache[method] = wrapped
        return wrapped


def _wrap(handler: Handler, method: str, hold: ShutdownHold) -> Handler:
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _guard_unary(handler.unary_unary, method, hold),  # type: ignore[arg-type]
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _guard_stream(handler.stream_stream, method, hold),  # type: ignore[arg-type]
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    return handler
