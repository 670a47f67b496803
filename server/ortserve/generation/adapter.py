"""The request adapter of a generation model: Triton's vLLM-backend protocol over the engine.

Inputs: ``text_input`` (BYTES, one prompt), and optional ``stream`` (BOOL),
``sampling_parameters`` (JSON BYTES, see ``params``), ``exclude_input_in_output`` (BOOL), and the
vLLM backend's ``return_finish_reason`` / ``return_num_input_tokens`` /
``return_num_output_tokens`` (BOOL; accepted so its clients are not refused: every output is
there unless the request's ``outputs`` names a subset). Outputs: ``text_output``,
``finish_reason`` (BYTES), ``num_input_tokens``, ``num_output_tokens`` (INT64), each of shape [1].

Streamed (``stream`` true, on a stream): one reply per engine ``Delta`` that has new text (the
text is the delta); the last reply carries the finish reason and the counts, and is final even
when its text is empty. Otherwise one final reply with the whole text, the prompt first unless
``exclude_input_in_output``, as the vLLM backend answers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ortserve.adapters import OutputTensor, Padding, Prepared, Reply
from ortserve.errors import InvalidInput, shown
from ortserve.generation.params import sampling_params
from ortserve.generation.types import Delta, SamplingParams
from ortserve.validation import check_outputs
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import Array, DecodedTensor

#: The ``task`` parameter of a generation model's config.pbtxt.
GENERATION_TASK = "text-generation"
TEXT_INPUT = "text_input"
STREAM = "stream"
SAMPLING = "sampling_parameters"
EXCLUDE_INPUT = "exclude_input_in_output"
#: The vLLM backend's switches for its optional outputs (ours are always there).
RETURN_FLAGS = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")
TEXT_OUTPUT = "text_output"
FINISH_REASON = "finish_reason"
INPUT_TOKENS = "num_input_tokens"
OUTPUT_TOKENS = "num_output_tokens"
OUTPUTS = (TEXT_OUTPUT, FINISH_REASON, INPUT_TOKENS, OUTPUT_TOKENS)
#: The most UTF-8 bytes one prompt may have (longer: INVALID_ARGUMENT before tokenizing).
MAX_PROMPT_BYTES = 2**20

_STRING, _BOOL, _INT64 = mc.TYPE_STRING, mc.TYPE_BOOL, mc.TYPE_INT64
_PUBLIC_INPUTS = [
    (TEXT_INPUT, _STRING, False),
    (STREAM, _BOOL, True),
    (SAMPLING, _STRING, True),
    (EXCLUDE_INPUT, _BOOL, True),
    *[(flag, _BOOL, True) for flag in RETURN_FLAGS],
]
_PUBLIC_OUTPUTS = [(TEXT_OUTPUT, _STRING, -1), (FINISH_REASON, _STRING, -1),
                   (INPUT_TOKENS, _INT64, 1), (OUTPUT_TOKENS, _INT64, 1)]  # fmt: skip


def is_generation(config: mc.ModelConfig) -> bool:
    """Whether a config is a generation model's (``parameters`` task text-generation)."""
    task = config.parameters.get("task")
    return task is not None and task.string_value.strip() == GENERATION_TASK


class Engine(Protocol):
    """What the adapter uses of ``engine.GenerationEngine`` (injected: tests may fake it)."""

    def generate(
        self, prompt: str, params: SamplingParams, *, deadline: float | None = None
    ) -> AsyncIterator[Delta]: ...


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A prepared request (``Prepared.state``): what ``respond`` needs."""

    prompt: str
    stream: bool = False
    exclude_input: bool = False
    sampling: str | None = None  # the sampling_parameters JSON, read with the request parameters


def public_config(raw: mc.ModelConfig) -> mc.ModelConfig:
    """The config clients see: the vLLM backend's (no batch axis, decoupled, text tensors)."""
    config = mc.ModelConfig()
    config.CopyFrom(raw)
    config.max_batch_size = 0
    config.model_transaction_policy.decoupled = True
    config.ClearField("dynamic_batching")
    del config.input[:]
    del config.output[:]
    for name, data_type, optional in _PUBLIC_INPUTS:
        config.input.add(name=name, data_type=data_type, dims=[1], optional=optional)
    for name, data_type, dim in _PUBLIC_OUTPUTS:
        config.output.add(name=name, data_type=data_type, dims=[dim])
    return config


@dataclass(eq=False)
class GenerationAdapter:
    """A generation model's ``StreamingAdapter`` (``ortserve.adapters``) over its engine."""

    engine: Engine
    raw_config: mc.ModelConfig
    where: str  # "model 'm' version 1", for messages
    labels: Mapping[int, str] = field(default_factory=dict)
    padding: Padding | None = None
    config: mc.ModelConfig = field(init=False)

    def __post_init__(self) -> None:
        self.config = public_config(self.raw_config)

    @property
    def decoupled(self) -> bool:
        return True

    async def prepare(self, inputs: Sequence[DecodedTensor], outputs: Sequence[str]) -> Prepared:
        given = {tensor.name: tensor for tensor in inputs}
        if len(given) != len(inputs):
            raise InvalidInput(f"an input is given twice: {[tensor.name for tensor in inputs]}")
        known = [name for name, _, _ in _PUBLIC_INPUTS]
        unknown = sorted(name for name in given if name not in known)
        if unknown:
            raise InvalidInput(
                f"{self.where} has no input {shown(unknown[0])} (inputs: {', '.join(known)})"
            )
        if TEXT_INPUT not in given:
            raise InvalidInput(f"{self.where}: input '{TEXT_INPUT}' (the prompt) is required")
        for flag in RETURN_FLAGS:  # accepted and checked, not needed: every output is there
            if flag in given:
                _flag(given[flag])
        request = GenerationRequest(
            prompt=_text(given[TEXT_INPUT], MAX_PROMPT_BYTES),
            stream=_flag(given[STREAM]) if STREAM in given else False,
            exclude_input=_flag(given[EXCLUDE_INPUT]) if EXCLUDE_INPUT in given else False,
            sampling=_text(given[SAMPLING], None) if SAMPLING in given else None,
        )
        names = check_outputs(OUTPUTS, outputs, self.where)
        return Prepared({}, names, client_rows=1, state=request)

    def finish(self, prepared: Prepared, outputs: Mapping[str, Array]) -> dict[str, OutputTensor]:
        raise NotImplementedError("a generation model answers through respond, not the batcher")

    async def respond(
        self,
        prepared: Prepared,
        parameters: Mapping[str, Any],
        deadline: float | None,
        *,
        once: bool,
    ) -> AsyncGenerator[Reply, None]:
        request = prepared.state
        assert isinstance(request, GenerationRequest)
        params = sampling_params(request.sampling, parameters)
        deltas = self.engine.generate(request.prompt, params, deadline=deadline)
        try:
            if request.stream and not once:
                async for delta in deltas:
                    if delta.finish_reason is not None:
                        yield Reply(_tensors(delta.text, delta), final=True)
                    elif delta.text:
                        yield Reply({TEXT_OUTPUT: _string(TEXT_OUTPUT, delta.text)}, final=False)
            else:
                pieces = [] if request.exclude_input else [request.prompt]
                last: Delta | None = None
                async for delta in deltas:
                    pieces.append(delta.text)
                    last = delta
                assert last is not None, "the engine ends every request with a Delta"
                yield Reply(_tensors("".join(pieces), last), final=True)
        finally:  # the caller left (or failed): the engine frees the request's row
            close = getattr(deltas, "aclose", None)
            if close is not None:
                await close()


def _tensors(text: str, last: Delta) -> dict[str, OutputTensor]:
    """A request's last reply: its text and how it ended."""
    return {
        TEXT_OUTPUT: _string(TEXT_OUTPUT, text),
        FINISH_REASON: _string(FINISH_REASON, last.finish_reason or ""),
        INPUT_TOKENS: OutputTensor(INPUT_TOKENS, "INT64", np.array([last.input_tokens], np.int64)),
        OUTPUT_TOKENS: OutputTensor(
            OUTPUT_TOKENS, "INT64", np.array([last.output_tokens], np.int64)
        ),
    }


def _string(name: str, text: str) -> OutputTensor:
    array = np.empty(1, dtype=np.object_)
    array[0] = text.encode("utf-8")
    return OutputTensor(name, "BYTES", array)


def _single(tensor: DecodedTensor, datatype: str) -> Any:
    """The one element of an input of shape [1] (or [1, 1]), of the given datatype."""
    if tensor.datatype != datatype:
        raise InvalidInput(
            f"input '{tensor.name}': datatype {tensor.datatype}, expected {datatype}"
        )
    if tensor.array.size != 1 or tensor.array.ndim > 2:
        raise InvalidInput(
            f"input '{tensor.name}': shape {list(tensor.array.shape)}, expected [1] (one value; "
            "send one prompt per request)"
        )
    return tensor.array.reshape(-1)[0]


def _flag(tensor: DecodedTensor) -> bool:
    return bool(_single(tensor, "BOOL"))


def _text(tensor: DecodedTensor, limit: int | None) -> str:
    item = _single(tensor, "BYTES")
    data = item if isinstance(item, bytes) else str(item).encode()
    if limit is not None and len(data) > limit:
        raise InvalidInput(
            f"input '{tensor.name}' has {len(data)} bytes, more than the {limit} it may carry"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"input '{tensor.name}' is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
