"""Bearer-token authentication: one server interceptor for every RPC but health checks.

The token is read once from ``--auth-token-file`` (one token a line; several allow rotation) and
never logged. Callers send ``authorization: Bearer <token>`` metadata; anything else is
UNAUTHENTICATED. ``grpc.health.v1`` stays open so that load balancers and probes need no secret.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_OPEN_PREFIX = "/grpc.health.v1.Health/"
_DENIED = "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'"


def read_tokens(path: Path) -> list[str]:
    # utf-8-sig: an editor's byte-order mark must not become part of the first token.
    tokens = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    tokens = [token for token in tokens if token and not token.startswith("#")]
    if not tokens:
        raise ValueError(f"{path}: no token in it (one token a line)")
    return tokens


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [token.encode() for token in tokens]

    def _allowed(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key != "authorization":
                continue
            raw = value.encode() if isinstance(value, str) else value
            scheme, _, token = raw.partition(b" ")
            if scheme.lower() == b"bearer" and any(
                hmac.compare_digest(token.strip(), known) for known in self._tokens
            ):
                return True
        return False

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_OPEN_PREFIX):
            return handler
        if self._allowed(handler_call_details.invocation_metadata):
            return handler
        denied: grpc.RpcMethodHandler[_Req, _Resp] = _deny(handler)
        return denied


async def _refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)


async def _refuse_stream(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)
    yield None  # pragma: no cover - makes this a stream handler


def _deny(handler: Any) -> Any:
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _refuse_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        _refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
