"""What every text task's adapter shares: reading TEXT / TEXT_PAIR, tokenizing, the public config.

Inputs ``TEXT`` (BYTES [1] per row) and, for pair tasks, ``TEXT_PAIR``; the model's own token
inputs stay accepted for clients that tokenize themselves (answered with the raw outputs only).
Each task (``text/adapters.py``) says which raw outputs it reads, which task outputs it adds
(before the model's raw outputs in the public config) and how it computes them.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from ortserve.adapters import OutputTensor, Padding, Prepared, TensorAdapter, wire_outputs
from ortserve.datatypes import CONFIG_TO_WIRE
from ortserve.errors import InvalidInput, ModelLoadError
from ortserve.text.files import ModelFiles
from ortserve.text.settings import TextSettings
from ortserve.text.tokenization import Encoded, TextEncoder
from ortserve.validation import check_outputs
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import DATATYPE_TO_DTYPE, Array, DecodedTensor

TEXT = "TEXT"
TEXT_PAIR = "TEXT_PAIR"
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

STRING, FP32, INT64 = mc.TYPE_STRING, mc.TYPE_FP32, mc.TYPE_INT64
#: A task output as the public config declares it: name, data type, dims past the batch.
TaskOutputSpec = tuple[str, "mc.DataType.ValueType", list[int]]


class TextAdapter(ABC):
    """A text model's request adapter; one subclass per task (``text/adapters.py``)."""

    pair_input: ClassVar[bool] = False  # TEXT_PAIR accepted
    needs_pair: ClassVar[bool] = False  # TEXT_PAIR required
    windows: ClassVar[bool] = False  # a long pair is split into overlapping windows (rows)

    def __init__(
        self, files: ModelFiles, settings: TextSettings, config: mc.ModelConfig, where: str
    ) -> None:
        self.settings = settings
        self.labels: Mapping[int, str] = files.labels
        folder = files.folder
        names = [entry.name for entry in config.input]
        unknown = [name for name in names if name not in TOKEN_INPUTS]
        if unknown or "input_ids" not in names:
            raise ModelLoadError(
                f"{folder}: a text model takes {', '.join(TOKEN_INPUTS)}; this one takes "
                f"{', '.join(names)}"
            )
        if config.max_batch_size == 0:
            raise ModelLoadError(f"{folder}: a text model needs max_batch_size > 0 (a batch axis)")
        self.max_rows = config.max_batch_size
        ids = next(entry for entry in config.input if entry.name == "input_ids")
        self.encoder = TextEncoder(
            files.tokenizer,
            names,
            DATATYPE_TO_DTYPE[CONFIG_TO_WIRE[ids.data_type]],
            settings.max_length,
            settings.truncation,
            windows=self.windows,
            stride=settings.stride,
        )
        self._tokens = TensorAdapter(config, where)  # requests that send token inputs
        self._where = where
        self.output_dims = {entry.name: list(entry.dims) for entry in config.output}
        self.source = self.pick_source(list(self.output_dims), folder)
        self.padding: Padding | None = Padding(
            values=self.encoder.pad_values,
            sequence_outputs=frozenset(
                n for n, dims in self.output_dims.items() if dims and dims[0] == -1
            ),
            mask_input="attention_mask" if "attention_mask" in names else None,
        )
        self.config = self._public_config(config)

    # -- what a task says ----------------------------------------------------------------------

    @abstractmethod
    def pick_source(self, names: list[str], folder: Path) -> list[str]:
        """Which of the model's raw outputs feed the task (checked against the files)."""

    @abstractmethod
    def task_outputs(self) -> list[TaskOutputSpec]:
        """The task outputs the public config declares, in order."""

    @abstractmethod
    def answer(self, encoded: Encoded, source: list[Array]) -> list[OutputTensor]:
        """The task outputs of one request, from its rows of the ``source`` outputs."""

    def logits_source(self, names: list[str], folder: Path) -> list[str]:
        """For classifiers: ``logits`` (or the first output), as wide as the files' labels."""
        logits = "logits" if "logits" in names else names[0]
        width = self.output_dims[logits][-1]
        if self.labels and width > 0 and len(self.labels) != width:
            raise ModelLoadError(
                f"{folder}/config.json: id2label has {len(self.labels)} labels but the model's "
                f"'{logits}' output has {width}"
            )
        return [logits]

    # -- the adapter ----------------------------------------------------------------------------

    def task_output_names(self) -> list[str]:
        return [name for name, _, _ in self.task_outputs()]

    async def prepare(self, inputs: Sequence[DecodedTensor], outputs: Sequence[str]) -> Prepared:
        texts = self.texts(inputs)
        if texts is None:
            note = " for token inputs; task outputs need TEXT"
            return self._tokens.prepare_now(inputs, outputs, note)
        task_outputs = self.task_output_names()
        if outputs:
            available = task_outputs + list(self.output_dims)
            names = check_outputs(available, outputs, self._where)
        else:
            names = task_outputs
        # Tokenizing runs in a worker thread: tokenizers releases the GIL while it works.
        encoded = await asyncio.to_thread(self.encoder.encode, *texts)
        return Prepared(
            encoded.feeds,
            names,
            client_rows=len(encoded.texts),
            length=encoded.length,
            splittable=self.windows,
            state=encoded,
        )

    def finish(self, prepared: Prepared, outputs: Mapping[str, Array]) -> dict[str, OutputTensor]:
        answer = wire_outputs(self._tokens.model_config, outputs)
        encoded = prepared.state
        if isinstance(encoded, Encoded):  # a TEXT request: its task outputs too
            for tensor in self.answer(encoded, [outputs[name] for name in self.source]):
                answer[tensor.name] = tensor
        return answer

    def _public_config(self, raw: mc.ModelConfig) -> mc.ModelConfig:
        """The model's config as clients see it: text inputs and task outputs added."""
        config = mc.ModelConfig()
        config.CopyFrom(raw)
        del config.input[:]
        config.input.add(name=TEXT, data_type=STRING, dims=[1], optional=True)
        if self.pair_input:
            config.input.add(name=TEXT_PAIR, data_type=STRING, dims=[1], optional=True)
        for entry in raw.input:
            config.input.add().CopyFrom(entry)
            config.input[-1].optional = True
        del config.output[:]
        for name, data_type, dims in self.task_outputs():
            config.output.add(name=name, data_type=data_type, dims=dims)
        for out in raw.output:
            config.output.add().CopyFrom(out)
        return config

    # -- reading a request ------------------------------------------------------------------------

    def texts(self, inputs: Sequence[DecodedTensor]) -> tuple[list[str], list[str] | None] | None:
        """The request's texts, or None when it sends token inputs instead."""
        given = {tensor.name: tensor for tensor in inputs}
        if TEXT not in given:
            if TEXT_PAIR in given:
                raise InvalidInput("input 'TEXT_PAIR' needs 'TEXT' too")
            return None
        mixed = [name for name in given if name not in (TEXT, TEXT_PAIR)]
        if mixed:
            raise InvalidInput(f"send either TEXT or token inputs, not both (also got {mixed})")
        limit = self.settings.max_text_bytes
        texts = _strings(given[TEXT], self.max_rows, limit)
        pairs = _strings(given[TEXT_PAIR], self.max_rows, limit) if TEXT_PAIR in given else None
        if pairs is not None and len(pairs) != len(texts):
            raise InvalidInput(
                f"input 'TEXT_PAIR' has {len(pairs)} rows but 'TEXT' has {len(texts)}"
            )
        if self.needs_pair and pairs is None:
            raise InvalidInput(
                "question answering needs the question in 'TEXT' and the context in 'TEXT_PAIR'"
            )
        if pairs is not None and not self.pair_input:
            raise InvalidInput(f"a {self.settings.task} model takes no 'TEXT_PAIR'")
        return texts, pairs


def _strings(tensor: DecodedTensor, max_rows: int, max_bytes: int) -> list[str]:
    """The rows as text, refusing what cannot fit before anything is tokenized: more rows than
    one batch takes, or a row longer than ``max_text_bytes``."""
    name = tensor.name
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input '{name}': datatype {tensor.datatype}, expected BYTES")
    shape = list(tensor.array.shape)
    if len(shape) != 2 or shape[1] != 1 or shape[0] < 1:
        raise InvalidInput(f"input '{name}': shape {shape}, expected [rows, 1] (one text a row)")
    if shape[0] > max_rows:
        raise InvalidInput(
            f"input '{name}': {shape[0]} rows do not fit in one batch "
            f"(1..{max_rows} rows, max_batch_size)"
        )
    texts = []
    for row, item in enumerate(tensor.array.reshape(-1)):
        data = item if isinstance(item, bytes) else str(item).encode()
        if len(data) > max_bytes:
            raise InvalidInput(
                f"input '{name}': row {row} has {len(data)} bytes, more than the {max_bytes} "
                "a text may carry (parameter max_text_bytes)"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"input '{name}': row {row} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None
        if not text.strip():
            raise InvalidInput(f"input '{name}': row {row} is empty")
        texts.append(text)
    return texts


def bytes_column(values: Sequence[bytes]) -> Array:
    """A BYTES output of one value per row: [rows, 1]."""
    out = np.empty((len(values), 1), dtype=np.object_)
    for row, value in enumerate(values):
        out[row, 0] = value
    return out
