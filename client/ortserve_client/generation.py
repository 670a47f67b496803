"""Text generation helpers: a prompt in, the generated text out (whole, or as it is made).

They follow Triton's vLLM-backend protocol, which ortserve's generation models speak: inputs
``text_input``, ``stream``, ``sampling_parameters`` (JSON), ``exclude_input_in_output``; outputs
``text_output``, ``finish_reason``, ``num_input_tokens``, ``num_output_tokens``; a streamed
response carries the response parameter ``triton_final_response`` (true on the last).
``Client`` and ``AsyncClient`` expose them as ``generate`` and ``generate_stream``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ortserve_client._base import InferResult, parse_response
from ortserve_client._calls import stream_error
from ortserve_client.errors import error_for, invalid
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.tensors import Array

#: The sampling parameters a generation request may set (vLLM's names and meanings).
SAMPLING_KEYS = ("max_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed",
                 "stop", "ignore_eos")  # fmt: skip
FINAL_RESPONSE = "triton_final_response"


@dataclass(frozen=True, slots=True)
class Generation:
    """A finished generation: the generated text (without the prompt), why it ended
    (``length``, ``stop``, ``eos``) and the token counts."""

    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int


def generation_inputs(
    prompt: str, stream: bool, sampling: Mapping[str, Any], model: str | None = None
) -> dict[str, Array]:
    """A generation request's tensors; unknown sampling keys are refused before sending."""
    if not isinstance(prompt, str) or not prompt:
        raise invalid("give the prompt as a non-empty string", model)
    unknown = sorted(key for key in sampling if key not in SAMPLING_KEYS)
    if unknown:
        raise invalid(
            f"unknown sampling parameter '{unknown[0]}' (accepted: {', '.join(SAMPLING_KEYS)})",
            model,
        )
    try:
        encoded = json.dumps(dict(sampling)).encode()
    except (TypeError, ValueError) as exc:
        raise invalid(f"sampling parameters cannot be sent as JSON: {exc}", model) from None
    return {
        "text_input": _bytes(prompt.encode()),
        "stream": np.array([stream]),
        "sampling_parameters": _bytes(encoded),
        "exclude_input_in_output": np.array([True]),
    }


def _bytes(data: bytes) -> Array:
    array = np.empty(1, dtype=np.object_)
    array[0] = data
    return array


def _text(array: Array) -> str:
    item = array.reshape(-1)[0]
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def generation(result: InferResult) -> Generation:
    """A non-streamed answer as a ``Generation``."""
    return Generation(
        text=_text(result["text_output"]),
        finish_reason=_text(result["finish_reason"]),
        input_tokens=int(result["num_input_tokens"].reshape(-1)[0]),
        output_tokens=int(result["num_output_tokens"].reshape(-1)[0]),
    )


def stream_text(response: pb.ModelStreamInferResponse, model: str) -> tuple[str, bool]:
    """One streamed response: its new text and whether it is the last. An ``error_message``
    is raised as the matching ``InferenceServerError``."""
    answer = response.infer_response
    if response.error_message:
        code, message = stream_error(response.error_message)
        raise error_for(code, message, model, answer.id or None)
    result = parse_response(answer)
    text = _text(result["text_output"]) if "text_output" in result else ""
    final = answer.parameters.get(FINAL_RESPONSE)
    return text, final is not None and final.bool_param
