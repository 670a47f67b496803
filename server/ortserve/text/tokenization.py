"""Texts -> the model's token inputs, with what post-processing needs to map tokens back to text.

One request's texts are encoded together (``encode_batch`` runs in Rust and releases the GIL;
call ``encode`` from a worker thread) and padded to the request's own longest row; the batcher
pads further to the batch's longest. Question answering splits a long context into overlapping
windows, so one text can become several rows.

Tokenizers tokenize a whole text before truncating it (about 75 bytes of memory per character),
so a long text is cut first to the head that truncation would keep: the shortest prefix, ending
at a word boundary, known to hold more tokens than the model can take (found by tokenizing
prefixes of growing size). Where a longer text is refused (truncation off, a context needing
more than ``MAX_WINDOWS`` windows), finding such a head is enough to refuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from ortserve.errors import InvalidInput
from ortserve_client.tensors import Array

#: Windows one question-answering request may take (its context's length / the window's).
MAX_WINDOWS = 256
#: The first prefix tried when cutting a long text: this many characters per token wanted
#: (natural text has 3-6), then four times more each try.
CHARS_PER_TOKEN = 8
#: Texts are tokenized in groups of at most this many characters: tokenizers' memory per call
#: grows with the characters it is given.
CHUNK_CHARS = 2**20


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
        # Counts tokens of a text on its own, untruncated: long texts are cut with it, and
        # questions are measured with it first: tokenizers panics (a Rust backtrace on stderr)
        # when a question leaves the context no more room than the stride.
        self._measure = Tokenizer.from_str(tokenizer.to_str())
        self._measure.no_padding()
        self._measure.no_truncation()
        self._questions: Tokenizer | None = self._measure if windows else None
        if windows:
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

    def head(self, text: str, more_than: int) -> str:
        """The shortest prefix of ``text`` ending at a word boundary that holds more than
        ``more_than`` tokens, each as the whole text has it; ``text`` when there is none.

        Pre-tokenizers split at whitespace, so the tokens before a prefix's last word are those
        of the whole text; the prefix stops before that word (which the cut may have split)."""
        budget = more_than * CHARS_PER_TOKEN
        while budget < len(text):
            head = text[:budget]
            words = head.rstrip().rsplit(None, 1)
            if len(words) == 2:
                boundary = len(words[0])
                offsets = self._measure.encode(head, add_special_tokens=False).offsets
                if sum(1 for _, end in offsets if end <= boundary) > more_than:
                    return text[:boundary]
            budget *= 4
        return text

    def _cut(self, texts: Sequence[str], name: str, pair: bool) -> list[str]:
        """Each text cut to the head truncation keeps; refused where a longer text is."""
        if self._windows and pair:  # a context: more than MAX_WINDOWS windows is refused
            limit = MAX_WINDOWS * self._max_length
            for index, text in enumerate(texts):
                if len(self.head(text, limit)) < len(text):
                    raise InvalidInput(
                        f"input '{name}': context {index} has more than {limit} tokens, more "
                        f"than {MAX_WINDOWS} windows of {self._max_length} tokens take: send a "
                        "shorter context"
                    )
            return list(texts)
        heads = [self.head(text, self._max_length) for text in texts]
        if not self._truncation or self._windows:  # a question must fit a window whole
            for index, (head, text) in enumerate(zip(heads, texts, strict=True)):
                if len(head) < len(text):
                    what = "question" if self._windows else "text"
                    raise InvalidInput(
                        f"input '{name}': {what} {index} has more than {self._max_length} "
                        f"tokens, more than max_sequence_length {self._max_length}"
                        + ("" if self._windows else " (truncation is off for this model)")
                    )
        return heads

    def _encode_batch(self, items: Sequence[Any]) -> list[Encoding]:
        """``encode_batch`` over groups of at most CHUNK_CHARS characters (or one item)."""
        encodings: list[Encoding] = []
        group: list[Any] = []
        size = 0
        for item in items:
            length = len(item) if isinstance(item, str) else len(item[0]) + len(item[1])
            if group and size + length > CHUNK_CHARS:
                encodings.extend(self._tokenizer.encode_batch(group))
                group, size = [], 0
            group.append(item)
            size += length
        if group:
            encodings.extend(self._tokenizer.encode_batch(group))
        return encodings

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> Encoded:
        texts = self._cut(texts, "TEXT", pair=False)
        pairs = None if pairs is None else self._cut(pairs, "TEXT_PAIR", pair=True)
        items: list[Any] = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
        if self._questions is not None and pairs is not None:
            self._check_questions(texts, pairs)
        try:
            encodings = self._encode_batch(items)
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
