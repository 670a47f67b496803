"""A long text is cut before it is tokenized, to the head that truncation keeps anyway: the
tokens a model gets are the same as from tokenizing the whole text (text/tokenization.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from ortserve.errors import InvalidInput
from ortserve.text.tokenization import MAX_WINDOWS, TextEncoder
from tests.factories.text_models import CORPUS, train_tokenizer

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
PROSE = " ".join(CORPUS)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer()


def _whole(tokenizer: Tokenizer, max_length: int, *items: object) -> list[list[int]]:
    """What the tokenizer gives for whole texts: the reference the cut must match."""
    reference = Tokenizer.from_str(tokenizer.to_str())
    reference.no_padding()
    reference.enable_truncation(max_length, strategy="longest_first")
    return [e.ids for e in reference.encode_batch(list(items))]


@pytest.mark.parametrize(
    "text",
    [
        PROSE * 40,
        # Spaces and unknown characters carry no tokens: the head grows until it holds enough.
        " " * 5000 + PROSE * 3,
        "\u0000\u200b" * 3000 + PROSE * 3,
        # One endless word: no word boundary to cut at, so the whole text is tokenized.
        "x" * 20000,
        "cats dogs " * 5 + "é" * 9000,
    ],
)
def test_a_cut_text_gives_the_tokens_of_the_whole(tokenizer: Tokenizer, text: str) -> None:
    encoder = TextEncoder(tokenizer, INPUTS, np.dtype(np.int64), 16, truncation=True)
    encoded = encoder.encode([text, "short one"])
    expected = _whole(tokenizer, 16, text, "short one")
    ids = encoded.feeds["input_ids"]
    for row, want in enumerate(expected):
        assert ids[row, : len(want)].tolist() == want
    assert len(encoded.texts[0]) < len(text) or text.startswith(("x", "cats"))


def test_pairs_are_cut_each_to_its_own_head(tokenizer: Tokenizer) -> None:
    encoder = TextEncoder(tokenizer, INPUTS, np.dtype(np.int64), 24, truncation=True)
    pairs = [(PROSE * 30, "where does alice work"), ("what", PROSE * 50), (PROSE, PROSE * 9)]
    encoded = encoder.encode([a for a, _ in pairs], [b for _, b in pairs])
    for row, want in enumerate(_whole(tokenizer, 24, *pairs)):
        assert encoded.feeds["input_ids"][row, : len(want)].tolist() == want


def test_a_head_holds_more_tokens_than_asked_and_ends_at_a_word(tokenizer: Tokenizer) -> None:
    encoder = TextEncoder(tokenizer, INPUTS, np.dtype(np.int64), 16, truncation=True)
    text = PROSE * 100
    head = encoder.head(text, 16)
    assert len(head) < len(text) // 10
    assert text.startswith(head)
    assert text[len(head)] == " "
    assert len(tokenizer.encode(head, add_special_tokens=False).ids) > 16


def test_refusals_come_from_the_head(tokenizer: Tokenizer) -> None:
    """Truncation off, or a context needing more windows than allowed: refused without
    tokenizing the whole text."""
    strict = TextEncoder(tokenizer, INPUTS, np.dtype(np.int64), 8, truncation=False)
    with pytest.raises(InvalidInput, match="input 'TEXT': text 0 has more than 8 tokens"):
        strict.encode([PROSE * 1000])
    qa = TextEncoder(tokenizer, INPUTS, np.dtype(np.int64), 16, False, windows=True, stride=2)
    context = PROSE * 400  # far more tokens than MAX_WINDOWS windows of 16 take
    with pytest.raises(InvalidInput, match="input 'TEXT_PAIR': context 0 has more than"):
        qa.encode(["where does alice work"], [context])
    assert len(tokenizer.encode(context).ids) > MAX_WINDOWS * 16
