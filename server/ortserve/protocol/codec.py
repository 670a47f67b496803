"""ModelInferRequest -> InferRequest and InferResponse -> ModelInferResponse, zero-copy inbound."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ortserve.errors import InvalidInput
from ortserve.inference import InferRequest, InferResponse
from ortserve_client._proto import grpc_service_pb2 as pb
from ortserve_client.tensors import (
    TensorError,
    decode_request_inputs,
    encode_raw,
    parameter_value,
)


def parameters_dict(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in params.items()}


def decode_infer_request(request: pb.ModelInferRequest) -> InferRequest:
    try:
        inputs = decode_request_inputs(request)
    except TensorError as exc:
        raise InvalidInput(f"model '{request.model_name}': {exc}") from None
    outputs: list[str] = []
    classification: dict[str, int] = {}
    for requested in request.outputs:
        outputs.append(requested.name)
        if "classification" in requested.parameters:
            count = parameter_value(requested.parameters["classification"])
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise InvalidInput(
                    f"output '{requested.name}': parameter 'classification' must be a positive "
                    f"integer (the top k), got {count!r}"
                )
            classification[requested.name] = count
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=inputs,
        outputs=outputs,
        parameters=parameters_dict(request.parameters),
        classification=classification,
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
