"""A text model's serving contract: TEXT in, task outputs out, around its ONNX model.

Inputs ``TEXT`` (BYTES [1] per row) and, for pair tasks, ``TEXT_PAIR``; the model's own token
inputs stay accepted for clients that tokenize themselves. Outputs by task:
text-classification ``LABEL`` ``SCORE`` ``SCORES``; feature-extraction / sentence-embeddings
``EMBEDDING``; token-classification ``ENTITIES`` (JSON); question-answering ``ANSWER``
``SCORE`` ``START`` ``END`` (character offsets into TEXT_PAIR). The model's raw outputs follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ortserve.datatypes import CONFIG_TO_WIRE
from ortserve.errors import InvalidInput, ModelLoadError
from ortserve.text import tasks
from ortserve.text.files import ModelFiles
from ortserve.text.settings import TextSettings
from ortserve.text.tokenization import Encoded, TextEncoder
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import DATATYPE_TO_DTYPE, Array, DecodedTensor

TEXT = "TEXT"
TEXT_PAIR = "TEXT_PAIR"
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

_STRING, _FP32, _INT64 = mc.TYPE_STRING, mc.TYPE_FP32, mc.TYPE_INT64


@dataclass(frozen=True, slots=True)
class TaskOutput:
    name: str
    datatype: str
    array: Array


class TextPipeline:
    def __init__(self, files: ModelFiles, settings: TextSettings, config: mc.ModelConfig) -> None:
        self.settings = settings
        self.labels = files.labels
        where = files.folder
        names = [entry.name for entry in config.input]
        unknown = [name for name in names if name not in TOKEN_INPUTS]
        if unknown or "input_ids" not in names:
            raise ModelLoadError(
                f"{where}: a text model takes {', '.join(TOKEN_INPUTS)}; this one takes "
                f"{', '.join(names)}"
            )
        if config.max_batch_size == 0:
            raise ModelLoadError(f"{where}: a text model needs max_batch_size > 0 (a batch axis)")
        self.max_rows = config.max_batch_size
        ids = next(entry for entry in config.input if entry.name == "input_ids")
        dtype = DATATYPE_TO_DTYPE[CONFIG_TO_WIRE[ids.data_type]]
        self.encoder = TextEncoder(
            files.tokenizer,
            names,
            dtype,
            settings.max_length,
            settings.truncation,
            windows=settings.task == "question-answering",
            stride=settings.stride,
        )
        self._outputs = {entry.name: list(entry.dims) for entry in config.output}
        self.sequence_outputs = {n for n, dims in self._outputs.items() if dims and dims[0] == -1}
        self._source = self._pick_outputs(where)

    def _pick_outputs(self, where: object) -> list[str]:
        """Which raw outputs feed the task (checked against the files' labels)."""
        names = list(self._outputs)
        task = self.settings.task
        if task == "question-answering":
            wanted = ["start_logits", "end_logits"]
            return wanted if all(n in names for n in wanted) else names[:2]
        if self.settings.embeds:
            for name in ("sentence_embedding", "last_hidden_state", "token_embeddings"):
                if name in names:
                    return [name]
            return names[:1]
        logits = "logits" if "logits" in names else names[0]
        width = self._outputs[logits][-1]
        if self.labels and width > 0 and len(self.labels) != width:
            raise ModelLoadError(
                f"{where}/config.json: id2label has {len(self.labels)} labels but the model's "
                f"'{logits}' output has {width}"
            )
        return [logits]

    @property
    def pad_values(self) -> dict[str, int]:
        return self.encoder.pad_values

    def public_config(self, raw: mc.ModelConfig) -> mc.ModelConfig:
        """The model's config as clients see it: text inputs and task outputs added."""
        config = mc.ModelConfig()
        config.CopyFrom(raw)
        del config.input[:]
        config.input.add(name=TEXT, data_type=_STRING, dims=[1], optional=True)
        if self.settings.pair_input:
            config.input.add(name=TEXT_PAIR, data_type=_STRING, dims=[1], optional=True)
        for entry in raw.input:
            config.input.add().CopyFrom(entry)
            config.input[-1].optional = True
        del config.output[:]
        for name, data_type, dims in self._task_outputs():
            config.output.add(name=name, data_type=data_type, dims=dims)
        for out in raw.output:
            config.output.add().CopyFrom(out)
        return config

    def _task_outputs(self) -> list[tuple[str, mc.DataType.ValueType, list[int]]]:
        task = self.settings.task
        if task == "text-classification":
            width = self._outputs[self._source[0]][-1]
            return [("LABEL", _STRING, [1]), ("SCORE", _FP32, [1]), ("SCORES", _FP32, [width])]
        if task == "token-classification":
            return [("ENTITIES", _STRING, [1])]
        if task == "question-answering":
            return [("ANSWER", _STRING, [1]), ("SCORE", _FP32, [1]), ("START", _INT64, [1]),
                    ("END", _INT64, [1])]  # fmt: skip
        return [("EMBEDDING", _FP32, [self._outputs[self._source[0]][-1]])]

    def task_output_names(self) -> list[str]:
        return [name for name, _, _ in self._task_outputs()]

    # -- requests ----------------------------------------------------------------------------

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
        if self.settings.task == "question-answering" and pairs is None:
            raise InvalidInput(
                "question answering needs the question in 'TEXT' and the context in 'TEXT_PAIR'"
            )
        if pairs is not None and not self.settings.pair_input:
            raise InvalidInput(f"a {self.settings.task} model takes no 'TEXT_PAIR'")
        return texts, pairs

    def finish(self, encoded: Encoded, raw: dict[str, Array]) -> list[TaskOutput]:
        """Task outputs for one request, from its rows of the model's outputs."""
        task = self.settings.task
        source = [raw[name] for name in self._source]
        count = len(encoded.texts)
        if task == "text-classification":
            s = self.settings
            result = tasks.classify(source[0], self.labels, s.multi_label,
                                    s.confidence_threshold, s.fallback_label)  # fmt: skip
            return [
                TaskOutput("LABEL", "BYTES", _bytes_column([n.encode() for n in result.labels])),
                TaskOutput("SCORE", "FP32", result.scores.reshape(count, 1)),
                TaskOutput("SCORES", "FP32", result.all_scores),
            ]
        if task == "token-classification":
            found = [
                tasks.entities_json(
                    tasks.entities(
                        source[0][row],
                        encoded.encodings[row],
                        encoded.texts[row],
                        self.labels,
                        self.settings.aggregation,
                    )
                )
                for row in range(count)
            ]
            return [TaskOutput("ENTITIES", "BYTES", _bytes_column(found))]
        if task == "question-answering":
            return self._answers(encoded, source[0], source[1])
        mask = encoded.feeds.get("attention_mask")
        if mask is None:
            mask = np.ones(encoded.feeds["input_ids"].shape, dtype=np.int64)
        embedding = tasks.pool(source[0], mask, self.settings.pooling, self.settings.normalize)
        return [TaskOutput("EMBEDDING", "FP32", embedding)]

    def _answers(self, encoded: Encoded, starts: Array, ends: Array) -> list[TaskOutput]:
        found = []
        assert encoded.pairs is not None
        for text in range(len(encoded.texts)):
            rows = [row for row, owner in enumerate(encoded.row_text) if owner == text]
            found.append(
                tasks.answer(
                    [starts[r] for r in rows],
                    [ends[r] for r in rows],
                    [encoded.encodings[r] for r in rows],
                    encoded.pairs[text],
                    self.settings.max_answer_length,
                )
            )
        count = len(found)
        return [
            TaskOutput("ANSWER", "BYTES", _bytes_column([a.text.encode() for a in found])),
            TaskOutput("SCORE", "FP32", np.array([[a.score] for a in found], dtype=np.float32)),
            TaskOutput(
                "START", "INT64", np.array([a.start for a in found], np.int64).reshape(count, 1)
            ),
            TaskOutput(
                "END", "INT64", np.array([a.end for a in found], np.int64).reshape(count, 1)
            ),
        ]


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


def _bytes_column(values: Sequence[bytes]) -> Array:
    out = np.empty((len(values), 1), dtype=np.object_)
    for row, value in enumerate(values):
        out[row, 0] = value
    return out
