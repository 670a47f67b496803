"""ModelInferRequest -> InferRequest and InferResponse -> ModelInferResponse, zero-copy inbound."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ortserve.errors import InvalidInput, Unsupported
from ortserve.inference import InferRequest, InferResponse
from ortserve_client._proto import grpc_service_pb2 as pb
from ortserve_client.tensors import TensorError, decode_request_inputs, encode_raw


def parameter_value(param: pb.InferParameter) -> Any:
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def parameters_dict(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in params.items()}


def decode_infer_request(request: pb.ModelInferRequest) -> InferRequest:
    try:
        inputs = decode_request_inputs(request)
    except TensorError as exc:
        raise InvalidInput(f"model '{request.model_name}': {exc}") from None
    outputs: list[str] = []
    for requested in request.outputs:
        if "classification" in requested.parameters:
            raise Unsupported(
                f"output '{requested.name}': the classification extension is not offered "
                "by this daemon"
            )
        outputs.append(requested.name)
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=inputs,
        outputs=outputs,
        parameters=parameters_dict(request.parameters),
    )


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for output in response.outputs:
        message.outputs.add(
            name=output.name, datatype=output.datatype, shape=list(output.array.shape)
        )
        message.raw_output_contents.append(encode_raw(output.array))
    for key, value in response.parameters.items():
        set_parameter(message.parameters[key], value)
    return message


def set_parameter(param: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)
