"""``GenerationEngine``: the asyncio face of one generation model's scheduler thread.

``generate`` checks and tokenizes a prompt on the caller's side, hands the request to the
scheduler (refused at once when its queue is full) and yields the Deltas the scheduler posts back
to the loop. The deadline is enforced here by a loop timer, so a request expires on time even
while the session is busy; an expired, closed or cancelled stream only marks its request, and the
scheduler frees the row at its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from ortserve.errors import DeadlineExpired, InvalidInput, ModelNotReady
from ortserve.generation.model import GenerationModel
from ortserve.generation.rows import Request
from ortserve.generation.scheduler import Callback, Scheduler
from ortserve.generation.types import Delta, EngineLimits, GenerationObserver, SamplingParams

Item = Delta | BaseException


class GenerationEngine:
    """Continuous-batching text generation over one model version."""

    def __init__(
        self,
        model: GenerationModel,
        limits: EngineLimits,
        observer: GenerationObserver | None = None,
    ) -> None:
        self._model = model
        self._limits = limits
        self._scheduler = Scheduler(model, limits, self._post, observer)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: dict[Request, asyncio.Queue[Item]] = {}
        self._closed = False

    @property
    def model(self) -> GenerationModel:
        return self._model

    @property
    def running(self) -> int:
        """Requests holding a row (prefilling or decoding)."""
        return self._scheduler.running

    @property
    def waiting(self) -> int:
        return self._scheduler.waiting

    @property
    def kv_tokens(self) -> int:
        return self._scheduler.kv_tokens

    def start(self) -> None:
        """Start the scheduler thread."""
        if self._thread is not None:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # started outside the loop: bound at the first request
            self._loop = None
        name = f"ortserve-generate-{self._model.name}"
        self._thread = threading.Thread(target=self._scheduler.run, name=name, daemon=True)
        self._thread.start()

    async def aclose(self) -> None:
        """Stop the scheduler; the requests still open end with ModelNotReady."""
        if self._closed:
            return
        self._closed = True
        self._scheduler.stop()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        error = f"model '{self._model.name}' is unloading; the generation request was ended"
        for queue in self._open.values():
            queue.put_nowait(ModelNotReady(error))

    def encode_length(self, prompt: str) -> int:
        """Tokens of ``prompt`` as the engine counts them."""
        return len(self._encode(prompt))

    def _encode(self, prompt: str) -> list[int]:
        return list(self._model.tokenizer.encode(prompt).ids)

    async def generate(
        self, prompt: str, params: SamplingParams, *, deadline: float | None = None
    ) -> AsyncIterator[Delta]:
        """Generate from ``prompt``: Deltas until one with finish_reason set. ``deadline`` is on
        the loop's clock (``loop.time()``)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Item] = asyncio.Queue()
        request = Request(
            self._prompt_ids(prompt, params, loop, deadline), params, queue.put_nowait
        )
        timer = None
        if deadline is not None:
            timer = loop.call_at(deadline, self._expire, request, queue)
        self._scheduler.submit(request)  # Overloaded at once when the queue is full
        self._open[request] = queue
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finish_reason is not None
                yield item
        finally:
            if timer is not None:
                timer.cancel()
            del self._open[request]
            if not finished:  # closed or cancelled early: free the row at the next step
                request.cancelled = True
                self._scheduler.wake()

    def _prompt_ids(
        self,
        prompt: str,
        params: SamplingParams,
        loop: asyncio.AbstractEventLoop,
        deadline: float | None,
    ) -> list[int]:
        """The prompt's tokens, checked: InvalidInput, ModelNotReady, DeadlineExpired."""
        name = self._model.name
        if self._closed or self._thread is None:
            raise ModelNotReady(f"model '{name}' is not serving generation requests")
        if self._loop is None:
            self._loop = loop
        if not prompt:
            raise InvalidInput(f"model '{name}': the prompt is empty")
        params.check()
        ids = self._encode(prompt)
        limit = self._model.context_limit
        if not ids:
            raise InvalidInput(f"model '{name}': the prompt encodes to no tokens")
        if len(ids) >= limit:
            raise InvalidInput(
                f"model '{name}': the prompt has {len(ids)} tokens; the model's context is "
                f"{limit} tokens, prompt and generated text together"
            )
        reserved = min(len(ids) + params.max_tokens, limit)
        if reserved > self._limits.max_kv_tokens:
            raise InvalidInput(
                f"model '{name}': the prompt ({len(ids)} tokens) and max_tokens "
                f"({params.max_tokens}) need {reserved} KV positions; the model allows "
                f"{self._limits.max_kv_tokens} (max_kv_tokens)"
            )
        if deadline is not None and deadline <= loop.time():
            raise DeadlineExpired(f"model '{name}': the deadline passed before generation began")
        return ids

    def _expire(self, request: Request, queue: asyncio.Queue[Item]) -> None:
        request.cancelled = True
        self._scheduler.wake()
        queue.put_nowait(
            DeadlineExpired(f"model '{self._model.name}': the deadline passed during generation")
        )

    def _post(self, batch: list[Callback]) -> None:
        """From the scheduler thread: run ``batch`` on the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody listens
            loop.call_soon_threadsafe(_run_all, batch)


def _run_all(batch: list[Callback]) -> None:
    for callback in batch:
        callback()
