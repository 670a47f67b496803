"""The client's generation helpers without a server: the request they build and how they read
answers (the calls themselves run against a daemon in tests/integration/test_generation.py)."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from ortserve_client import Generation, InvalidArgumentError, ResourceExhaustedError
from ortserve_client._base import InferResult
from ortserve_client.generation import generation, generation_inputs, stream_text
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.tensors import encode_raw


def test_the_request_follows_the_vllm_backend() -> None:
    arrays = generation_inputs("Hi", True, {"max_tokens": 4, "stop": ["."]})
    assert arrays["text_input"].tolist() == [b"Hi"]
    assert arrays["stream"].tolist() == [True]
    assert json.loads(arrays["sampling_parameters"][0]) == {"max_tokens": 4, "stop": ["."]}
    assert arrays["exclude_input_in_output"].tolist() == [True]  # the text without the prompt


@pytest.mark.parametrize(
    ("prompt", "sampling", "named"),
    [
        ("", {}, "non-empty string"),
        ("Hi", {"beams": 2}, "unknown sampling parameter 'beams'"),
        ("Hi", {"stop": {1, 2}}, "cannot be sent as JSON"),
    ],
)
def test_bad_requests_are_refused_before_sending(
    prompt: str, sampling: dict[str, object], named: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=named):
        generation_inputs(prompt, False, sampling, "gpt2")


def test_an_answer_reads_as_a_generation() -> None:
    text = np.empty(1, dtype=np.object_)
    text[0] = b"caf\xc3\xa9"
    reason = np.empty(1, dtype=np.object_)
    reason[0] = b"stop"
    result = InferResult(
        {
            "text_output": text,
            "finish_reason": reason,
            "num_input_tokens": np.array([3], np.int64),
            "num_output_tokens": np.array([2], np.int64),
        },
        "gpt2",
        "1",
        "",
    )
    assert generation(result) == Generation("café", "stop", 3, 2)


def _streamed(text: bytes, final: bool | None) -> pb.ModelStreamInferResponse:
    answer = pb.ModelStreamInferResponse()
    response = answer.infer_response
    response.outputs.add(name="text_output", datatype="BYTES", shape=[1])
    array = np.empty(1, dtype=np.object_)
    array[0] = text
    response.raw_output_contents.append(encode_raw(array))
    if final is not None:
        response.parameters["triton_final_response"].bool_param = final
    return answer


def test_streamed_answers_give_their_text_and_final_flag() -> None:
    assert stream_text(_streamed(b"Hel", False), "gpt2") == ("Hel", False)
    assert stream_text(_streamed(b"", True), "gpt2") == ("", True)
    assert stream_text(_streamed(b"x", None), "gpt2") == ("x", False)
    empty = pb.ModelStreamInferResponse()
    empty.infer_response.parameters["triton_final_response"].bool_param = True
    assert stream_text(empty, "gpt2") == ("", True)  # the empty final response


def test_a_streamed_error_is_raised_with_its_code() -> None:
    failed = pb.ModelStreamInferResponse(error_message="[RESOURCE_EXHAUSTED] queue full")
    failed.infer_response.id = "7"
    with pytest.raises(ResourceExhaustedError) as caught:
        stream_text(failed, "gpt2")
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.request_id == "7"
    assert "queue full" in str(caught.value)
