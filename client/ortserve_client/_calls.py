"""Each client call as data: the RPC to invoke, its request, and how to read its answer.

``Client`` and ``AsyncClient`` differ only in how they wait; both take their calls from here, so
that no call's logic is written twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import json_format

from ortserve_client._base import (
    InferResult,
    Inputs,
    ModelSignature,
    Parameters,
    build_request,
    check_inputs,
    parse_response,
    to_array,
)
from ortserve_client.errors import InferenceServerError, InvalidArgumentError, error_for
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import Array

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    rpc: str  # the method of inference.GRPCInferenceService
    request: Any
    parse: Callable[[Any], T]
    model: str | None = None


def live() -> Call[bool]:
    return Call("ServerLive", pb.ServerLiveRequest(), lambda r: bool(r.live))


def ready() -> Call[bool]:
    return Call("ServerReady", pb.ServerReadyRequest(), lambda r: bool(r.ready))


def model_ready(model: str, version: str | None) -> Call[bool]:
    request = pb.ModelReadyRequest(name=model, version=version or "")
    return Call("ModelReady", request, lambda r: bool(r.ready), model)


def server_metadata() -> Call[pb.ServerMetadataResponse]:
    return Call("ServerMetadata", pb.ServerMetadataRequest(), lambda r: r)


def model_metadata(model: str, version: str | None) -> Call[pb.ModelMetadataResponse]:
    request = pb.ModelMetadataRequest(name=model, version=version or "")
    return Call("ModelMetadata", request, lambda r: r, model)


def model_config(model: str, version: str | None) -> Call[mc.ModelConfig]:
    request = pb.ModelConfigRequest(name=model, version=version or "")
    return Call("ModelConfig", request, lambda r: r.config, model)


def repository_index(ready_only: bool) -> Call[list[pb.RepositoryIndexResponse.ModelIndex]]:
    request = pb.RepositoryIndexRequest(ready=ready_only)
    return Call("RepositoryIndex", request, lambda r: list(r.models))


def load_model(
    model: str, config: Mapping[str, Any] | str | None, files: Mapping[str, bytes] | None
) -> Call[None]:
    request = pb.RepositoryModelLoadRequest(model_name=model)
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(dict(config))
        request.parameters["config"].string_param = text
    for path, data in (files or {}).items():
        key = path if path.startswith("file:") else f"file:{path}"
        request.parameters[key].bytes_param = data
    return Call("RepositoryModelLoad", request, lambda r: None, model)


def unload_model(model: str, unload_dependents: bool) -> Call[None]:
    request = pb.RepositoryModelUnloadRequest(model_name=model)
    request.parameters["unload_dependents"].bool_param = unload_dependents
    return Call("RepositoryModelUnload", request, lambda r: None, model)


def statistics(model: str, version: str | None) -> Call[pb.ModelStatisticsResponse]:
    request = pb.ModelStatisticsRequest(name=model, version=version or "")
    return Call("ModelStatistics", request, lambda r: r, model or None)


@dataclass(frozen=True, slots=True)
class InferOptions:
    version: str | None = None
    outputs: Sequence[str] | None = None
    priority: int | None = None
    request_id: str | None = None
    parameters: Parameters | None = None
    queue_timeout_us: int | None = None
    class_counts: Mapping[str, int] | None = None
    as_str: bool = False


def input_arrays(inputs: Inputs, model: str | None = None) -> dict[str, Array]:
    return {name: to_array(name, value, model) for name, value in inputs.items()}


class Signatures:
    """The model signatures a client caches to check inputs locally, by (model, version).

    A cached signature can go stale: a hot reload may serve a new version whose inputs differ.
    So inputs that the cached signature refuses are not refused at once: the caller fetches the
    metadata again and checks once more against it (``check_fetched``). Both clients follow::

        arrays = input_arrays(inputs)
        if signatures.needs_fetch(model, version, arrays):
            signatures.check_fetched(model, version, arrays, <ModelMetadata, awaited or not>)
    """

    def __init__(self, validate: bool) -> None:
        self.validate = validate
        self._cached: dict[tuple[str, str], ModelSignature] = {}

    def needs_fetch(self, model: str, version: str | None, arrays: Mapping[str, Array]) -> bool:
        """False when validation is off or the cached signature accepts the arrays; True when
        nothing is cached or the cached signature refuses them (it may be stale)."""
        if not self.validate:
            return False
        signature = self._cached.get((model, version or ""))
        if signature is None:
            return True
        try:
            check_inputs(model, arrays, signature)
        except InvalidArgumentError:
            return True
        return False

    def check_fetched(
        self,
        model: str,
        version: str | None,
        arrays: Mapping[str, Array],
        metadata: pb.ModelMetadataResponse,
    ) -> None:
        """Cache the freshly fetched signature and check the arrays against it: the local
        InvalidArgumentError is raised only now, against the server's current signature."""
        signature = ModelSignature.from_metadata(metadata)
        self._cached[(model, version or "")] = signature
        check_inputs(model, arrays, signature)

    def drop(self, model: str, version: str | None = None) -> None:
        """Forget one (model, version), or with no version every version of the model."""
        if version is None:
            for key in [key for key in self._cached if key[0] == model]:
                del self._cached[key]
        else:
            self._cached.pop((model, version), None)


def infer_request(
    model: str, arrays: Mapping[str, Array], options: InferOptions
) -> pb.ModelInferRequest:
    """A ModelInferRequest for arrays already checked (or not to be checked)."""
    return build_request(
        model,
        arrays,
        version=options.version or "",
        outputs=options.outputs,
        request_id=options.request_id or "",
        priority=options.priority,
        queue_timeout_us=options.queue_timeout_us,
        parameters=options.parameters,
        class_counts=options.class_counts,
    )


def infer(request: pb.ModelInferRequest, as_str: bool) -> Call[InferResult]:
    return Call("ModelInfer", request, lambda r: parse_response(r, as_str), request.model_name)


def config_json(config: mc.ModelConfig) -> str:
    """A model config as the JSON that ``load_model(config=...)`` takes."""
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


# -- ModelStreamInfer ------------------------------------------------------------------------
#
# Both clients run a stream the same way: their request generator checks each request (as
# ``infer`` does) and either sends it with the id ``stream_id(index)`` (event ``Sent``) or keeps
# its error (``Refused``), then says ``RequestsEnded``; a reader puts each answer (``Answered``)
# and then ``StreamEnded``. Every event goes, in the order it happened, through one queue into
# ``StreamResults``, which matches answers to requests by id and gives results in request order.

StreamItem = InferResult | InferenceServerError


def stream_id(index: int) -> str:
    """The id a streamed request is sent with, that its result carries: its index, as text."""
    return str(index)


def stream_request(index: int, model: str, arrays: Mapping[str, Array]) -> pb.ModelInferRequest:
    return infer_request(model, arrays, InferOptions(request_id=stream_id(index)))


@dataclass(frozen=True, slots=True)
class Sent:
    """Request ``index`` was checked and sent."""

    index: int


@dataclass(frozen=True, slots=True)
class Refused:
    """Request ``index`` failed before it could be sent (its inputs, or its model's metadata)."""

    index: int
    error: InferenceServerError


@dataclass(frozen=True, slots=True)
class RequestsEnded:
    """The caller's requests ran out; ``error``: what iterating them raised, if anything."""

    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Answered:
    response: pb.ModelStreamInferResponse


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The server closed the stream; ``error``: the RPC failed."""

    error: InferenceServerError | None = None


StreamEvent = Sent | Refused | RequestsEnded | Answered | StreamEnded


class StreamResults:
    """One stream's results, in request order, whatever order the server answers in.

    Fed every event as it happens, ``add`` returns the results that are next in request order
    (buffering the others). Once ``done``, every request taken from the caller has had its
    result, and ``error`` is what the stream should raise then (None: it ended well). A request
    the server never answered gets the stream's error (or UNKNOWN when it ended without one)."""

    def __init__(self, as_str: bool, signatures: Signatures) -> None:
        self._as_str = as_str
        self._signatures = signatures
        self._results: dict[int, StreamItem] = {}
        self._next = 0  # the index of the next result to give
        self._taken = 0  # requests taken from the caller so far
        self._requests_ended = False
        self._requests_error: BaseException | None = None
        self._stream_error: InferenceServerError | None = None
        self.done = False

    @property
    def error(self) -> BaseException | None:
        return self._requests_error or self._stream_error

    def add(self, event: StreamEvent) -> list[StreamItem]:
        if isinstance(event, Sent):
            self._taken = event.index + 1
        elif isinstance(event, Refused):
            self._taken = event.index + 1
            self._results[event.index] = with_request_id(event.error, event.index)
        elif isinstance(event, Answered):
            self._answered(event.response)
        elif isinstance(event, RequestsEnded):
            self._requests_ended = True
            self._requests_error = event.error
        else:
            self._ended(event.error)
        ready: list[StreamItem] = []
        while self._next in self._results:
            ready.append(self._results.pop(self._next))
            self._next += 1
        return ready

    def _answered(self, response: pb.ModelStreamInferResponse) -> None:
        answer = response.infer_response
        index = int(answer.id) if answer.id.isascii() and answer.id.isdigit() else -1
        if not self._next <= index < self._taken or index in self._results:
            return  # not an id this stream sent, or answered already: nothing to match it to
        if response.error_message:
            code, message = stream_error(response.error_message)
            model = answer.model_name or None
            self._results[index] = error_for(code, message, model, answer.id)
            if code == grpc.StatusCode.INVALID_ARGUMENT and model:
                self._signatures.drop(model, "")  # as infer does: a new version may differ
        else:
            self._results[index] = parse_response(answer, self._as_str)

    def _ended(self, error: InferenceServerError | None) -> None:
        self.done = True
        self._stream_error = error
        if error is None and not self._requests_ended:
            self._stream_error = error = InferenceServerError(
                grpc.StatusCode.UNKNOWN, "the server ended the stream before reading every request"
            )
        for index in range(self._next, self._taken):
            if index not in self._results:
                if error is None:
                    code, message = grpc.StatusCode.UNKNOWN, "the stream ended with no answer"
                else:
                    code, message = error.code, error.message
                self._results[index] = error_for(code, message, None, stream_id(index))


def with_request_id(error: InferenceServerError, index: int) -> InferenceServerError:
    error.request_id = stream_id(index)
    return error


def stream_error(text: str) -> tuple[grpc.StatusCode, str]:
    """A stream answer's error travels as text "[CODE] message": its code and its message (the
    prefix taken off). Text without a known code is UNKNOWN, kept whole."""
    if text.startswith("["):
        name, bracket, rest = text[1:].partition("]")
        code = next((c for c in grpc.StatusCode if c.name == name), None)
        if bracket and code is not None:
            return code, rest.strip() or code.name
    return grpc.StatusCode.UNKNOWN, text
