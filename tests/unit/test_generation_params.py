"""A generation request read as Triton's vLLM backend reads it: sampling parameters (JSON, then
request parameters), the request's tensors, and the replies made from the engine's Deltas (the
engine is a small fake here: the adapter is given its engine)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from ortserve.adapters import StreamingAdapter, TensorAdapter
from ortserve.errors import InvalidInput
from ortserve.generation.adapter import GenerationAdapter, is_generation, public_config
from ortserve.generation.params import sampling_params
from ortserve.generation.types import Delta, SamplingParams
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import DecodedTensor


def test_json_first_then_request_parameters_then_defaults() -> None:
    params = sampling_params(
        '{"max_tokens": 8, "temperature": "0.5", "stop": "\\n"}',
        {"temperature": 0.1, "top_k": 5, "seed": 7, "priority": 1},
    )
    assert params == SamplingParams(max_tokens=8, temperature=0.5, top_k=5, seed=7, stop=("\n",))
    assert sampling_params(None, {}) == SamplingParams()
    assert sampling_params("  ", {"ignore_eos": "true"}).ignore_eos


def test_values_written_as_strings_or_integral_floats_are_taken() -> None:
    params = sampling_params(
        '{"max_tokens": "12", "top_k": 3.0, "top_p": "0.9", "ignore_eos": "false", '
        '"stop": ["a", "bc"], "seed": null}',
        {},
    )
    assert params == SamplingParams(max_tokens=12, top_k=3, top_p=0.9, stop=("a", "bc"))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"max_tokens": 0}', "max_tokens"),
        ('{"max_tokens": 1.5}', "max_tokens"),
        ('{"max_tokens": true}', "max_tokens"),
        ('{"temperature": -0.5}', "temperature"),
        ('{"temperature": "hot"}', "temperature"),
        ('{"temperature": "nan"}', "temperature"),
        ('{"top_p": 0}', "top_p"),
        ('{"top_p": 1.01}', "top_p"),
        ('{"top_k": -2}', "top_k"),
        ('{"repetition_penalty": 0}', "repetition_penalty"),
        ('{"seed": -1}', "seed"),
        ('{"seed": "x"}', "seed"),
        ('{"stop": 3}', "stop"),
        ('{"stop": [""]}', "stop"),
        ('{"ignore_eos": "maybe"}', "ignore_eos"),
        ('{"n": 2}', "unknown key 'n'"),
        ("[1]", "must be a JSON object"),
        ("{oops", "not valid JSON"),
    ],
)
def test_bad_values_are_invalid_input_naming_the_field(text: str, named: str) -> None:
    with pytest.raises(InvalidInput, match="sampling") as caught:
        sampling_params(text, {})
    assert named in str(caught.value)


def test_request_parameters_are_checked_too_and_unknown_ones_ignored() -> None:
    with pytest.raises(InvalidInput, match="max_tokens"):
        sampling_params(None, {"max_tokens": -3})
    assert sampling_params(None, {"triton_enable_empty_final_response": True, "timeout": 5})


# -- the adapter ---------------------------------------------------------------------------------


class FakeEngine:
    """Gives the Deltas it was built with, and notes whether its generator was closed."""

    def __init__(self, deltas: list[Delta]) -> None:
        self.deltas = deltas
        self.asked: list[tuple[str, SamplingParams]] = []
        self.closed = False

    async def generate(
        self, prompt: str, params: SamplingParams, *, deadline: float | None = None
    ) -> AsyncIterator[Delta]:
        self.asked.append((prompt, params))
        try:
            for delta in self.deltas:
                yield delta
        finally:
            self.closed = True


DELTAS = [
    Delta("Hel", (1,), None, 3, 1),
    Delta("", (2,), None, 3, 2),  # held back: no reply
    Delta("lo", (3,), None, 3, 3),
    Delta("!", (4,), "length", 3, 4),
]


def _tensor(name: str, value: Any) -> DecodedTensor:
    if isinstance(value, bool):
        return DecodedTensor(name, "BOOL", np.array([value]))
    array = np.empty(1, dtype=np.object_)
    array[0] = value if isinstance(value, bytes) else value.encode()
    return DecodedTensor(name, "BYTES", array)


def _adapter(deltas: list[Delta] = DELTAS) -> tuple[GenerationAdapter, FakeEngine]:
    raw = mc.ModelConfig(name="m")
    raw.parameters["task"].string_value = "text-generation"
    engine = FakeEngine(deltas)
    return GenerationAdapter(engine, raw, "model 'm' version 1"), engine


def _replies(adapter: GenerationAdapter, inputs: list[DecodedTensor], once: bool) -> list[Any]:
    async def run() -> list[Any]:
        prepared = await adapter.prepare(inputs, [])
        return [reply async for reply in adapter.respond(prepared, {}, None, once=once)]

    return asyncio.run(run())


def test_the_adapter_is_a_streaming_one_and_its_config_the_vllm_backends() -> None:
    adapter, _ = _adapter()
    assert isinstance(adapter, StreamingAdapter)
    assert not isinstance(TensorAdapter(mc.ModelConfig(), "m"), StreamingAdapter)
    assert is_generation(adapter.raw_config)
    assert not is_generation(mc.ModelConfig())
    config = public_config(adapter.raw_config)
    assert config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled
    assert [i.name for i in config.input][:4] == [
        "text_input", "stream", "sampling_parameters", "exclude_input_in_output",
    ]  # fmt: skip


def test_streamed_replies_are_the_deltas_with_text_and_the_last_is_final() -> None:
    adapter, engine = _adapter()
    replies = _replies(adapter, [_tensor("text_input", "Hi"), _tensor("stream", True)], False)
    texts = [reply.outputs["text_output"].array[0] for reply in replies]
    assert texts == [b"Hel", b"lo", b"!"]
    assert [reply.final for reply in replies] == [False, False, True]
    last = replies[-1].outputs
    assert last["finish_reason"].array[0] == b"length"
    assert int(last["num_input_tokens"].array[0]) == 3
    assert int(last["num_output_tokens"].array[0]) == 4
    assert engine.closed


def test_unstreamed_or_unary_answers_once_with_the_prompt_first_unless_excluded() -> None:
    adapter, _ = _adapter()
    whole = _replies(adapter, [_tensor("text_input", "Hi")], False)
    assert [r.outputs["text_output"].array[0] for r in whole] == [b"HiHello!"]
    unary = _replies(adapter, [_tensor("text_input", "Hi"), _tensor("stream", True)], True)
    assert len(unary) == 1
    assert unary[0].final
    bare = _replies(
        adapter, [_tensor("text_input", "Hi"), _tensor("exclude_input_in_output", True)], False
    )
    assert bare[0].outputs["text_output"].array[0] == b"Hello!"


def test_a_final_delta_without_text_still_carries_the_final_flag() -> None:
    adapter, _ = _adapter([Delta("a", (1,), None, 1, 1), Delta("", (0,), "eos", 1, 2)])
    replies = _replies(adapter, [_tensor("text_input", "x"), _tensor("stream", True)], False)
    assert [(r.outputs["text_output"].array[0], r.final) for r in replies] == [
        (b"a", False),
        (b"", True),
    ]
    assert replies[-1].outputs["finish_reason"].array[0] == b"eos"


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ([], "'text_input' (the prompt) is required"),
        ([_tensor("text_input", "x"), _tensor("prompt", "y")], "no input 'prompt'"),
        ([_tensor("text_input", b"\xff")], "not valid UTF-8"),
        ([_tensor("text_input", "x"), _tensor("stream", "yes")], "input 'stream': datatype"),
        (
            [DecodedTensor("text_input", "BYTES", np.array([b"a", b"b"], np.object_))],
            "expected [1]",
        ),
        ([_tensor("text_input", "x"), _tensor("return_finish_reason", "no")], "BOOL"),
    ],
)
def test_bad_tensors_are_invalid_input_naming_the_input(
    inputs: list[DecodedTensor], named: str
) -> None:
    adapter, _ = _adapter()
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(adapter.prepare(inputs, []))
    assert named in str(caught.value)


def test_the_vllm_backends_return_flags_are_accepted_and_outputs_can_be_picked() -> None:
    adapter, _ = _adapter()
    inputs = [_tensor("text_input", "x"), _tensor("return_num_input_tokens", True)]
    prepared = asyncio.run(adapter.prepare(inputs, ["finish_reason"]))
    assert prepared.outputs == ["finish_reason"]
    with pytest.raises(InvalidInput, match="no output 'logits'"):
        asyncio.run(adapter.prepare(inputs, ["logits"]))
