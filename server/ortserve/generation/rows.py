"""One request inside the scheduler: its prompt, sampling state, decoded text and end.

``Request`` is what the asyncio side hands over (and may mark cancelled from its thread);
``Row`` is the scheduler thread's state for it, and turns each new token into a ``Delta``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ortserve.generation.detokenize import IncrementalDecoder, StopMatcher
from ortserve.generation.kvcache import Array
from ortserve.generation.model import GenerationModel
from ortserve.generation.sampling import RowSampling
from ortserve.generation.types import CANCELLED, EOS, LENGTH, STOP, Delta, SamplingParams

#: Where a request's results go: a Delta, or the exception that ends it (called on the loop).
Sink = Callable[[Delta | BaseException], None]


@dataclass(eq=False, slots=True)
class Request:
    """A generation request handed to the scheduler."""

    prompt: list[int]
    params: SamplingParams
    sink: Sink
    arrival: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # set by the asyncio side; the scheduler drops the row at its next step

    @property
    def reserved(self) -> int:
        """KV positions this request may come to hold (before the context limit caps it)."""
        return len(self.prompt) + self.params.max_tokens


@dataclass(eq=False, slots=True)
class Row:
    """The scheduler's state for one admitted request."""

    request: Request
    sampling: RowSampling
    decoder: IncrementalDecoder
    stops: StopMatcher
    reserved: int
    past: list[Array] = field(default_factory=list)  # its own KV while prefilling
    prefilled: int = 0
    generated: list[int] = field(default_factory=list)
    last_token_at: float | None = None
    finish: str | None = None

    @classmethod
    def admit(cls, request: Request, model: GenerationModel, vocab: int) -> Row:
        return cls(
            request=request,
            sampling=RowSampling.create(request.params, vocab, request.prompt),
            decoder=IncrementalDecoder(model.tokenizer, request.prompt),
            stops=StopMatcher(request.params.stop),
            reserved=min(request.reserved, model.context_limit),
        )

    @property
    def last(self) -> int:
        return self.generated[-1]

    @property
    def length(self) -> int:
        return len(self.request.prompt) + len(self.generated)

    def delta(self, text: str, tokens: tuple[int, ...] = ()) -> Delta:
        return Delta(text, tokens, self.finish, len(self.request.prompt), len(self.generated))

    def take(self, token: int, model: GenerationModel) -> Delta:
        """Add a generated token; the Delta to send (with finish_reason set when it ends)."""
        self.generated.append(token)
        self.sampling.saw(token)
        params = self.request.params
        if token in model.eos_ids and not params.ignore_eos:
            self.finish = EOS
            return self.delta(self._final_text(), (token,))
        text, stopped = self.stops.feed(self.decoder.add(token))
        if stopped:
            self.finish = STOP
        elif len(self.generated) >= params.max_tokens or self.length >= model.context_limit:
            self.finish = LENGTH
            text += self._final_text()
        return self.delta(text, (token,))

    def cancel(self) -> Delta:
        self.finish = CANCELLED
        return self.delta("")

    def _final_text(self) -> str:
        """The text still held back (an incomplete character, a possible stop) at the end; a
        stop string found in it still ends the request as "stop"."""
        text, stopped = self.stops.feed(self.decoder.flush())
        if stopped:
            self.finish = STOP
            return text
        return text + self.stops.flush()
