"""One request adapter per text task, chosen from ``ADAPTERS`` (the one place a task is matched).

Task outputs, before the model's raw outputs: text-classification ``LABEL`` ``SCORE`` ``SCORES``;
feature-extraction / sentence-embeddings ``EMBEDDING``; token-classification ``ENTITIES`` (JSON);
question-answering ``ANSWER`` ``SCORE`` ``START`` ``END`` (character offsets into TEXT_PAIR).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ortserve.adapters import OutputTensor
from ortserve.repository.parameters import Parameters
from ortserve.text import tasks
from ortserve.text.base import FP32, INT64, STRING, TaskOutputSpec, TextAdapter, bytes_column
from ortserve.text.files import has_tokenizer, read_files
from ortserve.text.settings import text_settings
from ortserve.text.tokenization import Encoded
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import Array


class Classification(TextAdapter):
    """text-classification: softmax (or sigmoid) over the labels; a text pair is welcome."""

    pair_input = True

    def pick_source(self, names: list[str], folder: Path) -> list[str]:
        return self.logits_source(names, folder)

    def task_outputs(self) -> list[TaskOutputSpec]:
        width = self.output_dims[self.source[0]][-1]
        return [("LABEL", STRING, [1]), ("SCORE", FP32, [1]), ("SCORES", FP32, [width])]

    def answer(self, encoded: Encoded, source: list[Array]) -> list[OutputTensor]:
        s = self.settings
        result = tasks.classify(source[0], self.labels, s.multi_label, s.confidence_threshold,
                                s.fallback_label)  # fmt: skip
        labels = bytes_column([name.encode() for name in result.labels])
        return [
            OutputTensor("LABEL", "BYTES", labels),
            OutputTensor("SCORE", "FP32", result.scores.reshape(len(encoded.texts), 1)),
            OutputTensor("SCORES", "FP32", result.all_scores),
        ]


class TokenClassification(TextAdapter):
    """token-classification: entities (JSON, one list per text), grouped as ``aggregation`` says."""

    def pick_source(self, names: list[str], folder: Path) -> list[str]:
        return self.logits_source(names, folder)

    def task_outputs(self) -> list[TaskOutputSpec]:
        return [("ENTITIES", STRING, [1])]

    def answer(self, encoded: Encoded, source: list[Array]) -> list[OutputTensor]:
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
            for row in range(len(encoded.texts))
        ]
        return [OutputTensor("ENTITIES", "BYTES", bytes_column(found))]


class QuestionAnswering(TextAdapter):
    """question-answering: the question in TEXT, the context in TEXT_PAIR; a long context runs
    as overlapping windows (several rows of one text, which may run in slices), the best span
    over them is the answer."""

    pair_input = True
    needs_pair = True
    windows = True

    def pick_source(self, names: list[str], folder: Path) -> list[str]:
        wanted = ["start_logits", "end_logits"]
        return wanted if all(n in names for n in wanted) else names[:2]

    def task_outputs(self) -> list[TaskOutputSpec]:
        return [("ANSWER", STRING, [1]), ("SCORE", FP32, [1]), ("START", INT64, [1]),
                ("END", INT64, [1])]  # fmt: skip

    def answer(self, encoded: Encoded, source: list[Array]) -> list[OutputTensor]:
        starts, ends = source
        assert encoded.pairs is not None
        found = []
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
            OutputTensor("ANSWER", "BYTES", bytes_column([a.text.encode() for a in found])),
            OutputTensor("SCORE", "FP32", np.array([[a.score] for a in found], dtype=np.float32)),
            OutputTensor(
                "START", "INT64", np.array([a.start for a in found], np.int64).reshape(count, 1)
            ),
            OutputTensor(
                "END", "INT64", np.array([a.end for a in found], np.int64).reshape(count, 1)
            ),
        ]


class Embeddings(TextAdapter):
    """feature-extraction and sentence-embeddings: one vector per text, pooled over its real
    tokens unless the model pools itself."""

    def pick_source(self, names: list[str], folder: Path) -> list[str]:
        for name in ("sentence_embedding", "last_hidden_state", "token_embeddings"):
            if name in names:
                return [name]
        return names[:1]

    def task_outputs(self) -> list[TaskOutputSpec]:
        return [("EMBEDDING", FP32, [self.output_dims[self.source[0]][-1]])]

    def answer(self, encoded: Encoded, source: list[Array]) -> list[OutputTensor]:
        mask = encoded.feeds.get("attention_mask")
        if mask is None:
            mask = np.ones(encoded.feeds["input_ids"].shape, dtype=np.int64)
        embedding = tasks.pool(source[0], mask, self.settings.pooling, self.settings.normalize)
        return [OutputTensor("EMBEDDING", "FP32", embedding)]


#: The adapter of each task ``text/settings.py`` accepts.
ADAPTERS: dict[str, type[TextAdapter]] = {
    "text-classification": Classification,
    "token-classification": TokenClassification,
    "question-answering": QuestionAnswering,
    "feature-extraction": Embeddings,
    "sentence-embeddings": Embeddings,
}


def text_adapter(
    version_dir: Path, config: mc.ModelConfig, source: str, where: str
) -> TextAdapter | None:
    """The adapter of a text model (one with a tokenizer.json beside its model.onnx), else None.
    ``config``: the model's completed config; ``where`` names the version in messages."""
    if not has_tokenizer(version_dir):
        return None
    files = read_files(version_dir)
    settings = text_settings(Parameters(config, source), files)
    return ADAPTERS[settings.task](files, settings, config, where)
