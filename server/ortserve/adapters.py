"""The seam between the data plane and what a served version does with a request.

Every served version gets one ``RequestAdapter``, chosen once when it loads (``registry/versions``):
``prepare`` turns a request's tensors into the feeds the batcher runs, ``finish`` turns that
request's share of the model's outputs into the tensors of its answer. ``TensorAdapter`` serves a
plain tensor model (inputs and outputs checked against its config); text models get one adapter
per task from ``ortserve.text.adapters``. The data plane (``inference``, ``execution``,
``batching``) sees only what is here, never a token or a task.

A new kind of model lands as one new adapter class: it fills in ``Prepared`` (its own ``state``
carries whatever ``finish`` needs) and, if its requests may differ in length, a ``Padding``.

A model that runs itself rather than through the batcher, and may answer one request more than
once (Triton's decoupled models: a generation model streaming its tokens), has an adapter that is
also a ``StreamingAdapter``: after ``prepare``, the data plane iterates its ``respond`` instead of
batching, and ``finish`` is never called.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ortserve.datatypes import CONFIG_TO_WIRE
from ortserve.validation import check_inputs, check_outputs
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import Array, DecodedTensor


@dataclass(frozen=True, slots=True)
class OutputTensor:
    """One tensor of an answer: a raw model output or one an adapter made from them."""

    name: str
    datatype: str  # wire datatype ("FP32", "BYTES"...)
    array: Array


@dataclass(frozen=True, slots=True)
class Padding:
    """How requests of different lengths batch together, given by the adapter at load.

    Requests that carry a ``Prepared.length`` are padded along axis 1 to their batch's longest,
    each input with its value in ``values`` (0 where none is given); the ``sequence_outputs``
    (those with that same axis 1) are trimmed back to each request's own length. The nonzero
    entries of ``mask_input`` count the real (unpadded) positions, for the padding ratio."""

    values: Mapping[str, int]
    sequence_outputs: frozenset[str] = frozenset()
    mask_input: str | None = None


@dataclass(slots=True)
class Prepared:
    """A request made ready for the batcher, and what ``finish`` needs to answer it."""

    feeds: dict[str, Array]
    outputs: list[str]  # the answer's tensors, in the order the client asked for them
    client_rows: int  # rows as the client counts them (statistics: inference_count)
    length: int | None = None  # positions per row: batched with any length (see Padding)
    splittable: bool = False  # rows may run in slices of max_batch_size, joined back in order
    state: object = None  # the adapter's own, for finish (e.g. a text request's tokens)

    @property
    def rows(self) -> int:
        """Rows of the feeds (the batch dimension); may exceed ``client_rows``."""
        return int(next(iter(self.feeds.values())).shape[0]) if self.feeds else 1


class RequestAdapter(Protocol):
    """What one served version does with a request before and after the batcher.

    ``config`` is the config clients see (metadata, ModelConfig); ``labels`` name the indices of
    a classification output, for Triton's classification extension (empty: indices only);
    ``padding`` says how requests of different lengths batch (None: only equal shapes batch).
    """

    @property
    def config(self) -> mc.ModelConfig: ...

    @property
    def labels(self) -> Mapping[int, str]: ...

    @property
    def padding(self) -> Padding | None: ...

    async def prepare(self, inputs: Sequence[DecodedTensor], outputs: Sequence[str]) -> Prepared:
        """Check the request (``outputs``: names asked for, empty = all) and build its feeds.
        Raises InvalidInput naming the tensor."""
        ...

    def finish(self, prepared: Prepared, outputs: Mapping[str, Array]) -> dict[str, OutputTensor]:
        """Every tensor the answer may hold, by name, from the request's rows of the model's
        outputs; the data plane picks ``prepared.outputs`` from them."""
        ...


@dataclass(frozen=True, slots=True)
class Reply:
    """One response of a streaming adapter: the answer's tensors by name (the data plane picks
    ``prepared.outputs`` from them) and whether it is the request's last."""

    outputs: dict[str, OutputTensor]
    final: bool


@runtime_checkable
class StreamingAdapter(RequestAdapter, Protocol):
    """An adapter whose model runs itself and may answer a request several times (decoupled).

    ``respond`` is an async generator: every ``Reply`` but the last has ``final`` false; errors
    (InvalidInput for bad request parameters, Overloaded, DeadlineExpired...) are raised from it,
    before or between replies. Closing it early (the caller went away) stops the request's work.
    With ``once``, it answers with a single final reply holding the whole answer (a unary call).
    """

    @property
    def decoupled(self) -> bool: ...

    def respond(
        self,
        prepared: Prepared,
        parameters: Mapping[str, Any],
        deadline: float | None,
        *,
        once: bool,
    ) -> AsyncGenerator[Reply, None]:
        """``parameters``: the request's; ``deadline``: on the event loop's clock, or None."""
        ...


def wire_outputs(config: mc.ModelConfig, outputs: Mapping[str, Array]) -> dict[str, OutputTensor]:
    """The model's raw outputs as answer tensors, with the config's wire datatypes."""
    types = {out.name: CONFIG_TO_WIRE[out.data_type] for out in config.output}
    return {name: OutputTensor(name, types[name], array) for name, array in outputs.items()}


def output_names(config: mc.ModelConfig) -> list[str]:
    return [out.name for out in config.output]


@dataclass(frozen=True, slots=True)
class TensorAdapter:
    """A plain tensor model: the request's tensors are the model's, checked against its config."""

    model_config: mc.ModelConfig
    where: str  # "model 'm' version 1", for messages
    labels: Mapping[int, str] = field(default_factory=dict)
    padding: Padding | None = None

    @property
    def config(self) -> mc.ModelConfig:
        return self.model_config

    async def prepare(self, inputs: Sequence[DecodedTensor], outputs: Sequence[str]) -> Prepared:
        return self.prepare_now(inputs, outputs)

    def prepare_now(
        self, inputs: Sequence[DecodedTensor], outputs: Sequence[str], note: str = ""
    ) -> Prepared:
        """``prepare`` without waiting (nothing here is slow); ``note`` ends the message of an
        unknown output."""
        raw = self.model_config
        feeds = check_inputs(raw, inputs, self.where)
        names = check_outputs(output_names(raw), outputs, self.where, note)
        prepared = Prepared(feeds, names, client_rows=1)
        if raw.max_batch_size > 0:  # an unbatched model's request counts as one
            prepared.client_rows = prepared.rows
        return prepared

    def finish(self, prepared: Prepared, outputs: Mapping[str, Array]) -> dict[str, OutputTensor]:
        return wire_outputs(self.model_config, outputs)
