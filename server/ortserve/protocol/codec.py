"""ModelInferRequest -> InferRequest and InferResponse -> ModelInferResponse, zero-copy inbound.

Fixed-size raw contents decode in O(1) (a numpy view over the request's bytes); BYTES elements and
typed ``contents`` cost a Python object or a conversion per element, so a request with many of them
is decoded (and an answer with many BYTES elements encoded) in a worker thread, off the event loop
that answers every other call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ortserve.errors import InvalidInput
from ortserve.inference import InferRequest, InferResponse
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.tensors import (
    TensorError,
    decode_request_inputs,
    element_count,
    encode_raw,
    parameter_value,
)

#: The most elements one BYTES tensor of a request may declare (INVALID_ARGUMENT beyond it,
#: before anything is decoded). Decoding costs a Python object per element: ~0.5 s at this count.
MAX_BYTES_ELEMENTS = 2**20
#: The response parameter that flags a decoupled model's last response of a request (Triton's).
FINAL_RESPONSE = "triton_final_response"
#: Requests (and answers) with more per-element work than this are converted in a worker thread;
#: smaller ones stay on the loop, where a thread hop would cost more than the work.
OFF_LOOP_ELEMENTS = 16_384


def parameters_dict(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in params.items()}


async def decode_infer_request_async(request: pb.ModelInferRequest) -> InferRequest:
    """``decode_infer_request``, in a worker thread when the request has many elements."""
    if _decode_work(request) > OFF_LOOP_ELEMENTS:
        return await asyncio.to_thread(decode_infer_request, request)
    return decode_infer_request(request)


async def encode_infer_response_async(response: InferResponse) -> pb.ModelInferResponse:
    """``encode_infer_response``, in a worker thread when its BYTES outputs are large."""
    work = sum(out.array.size for out in response.outputs if out.array.dtype.kind in "OSU")
    if work > OFF_LOOP_ELEMENTS:
        return await asyncio.to_thread(encode_infer_response, response)
    return encode_infer_response(response)


def _decode_work(request: pb.ModelInferRequest) -> int:
    """Elements whose decoding is per element (BYTES, typed contents), from the declared shapes
    (the decoder checks that the payload matches them)."""
    raw = bool(request.raw_input_contents)
    return sum(
        element_count([max(dim, 0) for dim in tensor.shape])
        for tensor in request.inputs
        if tensor.datatype == "BYTES" or not raw
    )


def decode_infer_request(request: pb.ModelInferRequest) -> InferRequest:
    try:
        inputs = decode_request_inputs(request, max_bytes_elements=MAX_BYTES_ELEMENTS)
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
    if response.final is not None:  # a decoupled model's response: Triton's flag on every one
        message.parameters[FINAL_RESPONSE].bool_param = response.final
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
