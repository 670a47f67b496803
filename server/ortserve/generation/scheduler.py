"""Continuous batching: the thread that owns a generation model's session.

Each iteration: drop rows whose caller has gone (cancelled or expired); admit waiting requests
while there are free rows (``max_num_seqs``) and KV budget (``max_kv_tokens``, each request
reserving its prompt plus ``max_tokens``, capped by the context); prefill admitted prompts
separately from the decode call, at most ``prefill_chunk`` prompt tokens per iteration, so a long
prompt delays the running streams by a bounded time; then one decode step (sequence length 1) for
all running rows over the left-padded cache, vectorised sampling, stop checks, and eviction of the
rows that finished.

Nothing here touches the event loop: results leave through ``post``, one call per iteration with
the callbacks (deliveries and observer reports) for the loop to run. An exception in a step ends
the requests of that step with ``StepFailed``; the thread goes on with the others.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import structlog

from ortserve.errors import Overloaded
from ortserve.generation import sampling
from ortserve.generation.kvcache import KVCache, empty_past
from ortserve.generation.model import GenerationModel
from ortserve.generation.rows import Request, Row
from ortserve.generation.types import Delta, EngineLimits, GenerationObserver, StepFailed

log = structlog.get_logger("ortserve.generation")

Callback = Callable[[], None]
#: Hands one iteration's callbacks to the event loop (thread-safe).
Post = Callable[[list[Callback]], None]


class Scheduler:
    """The continuous-batching loop of one model instance; ``run`` is its thread's body."""

    def __init__(
        self,
        model: GenerationModel,
        limits: EngineLimits,
        post: Post,
        observer: GenerationObserver | None = None,
    ) -> None:
        self._model = model
        self._limits = limits
        self._post = post
        self._observer = observer
        self._vocab: int | None = None
        self._lock = threading.Condition()
        self._waiting: deque[Request] = deque()  # guarded by _lock
        self._stopping = False
        self._prefilling: list[Row] = []
        self._running: list[Row] = []  # in the cache's row order
        self._cache = KVCache(model.spec)
        self._outbox: list[Callback] = []
        self.kv_tokens = 0

    # -- the asyncio side (any thread) ------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue a request, or refuse it at once (Overloaded) when the queue is full."""
        with self._lock:
            limit = self._limits.max_queue_size
            if limit and len(self._waiting) >= limit:
                raise Overloaded(
                    f"model '{self._model.name}': {len(self._waiting)} generation requests "
                    f"are already waiting (max_queue_size {limit})"
                )
            self._waiting.append(request)
            self._lock.notify()

    def wake(self) -> None:
        """Look again now (a request was cancelled)."""
        with self._lock:
            self._lock.notify()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()

    @property
    def running(self) -> int:
        return len(self._running) + len(self._prefilling)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the thread --------------------------------------------------------------------------

    def run(self) -> None:
        while self._next():
            try:
                self.step()
            except Exception as exc:  # a bug, not onnxruntime (step catches that): stay alive
                self._fail(self._running + self._prefilling, exc)
                self._running, self._prefilling = [], []
                self._cache = KVCache(self._model.spec)
            self._flush()

    def _next(self) -> bool:
        """Wait until there is work; False once stopping."""
        with self._lock:
            while not self._stopping and not (self._waiting or self._running or self._prefilling):
                self._lock.wait()
            return not self._stopping

    def step(self) -> None:
        """One iteration (public for tests that drive the scheduler without a thread)."""
        self._drop_cancelled()
        self._admit()
        self._prefill()
        self._decode()
        self.kv_tokens = self._cache.tokens + sum(row.prefilled for row in self._prefilling)
        if self._observer is not None:
            self._report(self._observer.load, self.running, self.waiting, self.kv_tokens)

    def _flush(self) -> None:
        if self._outbox:
            batch, self._outbox = self._outbox, []
            self._post(batch)

    def _report(self, func: Callable[..., None], *args: Any) -> None:
        self._outbox.append(partial(func, *args))

    def _send(self, row: Row, item: Delta | BaseException) -> None:
        self._outbox.append(partial(row.request.sink, item))

    def _drop_cancelled(self) -> None:
        with self._lock:
            if any(request.cancelled for request in self._waiting):
                self._waiting = deque(r for r in self._waiting if not r.cancelled)
        for row in [r for r in self._prefilling if r.request.cancelled]:
            self._end(row, row.cancel())
        self._prefilling = [r for r in self._prefilling if r.finish is None]
        gone = [row for row in self._running if row.request.cancelled]
        for row in gone:
            self._end(row, row.cancel())
        if gone:
            self._evict()

    def _admit(self) -> None:
        reserved = sum(row.reserved for row in self._running + self._prefilling)
        with self._lock:
            while self._waiting and self.running < self._limits.max_num_seqs:
                request = self._waiting[0]
                need = min(request.reserved, self._model.context_limit)
                if reserved + need > self._limits.max_kv_tokens and self.running:
                    break
                self._waiting.popleft()
                reserved += need
                self._prefilling.append(Row.admit(request, self._model, self._vocab_size()))

    def _vocab_size(self) -> int:
        if self._vocab is None:
            self._vocab = int(self._model.tokenizer.get_vocab_size(with_added_tokens=True))
        return self._vocab

    def _prefill(self) -> None:
        budget = self._limits.prefill_chunk
        for row in list(self._prefilling):
            if budget <= 0:
                break
            size = min(budget, len(row.request.prompt) - row.prefilled)
            budget -= size
            try:
                logits = self._prefill_chunk(row, size)
            except Exception as exc:  # onnxruntime's own types: fail this request only
                self._prefilling.remove(row)
                self._fail([row], exc)
                continue
            if logits is None:
                continue
            self._prefilling.remove(row)
            token = int(sampling.choose(logits, [row.sampling])[0])
            self._deliver(row, token)
            if row.finish is None:
                self._cache.add_row(row.past)
                self._running.append(row)
            row.past = []

    def _prefill_chunk(self, row: Row, size: int) -> np.ndarray[Any, Any] | None:
        """Run the next ``size`` prompt tokens of ``row``; the last position's logits [1, vocab]
        once its whole prompt is in."""
        start = row.prefilled
        ids = np.asarray(row.request.prompt[start : start + size], dtype=np.int64)[None]
        past = row.past or empty_past(self._model.spec)
        feeds = self._feeds(ids, np.ones((1, start + size), dtype=np.int64), past)
        feeds["position_ids"] = np.arange(start, start + size, dtype=np.int64)[None]
        logits, row.past = self._run(feeds)
        row.prefilled = start + size
        return logits if row.prefilled == len(row.request.prompt) else None

    def _decode(self) -> None:
        if not self._running:
            return
        ids = np.asarray([[row.last] for row in self._running], dtype=np.int64)
        feeds = self._feeds(ids, self._cache.decode_mask(), self._cache.past)
        feeds["position_ids"] = self._cache.positions()
        try:
            logits, present = self._run(feeds)
        except Exception as exc:  # onnxruntime's own types: the rows of this step end
            self._fail(self._running, exc)
            self._running = []
            self._cache = KVCache(self._model.spec)
            return
        self._cache.advance(present)
        tokens = sampling.choose(logits, [row.sampling for row in self._running])
        for row, token in zip(self._running, tokens.tolist(), strict=True):
            self._deliver(row, int(token))
        if any(row.finish is not None for row in self._running):
            self._evict()

    def _feeds(self, ids: Any, mask: Any, past: list[Any]) -> dict[str, Any]:
        spec = self._model.spec
        feeds: dict[str, Any] = {"input_ids": ids}
        if spec.has_attention_mask:
            feeds["attention_mask"] = mask
        feeds.update(zip(spec.past_names(), past, strict=True))
        return feeds

    def _run(self, feeds: dict[str, Any]) -> tuple[Any, list[Any]]:
        """One session call: the last position's logits [rows, vocab] and the presents."""
        spec = self._model.spec
        if not spec.has_position_ids:
            del feeds["position_ids"]
        outputs = self._model.session.run(["logits", *spec.present_names()], feeds)
        return np.asarray(outputs[0][:, -1, :], dtype=np.float32), list(outputs[1:])

    def _evict(self) -> None:
        """Drop the rows that finished from the batch (and the cache columns no row needs)."""
        keep = [i for i, row in enumerate(self._running) if row.finish is None]
        self._cache.keep(keep)
        self._running = [self._running[i] for i in keep]

    def _deliver(self, row: Row, token: int) -> None:
        now = time.monotonic()
        if self._observer is not None:
            if row.last_token_at is None:
                self._report(self._observer.first_token, now - row.request.arrival)
            else:
                self._report(self._observer.token_gap, now - row.last_token_at)
        row.last_token_at = now
        delta = row.take(token, self._model)
        self._send(row, delta)
        if row.finish is not None:
            self._finished(row)

    def _end(self, row: Row, delta: Delta) -> None:
        self._send(row, delta)
        self._finished(row)

    def _finished(self, row: Row) -> None:
        if self._observer is not None:
            prompt, output = len(row.request.prompt), len(row.generated)
            self._report(self._observer.finished, prompt, output, row.finish or "error")

    def _fail(self, rows: list[Row], exc: Exception) -> None:
        log.error("generation step failed", model=self._model.name, rows=len(rows), exc_info=exc)
        message = (
            f"model '{self._model.name}': the generation step failed and ended this request "
            f"({type(exc).__name__}: {str(exc)[:300]})"
        )
        for row in rows:
            self._send(row, StepFailed(message))
            self._finished(row)
