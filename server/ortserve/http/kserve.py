"""KServe v2 REST as Triton serves it, so that ``tritonclient.http`` and ``perf_analyzer -i http``
work unchanged: health, metadata, config, statistics, repository control and inference (JSON
tensors and the binary tensor data extension). Errors are ``{"error": "..."}`` with the status
from the one table (``errors.http_status``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ortserve.errors import Disabled, InvalidInput, Unsupported, shown
from ortserve.http import errors
from ortserve.http.binary import HEADER_LENGTH, BinaryReader, join_body, split_body
from ortserve.http.json_tensors import (
    decode_binary_input,
    decode_json_input,
    output_json,
    tensor_header,
)
from ortserve.http.server import HttpContext, request_timeout_s
from ortserve.inference import InferRequest, InferResponse
from ortserve.protocol import metadata
from ortserve.protocol.servicer import EXTENSIONS, REPOSITORY_EXTENSIONS
from ortserve.protocol.status import CONTROL_EXCEPTIONS
from ortserve_client.tensors import DecodedTensor, encode_raw

Endpoint = Callable[[Request], Awaitable[Response]]
#: Extensions only the HTTP front has.
HTTP_EXTENSIONS = ("binary_tensor_data",)
#: Bodies larger than this are parsed in a worker thread, off the loop that serves every call.
OFF_LOOP_BYTES = 1 << 20
_JSON = "application/json"


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(body, status, headers=headers, media_type=_JSON)


def error_response(exc: BaseException, route: str) -> Response:
    status = errors.http_status(exc)
    return json_response(
        {"error": errors.message(exc, route)}, status, errors.retry_headers(status)
    )


def _guarded(endpoint: Endpoint) -> Endpoint:
    """Every domain error (and every bug) answered as KServe's ``{"error": ...}``."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except BaseException as exc:
            if isinstance(exc, CONTROL_EXCEPTIONS):
                raise
            return error_response(exc, request.url.path)

    guarded.__name__ = endpoint.__name__
    return guarded


def _model_route(path: str, endpoint: Endpoint, methods: list[str]) -> list[BaseRoute]:
    """The route with and without ``/versions/{version}``."""
    guarded = _guarded(endpoint)
    return [
        Route(f"/v2/models/{{model}}{path}", guarded, methods=methods, name=endpoint.__name__),
        Route(
            f"/v2/models/{{model}}/versions/{{version}}{path}",
            guarded,
            methods=methods,
            name=endpoint.__name__ + "_version",
        ),
    ]


def kserve_routes(ctx: HttpContext) -> list[BaseRoute]:
    api = KServe(ctx)
    routes: list[BaseRoute] = [
        Route("/v2/health/live", api.live, methods=["GET"]),
        Route("/v2/health/ready", api.ready, methods=["GET"]),
        Route("/v2", _guarded(api.server_metadata), methods=["GET"]),
        Route("/v2/models/stats", _guarded(api.statistics), methods=["GET"]),
        Route("/v2/repository/index", _guarded(api.index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", _guarded(api.load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", _guarded(api.unload), methods=["POST"]),
    ]
    routes += _model_route("/infer", api.infer, ["POST"])
    routes += _model_route("/ready", api.model_ready, ["GET"])
    routes += _model_route("/config", api.config, ["GET"])
    routes += _model_route("/stats", api.statistics, ["GET"])
    routes += _model_route("", api.model_metadata, ["GET"])
    return routes


def _target(request: Request) -> tuple[str, str]:
    return request.path_params.get("model", ""), request.path_params.get("version", "")


class KServe:
    """The endpoints, over the daemon's shared components (``HttpContext``)."""

    def __init__(self, ctx: HttpContext) -> None:
        self._ctx = ctx
        control = ctx.control_hint is None
        self._extensions = EXTENSIONS + HTTP_EXTENSIONS + (REPOSITORY_EXTENSIONS if control else ())

    async def live(self, request: Request) -> Response:
        return Response(status_code=200 if self._ctx.state.live else 503)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self._ctx.state.ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(
            {"name": metadata.SERVER_NAME, "version": self._ctx.version,
             "extensions": list(self._extensions)}
        )  # fmt: skip

    async def model_ready(self, request: Request) -> Response:
        ready = self._ctx.registry.is_ready(*_target(request))
        return Response(status_code=200 if ready else 503)

    async def model_metadata(self, request: Request) -> Response:
        name, version = _target(request)
        served = self._ctx.registry.resolve(name, version)
        message = metadata.model_metadata(served, self._ctx.registry.entry(name).versions)
        return json_response(
            {
                "name": message.name,
                "versions": list(message.versions),
                "platform": message.platform,
                "inputs": [_tensor_meta(t) for t in message.inputs],
                "outputs": [_tensor_meta(t) for t in message.outputs],
            }
        )

    async def config(self, request: Request) -> Response:
        config = self._ctx.registry.resolve(*_target(request)).config
        return json_response(_as_dict(config))

    async def statistics(self, request: Request) -> Response:
        stats = metadata.model_statistics(self._ctx.registry.served(*_target(request)))
        return json_response(_numbers(_as_dict(stats)))

    async def index(self, request: Request) -> Response:
        body = await _json_body(request, allow_empty=True)
        if body.get("repository_name"):
            raise Unsupported("this daemon serves one repository; leave repository_name empty")
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput("'ready' must be a boolean")
        rows = metadata.repository_index(self._ctx.registry.index(), ready)
        return json_response(
            [
                {"name": r.name, "version": r.version, "state": r.state, "reason": r.reason}
                for r in rows.models
            ]
        )

    async def load(self, request: Request) -> Response:
        self._check_control()
        body = await _json_body(request, allow_empty=True)
        config, files = _load_parameters(body.get("parameters") or {})
        await self._ctx.registry.load(request.path_params["model"], config, files)
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        self._check_control()
        await _json_body(request, allow_empty=True)
        await self._ctx.registry.unload(request.path_params["model"])
        return Response(status_code=200)

    def _check_control(self) -> None:
        if self._ctx.control_hint is not None:
            raise Disabled(self._ctx.control_hint)

    async def infer(self, request: Request) -> Response:
        # The model first: a request to an unknown model is answered before its body is parsed.
        name, version = _target(request)
        inference = self._ctx.inference
        inference.check_target(name, version)
        timeout_s = request_timeout_s(request)
        body = await request.body()
        header_length = request.headers.get(HEADER_LENGTH)
        try:
            if len(body) > OFF_LOOP_BYTES:
                parsed = await asyncio.to_thread(parse_infer, name, version, body, header_length)
            else:
                parsed = parse_infer(name, version, body, header_length)
        except InvalidInput as exc:
            raise inference.undecodable(name, exc) from None
        decoded, binary = parsed
        decoded.timeout_s = timeout_s
        answer = await inference.infer(decoded)
        content, json_length = encode_infer(answer, binary)
        headers = (
            {} if json_length is None else {"Inference-Header-Content-Length": str(json_length)}
        )
        media = _JSON if json_length is None else "application/octet-stream"
        return Response(content, 200, headers=headers, media_type=media)


class BinaryOutputs:
    """Which outputs an answer carries as binary data."""

    def __init__(self, default: bool, chosen: dict[str, bool]) -> None:
        self.default = default
        self.chosen = chosen

    def __call__(self, name: str) -> bool:
        return self.chosen.get(name, self.default)


def parse_infer(
    name: str, version: str, body: bytes, header_length: str | None
) -> tuple[InferRequest, BinaryOutputs]:
    """A KServe v2 infer request body -> the data plane's request (InvalidInput names the field)."""
    document, rest = split_body(body, header_length)
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    reader = BinaryReader(rest)
    inputs: list[DecodedTensor] = []
    for index, entry in enumerate(raw_inputs):
        tensor_name, datatype, shape, params = tensor_header(entry, index)
        if "binary_data_size" in params:
            raw = reader.take(tensor_name, params["binary_data_size"])
            inputs.append(decode_binary_input(tensor_name, datatype, shape, raw))
        else:
            inputs.append(decode_json_input(tensor_name, datatype, shape, entry.get("data")))
    reader.check_consumed()
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    parameters = dict(parameters)
    default_binary = parameters.pop("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise InvalidInput("parameter 'binary_data_output' must be a boolean")
    outputs, classification, chosen = _requested_outputs(document.get("outputs") or [])
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    request = InferRequest(
        model_name=name,
        model_version=version,
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        parameters=parameters,
        classification=classification,
    )
    return request, BinaryOutputs(default_binary, chosen)


def _requested_outputs(raw: Any) -> tuple[list[str], dict[str, int], dict[str, bool]]:
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list")
    names: list[str] = []
    classification: dict[str, int] = {}
    binary: dict[str, bool] = {}
    for index, entry in enumerate(raw):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"outputs[{index}].name must be a non-empty string")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"output '{name}': parameters must be an object")
        names.append(name)
        if "binary_data" in params:
            if not isinstance(params["binary_data"], bool):
                raise InvalidInput(f"output '{name}': parameter 'binary_data' must be a boolean")
            binary[name] = params["binary_data"]
        if "classification" in params:
            count = params["classification"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise InvalidInput(
                    f"output '{name}': parameter 'classification' must be a positive integer "
                    f"(the top k), got {count!r}"
                )
            classification[name] = count
    return names, classification, binary


def encode_infer(answer: InferResponse, binary: BinaryOutputs) -> tuple[bytes, int | None]:
    """The answer's body (JSON, then any binary outputs) and its JSON length (None: JSON only)."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for out in answer.outputs:
        if binary(out.name):
            raw = encode_raw(out.array)
            chunks.append(raw)
            outputs.append(
                {"name": out.name, "datatype": out.datatype, "shape": list(out.array.shape),
                 "parameters": {"binary_data_size": len(raw)}}
            )  # fmt: skip
        else:
            outputs.append(output_json(out.name, out.datatype, out.array))
    header: dict[str, Any] = {
        "model_name": answer.model_name,
        "model_version": answer.model_version,
        "outputs": outputs,
    }
    if answer.id:
        header["id"] = answer.id
    if answer.parameters:
        header["parameters"] = answer.parameters
    return join_body(header, chunks)


async def _json_body(request: Request, *, allow_empty: bool) -> dict[str, Any]:
    body = await request.body()
    if not body.strip() and allow_empty:
        return {}
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"the request body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object")
    return document


def _load_parameters(parameters: Any) -> tuple[str | None, dict[str, bytes]]:
    """``config`` (JSON text) and ``file:<path>`` (base64) as over gRPC's RepositoryModelLoad."""
    if not isinstance(parameters, dict):
        raise InvalidInput("load: 'parameters' must be an object")
    config: str | None = None
    files: dict[str, bytes] = {}
    for key, value in parameters.items():
        if key == "config":
            if not isinstance(value, str):
                raise InvalidInput("load: parameter 'config' must be a string (JSON)")
            config = value
        elif key.startswith("file:"):
            try:
                files[key.removeprefix("file:")] = base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise InvalidInput(f"load: parameter {shown(key)} must be base64") from None
        else:
            raise InvalidInput(f"load: unknown parameter {shown(key)}")
    return config, files


def _tensor_meta(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


def _as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


#: Statistics fields protobuf's JSON writes as strings (64-bit), written as numbers as Triton does.
_COUNTS = frozenset(
    {"count", "ns", "last_inference", "inference_count", "execution_count", "batch_size"}
)


def _numbers(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v, key) for v in value]
    if key in _COUNTS and isinstance(value, str) and value.isdigit():
        return int(value)
    return value
