"""Texts -> the model's token inputs, with what post-processing needs to map tokens back to text.

One request's texts are encoded together (``encode_batch`` runs in Rust and releases the GIL;
call ``encode`` from a worker thread) and padded to the request's own longest row; the batcher
pads further to the batch's longest. Question answering splits a long context into overlapping
windows, so one text can become several rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

from ortserve.errors import InvalidInput

Array = npt.NDArray[Any]

#: Windows one question-answering request may take (its context's length / the window's).
MAX_WINDOWS = 256


@dataclass(frozen=True, slots=True)
class Encoded:
    """One request's texts as token arrays: ``rows`` rows of ``length`` tokens."""

    feeds: dict[str, Array]
    encodings: list[Encoding]  # one per row
    row_text: list[int]  # the text each row came from (windows share a text)
    texts: list[str]
    pairs: list[str] | None
    real_tokens: int  # tokens before padding

    @property
    def rows(self) -> int:
        return len(self.encodings)

    @property
    def length(self) -> int:
        return int(next(iter(self.feeds.values())).shape[1])


class TextEncoder:
    def __init__(
        self,
        tokenizer: Tokenizer,
        model_inputs: Sequence[str],
        input_dtype: np.dtype[Any],
        max_length: int,
        truncation: bool,
        windows: bool = False,
        stride: int = 0,
    ) -> None:
        # A private copy: truncation settings live on the tokenizer object.
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_padding()
        self._max_length = max_length
        self._stride = stride
        self._truncation = truncation or windows
        self._windows = windows
        if self._truncation:
            self._tokenizer.enable_truncation(
                max_length, stride=stride, strategy="only_second" if windows else "longest_first"
            )
        else:
            self._tokenizer.no_truncation()
        # Questions are measured on their own first: tokenizers panics (a Rust backtrace on
        # stderr) when a question leaves the context no more room than the stride.
        self._questions: Tokenizer | None = None
        if windows:
            self._questions = Tokenizer.from_str(tokenizer.to_str())
            self._questions.no_padding()
            self._questions.no_truncation()
            self._room = max_length - self._tokenizer.num_special_tokens_to_add(True)
        self._inputs = list(model_inputs)
        self._dtype = input_dtype
        self._pad_id = _pad_id(tokenizer)

    def _check_questions(self, questions: Sequence[str], contexts: Sequence[str]) -> None:
        """Refuse a question that leaves no more room than the stride, when its pair must be
        split into windows (a pair that fits the window is never truncated: it is fine)."""
        tokens = self._questions
        assert tokens is not None
        for index, question in enumerate(
            tokens.encode_batch(list(questions), add_special_tokens=False)
        ):
            if self._room - len(question.ids) > self._stride:
                continue  # the common case: the context alone is measured only when needed
            context = tokens.encode(contexts[index], add_special_tokens=False)
            if len(question.ids) + len(context.ids) > self._room:
                raise InvalidInput(
                    f"input 'TEXT': question {index} has {len(question.ids)} tokens: "
                    f"{self._refusal(None)}"
                )

    def _refusal(self, exc: Exception | None) -> str:
        detail = f" ({exc})" if exc is not None else ""
        if self._windows:  # what fails here: a question with no room left beyond the stride
            return (
                f"a question leaves too little room for its context in a window of "
                f"{self._max_length} tokens with stride {self._stride}: send a shorter "
                f"question{detail}"
            )
        return f"the tokenizer refused it{detail}"

    @property
    def pad_values(self) -> dict[str, int]:
        return {"input_ids": self._pad_id}

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> Encoded:
        items: list[Any] = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
        if self._questions is not None and pairs is not None:
            self._check_questions(texts, pairs)
        try:
            encodings = self._tokenizer.encode_batch(items)
        except Exception as exc:  # tokenizers refuses e.g. a question longer than the window
            raise InvalidInput(f"input 'TEXT': {self._refusal(exc)}") from None
        except BaseException as exc:  # a Rust panic comes up as a BaseException
            if type(exc).__name__ != "PanicException":
                raise
            raise InvalidInput(f"input 'TEXT': {self._refusal(None)}") from None
        rows: list[Encoding] = []
        row_text: list[int] = []
        for index, encoding in enumerate(encodings):
            if not self._truncation and len(encoding.ids) > self._max_length:
                raise InvalidInput(
                    f"input 'TEXT': text {index} has {len(encoding.ids)} tokens, more than "
                    f"max_sequence_length {self._max_length} (truncation is off for this model)"
                )
            parts = [encoding, *encoding.overflowing] if self._windows else [encoding]
            if len(parts) > MAX_WINDOWS:
                raise InvalidInput(
                    f"input 'TEXT_PAIR': context {index} needs {len(parts)} windows of "
                    f"{self._max_length} tokens (stride {self._stride}); at most {MAX_WINDOWS}: "
                    "send a shorter context, or a shorter question"
                )
            rows.extend(parts)
            row_text.extend([index] * len(parts))
        return Encoded(
            feeds=self._arrays(rows),
            encodings=rows,
            row_text=row_text,
            texts=list(texts),
            pairs=None if pairs is None else list(pairs),
            real_tokens=sum(len(e.ids) for e in rows),
        )

    def _arrays(self, rows: Sequence[Encoding]) -> dict[str, Array]:
        length = max(len(e.ids) for e in rows)
        ids = np.full((len(rows), length), self._pad_id, dtype=self._dtype)
        mask = np.zeros((len(rows), length), dtype=self._dtype)
        types = np.zeros((len(rows), length), dtype=self._dtype)
        for row, encoding in enumerate(rows):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = encoding.attention_mask
            types[row, :n] = encoding.type_ids
        available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: available[name] for name in self._inputs}


def _pad_id(tokenizer: Tokenizer) -> int:
    padding = tokenizer.padding
    if padding and "pad_id" in padding:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<|endoftext|>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0
