"""What the sync and asyncio clients share: building requests, checking them against the model's
metadata, parsing responses, and the channel's options. No I/O here."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from ortserve_client._proto import grpc_service_pb2 as pb
from ortserve_client.errors import invalid
from ortserve_client.tensors import (
    DATATYPE_TO_DTYPE,
    TensorError,
    datatype_of,
    decode_raw,
    encode_raw,
    parameter_value,
)

Array = npt.NDArray[Any]
InputValue = Array | Sequence[str] | Sequence[bytes]
Inputs = Mapping[str, InputValue]
Parameters = Mapping[str, bool | int | float | str]

MAX_MESSAGE_BYTES = 2**31 - 1
SERVICE = "inference.GRPCInferenceService"
_NOT_RETRIED = ("RepositoryModelLoad", "RepositoryModelUnload")


@dataclass(frozen=True, slots=True)
class InferResult:
    """A ModelInfer answer: outputs by name as numpy arrays (BYTES as ``np.object_`` of bytes,
    or of str when asked with ``as_str``), the version that ran, the id and the parameters."""

    outputs: dict[str, Array]
    model_name: str
    model_version: str
    id: str
    parameters: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Array:
        return self.outputs[name]

    def __contains__(self, name: object) -> bool:
        return name in self.outputs


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for any size


@dataclass(frozen=True, slots=True)
class ModelSignature:
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    @classmethod
    def from_metadata(cls, meta: pb.ModelMetadataResponse) -> ModelSignature:
        def specs(
            tensors: Sequence[pb.ModelMetadataResponse.TensorMetadata],
        ) -> dict[str, TensorSpec]:
            return {t.name: TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in tensors}

        return cls(specs(meta.inputs), specs(meta.outputs))


def to_array(name: str, value: InputValue) -> Array:
    """numpy arrays pass through; lists of str/bytes become a BYTES column ``[rows, 1]``."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (str, bytes)):
        raise invalid(f"input '{name}': give a list of texts, not one string")
    items = list(value)
    if items and all(isinstance(item, (str, bytes)) for item in items):
        out = np.empty((len(items), 1), dtype=np.object_)
        for row, item in enumerate(items):
            out[row, 0] = item.encode() if isinstance(item, str) else item
        return out
    return np.asarray(items)


def check_inputs(model: str, arrays: Mapping[str, Array], signature: ModelSignature | None) -> None:
    """Datatype and shape checked locally against the model's metadata, before sending."""
    if signature is None:
        return
    for name, array in arrays.items():
        spec = signature.inputs.get(name)
        if spec is None:
            known = ", ".join(signature.inputs)
            raise invalid(f"model '{model}' has no input '{name}' (inputs: {known})", model)
        try:
            got = datatype_of(array)
        except TensorError as exc:
            raise invalid(f"input '{name}': {exc}", model) from None
        if got != spec.datatype:
            raise invalid(
                f"input '{name}': numpy dtype {array.dtype} is {got}, model '{model}' "
                f"expects {spec.datatype} ({DATATYPE_TO_DTYPE[spec.datatype]})",
                model,
            )
        shape = array.shape
        if len(shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
        ):
            raise invalid(
                f"input '{name}': shape {list(shape)} does not match model '{model}', which "
                f"expects {list(spec.shape)} (-1 = any size)",
                model,
            )


def set_parameter(param: pb.InferParameter, value: bool | int | float | str) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        if value >= 0:
            param.uint64_param = value  # as tritonclient sends priority and timeout
        else:
            param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


def build_request(
    model: str,
    arrays: Mapping[str, Array],
    *,
    version: str = "",
    outputs: Sequence[str] | None = None,
    request_id: str = "",
    priority: int | None = None,
    queue_timeout_us: int | None = None,
    parameters: Parameters | None = None,
    class_counts: Mapping[str, int] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest with every input as raw contents."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in arrays.items():
        try:
            datatype = datatype_of(array)
        except TensorError as exc:
            raise invalid(f"input '{name}': {exc}", model) from None
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(encode_raw(array))
    for name in outputs or ():
        requested = request.outputs.add(name=name)
        if class_counts and name in class_counts:
            requested.parameters["classification"].int64_param = class_counts[name]
    for key, value in (parameters or {}).items():
        set_parameter(request.parameters[key], value)
    if priority is not None:
        request.parameters["priority"].uint64_param = priority
    if queue_timeout_us is not None:
        request.parameters["timeout"].uint64_param = queue_timeout_us
    return request


def parse_response(response: pb.ModelInferResponse, as_str: bool = False) -> InferResult:
    outputs: dict[str, Array] = {}
    raw = response.raw_output_contents
    for index, tensor in enumerate(response.outputs):
        shape = list(tensor.shape)
        if index < len(raw):
            array = decode_raw(tensor.name, tensor.datatype, shape, raw[index])
        else:
            raise invalid(f"output '{tensor.name}' came without raw contents", response.model_name)
        if as_str and tensor.datatype == "BYTES":
            array = np.vectorize(lambda b: b.decode("utf-8"), otypes=[np.object_])(array)
        outputs[tensor.name] = array
    return InferResult(
        outputs=outputs,
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        parameters={k: parameter_value(v) for k, v in response.parameters.items()},
    )


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """Everything about the connection, shared by Client and AsyncClient."""

    target: str
    options: list[tuple[str, Any]]
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...]


def channel_settings(
    targets: str | Sequence[str],
    *,
    root_certificates: bytes | None = None,
    certificate_chain: bytes | None = None,
    private_key: bytes | None = None,
    tls: bool = False,
    token: str | None = None,
    retries: int = 4,
    keepalive_s: float | None = 30.0,
    server_name: str | None = None,
) -> ChannelSettings:
    """One target, or several behind gRPC's own round_robin balancer; UNAVAILABLE retried with
    backoff by gRPC's retry policy (at most 4 retries: gRPC caps attempts at 5); TLS/mTLS; a
    bearer token sent as metadata."""
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise ValueError("give at least one target, e.g. '127.0.0.1:8001'")
    target = targets[0] if len(targets) == 1 else "ipv4:" + ",".join(targets)
    methods: list[dict[str, Any]] = []
    if retries > 0:
        policy = {
            "maxAttempts": min(retries, 4) + 1,  # gRPC caps attempts at 5
            "initialBackoff": "0.2s",
            "maxBackoff": "3s",
            "backoffMultiplier": 3,
            # Every call but load/unload is idempotent (inference has no side effects), so a
            # call that a stopping server cancelled before running it is safe to send again.
            "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
        }
        methods.append({"name": [{"service": SERVICE}], "retryPolicy": policy})
        methods.append({"name": [{"service": SERVICE, "method": m} for m in _NOT_RETRIED]})
    service_config = {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": methods}
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.enable_retries", 1 if retries > 0 else 0),
        # Reconnect quickly after a server restart, so that retries find it back.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if keepalive_s:
        options += [
            ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 0),
        ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    credentials = None
    if tls or root_certificates or certificate_chain:
        credentials = grpc.ssl_channel_credentials(
            root_certificates, private_key, certificate_chain
        )
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return ChannelSettings(target, options, credentials, metadata)
