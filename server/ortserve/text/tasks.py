"""Task post-processing: model outputs (numpy) -> labels and scores, embeddings, entities, answers.

Pure functions of arrays and token offsets; no model, no transport.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Encoding

from ortserve_client.tensors import Array


def softmax(logits: Array, axis: int = -1) -> Array:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=axis, keepdims=True), dtype=np.float32)


def sigmoid(logits: Array) -> Array:
    return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Classified:
    labels: list[str]
    scores: Array  # [rows] the chosen label's score
    all_scores: Array  # [rows, num_labels]


def classify(
    logits: Array,
    labels: Mapping[int, str],
    multi_label: bool = False,
    threshold: float | None = None,
    fallback: str = "",
) -> Classified:
    """Softmax (or sigmoid for multi-label models) over labels; a threshold routes to a fallback."""
    probs = sigmoid(logits) if multi_label else softmax(logits)
    best = probs.argmax(axis=-1)
    scores = probs[np.arange(len(best)), best].astype(np.float32)
    names = [labels.get(int(i), f"LABEL_{int(i)}") for i in best]
    if threshold is not None:
        names = [fallback if s < threshold else n for n, s in zip(names, scores, strict=True)]
    return Classified(names, scores, probs)


def pool(hidden: Array, mask: Array, how: str, normalize: bool) -> Array:
    """Sentence embeddings from token states [rows, tokens, dim] and the attention mask, as
    sentence-transformers pools: ``mean`` or ``max`` over the real tokens, ``mean_sqrt_len`` (their
    sum / sqrt(count)), ``cls`` (the first token) or ``last`` (the last real token, wherever the
    padding is). Padding never counts; a row with no real token pools to zeros."""
    if hidden.ndim == 2:  # the model pools itself
        pooled = hidden.astype(np.float32)
    elif how == "cls":
        pooled = hidden[:, 0, :].astype(np.float32)
    else:
        states = hidden.astype(np.float32)
        real = mask[:, : states.shape[1]] != 0  # [rows, tokens]
        counts = real.sum(axis=1, keepdims=True).astype(np.float32)  # [rows, 1]
        if how == "max":
            masked = np.where(real[:, :, None], states, -np.inf).max(axis=1)
            pooled = np.where(counts > 0, masked, 0.0)
        elif how == "last":
            # the last real token: right padding, left padding or none, from the mask alone
            last = states.shape[1] - 1 - np.argmax(real[:, ::-1], axis=1)
            pooled = np.where(counts > 0, states[np.arange(states.shape[0]), last], 0.0)
        else:
            summed = (states * real[:, :, None]).sum(axis=1)
            divisor = np.sqrt(counts) if how == "mean_sqrt_len" else counts
            pooled = summed / np.maximum(divisor, 1e-9)
    if normalize:
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        pooled = pooled / np.maximum(norms, 1e-12)
    return np.asarray(pooled, dtype=np.float32)


def entities(
    logits: Array, encoding: Encoding, text: str, labels: Mapping[int, str], aggregation: str
) -> list[dict[str, Any]]:
    """Named entities of one text from its token logits [tokens, num_labels]."""
    probs = softmax(logits[: len(encoding.ids)])
    tokens = [
        (i, start, end)
        for i, ((start, end), special) in enumerate(
            zip(encoding.offsets, encoding.special_tokens_mask, strict=True)
        )
        if not special and end > start
    ]
    if aggregation in ("first", "max"):
        tokens = _by_word(tokens, encoding, probs, aggregation)
    found: list[dict[str, Any]] = []
    for index, start, end in tokens:
        label_id = int(probs[index].argmax())
        label = labels.get(label_id, f"LABEL_{label_id}")
        if label == "O":
            continue
        found.append(
            {
                "entity": label,
                "score": float(probs[index, label_id]),
                "word": text[start:end],
                "start": start,
                "end": end,
            }
        )
    if aggregation == "none":
        return found
    return _group(found, text)


def _by_word(
    tokens: list[tuple[int, int, int]], encoding: Encoding, probs: Array, how: str
) -> list[tuple[int, int, int]]:
    """One entry per word: its first sub-token's prediction, or its most confident one's."""
    words: dict[int, list[tuple[int, int, int]]] = {}
    for token in tokens:
        word = encoding.word_ids[token[0]]
        words.setdefault(token[0] if word is None else word, []).append(token)
    merged = []
    for parts in words.values():
        pick = parts[0] if how == "first" else max(parts, key=lambda t: float(probs[t[0]].max()))
        merged.append((pick[0], parts[0][1], parts[-1][2]))
    return merged


def _group(found: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """Adjacent tokens of one entity type merge (B- starts a new entity, I- continues one)."""
    groups: list[dict[str, Any]] = []
    scores: list[list[float]] = []
    for item in found:
        label = str(item["entity"])
        kind = label[2:] if label[:2] in ("B-", "I-") else label
        last = groups[-1] if groups else None
        joins = (
            last is not None
            and last["entity"] == kind
            and not label.startswith("B-")
            and not text[last["end"] : item["start"]].strip()
        )
        if joins and last is not None:
            last["end"] = item["end"]
            scores[-1].append(float(item["score"]))
        else:
            groups.append({"entity": kind, "start": item["start"], "end": item["end"]})
            scores.append([float(item["score"])])
    for group, group_scores in zip(groups, scores, strict=True):
        group["score"] = float(np.mean(group_scores))
        group["word"] = text[group["start"] : group["end"]]
    return [{k: g[k] for k in ("entity", "score", "word", "start", "end")} for g in groups]


def entities_json(found: list[dict[str, Any]]) -> bytes:
    return json.dumps(found, ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    score: float
    start: int
    end: int


def answer(
    start_logits: Sequence[Array],
    end_logits: Sequence[Array],
    windows: Sequence[Encoding],
    context: str,
    max_answer_length: int,
) -> Answer:
    """The best span of ``context`` over all its windows (character offsets into ``context``)."""
    best = Answer("", 0.0, 0, 0)
    for starts, ends, encoding in zip(start_logits, end_logits, windows, strict=True):
        in_context = np.array([sid == 1 for sid in encoding.sequence_ids], dtype=bool)
        n = len(encoding.ids)
        start_p = _masked_softmax(starts[:n], in_context)
        end_p = _masked_softmax(ends[:n], in_context)
        # score[i, j] = p_start[i] * p_end[j] for i <= j < i + max_answer_length
        scores = np.triu(np.outer(start_p, end_p))
        scores = np.tril(scores, max_answer_length - 1)
        flat = int(scores.argmax())
        i, j = divmod(flat, n)
        score = float(scores[i, j])
        if score > best.score:
            begin, finish = encoding.offsets[i][0], encoding.offsets[j][1]
            best = Answer(context[begin:finish], score, begin, finish)
    return best


def _masked_softmax(logits: Array, keep: Array) -> Array:
    values = np.where(keep, logits.astype(np.float64), -np.inf)
    if not keep.any():
        return np.zeros_like(values)
    values = values - values[keep].max()
    exp = np.where(keep, np.exp(values), 0.0)
    return np.asarray(exp / exp.sum())
