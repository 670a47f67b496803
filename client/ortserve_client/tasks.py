"""Text-task helpers: a list of texts in one request, small typed results out.

They follow the daemon's text contract (inputs ``TEXT`` / ``TEXT_PAIR``; outputs ``LABEL``,
``SCORE``, ``SCORES``, ``EMBEDDING``, ``ENTITIES``, ``ANSWER``, ``START``, ``END``), which any
server speaking it can answer. ``Client`` and ``AsyncClient`` expose them as methods.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ortserve_client._base import InferResult, Inputs, to_array
from ortserve_client.errors import invalid
from ortserve_client.tensors import Array


@dataclass(frozen=True, slots=True)
class Classification:
    label: str
    score: float
    scores: Array  # one score per label, in the model's label order


@dataclass(frozen=True, slots=True)
class Entity:
    entity: str
    score: float
    word: str
    start: int  # character offsets into the text
    end: int


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    score: float
    start: int  # character offsets into the context
    end: int


CLASSIFY_OUTPUTS = ("LABEL", "SCORE", "SCORES")
EMBED_OUTPUTS = ("EMBEDDING",)
ENTITY_OUTPUTS = ("ENTITIES",)
ANSWER_OUTPUTS = ("ANSWER", "SCORE", "START", "END")


def text_inputs(texts: Sequence[str], pairs: Sequence[str] | None = None) -> Inputs:
    if isinstance(texts, str):
        raise invalid("give a list of texts, e.g. ['a text'], not one string")
    if not texts:
        raise invalid("give at least one text")
    inputs: dict[str, Array] = {"TEXT": to_array("TEXT", list(texts))}
    if pairs is not None:
        if len(pairs) != len(texts):
            raise invalid(f"{len(pairs)} pair texts for {len(texts)} texts")
        inputs["TEXT_PAIR"] = to_array("TEXT_PAIR", list(pairs))
    return inputs


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def classifications(result: InferResult) -> list[Classification]:
    labels = result["LABEL"].reshape(-1)
    scores = result["SCORE"].reshape(-1)
    every = result["SCORES"]
    return [
        Classification(_text(label), float(score), np.asarray(row))
        for label, score, row in zip(labels, scores, every, strict=True)
    ]


def embeddings(result: InferResult) -> Array:
    return np.asarray(result["EMBEDDING"], dtype=np.float32)


def entities(result: InferResult) -> list[list[Entity]]:
    return [
        [Entity(**item) for item in json.loads(_text(raw))]
        for raw in result["ENTITIES"].reshape(-1)
    ]


def answers(result: InferResult) -> list[Answer]:
    return [
        Answer(_text(text), float(score), int(start), int(end))
        for text, score, start, end in zip(
            result["ANSWER"].reshape(-1),
            result["SCORE"].reshape(-1),
            result["START"].reshape(-1),
            result["END"].reshape(-1),
            strict=True,
        )
    ]
