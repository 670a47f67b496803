"""What the sync and asyncio clients share: building requests, checking them against the model's
metadata, parsing responses, and the channel's options. No I/O here."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from ortserve_client.errors import invalid
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.tensors import (
    DATATYPE_TO_DTYPE,
    Array,
    TensorError,
    datatype_of,
    decode_raw,
    encode_raw,
    parameter_value,
)

InputValue = Array | Sequence[str] | Sequence[bytes]
Inputs = Mapping[str, InputValue]
Parameters = Mapping[str, bool | int | float | str]

MAX_MESSAGE_BYTES = 2**31 - 1
SERVICE = "inference.GRPCInferenceService"
_NOT_RETRIED = ("RepositoryModelLoad", "RepositoryModelUnload")


@dataclass(frozen=True, slots=True)
class InferResult(Mapping[str, Array]):
    """A ModelInfer answer: a read-only mapping of output name to numpy array (BYTES as
    ``np.object_`` of bytes, or of str when asked with ``as_str``), so ``dict(result)``,
    ``result.keys()``, ``len`` and iteration work; plus the version that ran, the id and the
    parameters. ``outputs`` is the same mapping as a plain dict."""

    outputs: dict[str, Array]
    model_name: str
    model_version: str
    id: str
    parameters: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Array:
        return self.outputs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)

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


def to_array(name: str, value: InputValue, model: str | None = None) -> Array:
    """numpy arrays pass through; lists of str/bytes become a BYTES column ``[rows, 1]``;
    anything else that numpy cannot make an array of is InvalidArgumentError naming the input."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (str, bytes)):
        raise invalid(f"input '{name}': give a list of texts, not one string", model)
    try:
        items = list(value)
        if items and all(isinstance(item, (str, bytes)) for item in items):
            out = np.empty((len(items), 1), dtype=np.object_)
            for row, item in enumerate(items):
                out[row, 0] = item.encode() if isinstance(item, str) else item
            return out
        return np.asarray(items)
    except (TypeError, ValueError) as exc:
        raise invalid(
            f"input '{name}': {type(value).__name__} cannot be converted to a tensor ({exc}); "
            "give a numpy array or a list of texts",
            model,
        ) from None


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
        try:
            raw = encode_raw(array)
        except (TypeError, ValueError) as exc:  # e.g. an object array holding non-bytes items
            raise invalid(
                f"input '{name}': cannot be encoded as {datatype} ({exc})", model
            ) from None
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(raw)
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


def split_target(target: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[ipv6]:port"`` as (host, port); ValueError naming the target."""
    example = "give 'host:port', or '[ipv6]:port' for an IPv6 literal"
    if target.startswith("["):
        host, bracket, rest = target[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"target '{target}' is not valid: {example}")
        port_text = rest[1:]
    else:
        host, colon, port_text = target.rpartition(":")
        if not colon or ":" in host:
            raise ValueError(f"target '{target}' is not valid: {example}")
    if not host or any(c.isspace() or c in "/,[]" for c in host):
        raise ValueError(f"target '{target}' is not valid: {example}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"target '{target}' has no valid port (1-65535): {example}")
    return host, int(port_text)


def resolve_target(target: str) -> tuple[list[str], list[str]]:
    """The IPv4 and IPv6 addresses of ``"host:port"``, each as a gRPC address (``1.2.3.4:80``,
    ``[::1]:80``), in the resolver's order without duplicates."""
    host, port = split_target(target)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"target '{target}': cannot resolve host '{host}' ({exc})") from None
    ipv4: list[str] = []
    ipv6: list[str] = []
    for family, _, _, _, sockaddr in found:
        if family == socket.AF_INET:
            address = f"{sockaddr[0]}:{port}"
            if address not in ipv4:
                ipv4.append(address)
        elif family == socket.AF_INET6:
            # A link-local address keeps its zone ("fe80::1%eth0"), percent-encoded in the URI.
            address = "[" + str(sockaddr[0]).replace("%", "%25") + f"]:{port}"
            if address not in ipv6:
                ipv6.append(address)
    if not ipv4 and not ipv6:
        raise ValueError(f"target '{target}': host '{host}' has no IPv4 or IPv6 address")
    return ipv4, ipv6


def balanced_target(targets: Sequence[str]) -> str:
    """Several ``"host:port"`` targets as one gRPC ``ipv4:`` or ``ipv6:`` address list.

    Each host is resolved here, once (gRPC's ``ipv4:``/``ipv6:`` lists take IP literals only, and
    one list cannot mix the two families). The rule: IPv4 when every target has an IPv4 address,
    else IPv6 when every target has an IPv6 address, else ValueError. Every address of a host is
    taken (a host with several records gets each its share), duplicates once.
    """
    resolved = [(target, *resolve_target(target)) for target in targets]
    for family, index in (("ipv4", 1), ("ipv6", 2)):
        if all(entry[index] for entry in resolved):
            addresses: list[str] = []
            for entry in resolved:
                addresses += [a for a in entry[index] if a not in addresses]
            return f"{family}:" + ",".join(addresses)
    only4 = [target for target, _, v6 in resolved if not v6]
    only6 = [target for target, v4, _ in resolved if not v4]
    raise ValueError(
        f"targets {only4} resolve to IPv4 only and {only6} to IPv6 only; one client balances "
        "over one address family: give targets of the same family"
    )


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
    bearer token sent as metadata.

    One target is given to gRPC as it is (any gRPC target: ``host:port``, ``dns:///...``,
    ``unix:...``), resolved by gRPC. Several targets are ``host:port`` or ``[ipv6]:port``, resolved
    here once into one ``ipv4:``/``ipv6:`` list (see ``balanced_target``); ValueError names a
    target that is malformed or cannot be resolved. With TLS and several targets, give
    ``server_name``: the name the servers' certificates carry."""
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise ValueError("give at least one target, e.g. '127.0.0.1:8001'")
    target = targets[0] if len(targets) == 1 else balanced_target(targets)
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
