"""Incremental decoding of generated tokens, and stop strings.

``IncrementalDecoder`` turns tokens into text one at a time without ever splitting a character:
byte-level tokenizers may spread one UTF-8 character over several tokens, and decoding such a
prefix ends in U+FFFD. It decodes a short window of recent tokens (``prefix``..end) and emits
only what was added beyond the text the same window gave before, once that does not end in a
replacement character (the method of vLLM and text-generation-inference: decoding a window,
not single tokens, keeps the spaces and merges a tokenizer's decoder adds between tokens).

``StopMatcher`` holds back text while it may be the start of a stop string, and cuts the output
before the first complete one.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

_REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """The text of one request's generated tokens, delivered in pieces."""

    def __init__(self, tokenizer: Tokenizer, prompt: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        # Starting the window on the prompt's last tokens gives the first generated token the
        # context a decoder needs (a leading space is not stripped as at the start of a text).
        self._ids: list[int] = list(prompt[-4:])
        self._prefix = 0
        self._read = len(self._ids)

    def _decode(self, ids: Sequence[int]) -> str:
        text: str = self._tokenizer.decode(list(ids), skip_special_tokens=True)
        return text

    def add(self, token: int) -> str:
        """The new text once ``token`` is added: empty while a character is incomplete."""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(_REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """What is left at the end (an incomplete character comes out as U+FFFD)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :] if len(after) > len(before) else ""


class StopMatcher:
    """Cuts generated text at the first stop string; holds back a possible start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""

    @property
    def held(self) -> str:
        return self._held

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to send now, whether a stop string was found). After a stop, the text is
        everything before it and nothing more may be fed."""
        pending = self._held + text
        if not self._stops:
            self._held = ""
            return pending, False
        found = [i for i in (pending.find(stop) for stop in self._stops) if i >= 0]
        if found:
            self._held = ""
            return pending[: min(found)], True
        keep = self._partial(pending)
        self._held = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep], False

    def flush(self) -> str:
        """The held-back text, at the end of a request that did not stop on a string."""
        held, self._held = self._held, ""
        return held

    def _partial(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
