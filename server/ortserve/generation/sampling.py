"""Vectorised next-token choice for a batch of rows, each with its own parameters and RNG.

The logits processors follow Hugging Face's order and semantics (repetition penalty, then
temperature, top-k, top-p), so that a greedy row matches ``generate(do_sample=False)`` and a
sampling row means what the same parameters mean there. Each sampling row draws exactly one
uniform number per token from its own ``numpy.random.Generator`` (seeded from the request's
``seed``) and picks by inverse CDF: its tokens do not depend on the rows it is batched with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ortserve.generation.types import SamplingParams

Logits = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]


@dataclass(slots=True)
class RowSampling:
    """One row's sampling state: its parameters, RNG and the tokens it has seen."""

    params: SamplingParams
    rng: np.random.Generator
    seen: npt.NDArray[np.bool_] | None  # [vocab], kept only when repetition_penalty != 1

    @classmethod
    def create(cls, params: SamplingParams, vocab: int, prompt: Sequence[int]) -> RowSampling:
        seen = None
        if params.repetition_penalty != 1.0:
            seen = np.zeros(vocab, dtype=np.bool_)
            seen[[t for t in prompt if 0 <= t < vocab]] = True
        return cls(params, np.random.default_rng(params.seed), seen)

    def saw(self, token: int) -> None:
        if self.seen is not None and 0 <= token < self.seen.shape[0]:
            self.seen[token] = True


def choose(logits: Logits, rows: Sequence[RowSampling]) -> Ids:
    """The next token of each row of ``logits`` [rows, vocab] (not modified)."""
    if len(rows) != logits.shape[0]:
        raise ValueError(f"{len(rows)} sampling rows for {logits.shape[0]} rows of logits")
    scores = logits.astype(np.float32, copy=True)
    penalties = np.array([r.params.repetition_penalty for r in rows], dtype=np.float32)
    if np.any(penalties != 1.0):
        seen = np.stack([r.seen if r.seen is not None else _none(scores.shape[1]) for r in rows])
        scores = repetition_penalty(scores, seen, penalties)
    chosen: Ids = np.argmax(scores, axis=1).astype(np.int64)
    sampled = np.array([r.params.temperature > 0 for r in rows], dtype=np.bool_)
    if sampled.any():
        picked = [r for r, s in zip(rows, sampled, strict=True) if s]
        probs = probabilities(scores[sampled], picked)
        draws = np.array([r.rng.random() for r in picked], dtype=np.float64)
        chosen[sampled] = inverse_cdf(probs, draws)
    return chosen


def _none(vocab: int) -> npt.NDArray[np.bool_]:
    return np.zeros(vocab, dtype=np.bool_)


def repetition_penalty(
    scores: Logits, seen: npt.NDArray[np.bool_], penalties: npt.NDArray[np.float32]
) -> Logits:
    """HF's: a seen token's logit is divided by the penalty when positive, multiplied when not."""
    p = penalties[:, None]
    penalised = np.where(scores > 0, scores / p, scores * p)
    return np.where(seen, penalised, scores).astype(np.float32)


def probabilities(scores: Logits, rows: Sequence[RowSampling]) -> npt.NDArray[np.float64]:
    """Softmax of temperature-scaled scores with top-k and top-p applied, per row."""
    temps = np.array([r.params.temperature for r in rows], dtype=np.float64)
    scaled = scores.astype(np.float64) / temps[:, None]
    scaled = top_k(scaled, np.array([r.params.top_k for r in rows], dtype=np.int64))
    scaled = top_p(scaled, np.array([r.params.top_p for r in rows], dtype=np.float64))
    return softmax(scaled)


def softmax(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    result: npt.NDArray[np.float64] = shifted / shifted.sum(axis=1, keepdims=True)
    return result


def top_k(scores: npt.NDArray[np.float64], ks: Ids) -> npt.NDArray[np.float64]:
    """Keep each row's ``k`` highest scores (ties at the k-th kept too); k <= 0 keeps all."""
    vocab = scores.shape[1]
    active = (ks > 0) & (ks < vocab)
    if not active.any():
        return scores
    result = scores.copy()
    ordered = -np.sort(-scores[active], axis=1)
    kth = ordered[np.arange(ordered.shape[0]), ks[active] - 1]
    result[active] = np.where(scores[active] < kth[:, None], -np.inf, scores[active])
    return result


def top_p(scores: npt.NDArray[np.float64], ps: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Keep each row's smallest set of highest-probability tokens whose mass reaches ``p``
    (always at least the most likely one); p >= 1 keeps all."""
    active = ps < 1.0
    if not active.any():
        return scores
    result = scores.copy()
    part = scores[active]
    order = np.argsort(-part, axis=1, kind="stable")
    probs = softmax(np.take_along_axis(part, order, axis=1))
    before = np.cumsum(probs, axis=1) - probs  # mass of the tokens ranked above each one
    drop_sorted = before >= ps[active][:, None]
    drop_sorted[:, 0] = False
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=1)
    result[active] = np.where(drop, -np.inf, part)
    return result


def inverse_cdf(probs: npt.NDArray[np.float64], draws: npt.NDArray[np.float64]) -> Ids:
    """For each row, the token whose cumulative probability interval holds its draw in [0, 1)."""
    cdf = np.cumsum(probs, axis=1)
    picked = (cdf <= (draws * cdf[:, -1])[:, None]).sum(axis=1)
    # A draw past the last nonzero interval (rounding) falls back to the last possible token.
    last = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
    result: Ids = np.minimum(picked, last).astype(np.int64)
    return result
