"""One exception root for every failed call, carrying the gRPC status code.

    InferenceServerError            any failed call (``.code``, ``.message``, ``.model``,
                                    ``.request_id`` for a request of a stream)
    ├── InvalidArgumentError        INVALID_ARGUMENT, and bad inputs caught before sending
    ├── NotFoundError               NOT_FOUND: unknown model or version
    ├── ResourceExhaustedError      RESOURCE_EXHAUSTED: the model's queue is full
    ├── DeadlineExceededError       DEADLINE_EXCEEDED: the call's timeout or the queue's passed
    └── UnavailableError            UNAVAILABLE: server or model not ready (retried first)

Example::

    from ortserve_client import Client, NotFoundError
    with Client("127.0.0.1:8001") as client:
        try:
            client.model_metadata("no-such-model")
        except NotFoundError as exc:
            print(exc.code, exc.message)
"""

from __future__ import annotations

import grpc


class InferenceServerError(Exception):
    """A call failed. ``code`` is the ``grpc.StatusCode``; ``model`` names the model, if any;
    ``request_id`` is the id of the streamed request that failed (see ``stream_infer``)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        model: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"[{code.name}] {message}")
        self.code = code
        self.message = message
        self.model = model
        self.request_id = request_id


class InvalidArgumentError(InferenceServerError):
    """The request was malformed (found by the server, or by the client before sending)."""


class NotFoundError(InferenceServerError):
    """No such model or version."""


class ResourceExhaustedError(InferenceServerError):
    """The server refused the request at once: the model's queue is full."""


class DeadlineExceededError(InferenceServerError):
    """The call's deadline, or the model's queue timeout, passed first."""


class UnavailableError(InferenceServerError):
    """The server or the model cannot serve now."""


_BY_CODE: dict[grpc.StatusCode, type[InferenceServerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def error_for(
    code: grpc.StatusCode, message: str, model: str | None = None, request_id: str | None = None
) -> InferenceServerError:
    return _BY_CODE.get(code, InferenceServerError)(code, message, model, request_id)


def from_rpc_error(error: grpc.RpcError, model: str | None = None) -> InferenceServerError:
    """The matching exception for a failed call (sync or asyncio)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return error_for(code, details or code.name, model)


def invalid(message: str, model: str | None = None) -> InvalidArgumentError:
    """A local validation failure, raised before anything is sent."""
    return InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, message, model)
