"""The one table from domain errors to gRPC status codes, applied to every RPC by an interceptor.

Domain errors carry their message to the caller as they are. Anything else is a bug: it is
logged with its traceback and an error id, and the caller gets INTERNAL with that id only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
import structlog

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


UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[
    [AsyncIterator[Any], grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]
]


def _guard_unary(behavior: UnaryBehavior, method: str) -> UnaryBehavior:
    name = method.rsplit("/", 1)[-1]

    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # Every log line of this request carries its id (the request's own, or a new one);
        # the binding lives in this RPC's task context and goes with it.
        request_id = getattr(request, "id", "") or uuid.uuid4().hex[:16]
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
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


def _guard_stream(behavior: StreamBehavior, method: str) -> StreamBehavior:
    async def guarded(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for response in behavior(requests, context):
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
    """Applies the status table to every RPC of the inference service (wrapped once per method)."""

    def __init__(self) -> None:
        self._cache: dict[str, Handler] = {}

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
        wrapped = _wrap(handler, method)
        self._cache[method] = wrapped
        return wrapped


def _wrap(handler: Handler, method: str) -> Handler:
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _guard_unary(handler.unary_unary, method),  # type: ignore[arg-type]
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _guard_stream(handler.stream_stream, method),  # type: ignore[arg-type]
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler
