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
    Array,
    InferResult,
    Inputs,
    ModelSignature,
    Parameters,
    build_request,
    check_inputs,
    parse_response,
    to_array,
)
from ortserve_client._proto import grpc_service_pb2 as pb
from ortserve_client._proto import model_config_pb2 as mc
from ortserve_client.errors import InferenceServerError, InvalidArgumentError, error_for

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


def input_arrays(inputs: Inputs) -> dict[str, Array]:
    return {name: to_array(name, value) for name, value in inputs.items()}


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


def stream_result(
    response: pb.ModelStreamInferResponse, as_str: bool
) -> InferResult | InferenceServerError:
    if response.error_message:
        code = code_in(response.error_message)
        return error_for(code, response.error_message, response.infer_response.model_name or None)
    return parse_response(response.infer_response, as_str)


def code_in(message: str) -> grpc.StatusCode:
    """Stream errors travel as text "[CODE] message"; recover the code when it is there."""
    if message.startswith("["):
        name = message[1 : message.find("]")]
        for code in grpc.StatusCode:
            if code.name == name:
                return code
    return grpc.StatusCode.UNKNOWN
